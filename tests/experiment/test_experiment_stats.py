"""McNemar's exact test and the reduction share, against hand computations."""

from __future__ import annotations

import math

import pytest

from tokensafe.experiment.stats import discordant, flag_string, mcnemar_p, paired_test, reduction_share


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
