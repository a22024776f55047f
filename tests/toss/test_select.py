"""Selection: every mode against a brute-force reference (ties included), statistics, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokensafe.toss.select import jaccard, select_tokens, selection_stats
from tokensafe.toss.store import TokenScores


def make_scores(counts: list[int], seed: int, integer: bool = True) -> TokenScores:
    """Scores with many ties (small integers) over samples with the given numbers of response tokens."""
    rng = np.random.default_rng(seed)
    total = sum(counts)
    score = rng.integers(-3, 4, total).astype(np.float32) if integer else rng.normal(size=total).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    positions = np.concatenate([np.arange(1, c + 1) for c in counts]) if total else np.zeros(0)
    return TokenScores(offsets, positions, score, np.zeros(total, np.float32), "fp", "digest")


def tuples(scores: TokenScores) -> list[tuple[float, int, int]]:
    """(score, sample i, token j) for every response token: what the official code sorts."""
    return [
        (float(scores.score[t]), i, t - int(scores.offsets[i]))
        for i in range(scores.n_samples)
        for t in range(int(scores.offsets[i]), int(scores.offsets[i + 1]))
    ]


def brute_global(scores: TokenScores, rho: float) -> np.ndarray:
    items = sorted(tuples(scores), key=lambda x: (-x[0], x[1], x[2]))
    k = math.floor(rho * len(items) + 0.5)
    drop = np.zeros(scores.n_tokens, bool)
    for _, i, j in items[:k]:
        drop[int(scores.offsets[i]) + j] = True
    return drop


def brute_per_sample(scores: TokenScores, rho: float) -> np.ndarray:
    drop = np.zeros(scores.n_tokens, bool)
    for i in range(scores.n_samples):
        items = sorted((x for x in tuples(scores) if x[1] == i), key=lambda x: (-x[0], x[2]))
        for _, _, j in items[: math.floor(rho * len(items) + 0.5)]:
            drop[int(scores.offsets[i]) + j] = True
    return drop


CASES = [([5, 0, 3, 8, 1, 4], 0), ([1, 1, 1], 1), ([12, 7, 0, 0, 9], 2), ([2, 3, 40, 1], 3)]


@pytest.mark.parametrize("counts,seed", CASES)
@pytest.mark.parametrize("rho", [0.0, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0])
def test_global_and_per_sample_match_brute_force(counts, seed, rho):
    for integer in (True, False):
        scores = make_scores(counts, seed, integer)
        np.testing.assert_array_equal(select_tokens(scores, "global", rho).drop, brute_global(scores, rho))
        np.testing.assert_array_equal(select_tokens(scores, "per_sample", rho).drop, brute_per_sample(scores, rho))


@pytest.mark.parametrize("counts,seed", CASES)
@pytest.mark.parametrize("threshold", [-10.0, -1.0, 0.0, 0.5, 2.0, 10.0])
def test_threshold_matches_brute_force(counts, seed, threshold):
    scores = make_scores(counts, seed)
    expected = [s > threshold for s, _, _ in tuples(scores)]
    np.testing.assert_array_equal(select_tokens(scores, "threshold", threshold=threshold).drop, expected)


@pytest.mark.parametrize("tau", [0.1, 1.0, 3.0])
def test_soft_weights_match_the_sigmoid(tau):
    scores = make_scores([5, 0, 3, 8], 4, integer=False)
    scores.score[0] = 200.0  # no overflow at large |s| / tau
    scores.score[1] = -200.0
    selection = select_tokens(scores, "soft", tau=tau)
    expected = [1.0 / (1.0 + math.exp(min(700.0, s / tau))) for s, _, _ in tuples(scores)]
    np.testing.assert_allclose(selection.weights, expected, rtol=1e-6, atol=1e-7)
    assert not selection.drop.any()
    np.testing.assert_array_equal(selection.flagged, scores.score > 0)


def test_ties_are_deterministic_and_favour_earlier_tokens():
    scores = TokenScores(np.array([0, 3, 6]), np.tile([1, 2, 3], 2), np.ones(6, np.float32), np.zeros(6), "f", "d")
    drop = select_tokens(scores, "global", rho=0.5).drop
    assert drop.tolist() == [True, True, True, False, False, False]


def test_stats_count_fully_dropped_samples_and_positions():
    scores = TokenScores(
        np.array([0, 2, 5, 5]),
        np.array([4, 5, 7, 8, 9]),
        np.array([9, 8, 0, 0, 7], np.float32),
        np.zeros(5),
        "f",
        "d",
    )
    stats = selection_stats(scores, select_tokens(scores, "global", rho=0.6))
    assert stats["dropped_tokens"] == 3 and stats["samples_fully_dropped"] == 1 and stats["samples_touched"] == 2
    assert stats["samples_with_response_tokens"] == 2
    by_position = {row["position"]: (row["tokens"], row["dropped"]) for row in stats["per_position"]}
    assert by_position["0"] == (2, 1) and by_position["1"] == (2, 1) and by_position["2"] == (1, 1)


def test_nan_scores_and_bad_arguments_raise():
    scores = make_scores([3, 3], 0)
    scores.score[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_tokens(scores, "global")
    with pytest.raises(ValueError, match="unknown selection mode"):
        select_tokens(make_scores([3], 0), "top")
    with pytest.raises(ValueError, match="toss_rho"):
        select_tokens(make_scores([3], 0), "global", rho=1.5)


def test_jaccard():
    a = np.array([1, 1, 0, 0], bool)
    assert jaccard(a, np.array([1, 0, 1, 0], bool)) == pytest.approx(1 / 3)
    assert jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def brute_smooth(scores: TokenScores, w: int) -> np.ndarray:
    """Mean over positions j-w..j+w of the same sample, one token at a time."""
    out = []
    for i in range(scores.n_samples):
        own = scores.score[int(scores.offsets[i]) : int(scores.offsets[i + 1])].astype(np.float64)
        out += [own[max(0, j - w) : j + w + 1].mean() for j in range(own.size)]
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("counts,seed", CASES)
@pytest.mark.parametrize("w", [1, 2, 5])
def test_smoothing_is_a_per_sample_moving_average_and_every_mode_ranks_it(counts, seed, w):
    scores = make_scores(counts, seed, integer=False)
    expected = brute_smooth(scores, w)
    selection = select_tokens(scores, "global", 0.25, smooth=w)
    np.testing.assert_allclose(selection.ranked, expected, rtol=1e-5, atol=1e-6)
    smoothed = TokenScores(scores.offsets, scores.positions, expected, np.zeros_like(expected), "fp", "digest")
    np.testing.assert_array_equal(selection.drop, brute_global(smoothed, 0.25))
    np.testing.assert_array_equal(
        select_tokens(scores, "per_sample", 0.25, smooth=w).drop, brute_per_sample(smoothed, 0.25)
    )
    np.testing.assert_array_equal(select_tokens(scores, "threshold", threshold=0.1, smooth=w).drop, expected > 0.1)
    assert selection.params == {"rho": 0.25, "smooth": w}


def test_smoothing_off_leaves_the_scores_and_a_window_never_crosses_samples():
    scores = make_scores([3, 2], seed=0, integer=False)
    np.testing.assert_array_equal(select_tokens(scores, "global", 0.2).ranked, scores.score)
    spiky = TokenScores(np.array([0, 2, 4]), np.arange(4), np.array([0, 0, 9, 9], np.float32), np.zeros(4), "f", "d")
    # The window of 10 covers all four tokens, but each sample only averages its own.
    np.testing.assert_array_equal(select_tokens(spiky, "global", 0.5, smooth=10).ranked, [0, 0, 9, 9])
    with pytest.raises(ValueError, match="toss_smooth must be >= 0"):
        select_tokens(scores, "global", 0.2, smooth=-1)
