"""Provenance analysis of TOSS scores: how well do token scores separate harmful from benign samples?

This is the only TOSS module that reads the provenance column ``is_harmful``: it judges the method on data whose
harmful samples are known (a poisoned mixture), and never feeds anything back into scoring or selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokensafe.toss.select import Selection
from tokensafe.toss.store import TokenScores


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney U with tied scores counted as 1/2)."""
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each distinct value
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Rounded ROC-AUC, or None where one class is absent (e.g. no benign token past position 4 in SST-2): NaN would
    make analysis.json invalid JSON."""
    auc = roc_auc(score, positive)
    return None if np.isnan(auc) else round(auc, 4)


def _mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    return round(float(values[mask].mean()), 4) if mask.any() else None


def position_groups(position: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of response positions 0-4 (where a refusal or a compliance starts), 5-19 and 20+."""
    return {"0-4": position < 5, "5-19": (position >= 5) & (position < 20), "20+": position >= 20}


def provenance_report(is_harmful: np.ndarray, scores: TokenScores, selection: Selection | None = None) -> dict:
    """Token- and sample-level separation of harmful vs benign samples, and who the selection drops.

    Args:
        is_harmful: (N,) provenance of each sample (True = a harmful sample of the mixture).
    """
    is_harmful = np.asarray(is_harmful, dtype=bool)
    if is_harmful.size != scores.n_samples:
        raise ValueError(f"{is_harmful.size} provenance labels for {scores.n_samples} scored samples")
    token_harmful = is_harmful[scores.sample_ids()]
    s = scores.score
    counts = scores.counts
    has = counts > 0
    mean_score = np.bincount(scores.sample_ids(), weights=s, minlength=scores.n_samples)[has] / counts[has]
    report: dict[str, Any] = {
        "harmful_tokens": int(token_harmful.sum()),
        "benign_tokens": int((~token_harmful).sum()),
        "token_auc": _auc(s, token_harmful),
        "sample_auc_mean_score": _auc(mean_score, is_harmful[has]),
        "token_auc_by_position": {
            label: _auc(s[in_bin], token_harmful[in_bin])
            for label, in_bin in position_groups(scores.token_index()).items()
        },
        "mean_score_harmful_tokens": _mean(s, token_harmful),
        "mean_score_benign_tokens": _mean(s, ~token_harmful),
        # Where the separation comes from: which reference moved on which kind of token.
        "mean_loss_u_harmful_tokens": _mean(scores.loss_u, token_harmful),
        "mean_loss_d_harmful_tokens": _mean(scores.loss_d, token_harmful),
        "mean_loss_u_benign_tokens": _mean(scores.loss_u, ~token_harmful),
        "mean_loss_d_benign_tokens": _mean(scores.loss_d, ~token_harmful),
    }
    if selection is not None and selection.params.get("smooth"):
        report["token_auc_smoothed"] = _auc(selection.ranked, token_harmful)
    if selection is not None:
        drop = selection.flagged
        per_sample = np.bincount(scores.sample_ids(), weights=drop, minlength=scores.n_samples)
        fully = has & (per_sample == counts)
        harmful_has = has & is_harmful
        first = scores.offsets[:-1]  # (N,) flat index of each sample's first scored token
        report.update(
            harmful_tokens_dropped=_mean(drop, token_harmful),
            benign_tokens_dropped=_mean(drop, ~token_harmful),
            dropped_that_are_harmful=_mean(token_harmful, drop),
            harmful_samples_fully_dropped=f"{int((fully & is_harmful).sum())}/{int((has & is_harmful).sum())}",
            benign_samples_touched=f"{int(((per_sample > 0) & ~is_harmful).sum())}/{int((has & ~is_harmful).sum())}",
            # Where in the harmful answers the drops fall: a shallow aligned model's refusal lives in the first
            # tokens, and so does a compliance opener ("Sure, here is"); a harmful answer that keeps its first token
            # still teaches the opener.
            harmful_dropped_by_position={
                label: _mean(drop, token_harmful & in_bin)
                for label, in_bin in position_groups(scores.token_index()).items()
            },
            harmful_first_token_dropped=f"{int(drop[first[harmful_has]].sum())}/{int(harmful_has.sum())}",
        )
        if selection.weights is not None:
            w = selection.weights
            report.update(
                mean_weight_harmful=_mean(w, token_harmful),
                mean_weight_benign=_mean(w, ~token_harmful),
            )
    return report
