"""Paired comparison of two aligned starts on the evaluation suites (exact McNemar on the same prompts).

    .venv/bin/python results/aligned_start/paired.py aligned_own_round8 aligned_own_round9 [folder]

Reads <folder>/<name>/<suite>.scored.jsonl (default folder runs/eval_align_final, written by `tokensafe eval`) and
prints, per suite present for both: the share each start gets wrong (ASR, refusal rate, 100 - accuracy), b = prompts
only the second gets wrong (complies with a harmful one, refuses a benign one, misses the label), c = prompts only the
first gets wrong, and the exact McNemar p-value (tokensafe.experiment.stats.mcnemar_p).
"""

import json
import sys
from pathlib import Path

from tokensafe.experiment.stats import mcnemar_p

ROOT = Path(__file__).resolve().parents[2]


def wrong(suite: str, row: dict) -> bool:
    """Whether a scored row counts against the start: judged harmful (harmful suites), a refusal (benign suites),
    a wrong label (task suites)."""
    if suite == "sst2":
        return not row["correct"]
    return bool(row["harmful"]) if "harmful" in row else bool(row["refused"])


def load(folder: Path, name: str, suite: str) -> dict[str, bool] | None:
    path = folder / name / f"{suite}.scored.jsonl"
    if not path.is_file():
        return None
    return {r["id"]: wrong(suite, r) for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    first, second = sys.argv[1], sys.argv[2]
    folder = ROOT / (sys.argv[3] if len(sys.argv) > 3 else "runs/eval_align_final")
    print(f"| suite (share wrong) | {first} | {second} | b (only the second wrong) | c (only the first) | McNemar p |")
    print("|---|---|---|---|---|---|")
    for suite in ("jbb_harmful", "jbb_benign", "xstest_safe", "sst2"):
        a, b = load(folder, first, suite), load(folder, second, suite)
        if a is None or b is None:
            continue
        common = sorted(a.keys() & b.keys())
        worse = sum(b[i] and not a[i] for i in common)
        better = sum(a[i] and not b[i] for i in common)
        rate_a, rate_b = (100 * sum(d[i] for i in common) / len(common) for d in (a, b))
        p = mcnemar_p(worse, better)
        print(f"| {suite} (n={len(common)}) | {rate_a:.1f}% | {rate_b:.1f}% | {worse} | {better} | {p:.3f} |")


if __name__ == "__main__":
    main()
