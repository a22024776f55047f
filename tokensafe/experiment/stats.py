"""Paired comparisons of two runs on the same prompts, and the oracle-relative reduction share.

Per-prompt outcomes are stored as flag strings, one character per prompt in a fixed id order: ``1`` the outcome the
suite counts (harmful answer, refusal, correct answer), ``0`` not, ``x`` unreadable (the judge could not decide; left
out of every pair). A run's row keeps its flags and the digest of the id list, so a comparison never pairs answers
to different prompts.

McNemar's exact test (statsmodels, a two-sided binomial test on the discordant pairs): ``b`` counts prompts where the
run did worse than SFT and SFT did not (for ASR and over-refusal: the run answered harmfully / refused and SFT did
not; for accuracy: SFT was right and the run wrong), ``c`` the reverse. Concordant pairs do not enter the test.

A gold-answer loss (mean NLL per answer token over held-out rows) is compared on the same rows: with ``s_i`` the
run's NLL sum and ``t_i`` SFT's on row i (``c_i`` answer tokens, the same for both), the difference of the two
ratios is ``D = sum(s_i - t_i) / sum(c_i)``; its standard error takes the rows as the sampling unit (the ratio
estimator's delta method, as :func:`tokensafe.eval.gold_loss.ratio_interval`), and a two-sided z-test gives p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

# Which suite kinds count "bad" outcomes (a 1 is worse) and which count good ones.
BAD_IS_ONE = {"safety": True, "over_refusal": True, "utility": False}
FLAG_FIELD = {"safety": "harmful", "over_refusal": "refused", "utility": "correct"}


def format_p(p: float) -> str:
    """A p-value as the reports print it: ``1.2e-07`` below 0.001, else ``0.008``."""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def flag_string(values: Sequence[bool | None]) -> str:
    """``[True, False, None]`` -> ``"10x"``."""
    return "".join("x" if v is None else ("1" if v else "0") for v in values)


def discordant(run: str, sft: str, kind: str) -> tuple[int, int, int]:
    """(b: run worse, c: run better, pairs compared) of two flag strings over the same prompts."""
    if len(run) != len(sft):
        raise ValueError(f"flag strings of different lengths ({len(run)} vs {len(sft)}): not the same prompts")
    bad = "1" if BAD_IS_ONE[kind] else "0"
    worse = better = pairs = 0
    for a, s in zip(run, sft, strict=True):
        if a == "x" or s == "x":
            continue
        pairs += 1
        if a != s:
            if a == bad:
                worse += 1
            else:
                better += 1
    return worse, better, pairs


def mcnemar_p(worse: int, better: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when there is none)."""
    from statsmodels.stats.contingency_tables import mcnemar

    # Rows: SFT bad / good; columns: run bad / good. Only the off-diagonal cells enter the exact test.
    return float(mcnemar([[0, worse], [better, 0]], exact=True).pvalue)


def paired_test(run: str, sft: str, kind: str) -> dict[str, Any]:
    """The ``vs_sft`` entry of one suite: ``b``, ``c``, pairs ``n``, the exact p-value and the test's name."""
    worse, better, pairs = discordant(run, sft, kind)
    return {"b": worse, "c": better, "n": pairs, "p_value": mcnemar_p(worse, better), "test": "mcnemar_exact"}


def reduction_share(asr_sft: float | None, asr_run: float | None, asr_oracle: float | None) -> float | None:
    """(ASR_SFT - ASR_run) / (ASR_SFT - ASR_oracle): the share of the reduction a perfect data filter reaches that
    the run reaches. None when a value is missing or the oracle does not improve on SFT (denominator <= 0)."""
    if asr_sft is None or asr_run is None or asr_oracle is None:
        return None
    denominator = asr_sft - asr_oracle
    if denominator <= 0:
        return None
    return (asr_sft - asr_run) / denominator


def paired_loss_test(
    run_rows: Sequence[Sequence[float]], sft_rows: Sequence[Sequence[float]]
) -> dict[str, Any] | None:
    """The ``vs_sft`` entry of a gold-answer loss (see the module docstring), or None when the two runs did not score
    the same rows (other lengths or token counts) or there are fewer than two rows with answer tokens.

    Args:
        run_rows, sft_rows: ``[NLL sum, answer tokens]`` per held-out row, in the same row order.

    Returns ``relative`` = D / SFT's loss with its 95% interval (``low``, ``high``), ``difference`` D in nats per
    token, the rows compared ``n`` and ``p_value``.
    """
    if len(run_rows) != len(sft_rows) or any(int(a[1]) != int(b[1]) for a, b in zip(run_rows, sft_rows, strict=True)):
        return None
    pairs = [(float(a[0]) - float(b[0]), float(b[0]), int(a[1])) for a, b in zip(run_rows, sft_rows, strict=True)]
    pairs = [p for p in pairs if p[2] > 0]
    m = len(pairs)
    tokens = sum(c for _, _, c in pairs)
    sft_loss = sum(t for _, t, _ in pairs) / tokens if m else 0.0
    if m < 2 or sft_loss <= 0:
        return None
    difference = sum(d for d, _, _ in pairs) / tokens
    c_bar = tokens / m
    variance = sum((d - difference * c) ** 2 for d, _, c in pairs) / (m * (m - 1) * c_bar**2)
    se = math.sqrt(variance)
    z95 = NormalDist().inv_cdf(0.975)
    p = 1.0 if se == 0 and difference == 0 else 0.0 if se == 0 else 2 * NormalDist().cdf(-abs(difference) / se)
    return {
        "relative": difference / sft_loss,
        "low": (difference - z95 * se) / sft_loss,
        "high": (difference + z95 * se) / sft_loss,
        "difference": difference,
        "n": m,
        "p_value": p,
        "test": "paired_ratio_z",
    }
