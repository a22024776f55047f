"""Paired comparison of two aligned starts on the evaluation suites (exact McNemar on the same prompts).

    .venv/bin/python results/aligned_start/paired.py aligned_own_round8 aligned_own_round9 [folder]

Reads <folder>/<name>.json (default folder runs/eval_align_final, written by `tokensafe eval`) and each suite's
scored rows, and compares every suite present for both through the experiment runner's own mechanism
(tokensafe.experiment.stats: a flag per prompt, unreadable ones left out, exact McNemar). Prints the share each
start gets wrong (ASR, refusal rate, 100 - accuracy), b = prompts only the second gets wrong, c = prompts only the
first gets wrong, and the p-value.
"""

import json
import sys
from pathlib import Path

from tokensafe.experiment.stats import BAD_IS_ONE, FLAG_FIELD, flag_string, format_p, paired_test

ROOT = Path(__file__).resolve().parents[2]


def flags_by_id(folder: Path, name: str) -> dict[str, tuple[str, dict[str, bool | None]]]:
    """suite -> (kind, prompt id -> the suite's flag: harmful / refused / correct, None if unreadable)."""
    suites = json.loads((folder / f"{name}.json").read_text())["suites"]
    out = {}
    for suite, entry in suites.items():
        rows = [json.loads(line) for line in (ROOT / entry["scored"]).read_text().splitlines() if line]
        out[suite] = (entry["kind"], {str(r["id"]): r.get(FLAG_FIELD[entry["kind"]]) for r in rows})
    return out


def main() -> None:
    first, second = sys.argv[1], sys.argv[2]
    folder = ROOT / (sys.argv[3] if len(sys.argv) > 3 else "runs/eval_align_final")
    a_all, b_all = flags_by_id(folder, first), flags_by_id(folder, second)
    print(f"| suite (share wrong) | {first} | {second} | b (only the second wrong) | c (only the first) | McNemar p |")
    print("|---|---|---|---|---|---|")
    for suite in sorted(a_all.keys() & b_all.keys()):
        kind, a = a_all[suite]
        b = b_all[suite][1]
        common = sorted(i for i in a.keys() & b.keys() if a[i] is not None and b[i] is not None)
        test = paired_test(flag_string([b[i] for i in common]), flag_string([a[i] for i in common]), kind)
        bad = BAD_IS_ONE[kind]
        rate_a, rate_b = (100 * sum(d[i] == bad for i in common) / len(common) for d in (a, b))
        print(
            f"| {suite} (n={test['n']}) | {rate_a:.1f}% | {rate_b:.1f}% | {test['b']} | {test['c']} "
            f"| {format_p(test['p_value'])} |"
        )


if __name__ == "__main__":
    main()
