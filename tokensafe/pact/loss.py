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

Remedies for over-refusal (issue 18; NOT in the paper, all off by default; docs/methods/pact.md §8):

* ``target="weighted_kl"`` (:func:`weighted_restricted_kl`): the weights as per-token importance inside a divergence
  between p_ref = softmax(z_ref / T) and p_θ (both renormalised over S), whose minimum is p_θ = p_ref::

      KL^w_t = T² Σ_{s∈S} w̄_s (p_ref,s (ln p_ref,s − ln p_θ,s) − p_ref,s + p_θ,s),   w̄ = w / mean_S(w)

  The official target is not the reference: at p_θ = p_ref the official term is T² (E_q[ln w] − ln E_p[w]) > 0.
* ``target="floor"``: KL_t − KL_t(at the starting model's logits ℓ^full_t[S]): 0 at step 0, *same gradient*.
* ``positions="first_k"`` / ``"ref_mass"`` (:func:`position_mask`): KL_t only on the first K answer tokens, or where
  the reference puts at least m of its whole-vocabulary probability on S; other positions contribute 0 (the
  normaliser stays N_labelled).

Efficiency: only logits[b, t, S] at answer positions are gathered ((n, K), a few hundred floats per sequence); the
reference side is read from the cache or computed by a no-grad forward, never kept as a full-vocab tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

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
    # Not in the paper (issue 18 remedies; defaults = the official term):
    target: Literal["official", "weighted_kl", "floor"] = "official"
    positions: Literal["all", "first_k", "ref_mass"] = "all"
    first_k: int = 8  # K of positions="first_k"
    ref_mass_min: float = 0.1  # m of positions="ref_mass"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")

    @property
    def uses_post(self) -> bool:
        return self.post_reference


TARGETS = ("official", "weighted_kl", "floor")
POSITIONS = ("all", "first_k", "ref_mass")
REF_MASS_COLUMN = "pact_ref_mass"  # per-token column: the reference's probability mass on S predicting that token


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


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for the loss arithmetic (bf16 / fp16 logits), float64 kept (the hand-computation tests use it)."""
    return x if x.dtype == torch.float64 else x.float()


def weighted_target(reference: torch.Tensor, weights: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """q = normalize(softmax(reference / T) ⊙ w): (n, K) -> (n, K), rows summing to 1 (0 where w kills all mass)."""
    q = torch.softmax(_wide(reference) / temperature, dim=-1)
    if weights is not None:
        q = q * weights.to(q.device, q.dtype)
        q = q / q.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return q


def restricted_kl(student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² Σ_v q(v) (log q(v) − log softmax(student / T)(v)) per row: (n, K), (n, K) -> (n,). 0·log 0 = 0."""
    log_p = torch.log_softmax(_wide(student) / temperature, dim=-1)
    log_q = torch.where(target > 0, target.clamp_min(torch.finfo(target.dtype).tiny).log(), 0.0)
    return temperature**2 * (target * (log_q - log_p)).sum(dim=-1)


def weighted_restricted_kl(
    student: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """The importance-weighted KL of ``target="weighted_kl"`` (not in the paper): (n, K), (n, K), (K,) -> (n,).

    With p = softmax(reference / T) and p_θ = softmax(student / T), both renormalised over S (the only normalisation
    the S-restricted reference cache allows; it is also the official term's), and w̄ = w / mean_S(w) (w = 1 when
    ``weights`` is None)::

        KL^w = T² Σ_{s∈S} w̄_s (p_s (ln p_s − ln p_θ,s) − p_s + p_θ,s)

    The first part is Σ w̄ p ln(p / p_θ); the second, Σ w̄ (p_θ − p), is what makes it a divergence. Without it,
    Σ_s w̄_s p_s (ln p_s − ln p_θ,s) = E_p[w̄] · KL(q ‖ p_θ) + const with q = normalize(p ⊙ w): its minimum is the
    official target q again (and it can be negative). Each summand is a generalised KL between two positive numbers,
    a ln(a/b) − a + b ≥ 0 (from ln x ≤ x − 1 with x = b/a), zero iff a = b. With w̄ ≥ 0: KL^w ≥ 0, and KL^w = 0 iff
    p_θ,s = p_s on every s with w_s > 0 — on all of S when no weight is 0; tokens with w_s = 0 are free up to the
    total mass they share. At p_θ = p the gradient is 0 too (∂/∂p_θ,s = w̄_s (1 − p_s / p_θ,s)). With w = 1 it is
    exactly T² KL(p ‖ p_θ), the `tokens` stage of the ladder. Dividing by mean_S(w) makes w shape, not scale: the
    same λ for the official weights (‖w‖₂ ≤ 1) and the paper's (raw D values, ~1e-2), and λ means what it means for
    the unweighted KL over S.
    """
    with torch.no_grad():
        log_p = torch.log_softmax(_wide(reference) / temperature, dim=-1)
        p = log_p.exp()
        if weights is None:
            w_bar = torch.ones(p.size(-1), dtype=p.dtype, device=p.device)
        else:
            w = weights.to(p.device, p.dtype)
            w_bar = w / w.mean().clamp_min(torch.finfo(p.dtype).tiny)
    log_q = torch.log_softmax(_wide(student) / temperature, dim=-1)
    terms = p * (log_p - log_q) - p + log_q.exp()
    return temperature**2 * (w_bar * terms).sum(dim=-1)


def position_mask(offset: torch.Tensor, ref_mass: torch.Tensor | None, cfg: PactLossConfig) -> torch.Tensor | None:
    """Which answer positions get the KL (not in the paper): (n,) bool, or None for all of them.

    ``first_k``: offset t < K (t = 0 at the first answer token), where refusal is decided. ``ref_mass``: the
    reference's whole-vocabulary probability on S, Σ_{s∈S} p_ref(s | x, y<t) (full-context view), is ≥ m: the
    constraint acts only where the reference itself is about to say a safety token.
    """
    if cfg.positions == "all":
        return None
    if cfg.positions == "first_k":
        return offset < cfg.first_k
    if ref_mass is None:
        raise ValueError(f"positions='ref_mass' needs the '{REF_MASS_COLUMN}' column (the reference's mass on S)")
    return ref_mass >= cfg.ref_mass_min


def pact_position_kl(
    student: torch.Tensor,
    full: torch.Tensor,
    post: torch.Tensor | None,
    offset: torch.Tensor,
    weights: torch.Tensor | None,
    cfg: PactLossConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL_t for every answer position and the mixing coefficients c_t (None when the post view is off).

    ``cfg.target`` (``official`` unless set): ``weighted_kl`` → :func:`weighted_restricted_kl` towards the mixed
    reference; ``floor`` → the official KL_t minus the official KL_t of the starting model's own logits ``full``
    towards the same target q_t. That subtracted value has no gradient (q_t and ``full`` are fixed), so ``floor``
    trains exactly like ``official``: it only moves the logged value to 0 at the start (and lets it go negative).
    """
    c = None
    start = None
    with torch.no_grad():
        reference = full
        if cfg.post_reference:
            if post is None:
                raise ValueError("post_reference is on but no no-prompt reference logits were given")
            c = mixing_coefficient(student, post, offset, cfg)
            reference = (1.0 - c)[:, None] * full + c[:, None] * post
        if cfg.target != "weighted_kl":
            target = weighted_target(reference, weights, cfg.temperature)
            if cfg.target == "floor":
                start = restricted_kl(full, target, cfg.temperature)
    if cfg.target == "weighted_kl":
        return weighted_restricted_kl(student, reference, weights, cfg.temperature), c
    kl = restricted_kl(student, target, cfg.temperature)
    return (kl - start if start is not None else kl), c


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
        if self.cfg.positions == "ref_mass":
            self.per_token_columns = (REF_MASS_COLUMN,)
        self.last_gate_mean: float | None = None

    def position_kl(self, ctx: LossContext) -> tuple[torch.Tensor, AnswerLayout]:
        """KL_t (n,) for the answer positions of this micro-batch and their layout."""
        layout = answer_layout(ctx.labels)
        device = ctx.logits.device
        token_ids = self.token_ids.to(device) if self.token_ids is not None else None
        student = _wide(restrict(ctx.logits, layout.batch_index, layout.logit_index, token_ids, self.sparse_grad))
        full, post = self.reference(ctx, layout, token_ids)
        kl, c = pact_position_kl(student, full, post, layout.offset, self.weights, self.cfg)
        self.last_gate_mean = float(c.mean()) if c is not None and c.numel() else None
        ref_mass = None
        if self.cfg.positions == "ref_mass" and REF_MASS_COLUMN in ctx.inputs:
            column = ctx.inputs[REF_MASS_COLUMN].to(device)
            ref_mass = column[layout.batch_index, layout.logit_index + 1]  # the value sits on the predicted token
        keep = position_mask(layout.offset, ref_mass, self.cfg)
        if keep is not None:  # positions outside contribute 0; the normaliser (N_labelled) is unchanged
            kl = torch.where(keep, kl, torch.zeros_like(kl))
        return kl, layout

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        kl, _ = self.position_kl(ctx)
        return self.cfg.lam * kl.sum() / ctx.normaliser
