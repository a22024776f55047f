"""scripts/probe_harmfulness.py: its AUC, flag rate and probe against independent computations on small arrays."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_harmfulness.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_harmfulness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half: counted over every pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pair_count_with_ties(probe) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1] * 7 + [0] * 9)
    scores = rng.integers(0, 5, size=16).astype(float)  # many ties
    assert probe.auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))
    assert probe.auc(labels, labels.astype(float)) == 1.0


def test_flag_rate_at_recall_uses_the_threshold_that_keeps_that_share_of_positives(probe) -> None:
    labels = np.array([1] * 10 + [0] * 5)
    positives = np.arange(10, 0, -1, dtype=float)  # 10 .. 1: 90% recall keeps 10 .. 2, threshold 2
    negatives = np.array([0.5, 1.5, 2.0, 3.0, 9.0])  # 2.0, 3.0 and 9.0 are at or above 2
    scores = np.concatenate([positives, negatives])
    assert probe.fpr_at_recall(labels, scores, 0.9) == pytest.approx(3 / 5)
    assert probe.fpr_at_recall(labels, scores, 1.0) == pytest.approx(4 / 5)  # threshold 1


def test_the_probe_separates_a_direction_that_carries_the_label_and_folds_keep_twins_together(probe) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 20))
    y = (x[:, 3] > 0).astype(int)
    fitted = probe.fit_probe(x[:100], y[:100])
    assert probe.auc(y[100:], probe.probe_scores(fitted, x[100:])) > 0.95
    weights = fitted[2][:-1]
    assert int(np.argmax(np.abs(weights))) == 3
    # Noise features only: out-of-fold AUC near chance, not the in-sample fit's.
    noise = rng.normal(size=(100, 20))
    labels = np.array([1] * 50 + [0] * 50)
    fold = np.tile(np.arange(50) % probe.FOLDS, 2)
    result = probe.cross_validated(noise, labels, fold)
    assert 0.3 < result["jbb_cv_auc"] < 0.7
