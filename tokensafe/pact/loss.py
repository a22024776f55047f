"""The PACT loss term: a calibrated, weighted KL over the safety tokens S (docs/methods/pact.md §2-3).

At every answer position t (shapes per position; n positions in a batch, K = |S|):

    z_θ      = ℓ^θ_t[S]                                   student logits, with gradient
    g_t      = σ(α (I(softmax z_θ) − I(softmax ℓ^post_t[S]) − b))      no gradient
    c_t      = g_t · exp(−max(0, t − N) / τ)              t = 0 at the first response token
    z_ref    = (1 − c_t) ℓ^full_t[S] + c_t ℓ^post_t[S]
    q_t      = normalize(softmax(z_ref / T) ⊙ w)          the target (no gradient)
    KL_t     = T² Σ_{v∈S} q_t(v) (log q_t(v) − log softmax(z_θ / T)(v))
    loss     = λ Σ_t KL_t / N_labelled                    N_labelled = LossContext.normaliser

I(p) = n(p) / K with n(p) the smallest k whose top-k mass reaches ``gate_mass`` (0.9) is the dispersion proxy.
The ablation switches rebuild the paper's ladder: full-vocab KL (S = V, w = 1, c = 0) → + safety tokens →
+ weights → + no-prompt reference (c = g) → + position decay (c = g · decay).

Efficiency: only logits[b, t, S] at answer positions are gathered ((n, K), a few hundred floats per sequence); the
reference side is read from the cache or computed by a no-grad forward, never kept as a full-vocab tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from tokensafe.losses import LossContext
from tokensafe.pact.layout import AnswerLayout, answer_layout, restrict


@dataclass
class PactLossConfig:
    """Every constant of the PACT term (official defaults)."""

    lam: float = 1.0  # λ (code README; the paper uses 3)
    temperature: float = 2.0  # T
    gate_alpha: float = 2.0  # α
    gate_bias: float = 0.0  # b
    gate_mass: float = 0.9  # top-k mass threshold of the dispersion proxy
    gate_temperature: float = 1.0  # temperature of the softmax inside I(·) (the spec: plain softmax)
    decay_start: int = 8  # N
    decay_tau: float = 8.0  # τ
    post_reference: bool = True  # mix in the no-prompt view through the gate (c = g)
    position_decay: bool = True  # c = g · exp(−max(0, t − N)/τ); off: c = g

    @property
    def uses_post(self) -> bool:
        return self.post_reference


class ReferenceSource(Protocol):
    """Where the reference logits come from: (ctx, layout, S) -> (full (n, K), post (n, K) or None), float32."""

    index_column: str | None

    def __call__(
        self, ctx: LossContext, layout: AnswerLayout, token_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def dispersion(probs: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """I(p) = n(p) / K, n(p) = smallest k with top-k mass >= ``mass``. probs: (n, K) -> (n,)."""
    top = probs.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    n = (top < mass).sum(dim=-1) + 1
    return n.clamp(max=probs.size(-1)).to(probs.dtype) / probs.size(-1)


def gate(
    student: torch.Tensor, post: torch.Tensor, *, alpha: float, bias: float, mass: float, temperature: float = 1.0
) -> torch.Tensor:
    """g = σ(α (I(softmax student) − I(softmax post) − b)); (n, K) logits -> (n,), no gradient."""
    with torch.no_grad():
        i_student = dispersion(torch.softmax(student.float() / temperature, dim=-1), mass)
        i_post = dispersion(torch.softmax(post.float() / temperature, dim=-1), mass)
        return torch.sigmoid(alpha * (i_student - i_post - bias))


def position_decay(offset: torch.Tensor, start: int, tau: float) -> torch.Tensor:
    """exp(−max(0, t − N) / τ) for 0-based offsets t: (n,) -> (n,) float32."""
    return torch.exp(-(offset.float() - start).clamp(min=0.0) / tau)


def mixing_coefficient(
    student: torch.Tensor, post: torch.Tensor, offset: torch.Tensor, cfg: PactLossConfig
) -> torch.Tensor:
    """c_t = g_t (· decay_t when ``cfg.position_decay``); (n,), no gradient."""
    c = gate(
        student,
        post,
        alpha=cfg.gate_alpha,
        bias=cfg.gate_bias,
        mass=cfg.gate_mass,
        temperature=cfg.gate_temperature,
    )
    if cfg.position_decay:
        c = c * position_decay(offset, cfg.decay_start, cfg.decay_tau).to(c.device)
    return c


def weighted_target(reference: torch.Tensor, weights: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """q = normalize(softmax(reference / T) ⊙ w): (n, K) -> (n, K), rows summing to 1 (0 where w kills all mass)."""
    q = torch.softmax(reference.float() / temperature, dim=-1)
    if weights is not None:
        q = q * weights.to(q.device, q.dtype)
        q = q / q.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return q


def restricted_kl(student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² Σ_v q(v) (log q(v) − log softmax(student / T)(v)) per row: (n, K), (n, K) -> (n,). 0·log 0 = 0."""
    log_p = torch.log_softmax(student.float() / temperature, dim=-1)
    log_q = torch.where(target > 0, target.clamp_min(torch.finfo(target.dtype).tiny).log(), 0.0)
    return temperature**2 * (target * (log_q - log_p)).sum(dim=-1)


