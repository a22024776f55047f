"""Token selection: turn per-token scores into a drop mask (or soft weights), vectorised.

Modes (``s`` = score = l_U - l_D, high = risky):

* ``global``: drop the ``k = floor(rho * T + 0.5)`` highest-scoring response tokens of the whole dataset (the
  paper's default, rho = 0.2). O(T) with ``np.partition``; the official code sorts Python tuples.
* ``per_sample``: drop the ``floor(rho * n_i + 0.5)`` highest-scoring tokens of each sample.
* ``threshold``: drop every token with ``s > threshold`` (nats).
* ``soft``: keep every token with weight ``w = sigmoid(-s / tau)`` (1/2 at s = 0, towards 0 for risky tokens).

Optional smoothing (``smooth = w > 0``, not in the paper): every mode ranks the centred moving average of the scores
over response positions j-w..j+w of the same sample (clipped at the sample's ends) instead of the raw score. A
single token's loss difference is noisy (a predictable token scores ~0 under both references whatever the sample),
while risk is a property of spans; the average keeps token resolution at the scale of a few words.

Ties are broken deterministically: among equal scores, the token earlier in the dataset (lower flat index) is
dropped first, exactly as sorting (-score, sample, position) would. Dropped tokens stay in the input; they only
lose their label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.toss.config import SELECTION_MODES
from tokensafe.toss.store import TokenScores

POSITION_BINS = (0, 1, 2, 3, 4, 5, 10, 20, 50, 100)  # response-token index j: 0, 1, 2, 3, 4, 5-9, ..., 100+


def n_dropped(n: int | np.ndarray, rho: float) -> Any:
    """Tokens dropped out of ``n`` at share ``rho``: round half up, ``floor(rho * n + 0.5)``."""
    return np.floor(rho * np.asarray(n, dtype=np.float64) + 0.5).astype(np.int64)


def _check_scores(score: np.ndarray) -> np.ndarray:
    score = np.asarray(score)
    if score.ndim != 1:
        raise ValueError(f"scores must be a flat array, got shape {score.shape}")
    if np.isnan(score).any():
        raise ValueError(f"{int(np.isnan(score).sum())} token scores are NaN; re-score before selecting")
    return score


def smooth_scores(score: np.ndarray, offsets: np.ndarray, half_window: int) -> np.ndarray:
    """Centred moving average of each sample's scores, float32.

    Args:
        score: (T,) flat token scores; sample i owns ``score[offsets[i]:offsets[i + 1]]``.
        offsets: (N + 1,) sample offsets.
        half_window: w; token t averages the tokens of its own sample within t-w..t+w (0 = the scores unchanged).
    Returns:
        (T,) smoothed scores.
    """
    score = _check_scores(score)
    if half_window < 0:
        raise ValueError(f"toss_smooth must be >= 0, got {half_window}")
    if half_window == 0 or score.size == 0:
        return score.astype(np.float32, copy=True)
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    sample = np.repeat(np.arange(counts.size), counts)
    flat = np.arange(score.size)
    lo = np.maximum(offsets[sample], flat - half_window)
    hi = np.minimum(offsets[sample + 1], flat + half_window + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(score, dtype=np.float64)])
    return ((cumulative[hi] - cumulative[lo]) / (hi - lo)).astype(np.float32)


def ranked_scores(scores: TokenScores, smooth: int) -> np.ndarray:
    """(T,) the scores every mode ranks: smoothed over +-``smooth`` tokens when ``smooth`` > 0, else the raw ones."""
    return smooth_scores(scores.score, scores.offsets, smooth) if smooth else scores.score


def drop_global_top(score: np.ndarray, rho: float) -> np.ndarray:
    """Bool mask of the ``floor(rho * T + 0.5)`` highest scores (ties: lower index first). O(T)."""
    score = _check_scores(score)
    k = int(n_dropped(score.size, rho))
    drop = np.zeros(score.size, dtype=bool)
    if k <= 0:
        return drop
    if k >= score.size:
        drop[:] = True
        return drop
    kth = np.partition(score, score.size - k)[score.size - k]  # the k-th largest value
    drop = score > kth
    missing = k - int(drop.sum())
    drop[np.flatnonzero(score == kth)[:missing]] = True
    return drop


def drop_per_sample_top(score: np.ndarray, offsets: np.ndarray, rho: float) -> np.ndarray:
    """Bool mask of each sample's ``floor(rho * n_i + 0.5)`` highest scores (ties: lower position first)."""
    score = _check_scores(score)
    counts = np.diff(offsets)
    sample = np.repeat(np.arange(counts.size), counts)
    flat = np.arange(score.size)
    order = np.lexsort((flat, -score, sample))  # by sample, then score descending, then position
    rank = np.empty(score.size, dtype=np.int64)
    rank[order] = flat - offsets[sample[order]]
    return rank < n_dropped(counts, rho)[sample]


