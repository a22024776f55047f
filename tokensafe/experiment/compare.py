"""Compare two recordings of an experiment's rows, prompt by prompt: does a rerun reproduce the table?

A machine may be replaced between sessions; the starting model is then rebuilt and every row redone. Whether the
new rows are "the same results" is a per-prompt question: the same ASR can hide different verdicts. This module
reads two ``runs.jsonl`` (the current ``results/<experiment>/`` and an archived copy such as ``build_<fp>/``, or
another machine's) and reports, for each run both hold and each suite, the two values and the number of prompts
whose verdict differs; for the gold-answer loss (no per-prompt verdicts) the two values.

    python -m tokensafe.experiment.compare results/gsm8k_beavertails_p10/build_19c24a11 results/gsm8k_beavertails_p10

Each argument is a results directory (its ``runs.jsonl``; ``prompt_ids.json`` when it has one) or a ``runs.jsonl``
file. Verdicts are paired by prompt id: two rows that list the same prompts in the same order (the usual case)
compare position by position; otherwise through the id lists of ``prompt_ids.json`` (either side's), on the
prompts both answered. A suite whose prompts cannot be paired is reported as such, never compared by position.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokensafe.errors import one_line
from tokensafe.experiment.runner import PROMPT_IDS_FILE, RUNS_FILE, read_runs


@dataclass
class SuiteComparison:
    """One suite of one run in both recordings."""

    suite: str
    old: float | None
    new: float | None
    compared: int | None = None  # prompts with a readable verdict on both sides (None: no verdicts to pair)
    differing: int | None = None  # of those, verdicts that differ
    note: str = ""


@dataclass
class RunComparison:
    run: str
    old_start: str | None
    new_start: str | None
    suites: list[SuiteComparison]


@dataclass
class Recording:
    """The rows of one ``runs.jsonl`` by run id, and the prompt id lists its flags refer to."""

    path: Path
    rows: dict[str, dict[str, Any]]
    prompt_ids: dict[str, list[str]]


def load_recording(path: str | Path) -> Recording:
    """Read a results directory or a ``runs.jsonl``; a line that is not a JSON row is an error naming it."""
    path = Path(path)
    runs_file = path / RUNS_FILE if path.is_dir() else path
    if not runs_file.is_file():
        raise FileNotFoundError(f"{runs_file}: no such file (give a results directory or a runs.jsonl)")
    rows = read_runs(runs_file)
    ids_file = runs_file.parent / PROMPT_IDS_FILE
    prompt_ids = json.loads(ids_file.read_text(encoding="utf-8")) if ids_file.is_file() else {}
    return Recording(runs_file, rows, prompt_ids)


def _value(row: dict[str, Any], suite: str) -> float | None:
    value = ((row.get("metrics") or {}).get(suite) or {}).get("value")
    return float(value) if isinstance(value, int | float) else None


def pair_flags(
    old: dict[str, Any], new: dict[str, Any], prompt_ids: dict[str, list[str]]
) -> tuple[list[tuple[str, str]], str]:
    """The (old, new) verdict pairs of one suite, and a note when the two rows list other prompts."""
    old_flags, new_flags = str(old.get("flags", "")), str(new.get("flags", ""))
    if old.get("ids") == new.get("ids") and len(old_flags) == len(new_flags):
        return list(zip(old_flags, new_flags, strict=True)), ""
    old_ids, new_ids = prompt_ids.get(str(old.get("ids"))), prompt_ids.get(str(new.get("ids")))
    if old_ids is None or new_ids is None or len(old_ids) != len(old_flags) or len(new_ids) != len(new_flags):
        return [], "other prompts, and no id lists to pair them"
    by_id = dict(zip(new_ids, new_flags, strict=True))
    pairs = [(flag, by_id[i]) for i, flag in zip(old_ids, old_flags, strict=True) if i in by_id]
    return pairs, f"paired by id on {len(pairs)} shared prompts ({len(old_ids)} old, {len(new_ids)} new)"


def compare_run(old: dict[str, Any], new: dict[str, Any], prompt_ids: dict[str, list[str]]) -> RunComparison:
    """Every suite either row has: values, and per-prompt differences where both carry verdicts."""
    suites = list(dict.fromkeys([*(new.get("metrics") or {}), *(old.get("metrics") or {})]))
    out = []
    for suite in suites:
        entry = SuiteComparison(suite, _value(old, suite), _value(new, suite))
        old_flags, new_flags = (old.get("flags") or {}).get(suite), (new.get("flags") or {}).get(suite)
        if isinstance(old_flags, dict) and isinstance(new_flags, dict):
            pairs, entry.note = pair_flags(old_flags, new_flags, prompt_ids)
            readable = [(a, b) for a, b in pairs if a != "x" and b != "x"]
            if pairs:
                entry.compared = len(readable)
                entry.differing = sum(a != b for a, b in readable)
        out.append(entry)
    return RunComparison(str(new["id"]), _start(old), _start(new), out)


def _start(row: dict[str, Any]) -> str | None:
    """The fingerprint of the starting model the row's run was planned on."""
    return (row.get("spec") or {}).get("start")


