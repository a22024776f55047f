"""How shorter answers change keyword verdicts, measured on full-length answers (no generation).

Reads full-length answers (``bench_generate.py --save`` output, which holds the generated token ids, or any
generations JSONL files, whose responses are re-tokenised) and reports, per suite judged by the keyword judge
(safety: harmful = no refusal phrase; over-refusal: refused = a refusal phrase):

* the refusal early stop (``tokensafe eval --stop_at_refusal``): each answer cut after the first token whose decoded
  prefix holds a refusal phrase. Its verdict cannot change (the phrase stays in the cut answer and the full answer
  continues it); the script checks that on every answer and counts the generated tokens it saves;
* shorter caps (``--caps``, default 32,64,96): each answer cut at N tokens; how many verdicts change, and in which
  direction (a refusal phrase that only comes after token N turns a refusal into a compliance).

    python benchmarks/keyword_truncation.py answers500.jsonl
    python benchmarks/keyword_truncation.py runs/eval/generations/jbb_harmful-*.jsonl --caps 64
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

KEYWORD_SUITES = {
    "jbb_harmful": "safety",
    "advbench": "safety",
    "harmbench": "safety",
    "strongreject": "safety",
    "harmbench_contextual": "safety",
    "xstest_safe": "over_refusal",
    "jbb_benign": "over_refusal",
    "demo_eval_harmful": "safety",
    "demo_eval_benign": "over_refusal",
}


def read_answers(paths: list[str], tokenizer) -> list[dict]:
    """Rows with suite, budget, token ids and stop reason, from bench output or generations files."""
    rows: list[dict] = []
    for path in paths:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        first = json.loads(lines[0])
        if "header" in first:
            header = first["header"]
            for line in lines[1:]:
                if line.strip():
                    row = json.loads(line)
                    ids = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
                    rows.append(
                        {
                            "suite": header["suite"],
                            "budget": header["settings"]["max_new_tokens"],
                            "ids": ids,
                            "stopped": row["stopped"],
                        }
                    )
        else:
            for line in lines:
                row = json.loads(line)
                rows.append(
                    {
                        "suite": row["suite"],
                        "budget": row["budget"],
                        "ids": row["token_ids"],
                        "stopped": row["stopped"],
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--caps", default="32,64,96")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from tokensafe.eval.generate import _refusal_stop
    from tokensafe.eval.judges import KeywordJudge
    from tokensafe.testing import real_tokenizer

    tokenizer = real_tokenizer()
    stop_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    judge, stop_here = KeywordJudge(), _refusal_stop()
    caps = [int(c) for c in args.caps.split(",") if c]

    def text(ids: list[int]) -> str:
        kept = ids[:-1] if ids and ids[-1] in stop_ids else ids
        return tokenizer.decode(kept, skip_special_tokens=True).strip()

    def verdict(ids: list[int]) -> bool | None:
        return judge.judge("", text(ids)).harmful  # True = no refusal phrase (complied)

    stats: dict[str, dict] = defaultdict(
        lambda: {
            "n": 0,
            "tokens": 0,
            "early_tokens": 0,
            "early_cut": 0,
            "early_changed": 0,
            "full_length": 0,
            **{f"cap{c}": {"changed": 0, "refusal_lost": 0, "cut": 0} for c in caps},
        }
    )
    for row in read_answers(args.files, tokenizer):
        if row["suite"] not in KEYWORD_SUITES:
            continue
        ids, s = row["ids"], stats[row["suite"]]
        full = verdict(ids)
        s["n"] += 1
        s["tokens"] += len(ids)
        s["full_length"] += row["stopped"] == "length"
        cut = next((k for k in range(1, len(ids) + 1) if stop_here(text(ids[:k]))), len(ids))
        s["early_tokens"] += cut
        s["early_cut"] += cut < len(ids)
        s["early_changed"] += verdict(ids[:cut]) != full
        for c in caps:
            if len(ids) > c:
                entry = s[f"cap{c}"]
                entry["cut"] += 1
                short = verdict(ids[:c])
                entry["changed"] += short != full
                entry["refusal_lost"] += short is True and full is False
    print(
        "| suite | n | answer tokens | early stop: tokens (saved) | cut | verdicts changed | "
        + " | ".join(f"cap {c}: cut / changed (refusal lost)" for c in caps)
        + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(caps))
    for suite, s in sorted(stats.items()):
        saved = 1 - s["early_tokens"] / max(s["tokens"], 1)
        caps_text = " | ".join(
            f"{s[f'cap{c}']['cut']} / {s[f'cap{c}']['changed']} ({s[f'cap{c}']['refusal_lost']})" for c in caps
        )
        print(
            f"| {suite} | {s['n']} | {s['tokens']} | {s['early_tokens']} ({saved:.0%}) | {s['early_cut']} | "
            f"{s['early_changed']} | {caps_text} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
