"""The reports of an experiment: ``results.md``, ``pareto.png`` and ``report.html``, from ``results.json`` alone.

``results/<experiment>/results.json`` (format 1, written by the experiment runner) holds one entry per finished run:
its method row (``row``: Initial, SFT, Oracle, TOSS, ...), setting, seed and per-suite metrics (rates with Wilson 95%
intervals, or the gold-answer loss), its McNemar test against the SFT run of the same setting and seed, and its
share of the achievable ASR reduction. The reports show, per setting:

* a table in the papers' layout: Initial first, then SFT, Oracle and the defences in config order; one column per
  suite (ASR, over-refusal, utility), each cell ``value% [low, high]``; several seeds of a row are averaged (the
  interval is then the Wilson interval of the pooled counts, and the per-seed values are listed below the table);
  the best value per column in bold (Initial excluded: it has not been fine-tuned, so it is the reference, not a
  contender); the McNemar p-value on the primary safety suite against SFT; for data-selection rows the share of
  the achievable reduction (ASR_SFT - ASR_row) / (ASR_SFT - ASR_Oracle);
* ``pareto.png``: ASR on the primary safety suite against each utility suite, one point per row with its interval
  bars, the Pareto front (Initial excluded) as a step line;
* ``report.html``: a self-contained page (inline CSS, the plot as a data URI, no scripts, nothing fetched) with the
  tables, the plot, the PACT safety tokens with their weights and the TOSS token-risk view of a few samples.

Every text that comes from the results file (row labels, suite labels, setting names, tokens, sample ids) is
escaped: in HTML through :func:`tokensafe.display.html_text` (``html.escape`` plus visible markers for control and
invisible bidirectional characters), in markdown likewise plus the table syntax, in the plot with ``$`` escaped so
matplotlib does not read it as mathtext. Missing pieces (a suite some rows lack, no ``vs_sft``, no artifacts, one
seed, no finished run) leave an empty cell or a short note, never an error.

``python -m tokensafe.experiment.report results/<experiment>`` rewrites the three files.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokensafe.atomic import write_bytes, write_text
from tokensafe.display import MARKER_CSS, html_text, visible
from tokensafe.eval.metrics import wilson_interval
from tokensafe.experiment.provenance import provenance_html, provenance_markdown
from tokensafe.experiment.stats import format_p
from tokensafe.experiment.verdict import CRITERIA, judge_table, summary_sentence, verdict_cells

# The token-risk rendering is TOSS's own (one rendering of a token for both the TOSS page and this report).
from tokensafe.toss.view import RISKY_RGB, SAFE_RGB, TokenView, token_html

if TYPE_CHECKING:  # sweep.py builds on this module's types
    from tokensafe.experiment.sweep import Sweep

FORMAT = 1
KIND_ORDER = ("safety", "over_refusal", "utility")
KIND_TITLES = {"safety": "ASR", "over_refusal": "over-refusal", "utility": "utility"}
# Fixed rows come first, in this order; the defences follow in the order the config (the run matrix) gives them.
ROLE_ORDER = {"initial": 0, "baseline": 1, "oracle": 2}
NONE = "\u2014"  # the em dash of an empty cell


@dataclass(frozen=True)
class Suite:
    """One evaluation column, as ``results.json["suites"]`` describes it."""

    key: str
    kind: str
    metric: str
    lower_is_better: bool | None
    label: str
    n: int | None = None

    @property
    def is_rate(self) -> bool:
        """Rates (ASR, refusal rate, accuracy) print as percentages; losses as plain numbers."""
        return "loss" not in self.metric

    @property
    def arrow(self) -> str:
        return "" if self.lower_is_better is None else (" \u2193" if self.lower_is_better else " \u2191")

    def rounded(self, value: float) -> float:
        """The value as a cell shows it: ties in the display are ties for "best"."""
        return round(100 * value, 1) if self.is_rate else round(value, 3)


@dataclass
class Cell:
    """One (row, suite) cell: the mean over seeds, its interval, and the per-seed values."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    per_seed: list[tuple[Any, float]] = field(default_factory=list)
    best: bool = False


@dataclass
class Row:
    """The runs of one method row in one setting (one per seed)."""

    label: str
    role: str
    selection: bool
    runs: list[dict[str, Any]]
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return [run.get("seed") for run in self.runs]

    def mean_of(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if _finite(run.get(key))]
        return float(np.mean(values)) if values else None

    def mean_wall(self, stage: str) -> float | None:
        values = [(run.get("wall_seconds") or {}).get(stage) for run in self.runs]
        values = [v for v in values if _finite(v)]
        return float(np.mean(values)) if values else None

    def vs_sft(self, suite: Suite | None) -> list[tuple[Any, dict[str, Any]]]:
        """(seed, McNemar entry) for each seed whose run carries a test on ``suite``."""
        if suite is None:
            return []
        out = []
        for run in self.runs:
            entry = (run.get("vs_sft") or {}).get(suite.key)
            if isinstance(entry, dict) and _finite(entry.get("p_value")):
                out.append((run.get("seed"), entry))
        return out


@dataclass
class Table:
    """One setting's table: its columns (suites that some row of it has numbers for) and its rows."""

    setting: str
    description: str
    suites: list[Suite]
    rows: list[Row]
    primary: Suite | None

    @property
    def has_selection(self) -> bool:
        return any(row.selection for row in self.rows)

    @property
    def multi_seed(self) -> bool:
        return any(len(row.runs) > 1 for row in self.rows)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------------------------
# Reading and aggregating


def load_results(results_dir: str | os.PathLike) -> dict[str, Any]:
    """``results_dir/results.json``, checked for the fields and the format version the report reads."""
    path = Path(results_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results file (run `tokensafe experiment` first)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("runs", []), list):
        raise ValueError(f"{path}: not an experiment results file (no 'runs' list)")
    if data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path}: results format {data.get('format')!r}, this report reads format {FORMAT}")
    return data


def suites_of(results: dict[str, Any]) -> dict[str, Suite]:
    """Every suite, in column order: ASR, over-refusal, utility, others; declared order within a kind.

    A suite that runs report but the header does not declare still gets a column (kind "other", no "best").
    """
    declared = results.get("suites") or {}
    suites: dict[str, Suite] = {}
    for key, info in declared.items():
        info = info if isinstance(info, dict) else {}
        lower = info.get("lower_is_better")
        suites[key] = Suite(
            key=key,
            kind=str(info.get("kind", "other")),
            metric=str(info.get("metric", "value")),
            lower_is_better=lower if isinstance(lower, bool) else None,
            label=str(info.get("label") or key),
            n=info.get("n") if isinstance(info.get("n"), int) else None,
        )
    for run in results.get("runs") or []:
        for key in run.get("metrics") or {}:
            if key not in suites:
                suites[key] = Suite(key=key, kind="other", metric="value", lower_is_better=None, label=key)
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    ordered = sorted(enumerate(suites.values()), key=lambda item: (rank.get(item[1].kind, len(KIND_ORDER)), item[0]))
    return {suite.key: suite for _, suite in ordered}


