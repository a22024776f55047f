"""The live view's time estimate: runs that reused another run's model do not stand for runs that train."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tokensafe.experiment.status import Board


def plan(run_id: str, method: str) -> SimpleNamespace:
    return SimpleNamespace(id=run_id, method=method, setting={"name": run_id.split("/")[0]}, seed=0, row=method)


def test_estimate_prefers_runs_that_trained_over_runs_that_reused_a_model():
    runs = [plan("p0/pact/seed0", "pact"), plan("p0.05/sft/seed0", "sft"), plan("p0.05/pact/seed0", "pact")]
    board = Board("sweep", runs)
    board.set("p0/pact/seed0", "done", seconds=7.0, shared=True)  # reused another experiment's trained model
    board.set("p0.05/sft/seed0", "done", seconds=760.0)
    board.set("p0.05/pact/seed0", "pending")
    # No PACT run trained yet: the trained runs of other methods (760 s), not the reused PACT run (7 s).
    assert board.estimate(runs[2]) == pytest.approx(760.0)
    board.set("p0/pact/seed0", "done", seconds=1500.0)  # the same run, now recorded as having trained
    assert board.estimate(runs[2]) == pytest.approx(1500.0)


def test_estimate_falls_back_to_reused_runs_and_is_unknown_before_any_run_finished():
    runs = [plan("a/sft/seed0", "sft"), plan("b/sft/seed0", "sft"), plan("c/kl/seed0", "kl")]
    board = Board("x", runs)
    board.set("c/kl/seed0", "pending")
    assert board.estimate(runs[2]) is None and board.time_left() is None
    board.set("a/sft/seed0", "done", seconds=6.0, shared=True)
    board.set("b/sft/seed0", "done", seconds=8.0, shared=True)
    assert board.estimate(runs[2]) == pytest.approx(7.0)  # only reused runs finished: their mean, not nothing
    assert board.time_left() == pytest.approx(7.0)
