"""The poison-share view of an experiment whose settings differ only in their harmful share.

A sweep (``poison_sweep``: the same task rows with 0, 5, 10 and 20% harmful samples) answers "how does each defence
hold up as the poison grows", which the per-setting tables and Pareto panels only show by flipping between them.
This module finds such a sweep among the tables of :func:`tokensafe.experiment.report.build_tables` and renders it:
one table per suite with a column per share (markdown and HTML), and ``sweep.png`` with a line per method across
the shares (Wilson 95% bars) for the primary safety suite and the task-utility suites. An experiment with one
setting, or with settings that differ in anything else (task, row count, harmful source), has no sweep view.

The cells are the per-setting tables' own cells (mean over seeds, same intervals), so the two views cannot disagree.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokensafe.display import html_text
from tokensafe.experiment.report import (
    DEFENCE_COLOURS,
    STYLES,
    Cell,
    Row,
    Suite,
    Table,
    _mpl_text,
    _utility_suites,
    format_cell,
    md_text,
)

SHARE_KEY = "harmful_share"
IGNORED_KEYS = ("name", SHARE_KEY)  # what may differ between the settings of one sweep


@dataclass
class Sweep:
    """The tables of a sweep, ordered by harmful share, and the rows that appear in any of them."""

    shares: list[float]  # harmful share per table, ascending
    tables: list[Table]
    first_rows: dict[str, Row]  # label -> its row in the first table that has it (role, selection), first-seen order

    @property
    def labels(self) -> list[str]:
        """Row labels in first-seen order (Initial, SFT, Oracle, then the defences)."""
        return list(self.first_rows)

    def cell(self, label: str, table: Table, suite: Suite) -> Cell:
        """``label``'s cell for ``suite`` in ``table`` (empty when the row or the column is missing there)."""
        row = next((row for row in table.rows if row.label == label), None)
        return row.cells.get(suite.key, Cell()) if row is not None else Cell()

    @property
    def suites(self) -> list[Suite]:
        """Every column of any of the tables, in the first table's order, then the others' extra columns."""
        seen: dict[str, Suite] = {}
        for table in self.tables:
            for suite in table.suites:
                seen.setdefault(suite.key, suite)
        return list(seen.values())

    @property
    def primary(self) -> Suite | None:
        return next((table.primary for table in self.tables if table.primary is not None), None)


def _setting_of(table: Table) -> dict[str, Any] | None:
    """The setting dict the table's fine-tuned runs were trained on (an Initial run may belong to no setting)."""
    for row in table.rows:
        for run in row.runs:
            if row.role != "initial" and isinstance(run.get("setting"), dict):
                return run["setting"]
    return None


def find_sweep(tables: Sequence[Table]) -> Sweep | None:
    """The sweep the tables form, or None: at least two settings, each with a finite harmful share, all shares
    different, and every other setting field (task, row count, harmful source, ...) the same."""
    keyed = []
    for table in tables:
        setting = _setting_of(table)
        share = setting.get(SHARE_KEY) if setting is not None else None
        if setting is None or not isinstance(share, int | float) or not math.isfinite(share):
            return None
        rest = {k: v for k, v in setting.items() if k not in IGNORED_KEYS}
        keyed.append((float(share), rest, table))
    shares = [share for share, _, _ in keyed]
    if len(keyed) < 2 or len(set(shares)) != len(shares) or any(rest != keyed[0][1] for _, rest, _ in keyed):
        return None
    keyed.sort(key=lambda item: item[0])
    first_rows: dict[str, Row] = {}
    for _, _, table in keyed:
        for row in table.rows:
            first_rows.setdefault(row.label, row)
    return Sweep([s for s, _, _ in keyed], [t for _, _, t in keyed], first_rows)


def share_text(share: float) -> str:
    return f"{100 * share:g}%"


def _grid(sweep: Sweep, suite: Suite) -> list[tuple[str, list[str]]]:
    """(row label, cell texts per share) for the rows with a value for ``suite`` at some share."""
    out = []
    for label in sweep.labels:
        cells = [sweep.cell(label, table, suite) for table in sweep.tables]
        if any(cell.value is not None for cell in cells):
            out.append((label, [format_cell(cell, suite) for cell in cells]))  # an em dash where a share lacks it
    return out


def sweep_markdown(sweep: Sweep) -> list[str]:
    """``## By harmful share``: one table per suite, a row per method and a column per share."""
    lines = [
        "## By harmful share",
        "",
        "The same numbers as the per-setting tables above, one table per suite with a column per harmful share.",
        "",
    ]
    for suite in sweep.suites:
        grid = _grid(sweep, suite)
        if not grid:
            continue
        lines += [f"### {md_text(suite.label)}{suite.arrow}", ""]
        lines.append("| method | " + " | ".join(share_text(s) for s in sweep.shares) + " |")
        lines.append("|---|" + "---|" * len(sweep.shares))
        lines += [f"| {md_text(label)} | " + " | ".join(texts) + " |" for label, texts in grid]
        lines.append("")
    lines += ["![metrics against harmful share](sweep.png)", ""]
    return lines