def primary_safety_suite(results: dict[str, Any], suites: dict[str, Suite]) -> Suite | None:
    """The suite ``reduction_share`` and the McNemar column refer to: the config's, else the first safety suite."""
    config = results.get("config") or {}
    named = config.get("primary_suite") if isinstance(config, dict) else None
    if isinstance(named, str) and named in suites:
        return suites[named]
    return next((suite for suite in suites.values() if suite.kind == "safety"), None)


def aggregate(runs: Sequence[dict[str, Any]], suite: Suite) -> Cell:
    """Mean over the runs (seeds) that have the suite.

    One run: its own interval. Several: the Wilson interval of the pooled counts when every run gives ``k``/``n``
    (the seeds answer the same prompts, so this is the interval of the seed-averaged rate over those prompts; it
    does not include the seed-to-seed spread, which the per-seed values show), else the envelope of the intervals.
    """
    entries = []
    for run in runs:
        entry = (run.get("metrics") or {}).get(suite.key)
        if isinstance(entry, dict) and _finite(entry.get("value")):
            entries.append((run.get("seed"), entry))
    if not entries:
        return Cell()
    values = [float(entry["value"]) for _, entry in entries]
    cell = Cell(value=float(np.mean(values)), per_seed=[(seed, float(e["value"])) for seed, e in entries])
    if len(entries) == 1:
        entry = entries[0][1]
        cell.low = float(entry["low"]) if _finite(entry.get("low")) else None
        cell.high = float(entry["high"]) if _finite(entry.get("high")) else None
    elif all(isinstance(e.get("k"), int) and isinstance(e.get("n"), int) and e["n"] > 0 for _, e in entries):
        cell.low, cell.high = wilson_interval(sum(e["k"] for _, e in entries), sum(e["n"] for _, e in entries))
    elif all(_finite(e.get("low")) and _finite(e.get("high")) for _, e in entries):
        cell.low = min(float(e["low"]) for _, e in entries)
        cell.high = max(float(e["high"]) for _, e in entries)
    return cell


def _setting_name(run: dict[str, Any]) -> str | None:
    setting = run.get("setting")
    if isinstance(setting, dict):
        return str(setting["name"]) if setting.get("name") is not None else None
    return str(setting) if setting is not None else None