def compare(old: Recording, new: Recording) -> tuple[list[RunComparison], list[str], list[str]]:
    """(comparisons of the runs both hold in the new recording's order, runs only in old, runs only in new)."""
    prompt_ids = {**old.prompt_ids, **new.prompt_ids}
    both = [run for run in new.rows if run in old.rows]
    comparisons = [compare_run(old.rows[run], new.rows[run], prompt_ids) for run in both]
    return comparisons, [r for r in old.rows if r not in new.rows], [r for r in new.rows if r not in old.rows]


def _number(value: float | None, suite: str) -> str:
    if value is None:
        return "\u2014"
    return f"{value:.4f}" if "loss" in suite else f"{100 * value:.1f}%"


def markdown(old: Recording, new: Recording) -> str:
    """The comparison as a markdown table, with a line on runs only one side holds."""
    comparisons, only_old, only_new = compare(old, new)
    lines = [
        f"Old: `{old.path}`; new: `{new.path}`.",
        "",
        "| run | start (old \u2192 new) | suite | old | new | verdicts differing |",
        "|---|---|---|---|---|---|",
    ]
    for comparison in comparisons:
        starts = comparison.old_start or "?"
        if comparison.new_start != comparison.old_start:
            starts += f" \u2192 {comparison.new_start or '?'}"
        for i, s in enumerate(comparison.suites):
            differing = "n/a" if s.differing is None else f"{s.differing} of {s.compared}"
            if s.note:
                differing += f" ({s.note})"
            run = comparison.run if i == 0 else ""
            start = starts if i == 0 else ""
            values = f"{_number(s.old, s.suite)} | {_number(s.new, s.suite)}"
            lines.append(f"| {run} | {start} | {s.suite} | {values} | {differing} |")
    total = [(s.differing, s.compared) for c in comparisons for s in c.suites if s.differing is not None]
    lines += [
        "",
        f"{len(comparisons)} runs in both; verdicts differing: {sum(d for d, _ in total)} of "
        f"{sum(n for _, n in total)} paired prompt verdicts.",
    ]
    if only_old:
        lines.append(f"Only in old: {', '.join(only_old)}.")
    if only_new:
        lines.append(f"Only in new: {', '.join(only_new)}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="results directory or runs.jsonl of the earlier recording")
    parser.add_argument("new", type=Path, help="results directory or runs.jsonl of the later recording")
    args = parser.parse_args(argv)
    try:
        old, new = load_recording(args.old), load_recording(args.new)
    except (OSError, ValueError) as exc:  # a missing or broken runs.jsonl: one line, no traceback
        parser.exit(2, f"{parser.prog}: error: {one_line(exc)}\n")
    print(markdown(old, new), end="")


if __name__ == "__main__":
    main()
