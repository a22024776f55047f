"""What each data-selection run dropped, read against the mixture's provenance (analysis only).

No selection reads ``is_harmful``; after a selection run has trained, the worker compares what it dropped with which
samples of the mixture were harmful, so the report can say *why* a selection row scored as it did (TOSS with the
paper's raw per-token ranking separates harmful tokens weakly and drops few harmful samples whole; the smoothed
ranking and sample-level selection by score drop most of them). Computed by the worker, which has the run's scores
and model directory (they live under ``runs/`` and may vanish with the machine), and kept in the run's row under
``provenance``; the report reads only ``results.json``.

A row's ``provenance`` (rates are shares in [0, 1]; AUCs: 0.5 = no separation, 1 = every harmful item ranked
above every benign one)::

    level                      "token" (TOSS, TOSS + PACT) or "sample" (sample-level random / by score)
    token_auc                  ROC-AUC of the raw per-token score s = l_U - l_D for "token is in a harmful sample"
    ranking_auc                the same for the ranking the run dropped by (smoothed scores when toss_smooth > 0)
    sample_auc                 ROC-AUC of a sample's mean token score for "sample is harmful"
    harmful_tokens_dropped     share of the harmful samples' answer tokens dropped (token level)
    harmful_first_dropped      [k, n]: harmful samples whose first answer token is dropped, where a compliance
                               opener ("Sure, here is") starts (token level; an answer that keeps it still teaches it)
    benign_tokens_dropped      share of the benign samples' answer tokens dropped (token level)
    harmful_samples_dropped    [k, n]: harmful samples dropped whole (token level: every answer token dropped)
    benign_samples_touched     [k, n]: benign samples that lost at least one token (sample level: dropped whole)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokensafe.display import html_text

if TYPE_CHECKING:
    from tokensafe.experiment.plan import RunPlan

TOKEN_METHODS = ("toss", "toss_pact")
SAMPLE_METHODS = ("sample_score", "sample_random")
SAMPLE_RECORD = "sample_selection.json"  # written by tokensafe.baselines.sample_selection.drop_samples

# (key, column title, how the value prints)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("token_auc", "token AUC (raw score)", "auc"),
    ("ranking_auc", "AUC of the ranking used", "auc"),
    ("sample_auc", "sample AUC (mean score)", "auc"),
    ("harmful_tokens_dropped", "harmful tokens dropped", "share"),
    ("harmful_first_dropped", "harmful answers' first token dropped", "count"),
    ("benign_tokens_dropped", "benign tokens dropped", "share"),
    ("harmful_samples_dropped", "harmful samples dropped whole", "count"),
    ("benign_samples_touched", "benign samples touched", "count"),
)
NOTE = (
    "Analysis only: no selection reads the provenance. Token level (TOSS): a harmful answer that keeps its first "
    'token keeps the start of its compliance (such as "Sure, here is"); a harmful sample counts as dropped whole '
    "when every answer token of it is dropped; a benign sample is touched when it loses at least one token. "
    "Sample level: samples are dropped whole. AUC 0.5 = no separation of harmful from benign, 1 = perfect. "
    "\u2014: not applicable, or not recorded (a run analysed before the column existed whose TOSS caches are gone)."
)
EM_DASH = "\u2014"


def _fraction(text: str) -> list[int]:
    """``"24/30"`` (the form :func:`tokensafe.toss.analysis.provenance_report` writes) -> ``[24, 30]``."""
    k, n = str(text).split("/")
    return [int(k), int(n)]


def _rounded(value: Any) -> float | None:
    return None if value is None or value != value else round(float(value), 4)  # NaN (no such tokens) -> None


def summarise_token_report(report: dict[str, Any]) -> dict[str, Any]:
    """The row's ``provenance`` from a :func:`tokensafe.toss.analysis.provenance_report` of the run's selection."""
    ranking = report.get("token_auc_smoothed", report.get("token_auc"))
    return {
        "level": "token",
        "token_auc": _rounded(report.get("token_auc")),
        "ranking_auc": _rounded(ranking),
        "sample_auc": _rounded(report.get("sample_auc_mean_score")),
        "harmful_tokens_dropped": _rounded(report.get("harmful_tokens_dropped")),
        "harmful_first_dropped": _fraction(report["harmful_first_token_dropped"]),
        "benign_tokens_dropped": _rounded(report.get("benign_tokens_dropped")),
        "harmful_samples_dropped": _fraction(report["harmful_samples_fully_dropped"]),
        "benign_samples_touched": _fraction(report["benign_samples_touched"]),
    }


def summarise_sample_record(record: dict[str, Any], scores_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row's ``provenance`` from a sample-level run's ``sample_selection.json`` (and, for ``sample_score``, the
    provenance report of the scores it ranked by)."""
    harmful, samples = int(record["harmful"]), int(record["samples"])
    dropped, dropped_harmful = int(record["dropped"]), int(record["dropped_harmful"])
    scores_report = scores_report or {}
    return {
        "level": "sample",
        "token_auc": _rounded(scores_report.get("token_auc")),
        "ranking_auc": _rounded(scores_report.get("sample_auc_mean_score")),
        "sample_auc": _rounded(scores_report.get("sample_auc_mean_score")),
        "harmful_tokens_dropped": None,
        "harmful_first_dropped": None,
        "benign_tokens_dropped": None,
        "harmful_samples_dropped": [dropped_harmful, harmful],
        "benign_samples_touched": [dropped - dropped_harmful, samples - harmful],
    }