def describe_setting(setting: dict[str, Any] | None) -> str:
    """``task gsm8k (270 rows) + 10% beavertails (harmful)``, plus any other setting fields as ``key=value``."""
    if not isinstance(setting, dict):
        return ""
    parts = []
    if setting.get("task") is not None:
        n_task = setting.get("n_task")
        parts.append(f"task {setting['task']}" + (f" ({n_task} rows)" if n_task is not None else ""))
    share = setting.get("harmful_share")
    if setting.get("harmful") is not None:
        parts.append((f"{100 * share:g}% " if _finite(share) else "") + f"{setting['harmful']} (harmful)")
    elif _finite(share):
        parts.append(f"harmful share {100 * share:g}%")
    known = {"name", "task", "n_task", "harmful", "harmful_share"}
    parts += [f"{key}={value}" for key, value in setting.items() if key not in known and value is not None]
    return " + ".join(parts[:2]) + ("; " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def _config_order(results: dict[str, Any]) -> list[str]:
    """Row labels in the order the config lists its rows (``label``, else ``name``); unlisted rows: run order."""
    config = results.get("config") or {}
    methods = (config.get("rows") or config.get("methods")) if isinstance(config, dict) else None
    order: list[str] = []
    for entry in methods if isinstance(methods, list) else []:
        if isinstance(entry, str):
            order.append(entry)
        elif isinstance(entry, dict):
            order += [str(entry[key]) for key in ("row", "label", "name") if entry.get(key) is not None][:1]
    return order


def build_tables(results: dict[str, Any]) -> list[Table]:
    """One :class:`Table` per setting, in the order settings first appear among the runs.

    A setting with Initial runs of its own shows those. Otherwise (the starting model evaluated once) it shows the
    Initial runs that belong to no setting with fine-tuned rows, or failing that every Initial run.
    """
    suites = suites_of(results)
    primary = primary_safety_suite(results, suites)
    runs = [run for run in results.get("runs") or [] if isinstance(run, dict)]
    settings: dict[str, dict[str, Any] | None] = {}
    trained = [run for run in runs if run.get("role") != "initial"]
    for run in trained or runs:  # only Initial runs so far: their settings still get tables
        name = _setting_name(run) or "all runs"
        settings.setdefault(name, run.get("setting") if isinstance(run.get("setting"), dict) else None)
    initial = [run for run in runs if run.get("role") == "initial"]
    shared_initial = [run for run in initial if (_setting_name(run) or "all runs") not in settings]
    config_rank = {label: i for i, label in enumerate(_config_order(results))}
    tables = []
    for name, setting in settings.items():
        mine = [run for run in runs if (_setting_name(run) or "all runs") == name]
        if not any(run.get("role") == "initial" for run in mine):
            # The starting model evaluated once: its run belongs to no setting, or to another one.
            mine = (shared_initial or initial) + mine
        # Columns: the suites this setting's fine-tuned rows were evaluated on (a borrowed Initial run may carry
        # another setting's task suite).
        evaluated = [run for run in mine if run.get("role") != "initial"] or mine
        rows: dict[str, Row] = {}
        for run in mine:
            label = str(run.get("row") or run.get("method") or "?")
            if label not in rows:
                rows[label] = Row(label, str(run.get("role") or "defence"), bool(run.get("selection")), [])
            rows[label].runs.append(run)
        first_seen = {label: i for i, label in enumerate(rows)}
        ordered = sorted(
            rows.values(),
            key=lambda row: (
                ROLE_ORDER.get(row.role, len(ROLE_ORDER)),
                config_rank.get(row.label, len(config_rank)),
                first_seen[row.label],
            ),
        )
        columns = [s for s in suites.values() if any(s.key in (run.get("metrics") or {}) for run in evaluated)]
        for row in ordered:
            row.cells = {suite.key: aggregate(row.runs, suite) for suite in columns}
        _mark_best(ordered, columns)
        table_primary = primary if primary is not None and primary in columns else None
        tables.append(Table(name, describe_setting(setting), columns, ordered, table_primary))
    return tables


def _mark_best(rows: Sequence[Row], suites: Sequence[Suite]) -> None:
    """Bold the best displayed value of each column with a direction; Initial rows do not compete."""
    for suite in suites:
        if suite.lower_is_better is None:
            continue
        shown = [(row, suite.rounded(row.cells[suite.key].value)) for row in rows if row.role != "initial"]
        shown = [(row, value) for row, value in shown if row.cells[suite.key].value is not None]
        if not shown:
            continue
        best = (min if suite.lower_is_better else max)(value for _, value in shown)
        for row, value in shown:
            row.cells[suite.key].best = value == best


# ---------------------------------------------------------------------------------------------------------------------
# Formatting


def format_value(value: float | None, suite: Suite) -> str:
    if value is None:
        return NONE
    return f"{100 * value:.1f}%" if suite.is_rate else f"{value:.3f}"


def format_cell(cell: Cell, suite: Suite) -> str:
    """``84.0% [75.6, 89.8]`` for a rate, ``1.093`` (or ``1.093 [1.05, 1.14]``) for a loss, an em dash if absent."""
    if cell.value is None:
        return NONE
    text = format_value(cell.value, suite)
    if cell.low is not None and cell.high is not None:
        if suite.is_rate:
            text += f" [{100 * cell.low:.1f}, {100 * cell.high:.1f}]"
        else:
            text += f" [{cell.low:.3f}, {cell.high:.3f}]"
    return text


def format_vs_sft(row: Row, suite: Suite | None) -> str:
    """``0.007 (3/15)``: p-value and discordant counts b (row worse) / c (row better), one per seed."""
    if row.role == "baseline":
        return "(reference)"
    tests = row.vs_sft(suite)
    if not tests:
        return NONE
    parts = []
    for _, entry in tests:
        counts = f" ({entry['b']}/{entry['c']})" if "b" in entry and "c" in entry else ""
        parts.append(format_p(float(entry["p_value"])) + counts)
    return "; ".join(parts)


def format_reduction(row: Row) -> str:
    if not row.selection:
        return ""
    shares = [run.get("reduction_share") for run in row.runs]
    values = [v for v in shares if _finite(v)]
    return f"{100 * float(np.mean(values)):.0f}%" if values else "n/a"


def format_minutes(seconds: float | None) -> str:
    return NONE if seconds is None else f"{seconds / 60:.1f}"


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _seed_label(seed: Any) -> str:
    return NONE if seed is None else str(seed)


def wall_totals(results: dict[str, Any]) -> dict[str, float]:
    """Seconds summed over the finished runs, per stage (train, eval, ...)."""
    totals: dict[str, float] = {}
    for run in results.get("runs") or []:
        for stage, seconds in (run.get("wall_seconds") or {}).items():
            if _finite(seconds):
                totals[str(stage)] = totals.get(str(stage), 0.0) + float(seconds)
    return totals


def header_facts(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, plain text) lines of the header: starting model, dates, machine, wall times, run status."""
    facts = []
    start = results.get("starting_model") or {}
    if start:
        facts.append(("starting model", f"{start.get('spec', '?')} (fingerprint {start.get('fingerprint', '?')})"))
        aligned_by = start.get("aligned_by") or {}
        if aligned_by:
            facts.append(
                (
                    "starting model made by",
                    f"tokensafe align (name {aligned_by.get('name')}, {aligned_by.get('samples')} samples, data "
                    f"fingerprint {aligned_by.get('data_fingerprint')}, base {aligned_by.get('base_fingerprint')}; "
                    "every setting in results.json)",
                )
            )
    dates = [f"{key} {results[key]}" for key in ("created", "updated") if results.get(key)]
    if dates:
        facts.append(("date", ", ".join(dates)))
    machine = results.get("machine") or {}
    if machine:
        facts.append(("machine", ", ".join(f"{key} {value}" for key, value in machine.items())))
    totals = wall_totals(results)
    if totals:
        wall = ", ".join(f"{stage} {format_duration(s)}" for stage, s in totals.items())
        facts.append(("wall time (sum over runs)", f"{wall}; total {format_duration(sum(totals.values()))}"))
    status = results.get("status") or {}
    if status:
        facts.append(("runs", ", ".join(f"{value} {key}" for key, value in status.items())))
    return facts


LEGEND = [
    "Cells: value with its 95% interval in brackets (rates: Wilson; gold-answer loss: mean nats per answer token, "
    "normal interval with the held-out rows as the sampling unit).",
    "Several seeds: the mean over seeds, with the Wilson interval of the pooled counts; per-seed values below.",
    "Bold: best value of the column (Initial, the model before fine-tuning, is not ranked). \u2193 lower is better,"
    " \u2191 higher is better.",
    "p vs SFT: exact McNemar test on the primary safety suite against the SFT run of the same seed, with"
    " (b/c) = prompts where the row is worse / better than SFT; one entry per seed.",
    "Share of reduction (selection rows): (ASR_SFT \u2212 ASR_row) / (ASR_SFT \u2212 ASR_Oracle); 100% = as good as"
    " removing every harmful sample.",
]


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def md_text(text: Any) -> str:
    """Dataset text inside a markdown table cell: escaped markup, no unsafe characters, no table syntax."""
    text = html.escape(visible(str(text)), quote=False).replace("\n", " ").replace("\r", " ")
    for char in "\\|*`":
        text = text.replace(char, "\\" + char)
    return text


def _columns(table: Table) -> list[str]:
    names = ["method", "seeds"] + [f"{suite.label}{suite.arrow}" for suite in table.suites]
    if table.primary is not None:
        names.append(f"p vs SFT ({table.primary.label})")
    if table.has_selection:
        names.append("share of reduction")
    names.append("train min")
    return names


def _row_texts(table: Table, row: Row) -> tuple[list[str], list[bool]]:
    """The plain (unescaped) cell texts of a row and which of them are bold."""
    texts = [row.label, str(len(row.runs))]
    bold = [False, False]
    for suite in table.suites:
        cell = row.cells[suite.key]
        texts.append(format_cell(cell, suite))
        bold.append(cell.best)
    if table.primary is not None:
        texts.append(format_vs_sft(row, table.primary))
        bold.append(False)
    if table.has_selection:
        texts.append(format_reduction(row))
        bold.append(False)
    texts.append(format_minutes(row.mean_wall("train")))
    bold.append(False)
    return texts, bold


def markdown_table(table: Table) -> str:
    columns = _columns(table)
    lines = ["| " + " | ".join(md_text(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in table.rows:
        texts, bold = _row_texts(table, row)
        cells = [f"**{md_text(t)}**" if b else md_text(t) for t, b in zip(texts, bold, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_seed_lines(table: Table) -> list[tuple[str, str]]:
    """(row label, "JBB ASR: 72.0 / 75.0; ...") for the rows with several seeds."""
    out = []
    for row in table.rows:
        if len(row.runs) < 2:
            continue
        parts = []
        for suite in table.suites:
            per_seed = row.cells[suite.key].per_seed
            if per_seed:
                values = " / ".join(format_value(v, suite) for _, v in per_seed)
                parts.append(f"{suite.label} {values}")
        seeds = ", ".join(_seed_label(s) for s in row.seeds)
        out.append((row.label, f"seeds {seeds}: " + "; ".join(parts)))
    return out


def verdict_markdown(table: Table) -> list[str]:
    """The "which defence wins" lines of a table: the summary sentence, the criteria and the verdict table."""
    judgements = judge_table(table)
    if not judgements:
        return []
    header, rows = verdict_cells(judgements, table)
    lines = [f"### Which defence wins ({md_text(table.setting)})", ""]
    lines += [md_text(summary_sentence(judgements, table.primary.label if table.primary else "ASR")), ""]
    lines += [f"> {md_text(CRITERIA)}", ""]
    lines += ["| " + " | ".join(md_text(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return lines + [""]


def verdict_html(table: Table) -> str:
    """The HTML of :func:`verdict_markdown`: summary, criteria, verdict table (winners shaded)."""
    judgements = judge_table(table)
    if not judgements:
        return ""
    header, rows = verdict_cells(judgements, table)
    sentence = summary_sentence(judgements, table.primary.label if table.primary else "ASR")
    head = "<tr>" + "".join(f"<th>{html_text(c)}</th>" for c in header) + "</tr>"
    body = "".join(
        f"<tr class='{'win' if j.wins else j.role}'>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>"
        for j, row in zip(judgements, rows, strict=True)
    )
    return (
        f"<h3>Which defence wins</h3><p><b>{html_text(sentence)}</b></p><p class='note'>{html_text(CRITERIA)}</p>"
        f"<div class='scroll'><table class='verdict'><thead>{head}</thead><tbody>{body}</tbody></table></div>"
    )


def markdown_report(results: dict[str, Any], tables: Sequence[Table], sweep: Sweep | None = None) -> str:
    """``results.md``; ``sweep``: the harmful-share view (:func:`tokensafe.experiment.sweep.find_sweep`), if any."""
    name = str(results.get("experiment") or "experiment")
    lines = [f"# Experiment `{md_text(name)}`", ""]
    lines += [f"- {key}: {md_text(value)}" for key, value in header_facts(results)]
    lines += ["", *[f"> {line}  " for line in LEGEND], ""]
    if not tables:
        lines += ["No finished runs yet.", ""]
    for table in tables:
        lines += [f"## {md_text(table.setting)}", ""]
        if table.description:
            lines += [md_text(table.description), ""]
        if table.primary is None:
            lines += ["(no safety suite in this setting: no McNemar column)", ""]
        lines += [markdown_table(table), ""]
        per_seed = _per_seed_lines(table)
        if per_seed:
            lines += ["Per-seed values:", ""]
            lines += [f"- {md_text(label)} ({md_text(text)})" for label, text in per_seed]
            lines.append("")
        lines += verdict_markdown(table)
    if sweep is not None:
        from tokensafe.experiment.sweep import sweep_markdown  # it builds on this module's types

        lines += sweep_markdown(sweep)
    lines += provenance_markdown(results, md_text)
    lines += ["![ASR vs utility](pareto.png)", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Pareto plot


def pareto_front(points: Sequence[tuple[float, float]], *, higher_y_better: bool) -> list[int]:
    """Indices of the non-dominated points (lower x better; y per ``higher_y_better``), sorted by x.

    A point is dominated when another is at least as good on both axes and strictly better on one.
    """
    sign = 1.0 if higher_y_better else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and sign * y2 >= sign * y) and (x2 < x or sign * y2 > sign * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def _mpl_text(text: str) -> str:
    """Row labels in the plot: visible characters, and ``$`` escaped so matplotlib does not start mathtext."""
    return visible(text).replace("$", r"\$")


def _utility_suites(table: Table) -> list[Suite]:
    """The plot's y axes: task accuracy (rates) before the gold-answer loss, at most two."""
    utility = [s for s in table.suites if s.kind == "utility" and s.lower_is_better is not None]
    return sorted(utility, key=lambda s: (not s.is_rate,))[:2]


def _label_at(ax: Any, x: float, y: float, text: str, colour: str, dx: float, dy: float) -> Any:
    """An annotation of the point (x, y) at (dx, dy) points from it, on a light box."""
    return ax.annotate(
        _mpl_text(text),
        (x, y),
        xytext=(dx, dy),
        textcoords="offset points",
        fontsize=8.5,
        color=colour,
        ha="left" if dx > 0 else "right" if dx < 0 else "center",
        va="bottom" if dy > 0 else "top",
        zorder=5,
        bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.7),
    )


