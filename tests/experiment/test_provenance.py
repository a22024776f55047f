"""The experiment's provenance section: what a selection run dropped, against which samples were harmful."""

from __future__ import annotations

import numpy as np
import pytest

from tokensafe.experiment.provenance import (
    provenance_html,
    provenance_markdown,
    provenance_table,
    summarise_sample_record,
    summarise_token_report,
)
from tokensafe.experiment.report import md_text
from tokensafe.toss.analysis import provenance_report
from tokensafe.toss.select import select_tokens
from tokensafe.toss.store import TokenScores


def _scores() -> tuple[TokenScores, np.ndarray]:
    """4 samples of 3 tokens; samples 0 and 2 harmful. Scores (l_U, with l_D = 0) chosen so that a global top-4
    drop takes every token of sample 0, one of sample 2 and two of sample 1 (a benign one)."""
    loss_u = np.array([9, 8, 7, 6, 5, 0, 4, 0, 0, 0, 0, 0], dtype=np.float32)
    offsets = np.array([0, 3, 6, 9, 12])
    scores = TokenScores(offsets, np.tile([1, 2, 3], 4), loss_u, np.zeros(12, np.float32), "fp", "digest")
    return scores, np.array([True, False, True, False])


def test_token_summary_counts_what_the_selection_dropped():
    scores, harmful = _scores()
    selection = select_tokens(scores, "global", 4 / 12)
    assert selection.drop.nonzero()[0].tolist() == [0, 1, 2, 3]  # the fixture's premise
    summary = summarise_token_report(provenance_report(harmful, scores, selection))
    assert summary["level"] == "token"
    # Harmful tokens: samples 0 and 2 = 6 tokens, 3 dropped; benign: 6 tokens, 1 dropped (token 3 of sample 1).
    assert summary["harmful_tokens_dropped"] == pytest.approx(3 / 6)
    assert summary["benign_tokens_dropped"] == pytest.approx(1 / 6, abs=1e-4)
    assert summary["harmful_samples_dropped"] == [1, 2]  # sample 0 whole; sample 2 kept two tokens
    assert summary["benign_samples_touched"] == [1, 2]
    # Token AUC by hand: harmful scores {9,8,7,4,0,0}, benign {6,5,0,0,0,0}; P(h > b) + 0.5 P(h = b).
    h, b = np.array([9, 8, 7, 4, 0, 0]), np.array([6, 5, 0, 0, 0, 0])
    auc = ((h[:, None] > b[None, :]).sum() + 0.5 * (h[:, None] == b[None, :]).sum()) / (h.size * b.size)
    assert summary["token_auc"] == pytest.approx(auc, abs=1e-4)
    assert summary["ranking_auc"] == summary["token_auc"]  # no smoothing: the ranking is the raw score
    # Sample means 8, 11/3, 4/3, 0: both harmful means above both benign ones but 11/3 > 4/3 -> 3 of 4 pairs.
    assert summary["sample_auc"] == pytest.approx(0.75)


def test_token_summary_says_where_in_the_harmful_answers_the_drops_fall():
    # Three samples of 8 answer tokens; 0 and 2 harmful. A global top-4 drop takes tokens 0, 1, 2 and 6 of sample 0:
    # sample 0 loses its first token, sample 2 keeps its own.
    loss_u = np.array([9, 8, 7, 0, 0, 0, 6, 0] + [1] * 8 + [0] * 8, dtype=np.float32)
    scores = TokenScores(np.array([0, 8, 16, 24]), np.tile(np.arange(3, 11), 3), loss_u, np.zeros(24), "f", "d")
    selection = select_tokens(scores, "global", 4 / 24)
    assert selection.drop.nonzero()[0].tolist() == [0, 1, 2, 6]  # the fixture's premise
    report = provenance_report(np.array([True, False, True]), scores, selection)
    # Harmful positions 0-4: 10 tokens, 3 dropped; 5-7: 6 tokens, 1 dropped; none at 20+.
    assert report["harmful_dropped_by_position"] == {"0-4": 0.3, "5-19": pytest.approx(1 / 6, abs=1e-4), "20+": None}
    assert report["harmful_first_token_dropped"] == "1/2"
    summary = summarise_token_report(report)
    assert summary["harmful_first_dropped"] == [1, 2] and summary["harmful_tokens_dropped"] == 4 / 16


def test_token_summary_reports_the_smoothed_ranking_separately():
    scores, harmful = _scores()
    selection = select_tokens(scores, "global", 4 / 12, smooth=2)
    report = provenance_report(harmful, scores, selection)
    summary = summarise_token_report(report)
    assert summary["ranking_auc"] == pytest.approx(report["token_auc_smoothed"], abs=1e-4)
    assert summary["token_auc"] == pytest.approx(report["token_auc"], abs=1e-4)


def test_sample_summary_splits_dropped_samples_by_provenance():
    record = {"method": "sample_random", "samples": 300, "dropped": 60, "dropped_harmful": 7, "harmful": 30}
    summary = summarise_sample_record(record)
    assert summary["harmful_samples_dropped"] == [7, 30]
    assert summary["benign_samples_touched"] == [53, 270]
    assert summary["token_auc"] is None and summary["harmful_tokens_dropped"] is None
    assert summary["harmful_first_dropped"] is None  # samples go whole: no position within an answer
    scored = summarise_sample_record(record, {"token_auc": 0.57, "sample_auc_mean_score": 0.97})
    assert scored["token_auc"] == 0.57 and scored["ranking_auc"] == scored["sample_auc"] == 0.97


def _results() -> dict:
    token = {
        "level": "token",
        "token_auc": 0.5712,
        "ranking_auc": 0.9623,
        "sample_auc": 0.97,
        "harmful_tokens_dropped": 0.939,
        "harmful_first_dropped": [29, 30],
        "benign_tokens_dropped": 0.1,
        "harmful_samples_dropped": [24, 30],
        "benign_samples_touched": [50, 270],
    }
    return {
        "runs": [
            {"id": "initial", "row": "Initial", "seed": None, "setting": None},
            {"id": "s/sft/seed0", "row": "SFT", "seed": 0, "setting": {"name": "s"}, "provenance": None},
            {"id": "s/toss/seed0", "row": "TOSS <b>|x", "seed": 0, "setting": {"name": "s"}, "provenance": token},
        ]
    }


def test_section_lists_only_runs_with_a_provenance_and_formats_the_cells():
    header, rows = provenance_table(_results())
    assert len(rows) == 1 and len(rows[0]) == len(header)
    assert rows[0][:4] == ["s", "TOSS <b>|x", "0", "token"]
    assert rows[0][4:] == ["0.571", "0.962", "0.970", "93.9%", "29/30", "10.0%", "24/30", "50/270"]
    assert provenance_markdown({"runs": _results()["runs"][:2]}, md_text) == []
    assert provenance_html({"runs": []}) == ""


def test_section_escapes_row_labels():
    lines = provenance_markdown(_results(), md_text)
    row = next(line for line in lines if line.startswith("| s |"))
    assert "<b>" not in row and "&lt;b&gt;" in row and "\\|x" in row
    page = provenance_html(_results())
    assert "<b>|x" not in page and "&lt;b&gt;|x" in page