def drop_above(score: np.ndarray, threshold: float) -> np.ndarray:
    return _check_scores(score) > threshold


def soft_weights(score: np.ndarray, tau: float) -> np.ndarray:
    """w = sigmoid(-s / tau) in float32, computed as 0.5 * (1 + tanh(-s / (2 tau))) (no overflow)."""
    if tau <= 0:
        raise ValueError(f"toss_tau must be > 0, got {tau}")
    score = _check_scores(score).astype(np.float64)
    return (0.5 * (1.0 + np.tanh(-score / (2.0 * tau)))).astype(np.float32)


@dataclass
class Selection:
    """The outcome of selection over the flat token layout of a :class:`TokenScores`.

    ``drop[t]`` removes token t's label; ``weights`` (soft mode only) scales its loss instead.
    """

    mode: str
    drop: np.ndarray
    weights: np.ndarray | None = None
    params: dict[str, float] = field(default_factory=dict)
    ranked: np.ndarray | None = None  # (T,) the scores the mode ranked (smoothed when smooth > 0), else raw

    @property
    def flagged(self) -> np.ndarray:
        """The risky tokens: dropped ones, or for soft weights those weighted below 1/2 (score > 0)."""
        return self.weights < 0.5 if self.weights is not None else self.drop


def select_tokens(
    scores: TokenScores,
    mode: str = "global",
    rho: float = 0.2,
    threshold: float = 0.0,
    tau: float = 1.0,
    smooth: int = 0,
) -> Selection:
    """Apply one selection mode to ``scores`` (see the module docstring)."""
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown selection mode '{mode}'; choose from {', '.join(SELECTION_MODES)}")
    if mode in ("global", "per_sample") and not 0.0 <= rho <= 1.0:
        raise ValueError(f"toss_rho must be in [0, 1], got {rho}")
    s = ranked_scores(scores, smooth)
    extra = {"smooth": smooth} if smooth else {}
    if mode == "global":
        return Selection(mode, drop_global_top(s, rho), params={"rho": rho, **extra}, ranked=s)
    if mode == "per_sample":
        return Selection(mode, drop_per_sample_top(s, scores.offsets, rho), params={"rho": rho, **extra}, ranked=s)
    if mode == "threshold":
        return Selection(mode, drop_above(s, threshold), params={"threshold": threshold, **extra}, ranked=s)
    return Selection(mode, np.zeros(s.size, dtype=bool), soft_weights(s, tau), params={"tau": tau, **extra}, ranked=s)