def _least_colliding(
    attempts: Iterable[Callable[[], list[Any]]], collisions: Callable[[list[Any]], float]
) -> tuple[float, list[Any]]:
    """Draw each attempt in turn (a list of artists) and keep the first that collides with nothing, else the least
    colliding one; every other attempt's artists are removed again. Returns (collisions, artists)."""
    best: tuple[float, list[Any]] | None = None
    for attempt in attempts:
        artists = attempt()
        score = collisions(artists)
        if best is None or score < best[0]:
            for artist in best[1] if best is not None else []:
                artist.remove()
            best = (score, artists)
        else:
            for artist in artists:
                artist.remove()
        if score == 0:
            break
    assert best is not None
    return best


def _best_spot(
    ax: Any, renderer: Any, x: float, y: float, text: str, colour: str, avoid: list[Any], others: list[Any]
) -> tuple[float, Any, Any]:
    """(collisions, annotation, its box) of ``text`` at the first offset that collides with nothing: no placed box
    in ``avoid``, no point of ``others`` (display coordinates), inside the axes; else at the least colliding one."""
    offsets = [(6, 5), (6, -7), (-6, 5), (-6, -7), (0, 11), (0, -13), (9, 14), (-9, -16), (14, -2), (-14, -2)]
    frame = ax.get_window_extent(renderer)

    def collisions(artists: list[Any]) -> float:
        box = artists[0].get_window_extent(renderer)
        score = sum(box.overlaps(other) for other in avoid) + sum(box.contains(*point) for point in others)
        return score + (0 if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) else 3)

    attempts = (lambda dx=dx, dy=dy: [_label_at(ax, x, y, text, colour, dx, dy)] for dx, dy in offsets)
    score, (annotation,) = _least_colliding(attempts, collisions)
    return score, annotation, annotation.get_window_extent(renderer)


def _place_labels(ax: Any, renderer: Any, items: Sequence[tuple[float, float, str, str]]) -> list[tuple[str, str]]:
    """Label each point where its text collides with no other label or point; a point whose label fits nowhere (a
    crowded cluster) gets a number instead, explained in a key in the emptiest corner of the axes.

    A greedy search in display space (the layout must be final): no extra dependency. Returns the key's (number
    and label, colour) entries.
    """
    anchors = [ax.transData.transform((x, y)) for x, y, _, _ in items]
    placed: list[Any] = []
    keyed: list[tuple[str, str]] = []
    for (x, y, label, colour), anchor in zip(items, anchors, strict=True):
        others = [point for point in anchors if not np.allclose(point, anchor)]
        score, annotation, box = _best_spot(ax, renderer, x, y, label, colour, placed, others)
        if score > 0:
            annotation.remove()
            number = str(len(keyed) + 1)
            score, annotation, box = _best_spot(ax, renderer, x, y, number, colour, placed, others)
            keyed.append((f"{number}  {label}", colour))
        placed.append(box)
    if keyed:
        _draw_key(ax, renderer, keyed, anchors, placed)
    return keyed