def sweep_html(sweep: Sweep, png: bytes) -> str:
    """The HTML section: the figure, then one table per suite."""
    import base64

    data = base64.b64encode(png).decode("ascii")
    parts = [
        "<h2>By harmful share</h2>",
        "<p class='desc'>The same numbers as the per-setting tables, one line per method across the harmful shares "
        "(Wilson 95% bars; points of one share are spread sideways so the bars do not hide each other).</p>",
        f"<img class='plot' alt='metrics against harmful share' src='data:image/png;base64,{data}'>",
    ]
    for suite in sweep.suites:
        grid = _grid(sweep, suite)
        if not grid:
            continue
        head = "".join(f"<th>{html_text(share_text(s))}</th>" for s in sweep.shares)
        body = "".join(
            f"<tr><td class='label'>{html_text(label)}</td>"
            + "".join(f"<td>{html_text(text)}</td>" for text in texts)
            + "</tr>"
            for label, texts in grid
        )
        parts.append(f"<h3>{html_text(suite.label + suite.arrow)}</h3>")
        parts.append(
            "<div class='scroll'><table class='results'><thead><tr><th class='label'>method</th>"
            f"{head}</tr></thead><tbody>{body}</tbody></table></div>"
        )
    return "\n".join(parts)


def _panel_suites(sweep: Sweep) -> list[Suite]:
    """The figure's panels: the primary safety suite, then the task-utility suites (at most two)."""
    panels = [sweep.primary] if sweep.primary is not None else []
    utility: dict[str, Suite] = {}
    for table in sweep.tables:
        for suite in _utility_suites(table):
            utility.setdefault(suite.key, suite)
    return panels + list(utility.values())[:2]


def sweep_png(sweep: Sweep) -> bytes:
    """The figure as PNG bytes: one panel per suite of :func:`_panel_suites`, x = harmful share (%)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    suites = _panel_suites(sweep)
    fig = Figure(figsize=(6.4 * max(len(suites), 1), 5.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(suites), 1), squeeze=False)[0]
    roles = {label: row.role for label, row in sweep.first_rows.items()}
    others = [label for label in sweep.labels if roles[label] not in STYLES]
    colours = {label: DEFENCE_COLOURS[i % len(DEFENCE_COLOURS)] for i, label in enumerate(others)}
    x_shares = [100 * s for s in sweep.shares]
    gap = min(b - a for a, b in zip(x_shares, x_shares[1:], strict=False)) if len(x_shares) > 1 else 1.0
    plotted = [label for label in sweep.labels if roles[label] != "initial"]
    # Spread the lines of one share over a third of the smallest gap, so their bars stay apart.
    offsets = {label: (i - (len(plotted) - 1) / 2) * gap / 3 / max(len(plotted), 1) for i, label in enumerate(plotted)}
    if not suites:
        axes[0].text(0.5, 0.5, "no suite to plot", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, suite in zip(axes, suites, strict=False):
        scale = 100.0 if suite.is_rate else 1.0
        for label in sweep.labels:
            cells = [sweep.cell(label, table, suite) for table in sweep.tables]
            points = [(x, c) for x, c in zip(x_shares, cells, strict=True) if c.value is not None]
            if not points:
                continue
            role = roles[label]
            if role == "initial":  # not fine-tuned: one value, the same at every share
                ax.axhline(scale * points[0][1].value, color=STYLES["initial"]["color"], linestyle=":", linewidth=1.5,
                           label=_mpl_text(f"{label} (not fine-tuned)"))  # fmt: skip
                continue
            style: dict[str, Any]
            if role in STYLES:
                style = dict(STYLES[role], markersize=7)
            else:
                colour = colours[label]
                face = "white" if sweep.first_rows[label].selection else colour
                style = dict(marker="o", color=colour, markerfacecolor=face, markersize=6)
            xs = [x + offsets[label] for x, _ in points]
            ys = [scale * c.value for _, c in points]  # type: ignore[operator]
            errs = [
                [y - scale * c.low if c.low is not None else 0.0 for y, (_, c) in zip(ys, points, strict=True)],
                [scale * c.high - y if c.high is not None else 0.0 for y, (_, c) in zip(ys, points, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=errs, capsize=2.5, linewidth=1.4, elinewidth=0.9, label=_mpl_text(label), **style)
        ax.set_xticks(x_shares, [share_text(s) for s in sweep.shares])
        ax.set_xlabel("harmful share of the fine-tuning set")
        ax.set_ylabel(_mpl_text(suite.label + (" (%)" if suite.is_rate else "")) + suite.arrow)
        ax.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right center", fontsize=9, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