def pact_position_kl(
    student: torch.Tensor,
    full: torch.Tensor,
    post: torch.Tensor | None,
    offset: torch.Tensor,
    weights: torch.Tensor | None,
    cfg: PactLossConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL_t for every answer position and the mixing coefficients c_t (None when the post view is off)."""
    c = None
    with torch.no_grad():
        reference = full
        if cfg.post_reference:
            if post is None:
                raise ValueError("post_reference is on but no no-prompt reference logits were given")
            c = mixing_coefficient(student, post, offset, cfg)
            reference = (1.0 - c)[:, None] * full + c[:, None] * post
        target = weighted_target(reference, weights, cfg.temperature)
    return restricted_kl(student, target, cfg.temperature), c


class PactLoss:
    """The PACT term for :class:`~tokensafe.train.TokenSafeTrainer` (a :class:`~tokensafe.losses.LossTerm`).

    Args:
        token_ids: (K,) safety-token ids S, or None for the whole vocabulary (full-vocab KL baseline).
        weights: (K,) weights on S, or None for w = 1.
        reference: a :class:`ReferenceSource` (cached or live).
        cfg: the constants and ablation switches.
        sparse_grad: send the term's gradient to the logits as a sparse tensor (saves one (B, L, V) buffer per step).
            Right inside :class:`~tokensafe.train.TokenSafeTrainer`, whose CE on the same logits always supplies the
            dense gradient it is added to; set False to backpropagate the term on its own.
    """

    name = "pact"
    per_token_columns: tuple[str, ...] = ()

    def __init__(
        self,
        token_ids: torch.Tensor | None,
        weights: torch.Tensor | None,
        reference: ReferenceSource,
        cfg: PactLossConfig | None = None,
        name: str = "pact",
        sparse_grad: bool = True,
    ) -> None:
        self.token_ids = token_ids.long() if token_ids is not None else None
        self.weights = weights.float() if weights is not None else None
        if self.weights is not None and (self.token_ids is None or self.weights.shape != self.token_ids.shape):
            raise ValueError("weights need a safety-token set of the same size")
        self.reference = reference
        self.cfg = cfg or PactLossConfig()
        self.name = name
        self.sparse_grad = sparse_grad
        self.sample_columns = (reference.index_column,) if reference.index_column else ()
        self.last_gate_mean: float | None = None

    def position_kl(self, ctx: LossContext) -> tuple[torch.Tensor, AnswerLayout]:
        """KL_t (n,) for the answer positions of this micro-batch and their layout."""
        layout = answer_layout(ctx.labels)
        device = ctx.logits.device
        token_ids = self.token_ids.to(device) if self.token_ids is not None else None
        student = restrict(ctx.logits, layout.batch_index, layout.logit_index, token_ids, self.sparse_grad).float()
        full, post = self.reference(ctx, layout, token_ids)
        kl, c = pact_position_kl(student, full, post, layout.offset, self.weights, self.cfg)
        self.last_gate_mean = float(c.mean()) if c is not None and c.numel() else None
        return kl, layout

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        kl, _ = self.position_kl(ctx)
        return self.cfg.lam * kl.sum() / ctx.normaliser