def load_scored_selection(plan: RunPlan, *, with_selection: bool = True) -> tuple[Any, Any, Any, Any]:
    """(tokenised fine-tuning set, its TOSS scores, the run's selection or None, tokenizer) of a scored run, checked
    against the set's fingerprint (also the report's token-risk view reads them this way)."""
    from tokensafe.toss.commands import TossConfig, finetune_set
    from tokensafe.toss.select import select_with_args
    from tokensafe.toss.store import TokenScores
    from tokensafe.train import TrainConfig

    assert plan.toss is not None and plan.train is not None
    _, dataset, stats, tokenizer = finetune_set(TossConfig(**plan.toss))
    scores = TokenScores.load(plan.train["scores"], fingerprint=stats.fingerprint)
    selection = select_with_args(scores, TrainConfig(**plan.train)) if with_selection else None
    return dataset, scores, selection, tokenizer


def _scores_report(plan: RunPlan, *, with_selection: bool) -> dict[str, Any]:
    """:func:`provenance_report` of the run's scores (and, ``with_selection``, of the tokens its selection drops)."""
    import numpy as np

    from tokensafe.toss.analysis import provenance_report

    dataset, scores, selection, _ = load_scored_selection(plan, with_selection=with_selection)
    return provenance_report(np.asarray(dataset["is_harmful"], dtype=bool), scores, selection)


def run_provenance(plan: RunPlan) -> dict[str, Any] | None:
    """The finished run's ``provenance`` (see the module docstring), or None for a run that selects nothing."""
    if plan.train is None:
        return None
    if plan.method in TOKEN_METHODS and plan.toss is not None:
        return summarise_token_report(_scores_report(plan, with_selection=True))
    if plan.method in SAMPLE_METHODS:
        path = Path(plan.train["output_dir"]) / SAMPLE_RECORD
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        scored = plan.method == "sample_score" and plan.toss is not None
        return summarise_sample_record(record, _scores_report(plan, with_selection=False) if scored else None)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The report section


def _cell(value: Any, how: str) -> str:
    if value is None:
        return EM_DASH
    if how == "auc":
        return f"{float(value):.3f}"
    if how == "share":
        return f"{100 * float(value):.1f}%"
    k, n = value
    return f"{k}/{n}"


def provenance_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the section: one row per finished run with a ``provenance`` (matrix order)."""
    header = ["setting", "row", "seed", "level", *(title for _, title, _ in COLUMNS)]
    rows = []
    for run in results.get("runs") or []:
        found = run.get("provenance")
        if not found:
            continue
        setting = (run.get("setting") or {}).get("name", EM_DASH)
        cells = [_cell(found.get(key), how) for key, _, how in COLUMNS]
        rows.append([str(setting), str(run.get("row", run.get("id"))), str(run.get("seed")), found["level"], *cells])
    return header, rows


def provenance_markdown(results: dict[str, Any], escape: Any) -> list[str]:
    """The section's markdown lines (empty when no run has a provenance); ``escape`` makes text table-safe."""
    header, rows = provenance_table(results)
    if not rows:
        return []
    lines = ["## What the selection dropped (provenance)", "", escape(NOTE), ""]
    lines.append("| " + " | ".join(escape(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def provenance_html(results: dict[str, Any]) -> str:
    """The section as HTML ("" when no run has a provenance)."""
    header, rows = provenance_table(results)
    if not rows:
        return ""
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        "<h2>What the selection dropped (provenance)</h2>"
        f"<p class='desc'>{html_text(NOTE)}</p>"
        f"<table class='provenance'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
