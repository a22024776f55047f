"""Collect the eval results of this study into results/aligned_start/results.json (and print a markdown table)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results/aligned_start/results.json"
# runs/ does not survive a machine replacement: keep the evals already collected and add or update what is on disk.
rows = json.loads(OUT.read_text())["evals"] if OUT.is_file() else {}
for d in ("runs/eval_align", "runs/eval_align_ft", "runs/eval_align_final", "runs/eval_align_groups"):
    for path in sorted((ROOT / d).glob("*.json")):
        data = json.loads(path.read_text())
        if "suites" not in data:
            continue
        rows[f"{d}/{path.stem}"] = {
            suite: {"metric": r["metric"], "value": r["value"], "n": r["n"], "low": r["low"], "high": r["high"]}
            for suite, r in data["suites"].items()
        }
# First and last logged training loss of each fine-tuning check (is the task's answer format already known?).
losses = json.loads(OUT.read_text()).get("ft_losses", {}) if OUT.is_file() else {}
for path in sorted((ROOT / "runs").glob("ft_*/train_summary.json")):
    summary = json.loads(path.read_text())
    losses[path.parent.name] = {k: summary[k] for k in ("first_loss", "last_loss") if k in summary}
runs = [json.loads(line) for line in (ROOT / "results/aligned_start/runs.jsonl").read_text().splitlines()]
OUT.write_text(json.dumps({"evals": rows, "ft_losses": losses, "runs": runs}, indent=1))
suites = sorted({s for r in rows.values() for s in r})
print("| model | " + " | ".join(suites) + " |")
print("|---|" + "---|" * len(suites))
for name, r in rows.items():
    cells = [f"{r[s]['metric']} {100 * r[s]['value']:.1f}% (n={r[s]['n']})" if s in r else "" for s in suites]
    print(f"| {name} | " + " | ".join(cells) + " |")
sys.exit(0)