def select_with_args(scores: TokenScores, args: Any) -> Selection:
    """:func:`select_tokens` with the ``toss_*`` fields of a config (:class:`~tokensafe.toss.config.TossArgs`)."""
    return select_tokens(
        scores, args.toss_mode, args.toss_rho, args.toss_threshold, args.toss_tau, getattr(args, "toss_smooth", 0)
    )


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two bool masks over the same tokens (1.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def selection_stats(scores: TokenScores, selection: Selection) -> dict[str, Any]:
    """Tokens dropped, samples touched / fully dropped, score quantiles and a per-position histogram.

    Reads no provenance: these numbers are what a user sees for their own unlabelled data.
    """
    s = selection.ranked if selection.ranked is not None else scores.score
    counts = scores.counts
    sample = scores.sample_ids()
    dropped_per_sample = np.bincount(sample, weights=selection.drop, minlength=scores.n_samples)
    has_tokens = counts > 0
    position = scores.token_index()
    bins = np.searchsorted(np.asarray(POSITION_BINS), position, side="right") - 1
    histogram = []
    for b, lo in enumerate(POSITION_BINS):
        hi = POSITION_BINS[b + 1] - 1 if b + 1 < len(POSITION_BINS) else None
        in_bin = bins == b
        n = int(in_bin.sum())
        label = str(lo) if hi == lo else (f"{lo}-{hi}" if hi is not None else f"{lo}+")
        row = {"position": label, "tokens": n, "dropped": int(selection.drop[in_bin].sum())}
        row["dropped_share"] = round(row["dropped"] / n, 4) if n else 0.0
        if selection.weights is not None:
            row["mean_weight"] = round(float(selection.weights[in_bin].mean()), 4) if n else 0.0
        histogram.append(row)
    quantiles = np.quantile(s, [0.0, 0.5, 0.8, 0.95, 1.0]) if s.size else np.zeros(5)
    stats: dict[str, Any] = {
        "mode": selection.mode,
        **selection.params,
        "samples": scores.n_samples,
        "samples_with_response_tokens": int(has_tokens.sum()),
        "tokens": scores.n_tokens,
        "dropped_tokens": int(selection.drop.sum()),
        "dropped_share": round(float(selection.drop.mean()), 4) if s.size else 0.0,
        "samples_touched": int((dropped_per_sample > 0).sum()),
        "samples_fully_dropped": int((has_tokens & (dropped_per_sample == counts)).sum()),
        "lowest_dropped_score": float(s[selection.drop].min()) if selection.drop.any() else None,
        "score_quantiles": dict(
            zip(("min", "p50", "p80", "p95", "max"), (round(float(q), 4) for q in quantiles), strict=True)
        ),
        "per_position": histogram,
    }
    if selection.weights is not None:
        stats["mean_weight"] = round(float(selection.weights.mean()), 4) if s.size else 0.0
        stats["weighted_below_half"] = int((selection.weights < 0.5).sum())
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable summary of :func:`selection_stats` for the terminal."""
    lines = [
        f"selection: mode={stats['mode']} "
        + " ".join(f"{k}={stats[k]}" for k in ("rho", "threshold", "tau", "smooth") if k in stats),
        f"  tokens dropped: {stats['dropped_tokens']}/{stats['tokens']} ({100 * stats['dropped_share']:.1f}%)",
        f"  samples touched: {stats['samples_touched']}/{stats['samples']}, "
        f"fully dropped: {stats['samples_fully_dropped']}",
        "  score quantiles: " + ", ".join(f"{k} {v:+.3f}" for k, v in stats["score_quantiles"].items()),
    ]
    if "mean_weight" in stats:
        lines.append(f"  mean weight: {stats['mean_weight']}, weighted below 1/2: {stats['weighted_below_half']}")
    lines.append("  dropped share by response position:")
    for row in stats["per_position"]:
        if row["tokens"]:
            bar = "#" * int(round(40 * row["dropped_share"]))
            lines.append(f"    {row['position']:>7} {row['dropped']:>7}/{row['tokens']:<7} {bar}")
    return "\n".join(lines)


def apply_selection(dataset: Any, scores: TokenScores, selection: Selection) -> Any:
    """The dataset with dropped tokens' labels set to IGNORE_INDEX (and a ``weights`` column for soft mode).

    Refuses a dataset whose tokens differ from those scored. Token positions come from the scores file, so the
    mask lands on exactly the tokens that were scored; a sample whose every token is dropped keeps its row and
    contributes nothing to the loss (the trainer normalises by the labelled tokens of the whole batch).
    """
    scores.check_dataset(dataset["input_ids"], dataset["labels"])
    positions, offsets = scores.positions, scores.offsets
    drop, weights = selection.drop, selection.weights

    def update(row: dict[str, Any], i: int) -> dict[str, Any]:
        span = slice(int(offsets[i]), int(offsets[i + 1]))
        labels = np.asarray(row["labels"], dtype=np.int64)
        labels[positions[span][drop[span]]] = IGNORE_INDEX
        out: dict[str, Any] = {"labels": labels.tolist()}
        if weights is not None:
            w = np.ones(labels.size, dtype=np.float32)
            w[positions[span]] = weights[span]
            out["weights"] = w.tolist()
        return out

    return dataset.map(update, with_indices=True, keep_in_memory=True, desc="applying the TOSS mask")