def _draw_key(ax: Any, renderer: Any, keyed: list[tuple[str, str]], anchors: list[Any], placed: list[Any]) -> None:
    """The numbered labels' key, one coloured line each, in the corner of the axes it covers least."""
    corners = [(0.98, 0.98, "right", "top"), (0.02, 0.98, "left", "top"), (0.98, 0.02, "right", "bottom")]
    corners.append((0.02, 0.02, "left", "bottom"))

    def key_at(cx: float, cy: float, ha: str, va: str) -> list[Any]:
        lines = []
        for i, (text, colour) in enumerate(keyed):
            step = -i if va == "top" else len(keyed) - 1 - i
            lines.append(
                ax.annotate(
                    _mpl_text(text), (cx, cy), xycoords="axes fraction", xytext=(0, 11 * step),
                    textcoords="offset points", ha=ha, va=va, fontsize=8, color=colour, zorder=6,
                    bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none", alpha=0.85),
                )
            )  # fmt: skip
        return lines

    def collisions(lines: list[Any]) -> float:
        boxes = [line.get_window_extent(renderer) for line in lines]
        return sum(b.contains(*p) for b in boxes for p in anchors) + sum(b.overlaps(o) for b in boxes for o in placed)

    _least_colliding((lambda corner=corner: key_at(*corner) for corner in corners), collisions)


STYLES = {
    "initial": dict(marker="*", color="#6b7280", markersize=15),
    "baseline": dict(marker="s", color="#111111", markersize=9),
    "oracle": dict(marker="D", color="#15803d", markersize=8),
}
DEFENCE_COLOURS = [
    "#2563eb", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#854d0e", "#4f46e5", "#be123c",
    "#0d9488", "#a16207", "#7c3aed", "#c2410c",
]  # fmt: skip


def marker_kind(row: Row) -> str:
    """How the plot marks ``row``: its role's own style (initial, baseline, oracle), else a coloured circle, hollow
    for a data-selection method ("selection") and filled for any other defence ("defence")."""
    if row.role in STYLES:
        return row.role
    return "selection" if row.selection else "defence"


def legend_kinds(tables: Sequence[Table]) -> list[str]:
    """The plot's legend entries, in a fixed order, for the kinds of rows the tables hold (a legend that lists an
    oracle or a data-selection marker that no point uses only misleads): initial, baseline, oracle, defence,
    selection, and the Pareto front whenever there is a fine-tuned row."""
    kinds = set()
    for row in (row for table in tables for row in table.rows):
        kinds.add(marker_kind(row))
        if row.role != "initial":
            kinds.add("front")
    return [k for k in ("initial", "baseline", "oracle", "defence", "selection", "front") if k in kinds]


def pareto_png(tables: Sequence[Table]) -> bytes:
    """The ASR-vs-utility figure as PNG bytes: one row of panels per setting, one panel per utility suite."""
    # The object API with an explicit Agg canvas: no pyplot state, no global backend switch in the importer.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = max([len(_utility_suites(table)) for table in tables] + [1])
    nrows = max(1, len(tables))
    fig = Figure(figsize=(6.2 * ncols, 4.9 * nrows + 0.7), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    others = list(dict.fromkeys(row.label for table in tables for row in table.rows if row.role not in STYLES))
    colours = {label: DEFENCE_COLOURS[i % len(DEFENCE_COLOURS)] for i, label in enumerate(others)}
    labels: list[tuple[Any, list[tuple[float, float, str, str]]]] = []
    for r in range(nrows):
        table = tables[r] if tables else None
        utility = _utility_suites(table) if table is not None else []
        for c in range(ncols):
            ax = axes[r][c]
            if table is None or table.primary is None or (c == 0 and not utility):
                what = "no finished runs" if table is None else "no ASR or no utility suite to plot"
                ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="#555")
                ax.set_axis_off()
                if table is not None:
                    ax.set_title(_mpl_text(table.setting), fontsize=11)
                continue
            if c >= len(utility):
                ax.set_axis_off()
                continue
            labels.append((ax, _draw_panel(ax, table, utility[c], colours)))
    every = {
        "initial": Line2D([], [], linestyle="none", label="Initial (not fine-tuned)", **STYLES["initial"]),
        "baseline": Line2D([], [], linestyle="none", label="SFT", **STYLES["baseline"]),
        "oracle": Line2D([], [], linestyle="none", label="Oracle (harmful removed)", **STYLES["oracle"]),
        "defence": Line2D([], [], linestyle="none", marker="o", color="#2563eb", label="defence"),
        "selection": Line2D(
            [], [], linestyle="none", marker="o", color="#2563eb", markerfacecolor="white", label="data selection"
        ),
        "front": Line2D([], [], color="#9ca3af", linestyle="--", label="Pareto front (fine-tuned rows)"),
    }
    handles = [every[kind] for kind in legend_kinds(tables)]
    fig.legend(
        handles=handles, loc="outside upper center", ncols=6, fontsize=9, frameon=False, title_fontsize=10,
        title="ASR against utility: points are means over seeds, bars Wilson 95% intervals",
    )  # fmt: skip
    # Labels go where they collide least, which needs the final axes positions: lay out once, then freeze.
    canvas.draw()
    fig.set_layout_engine("none")
    renderer = canvas.get_renderer()
    for ax, items in labels:
        _place_labels(ax, renderer, items)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _draw_panel(ax: Any, table: Table, suite: Suite, colours: dict[str, str]) -> list[tuple[float, float, str, str]]:
    """One setting x utility panel; returns (x, y, label, colour) of each point for :func:`_place_labels`.

    The y range follows the fine-tuned rows: an Initial row far outside it (its loss on the task is much higher
    before fine-tuning) is drawn on the edge as an arrow head with its value, instead of squashing the others.
    """
    assert table.primary is not None
    primary = table.primary
    y_scale = 100.0 if suite.is_rate else 1.0
    points = []  # (row, x, y, xerr, yerr)
    for row in table.rows:
        cx, cy = row.cells[primary.key], row.cells[suite.key]
        if cx.value is None or cy.value is None:
            continue
        x, y = 100 * cx.value, y_scale * cy.value
        xerr = [[x - 100 * cx.low], [100 * cx.high - x]] if cx.low is not None and cx.high is not None else None
        yerr = (
            [[y - y_scale * cy.low], [y_scale * cy.high - y]] if cy.low is not None and cy.high is not None else None
        )
        points.append((row, x, y, xerr, yerr))
    trained = [p for p in points if p[0].role != "initial"]
    ys = [y + sign * (e[0 if sign < 0 else 1][0] if e else 0.0) for _, _, y, _, e in trained for sign in (-1, 1)]
    low, high = (min(ys), max(ys)) if ys else (None, None)
    span = max(high - low, 1e-3 * max(abs(high), 1.0), 2.0 if suite.is_rate else 0.02) if ys else None
    items = []
    for row, x, y, xerr, yerr in points:
        style = dict(STYLES.get(row.role, dict(marker="o", color=colours.get(row.label, "#2563eb"), markersize=7)))
        colour = style.pop("color")
        label = row.label
        if row.role == "initial" and span is not None and not (low - span <= y <= high + span):
            # Off scale: an arrow head on the edge of the fine-tuned rows' range, the value in the label.
            label = f"{row.label} ({format_value(y / y_scale, suite)}, off scale)"
            y = high + 0.35 * span if y > high else low - 0.35 * span
            style["marker"] = "^" if y > high else "v"
            yerr = None
        if marker_kind(row) == "selection":
            style["markerfacecolor"] = "white"  # hollow: a data-selection method
        ax.errorbar(
            x, y, xerr=xerr, yerr=yerr, color=colour, ecolor=colour, elinewidth=1, capsize=2.5, alpha=0.9,
            linestyle="none", zorder=3, **style,
        )  # fmt: skip
        items.append((x, y, label, colour))
    if not items:
        ax.text(0.5, 0.5, "no row has both numbers", ha="center", va="center", transform=ax.transAxes)
    higher = not suite.lower_is_better
    front_points = [(x, y) for _, x, y, _, _ in trained]
    front = pareto_front(front_points, higher_y_better=higher)
    if front:
        ax.step(
            [front_points[i][0] for i in front], [front_points[i][1] for i in front], where="post",
            color="#9ca3af", linestyle="--", linewidth=1.3, zorder=1,
        )  # fmt: skip
    ax.set_xlabel(f"{_mpl_text(primary.label)} (%), lower is better ←")
    unit = " (%)" if suite.is_rate else " (nats/token)"
    direction = "lower is better ↓" if suite.lower_is_better else "higher is better ↑"
    ax.set_ylabel(f"{_mpl_text(suite.label)}{unit}, {direction}")
    subtitle = f"\n{_mpl_text(table.description)}" if table.description else ""
    ax.set_title(f"{_mpl_text(table.setting)}{subtitle}", fontsize=10.5)
    ax.grid(True, color="#e5e7eb", linewidth=0.8, zorder=0)
    ax.margins(x=0.15, y=0.15)
    y_text, va, arrow = (0.97, "top", "\u2196") if higher else (0.03, "bottom", "\u2199")
    ax.text(0.02, y_text, f"{arrow} better", transform=ax.transAxes, va=va, ha="left", color="#15803d")
    return items


