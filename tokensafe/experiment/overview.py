"""One page across experiments: every defence's primary ASR and verdict on every setting.

``python -m tokensafe.experiment.overview results/<a> results/<b> ... --out results/overview.md`` reads each
experiment's ``results.json`` (nothing else: the numbers and verdicts are the ones its own ``results.md`` shows, built
by :func:`tokensafe.experiment.report.build_tables` and :func:`tokensafe.experiment.verdict.judge_table`) and writes
a method x setting matrix, so the question a user comes with — which defence wins where, and at what cost — has one
answer that is regenerated, never copied by hand.

A cell is the row's primary ASR (mean over its seeds) and its verdict in short: ``wins``; ``safer · over-refuses``,
``safer · loses task`` or ``safer · small drop`` (the stated criterion it misses; several are joined); ``not
safer``; the Oracle is ``reference``. Initial and SFT carry their ASR only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokensafe.atomic import write_text
from tokensafe.experiment.report import NONE, Row, Table, build_tables, load_results, md_text
from tokensafe.experiment.verdict import CRITERIA, Judgement, judge_table, summary_sentence

SEEDS_MARK = "\u00b2"  # superscript two: the value is a mean over several seeds


@dataclass(frozen=True)
class Column:
    """One setting of one experiment: its table and its rows' verdicts by label."""

    experiment: str
    fingerprint: str
    table: Table
    verdicts: dict[str, Judgement]

    @property
    def title(self) -> str:
        return (
            self.table.setting if self.table.setting == self.experiment else f"{self.experiment}: {self.table.setting}"
        )


def short_verdict(judgement: Judgement) -> str:
    """The verdict in two or three words (the long form, :attr:`Judgement.verdict`, is in the experiment's
    results.md)."""
    verdict = judgement.verdict
    if verdict == "wins":
        return "**wins**"
    if not verdict.startswith("safer, but"):
        return {"reference (perfect filter)": "reference", "not safer than SFT": "not safer"}.get(
            verdict, "not judged"
        )
    return "safer · " + ", ".join(judgement.missed)


def read_columns(results_dirs: Sequence[str | Path]) -> list[Column]:
    """The settings of every experiment, in the order given (settings in each experiment's own order)."""
    columns = []
    for directory in results_dirs:
        results = load_results(directory)
        name = str(results.get("experiment") or Path(directory).name)
        fingerprint = str((results.get("starting_model") or {}).get("fingerprint") or "?")
        for table in build_tables(results):
            verdicts = {j.label: j for j in judge_table(table)}
            columns.append(Column(name, fingerprint, table, verdicts))
    return columns


def row_key(row: Row) -> str:
    """The row's name in the run matrix (``sft``, ``toss``, ``pact_lambda3``): the same defence in every experiment,
    even where its label differs with the experiment's settings (TOSS smoothed over +-64 tokens or +-8)."""
    run_id = str(row.runs[0].get("id") or "") if row.runs else ""
    parts = run_id.split("/")
    return parts[-2] if len(parts) >= 3 else row.label


def row_labels(columns: Sequence[Column]) -> dict[str, str]:
    """Row key -> its label(s), in order of first appearance; different labels of one key are joined with " / "."""
    labels: dict[str, list[str]] = {}
    for column in columns:
        for row in column.table.rows:
            seen = labels.setdefault(row_key(row), [])
            if row.label not in seen:
                seen.append(row.label)
    return {key: " / ".join(names) for key, names in labels.items()}


def cell_text(column: Column, key: str) -> str:
    """``ASR% verdict`` of one row in one setting; the em dash where the row did not run."""
    row = next((r for r in column.table.rows if row_key(r) == key), None)
    primary = column.table.primary
    if row is None or primary is None or row.cells.get(primary.key) is None:
        return NONE
    cell = row.cells[primary.key]
    if cell.value is None:
        return NONE
    text = f"{100 * cell.value:.0f}%" + (SEEDS_MARK if len(row.runs) > 1 else "")
    judgement = column.verdicts.get(row.label)
    return text if judgement is None else f"{text} {short_verdict(judgement)}"


def overview_markdown(columns: Sequence[Column], sources: Sequence[str]) -> str:
    """The matrix, one line per setting on its winners, and how it was made."""
    labels = row_labels(columns)
    primaries = sorted({c.table.primary.label for c in columns if c.table.primary is not None})
    starts = sorted({c.fingerprint for c in columns})
    lines = [
        "# Headline overview: every defence on every setting",
        "",
        f"Generated from {', '.join(f'`{s}/results.json`' for s in sources)} by "
        f"`python -m tokensafe.experiment.overview {' '.join(sources)} --out <this file>`; do not edit by hand.",
        f"Starting model fingerprint(s): {', '.join(f'`{s}`' for s in starts)}.",
        "",
        f"> Cell: {' / '.join(primaries) or 'primary ASR'} ↓ (mean over seeds; {SEEDS_MARK} = several seeds) and the "
        "verdict: **wins**; safer · over-refuses / loses task / small drop (the stated criterion it misses); not "
        "safer; the Oracle is the reference a perfect data filter reaches. " + md_text(CRITERIA),
        "> Intervals, p-values, the other suites and per-seed values: each experiment's `results.md`.",
        "",
        "| method | " + " | ".join(md_text(c.title) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for key, label in labels.items():
        lines.append(f"| {md_text(label)} | " + " | ".join(cell_text(c, key) for c in columns) + " |")
    lines += ["", "## Which defence wins, setting by setting", ""]
    for column in columns:
        primary = column.table.primary.label if column.table.primary is not None else "ASR"
        judgements = list(column.verdicts.values())
        lines.append(
            f"- **{md_text(column.title)}** ({md_text(column.table.description)}): "
            + md_text(summary_sentence(judgements, primary))
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tokensafe.experiment.overview", description=__doc__.split("\n")[0]
    )
    parser.add_argument("results_dirs", nargs="+", help="experiment result directories (each holds results.json)")
    parser.add_argument("--out", help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    text = overview_markdown(read_columns(args.results_dirs), [str(d).rstrip("/") for d in args.results_dirs])
    if args.out:
        write_text(Path(args.out), text)
        print(f"[overview] {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
