"""McNemar's exact test and the reduction share, against hand computations."""

from __future__ import annotations

import math

import pytest

from tokensafe.experiment.stats import (
    discordant,
    flag_string,
    mcnemar_p,
    paired_loss_test,
    paired_test,
    reduction_share,
)


def exact_two_sided(b: int, c: int) -> float:
    """2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1 (the exact McNemar test)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c", [(3, 15), (0, 6), (5, 5), (1, 0), (0, 0), (12, 30)])
def test_mcnemar_p_is_the_exact_binomial_test(b, c):
    assert mcnemar_p(b, c) == pytest.approx(exact_two_sided(b, c), rel=1e-12)


def test_mcnemar_by_hand():
    # b = 3, c = 15: 2 * (C(18,0) + C(18,1) + C(18,2) + C(18,3)) / 2^18 = 2 * 988 / 262144
    assert mcnemar_p(3, 15) == pytest.approx(2 * 988 / 262144)


def test_discordant_pairs_for_asr_refusals_and_accuracy():
    run = flag_string([True, False, True, None, False, True])  # "101x01"
    sft = flag_string([True, True, False, False, None, False])  # "1100x0"
    assert run == "101x01" and sft == "1100x0"
    # Safety (1 = harmful is bad): prompt 1 run safe / SFT harmful -> better; prompts 2, 5 run harmful -> worse.
    assert discordant(run, sft, "safety") == (2, 1, 4)
    assert discordant(run, sft, "over_refusal") == (2, 1, 4)
    # Utility (1 = correct is good): the same disagreements count the other way.
    assert discordant(run, sft, "utility") == (1, 2, 4)
    entry = paired_test(run, sft, "safety")
    assert entry == {"b": 2, "c": 1, "n": 4, "p_value": pytest.approx(1.0), "test": "mcnemar_exact"}


def test_flags_of_other_prompts_are_refused():
    with pytest.raises(ValueError, match="not the same prompts"):
        discordant("101", "10", "safety")


def test_reduction_share():
    assert reduction_share(0.84, 0.72, 0.63) == pytest.approx(0.12 / 0.21)
    assert reduction_share(0.84, 0.84, 0.63) == 0.0
    assert reduction_share(0.84, 0.63, 0.63) == pytest.approx(1.0)
    assert reduction_share(0.84, 0.50, 0.63) == pytest.approx(0.34 / 0.21)  # beyond the oracle: > 1, not clipped
    assert reduction_share(0.60, 0.50, 0.63) is None  # the oracle is no better than SFT: undefined
    assert reduction_share(0.60, 0.50, 0.60) is None
    assert reduction_share(None, 0.5, 0.4) is None and reduction_share(0.8, 0.5, None) is None


def _reference_paired_loss(run_rows, sft_rows):
    """The same test written another way: per-row influence values of D = sum(d) / sum(c) and their sample
    variance (numpy), p from the normal tail via erfc."""
    import numpy as np

    s, t, c = (np.array([r[i] for r in rows], float) for rows, i in ((run_rows, 0), (sft_rows, 0), (run_rows, 1)))
    d = s - t
    ratio = d.sum() / c.sum()
    influence = (d - ratio * c) / c.mean()
    se = math.sqrt(influence.var(ddof=1) / len(c))
    return ratio / (t.sum() / c.sum()), math.erfc(abs(ratio) / se / math.sqrt(2))


def test_paired_loss_test_matches_an_independent_computation():
    import numpy as np

    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 60, 40)
    sft = [[float(c * rng.uniform(0.8, 1.4)), int(c)] for c in tokens]
    run = [[t + float(c * rng.normal(0.06, 0.2)), int(c)] for (t, c) in sft]  # ~5% worse, noisy
    entry = paired_loss_test(run, sft)
    relative, p = _reference_paired_loss(run, sft)
    assert entry["relative"] == pytest.approx(relative, rel=1e-9)
    assert entry["p_value"] == pytest.approx(p, rel=1e-9)
    assert entry["low"] < entry["relative"] < entry["high"] and entry["n"] == 40
    # By hand: the relative change is the difference of the two mean losses over SFT's.
    total = sum(c for _, c in sft)
    mine, theirs = sum(s for s, _ in run) / total, sum(s for s, _ in sft) / total
    assert entry["relative"] == pytest.approx((mine - theirs) / theirs, rel=1e-9)
    assert entry["difference"] == pytest.approx(mine - theirs, rel=1e-9)


def test_paired_loss_test_edge_cases():
    rows = [[2.0, 4], [3.0, 5], [1.0, 2]]
    same = paired_loss_test(rows, rows)
    assert same["relative"] == 0.0 and same["p_value"] == 1.0
    shifted = paired_loss_test([[s + 0.1 * c, c] for s, c in rows], rows)  # every row worse by 0.1 nats per token
    assert shifted["p_value"] == 0.0 and shifted["difference"] == pytest.approx(0.1)
    assert paired_loss_test(rows, [[2.0, 4], [3.0, 6], [1.0, 2]]) is None  # other token counts: other rows
    assert paired_loss_test(rows, rows[:2]) is None
    assert paired_loss_test([[1.0, 3]], [[1.5, 3]]) is None  # one row: no variance
