"""Loss building blocks shared by every method: token-weighted cross-entropy and the extra-term interface.

Shapes: B = batch, L = sequence length, V = vocabulary. Labels follow the HF convention (``labels[b, t]`` is the
target *at* position t, so the logit that predicts it sits at t - 1); ``shift`` aligns the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tokensafe.data.tokenize import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, V) logits and (B, L) labels -> (B, L-1, V) predicting logits and (B, L-1) their targets."""
    return logits[:, :-1, :], labels[:, 1:]


def per_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the labels.

    Args:
        logits: (B, L, V) unshifted model logits.
        labels: (B, L) token ids, IGNORE_INDEX where unlabelled.
    Returns:
        (B, L-1) float32 NLL aligned with ``labels[:, 1:]``; 0 where the label is ignored.
    """
    pred, target = shift_for_next_token(logits, labels)
    nll = F.cross_entropy(
        pred.reshape(-1, pred.size(-1)).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(target.shape)


def weighted_ce_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of (weighted) per-token NLL over labelled tokens, and the number of labelled tokens.

    Args:
        logits: (B, L, V); labels: (B, L); weights: optional (B, L) per-token weights aligned with ``labels``.
    Returns:
        (scalar sum, scalar count). Dividing by a count that is zero is the caller's job to avoid.
    """
    nll = per_token_nll(logits, labels)
    mask = labels[:, 1:] != IGNORE_INDEX
    if weights is not None:
        nll = nll * weights[:, 1:].to(nll.dtype)
    return (nll * mask).sum(), mask.sum()


@dataclass
class LossContext:
    """What an extra loss term may look at during one micro-batch.

    ``normaliser`` is the number of labelled tokens across gradient accumulation and processes (>= 1): terms that
    are sums over answer positions divide by it so they scale exactly like the CE.

    ``process_scale`` is the factor the trainer multiplies the whole micro-batch loss by (the number of processes
    when ``normaliser`` counts every process's tokens, 1 otherwise) before DDP averages the gradients over the
    processes. A sum over this process's tokens needs it; a term that is the same on every process (a function of
    the weights only, e.g. a regulariser) divides by it, and by ``grad_accum_steps``, to count once per step.
    """

    model: torch.nn.Module
    inputs: dict[str, Any]
    logits: torch.Tensor  # (B, L, V)
    labels: torch.Tensor  # (B, L)
    normaliser: torch.Tensor
    grad_accum_steps: int = 1
    process_scale: int = 1
    logs: dict[str, float] = field(default_factory=dict)


class LossTerm(Protocol):
    """An extra loss term added to the CE: ``term(ctx) -> scalar tensor`` (already weighted by its own lambda).

    ``per_token_columns`` names dataset columns the term needs (padded by the collator and kept through column
    pruning); ``sample_columns`` names per-sample columns (e.g. an index into a cache).
    """

    name: str
    per_token_columns: tuple[str, ...]
    sample_columns: tuple[str, ...]

    def __call__(self, ctx: LossContext) -> torch.Tensor: ...