# ---------------------------------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 90em;
       padding: 0 1.5em; color: #111; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #e5e7eb; padding-bottom: 0.2em; }
.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1.2em; font-size: 0.92em; }
.facts dt { color: #555; } .facts dd { margin: 0; }
.legend { color: #444; font-size: 0.86em; background: #f9fafb; border: 1px solid #e5e7eb; border-radius: 6px;
          padding: 0.5em 1em; } .legend li { margin: 0.15em 0; }
.scroll { overflow-x: auto; }
table.results { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
table.results th, table.results td { border: 1px solid #e5e7eb; padding: 0.3em 0.6em; text-align: right;
                                     white-space: nowrap; }
table.results th { background: #f3f4f6; vertical-align: bottom; white-space: normal; min-width: 4em; }
table.results th.group { text-align: center; }
table.results td.label, table.results th.label { text-align: left; }
table.results td.best { font-weight: 700; background: #ecfdf5; }
table.results .ci { font-size: 0.85em; color: #555; }
table.results tr.initial td { color: #555; background: #fafafa; }
table.results tr.baseline td.label, table.results tr.oracle td.label { font-weight: 600; }
.desc { color: #555; margin: 0.2em 0; }
table.verdict { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
table.verdict th, table.verdict td { border: 1px solid #e5e7eb; padding: 0.3em 0.6em; text-align: left; }
table.verdict th { background: #f3f4f6; }
table.verdict tr.win td { background: #ecfdf5; font-weight: 600; }
table.verdict tr.oracle td { color: #555; background: #fafafa; }
table.provenance { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
table.provenance th, table.provenance td { border: 1px solid #e5e7eb; padding: 0.3em 0.6em; text-align: right; }
table.provenance th { background: #f3f4f6; }
table.provenance td:nth-child(-n+4) { text-align: left; }
.seeds { font-size: 0.82em; color: #444; } .seeds li { margin: 0.1em 0; }
img.plot { max-width: 100%; border: 1px solid #e5e7eb; }
table.tokens { border-collapse: collapse; font-size: 0.86em; }
table.tokens td, table.tokens th { padding: 0.15em 0.6em; border-bottom: 1px solid #f0f0f0; text-align: right; }
table.tokens td.tok { text-align: left; }
code.tok { white-space: pre; background: #eef2ff; border-radius: 3px; padding: 0 0.2em; }
.bar { display: inline-block; height: 0.8em; background: #6366f1; border-radius: 2px; vertical-align: middle; }
.sample { border: 1px solid #e5e7eb; border-radius: 6px; padding: 0.6em 1em; margin: 0.8em 0; }
.meta { color: #555; font-size: 0.85em; margin-bottom: 0.4em; }
.ranking { margin: 0.4em 0 0.6em 0; }
.response { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; white-space: pre-wrap; line-height: 1.8; }
.t { border-radius: 2px; }
.drop { text-decoration: line-through; text-decoration-thickness: 2px; }
.empty { color: #aaa; }
.key span { padding: 0 0.5em; margin-right: 0.4em; }
.note { color: #666; font-style: italic; }
"""
CSS += MARKER_CSS + "\n"


def html_table(table: Table) -> str:
    """The setting's table as HTML, with a header row that groups the suite columns by kind."""
    groups: list[tuple[str, int]] = []
    for suite in table.suites:
        title = KIND_TITLES.get(suite.kind, suite.kind)
        if groups and groups[-1][0] == title:
            groups[-1] = (title, groups[-1][1] + 1)
        else:
            groups.append((title, 1))
    columns = _columns(table)
    top = "<tr><th class='label' rowspan='2'>method</th><th rowspan='2'>seeds</th>"
    top += "".join(f"<th class='group' colspan='{span}'>{html_text(title)}</th>" for title, span in groups)
    top += "".join(f"<th rowspan='2'>{html_text(name)}</th>" for name in columns[2 + len(table.suites) :])
    second = "<tr>" + "".join(f"<th>{html_text(name)}</th>" for name in columns[2 : 2 + len(table.suites)]) + "</tr>"
    body = []
    for row in table.rows:
        texts, bold = _row_texts(table, row)
        cells = [f"<td class='label'>{html_text(texts[0])}</td>", f"<td>{html_text(texts[1])}</td>"]
        for i, suite in enumerate(table.suites):
            cell = row.cells[suite.key]
            tip = ""
            if len(cell.per_seed) > 1:
                seeds = ", ".join(f"seed {_seed_label(s)}: {format_value(v, suite)}" for s, v in cell.per_seed)
                tip = f" title='{html_text(seeds)}'"
            klass = " class='best'" if bold[2 + i] else ""
            # The interval on a second, smaller line: keeps a dozen suite columns within a laptop screen.
            value, _, interval = texts[2 + i].partition(" [")
            interval = f"<br><span class='ci'>[{html_text(interval)}</span>" if interval else ""
            cells.append(f"<td{klass}{tip}>{html_text(value)}{interval}</td>")
        # One McNemar entry per seed: one line each.
        cells += [
            f"<td>{'<br>'.join(map(html_text, text.split('; ')))}</td>" for text in texts[2 + len(table.suites) :]
        ]
        body.append(f"<tr class='{html_text(row.role)}'>" + "".join(cells) + "</tr>")
    head = f"<thead>{top}</tr>{second}</thead>"
    return f"<div class='scroll'><table class='results'>{head}<tbody>{''.join(body)}</tbody></table></div>"


def pact_tokens_html(tokens: Any, *, limit: int = 40) -> str:
    """The PACT safety tokens sorted by weight, each with a bar proportional to its weight."""
    entries = [t for t in tokens if isinstance(t, dict)] if isinstance(tokens, list) else []
    if not entries:
        return "<p class='note'>No PACT safety tokens in this experiment (no PACT row, or not recorded).</p>"
    entries = sorted(entries, key=lambda t: -(float(t["weight"]) if _finite(t.get("weight")) else -math.inf))
    weights = [float(t["weight"]) for t in entries if _finite(t.get("weight"))]
    top = max((abs(w) for w in weights), default=1.0) or 1.0
    # Tokens of S with weight exactly 0 (the official weighting clips at zero) go on one line: a bar-less table row
    # each would only push the weighted ones apart.
    zero = [t for t in entries if _zero_weight(t)]
    entries = [t for t in entries if not _zero_weight(t)]
    rows = []
    for entry in entries[:limit]:
        weight = entry.get("weight")
        bar = f"<span class='bar' style='width: {12 * abs(weight) / top:.2f}em'></span>" if _finite(weight) else ""
        rows.append(
            f"<tr><td class='tok'><code class='tok'>{html_text(str(entry.get('token', '')))}</code></td>"
            f"<td>{html_text(str(entry.get('id', '')))}</td>"
            f"<td>{html_text(f'{weight:.3f}' if _finite(weight) else str(weight))}</td><td class='tok'>{bar}</td></tr>"
        )
    more = f"<p class='note'>{len(entries) - limit} more not shown.</p>" if len(entries) > limit else ""
    if zero:
        codes = " ".join(f"<code class='tok'>{html_text(str(t.get('token', '')))}</code>" for t in zero)
        more += f"<p>{len(zero)} more with weight 0: {codes}</p>"
    return (
        f"<p>{len(entries) + len(zero)} tokens, by weight (highest first).</p><table class='tokens'><thead><tr>"
        "<th class='tok'>token</th><th>id</th><th>weight</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + more
    )


def _zero_weight(entry: dict[str, Any]) -> bool:
    return _finite(entry.get("weight")) and float(entry["weight"]) == 0.0


def pact_token_sets_html(artifacts: dict[str, Any]) -> str:
    """Every distinct safety-token set of the experiment's PACT-family rows, each under the rows that used it;
    results written before the sets were recorded show their one ``pact_safety_tokens`` list."""
    sets = [s for s in artifacts.get("pact_safety_token_sets") or [] if isinstance(s, dict) and s.get("tokens")]
    if not sets:
        return pact_tokens_html(artifacts.get("pact_safety_tokens"))
    parts = []
    for entry in sets:
        labels = ", ".join(str(label) for label in entry.get("labels") or [])
        runs = len(entry.get("runs") or [])
        parts.append(f"<h3>{html_text(labels)} <span class='note'>({runs} run{'s' if runs != 1 else ''})</span></h3>")
        parts.append(pact_tokens_html(entry["tokens"]))
    return "\n".join(parts)


def _token_items(sample: dict[str, Any]) -> list[TokenView]:
    """A recorded sample's tokens as :class:`TokenView` (the results file keeps the score only: the two losses
    behind it show as nan in the tooltip)."""
    tokens = [str(t) for t in sample.get("tokens") or []]
    scores = sample.get("scores") or []
    kept = sample.get("kept") or []
    items = []
    for j, text in enumerate(tokens):
        score = float(scores[j]) if j < len(scores) and _finite(scores[j]) else math.nan
        dropped = j < len(kept) and kept[j] is False
        items.append(TokenView(text, score, math.nan, math.nan, dropped))
    return items


def _samples(value: Any) -> list[dict[str, Any]]:
    return [s for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def _colour_scale(samples: Sequence[dict[str, Any]]) -> float:
    """|score| at which the colour saturates: the 98th percentile over every shown token (one scale per section, so
    two rankings of the same answer compare by colour)."""
    values = [abs(t.score) for s in samples for t in _token_items(s) if math.isfinite(t.score)]
    return float(np.quantile(values, 0.98)) if values else 1.0


def _toss_key(scale: float) -> str:
    return (
        "<p class='key'>score = l_U &minus; l_D (nats): "
        f"<span style='background: rgba({SAFE_RGB[0]},{SAFE_RGB[1]},{SAFE_RGB[2]},0.6)'>safe (&lt; 0)</span>"
        f"<span style='background: rgba({RISKY_RGB[0]},{RISKY_RGB[1]},{RISKY_RGB[2]},0.6)'>risky (&gt; 0)</span>"
        f"<span class='drop'>dropped</span> colour saturates at |score| = {scale:.2f}; hover a token for its score."
        "</p>"
    )


def _sample_kind(sample: dict[str, Any]) -> str:
    label = sample.get("is_harmful")
    return "harmful" if label is True else "benign" if label is False else "unlabelled"


def _sample_counts(items: Sequence[TokenView]) -> str:
    scored = [t.score for t in items if math.isfinite(t.score)]
    mean = f"{np.mean(scored):+.3f}" if scored else NONE
    return f"mean score {mean} &middot; dropped {sum(t.dropped for t in items)}/{len(items)}"


def _sample_html(sample: dict[str, Any], scale: float) -> str:
    items = _token_items(sample)
    meta = (
        f"{html_text(str(sample.get('sample_id', '?')))} &middot; {_sample_kind(sample)} &middot; "
        f"{_sample_counts(items)}"
    )
    tokens_html = "".join(token_html(t, scale) for t in items)
    return f"<div class='sample'><div class='meta'>{meta}</div><div class='response'>{tokens_html}</div></div>"


def toss_view_html(samples: Any) -> str:
    """The TOSS token-risk view of one run's recorded samples, tokens rendered by :mod:`tokensafe.toss.view`."""
    entries = _samples(samples)
    if not entries:
        return "<p class='note'>No TOSS token view in this experiment (no TOSS row, or not recorded).</p>"
    scale = _colour_scale(entries)
    return "\n".join([_toss_key(scale), *(_sample_html(sample, scale) for sample in entries)])


def _side_by_side_html(views: Sequence[dict[str, Any]], scale: float) -> list[str]:
    """Each comparison sample once, with one line per TOSS row: which tokens that row's ranking drops."""
    order: list[str] = []
    by_sample: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for view in views:
        for sample in _samples(view.get("samples")):
            if sample.get("picked") != "compare":
                continue
            sample_id = str(sample.get("sample_id", "?"))
            if sample_id not in by_sample:
                order.append(sample_id)
            by_sample.setdefault(sample_id, []).append((str(view.get("label", "?")), sample))
    parts = []
    for sample_id in order:
        rows = by_sample[sample_id]
        lines = []
        for label, sample in rows:
            items = _token_items(sample)
            tokens_html = "".join(token_html(t, scale) for t in items)
            lines.append(
                f"<div class='ranking'><div class='meta'><b>{html_text(label)}</b> &middot; {_sample_counts(items)}"
                f"</div><div class='response'>{tokens_html}</div></div>"
            )
        parts.append(
            f"<div class='sample'><div class='meta'>{html_text(sample_id)} &middot; {_sample_kind(rows[0][1])}</div>"
            + "".join(lines)
            + "</div>"
        )
    return parts


def toss_views_html(views: Any) -> str:
    """Every TOSS-family row's token-risk view (``artifacts.toss_token_views``), by setting: the same first samples
    of the fine-tuning set under each row's ranking side by side, then each row's riskiest samples."""
    entries = [v for v in views if isinstance(v, dict)] if isinstance(views, list) else []
    settings: dict[str, list[dict[str, Any]]] = {}
    for view in entries:
        settings.setdefault(str(view.get("setting") or ""), []).append(view)
    parts = []
    for setting, group in settings.items():
        scale = _colour_scale([s for v in group for s in _samples(v.get("samples"))])
        if len(settings) > 1 or setting:
            parts.append(f"<h3>{html_text(setting)}</h3>")
        parts.append(_toss_key(scale))
        side = _side_by_side_html(group, scale)
        if side:
            labels = ", ".join(str(v.get("label", "?")) for v in group)
            parts.append(
                "<p class='desc'>The first samples of the fine-tuning set under each TOSS row's ranking "
                f"({html_text(labels)}): struck-through tokens are the ones that row leaves out of the loss.</p>"
            )
            parts += side
        for view in group:
            riskiest = [s for s in _samples(view.get("samples")) if s.get("picked") != "compare"]
            if riskiest:
                samples_html = "".join(_sample_html(s, scale) for s in riskiest)
                parts.append(
                    f"<details class='seeds'><summary>{html_text(str(view.get('label', '?')))}: its riskiest samples "
                    f"by mean score</summary>{samples_html}</details>"
                )
    return "\n".join(parts)


def html_report(
    results: dict[str, Any], tables: Sequence[Table], png: bytes, sweep: tuple[Sweep, bytes] | None = None
) -> str:
    """The self-contained page; ``sweep``: the harmful-share view and its figure (:mod:`tokensafe.experiment.sweep`),
    when the settings form one."""
    name = str(results.get("experiment") or "experiment")
    start = results.get("starting_model") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html_text(name)}: tokensafe experiment</title><style>{CSS}</style></head><body>",
        f"<h1>Experiment {html_text(name)}</h1>",
    ]
    if start:
        parts.append(
            f"<p>Starting model <b>{html_text(str(start.get('spec', '?')))}</b>, fingerprint "
            f"<code>{html_text(str(start.get('fingerprint', '?')))}</code>.</p>"
        )
    facts = "".join(
        f"<dt>{html_text(k)}</dt><dd>{html_text(v)}</dd>" for k, v in header_facts(results) if k != "starting model"
    )
    parts.append(f"<dl class='facts'>{facts}</dl>")
    parts.append("<ul class='legend'>" + "".join(f"<li>{html_text(line)}</li>" for line in LEGEND) + "</ul>")
    if not tables:
        parts.append("<p class='note'>No finished runs yet.</p>")
    for table in tables:
        parts.append(f"<h2>{html_text(table.setting)}</h2>")
        if table.description:
            parts.append(f"<p class='desc'>{html_text(table.description)}</p>")
        parts.append(html_table(table))
        per_seed = _per_seed_lines(table)
        if per_seed:
            items = "".join(f"<li><b>{html_text(label)}</b>: {html_text(text)}</li>" for label, text in per_seed)
            parts.append(f"<details class='seeds'><summary>per-seed values</summary><ul>{items}</ul></details>")
        parts.append(verdict_html(table))
    data = base64.b64encode(png).decode("ascii")
    parts += [
        "<h2>ASR against utility</h2>",
        "<p class='desc'>One point per method row (mean over seeds) with Wilson 95% bars. Star: Initial (not "
        "fine-tuned); black square: SFT; green diamond: Oracle (harmful samples removed); hollow circles: "
        "data-selection methods. The dashed step line is the Pareto front of the fine-tuned rows.</p>",
        f"<img class='plot' alt='ASR against utility per setting' src='data:image/png;base64,{data}'>",
    ]
    if sweep is not None:
        from tokensafe.experiment.sweep import sweep_html

        parts.append(sweep_html(*sweep))
    parts.append(provenance_html(results))
    artifacts = results.get("artifacts") or {}
    parts += ["<h2>PACT safety tokens</h2>", pact_token_sets_html(artifacts)]
    views = artifacts.get("toss_token_views")
    toss_html = toss_views_html(views) if views else toss_view_html(artifacts.get("toss_token_view"))
    parts += ["<h2>TOSS token-risk view</h2>", toss_html]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Entry points


def write_reports(results_dir: Path) -> dict[str, Path]:
    """Write ``results.md``, ``pareto.png`` and ``report.html`` next to ``results_dir/results.json``.

    Returns the paths by kind: ``{"markdown", "png", "html"}``, plus ``"sweep_png"`` (``sweep.png``) when the
    settings form a harmful-share sweep (:mod:`tokensafe.experiment.sweep`). Each file is written atomically.
    """
    from tokensafe.experiment.sweep import find_sweep, sweep_png

    results_dir = Path(results_dir)
    results = load_results(results_dir)
    tables = build_tables(results)
    png = pareto_png(tables)
    sweep = find_sweep(tables)
    sweep_view = (sweep, sweep_png(sweep)) if sweep is not None else None
    paths = {
        "markdown": write_text(results_dir / "results.md", markdown_report(results, tables, sweep)),
        "png": write_bytes(results_dir / "pareto.png", png),
        "html": write_text(results_dir / "report.html", html_report(results, tables, png, sweep_view)),
    }
    if sweep_view is not None:
        paths["sweep_png"] = write_bytes(results_dir / "sweep.png", sweep_view[1])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rewrite the reports of an experiment from its results.json.")
    parser.add_argument("results_dir", type=Path, help="results/<experiment> (holds results.json)")
    args = parser.parse_args(argv)
    for kind, path in write_reports(args.results_dir).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
