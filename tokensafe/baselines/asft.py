"""AsFT (Yang et al. 2025): CE + λ Σ_layers ‖(I − Ĉ) B A‖²_F, keeping the update inside the alignment directions.

Per LoRA layer with factors B: (d_out, r), A: (r, d_in) and Ĉ = V Vᵀ / ‖V‖_F with V = W_aligned − W_base, as in
SafeLoRA. **Convention: the penalty is on B A, without the LoRA scale s = α / r** (the authors' code and
DESIGN.md §1.3), although the update the adapter applies is s · B A: penalising s · B A would multiply λ by s²
(4 for r = 16, α = 32). To penalise the applied update at strength λ', use λ = λ' · s². Because (I − Ĉ) B A = B' A
with the thin B' = B − V (Vᵀ B) / ‖V‖_F (d_out, r)::

    ‖(I − Ĉ) B A‖²_F = Σ (B'ᵀ B') ⊙ (A Aᵀ)        two r × r Gram matrices: no (d_out, d_in) or d × d matrix

Ĉ is not a projector: its eigenvalues are λ_i = σ_i(V)² / ‖V‖_F (so λ_max(C) = σ_max(V)² / ‖V‖_F ≤ ‖V‖_F), and the
penalty weighs the update's component along eigenvector i by (1 − λ_i)²: 1 orthogonal to V, 0 only where λ_i = 1,
and more than orthogonal directions wherever λ_i > 2, the opposite of the intent. Whether Ĉ lets the alignment
directions pass therefore depends on the scale of V; ``asft_setup.json`` records ‖V‖_F and λ_max(C) per layer.

The term does not depend on the batch, so each micro-batch adds λ R / (grad_accum_steps · process_scale): one
optimiser step then carries exactly λ R, however the batch is split. Under DDP every process computes the same R and
the trainer multiplies each process's loss by the number of processes P (``process_scale``, which the token sums
need) before the gradients are averaged over the P processes: without the division by P the step would carry P λ R.
(The logged ``loss_asft`` is then process 0's share, λ R / P, like every term's log under DDP.)
The V of every layer stays in memory (the same size as the adapted base weights, ~50 MB for q,v of SmolLM2-135M).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokensafe.atomic import write_json
from tokensafe.baselines.directions import (
    AlignmentPair,
    LoraFactors,
    direction_stats,
    format_direction_range,
    frobenius_inner,
    model_lora_factors,
    project,
)
from tokensafe.losses import LossContext
from tokensafe.methods import MethodSetup, register_method

SETUP_FILE = "asft_setup.json"


@dataclass
class AsftLayer:
    """A LoRA layer's live factors and its fixed alignment direction (V on the factors' device)."""

    factors: LoraFactors
    v: torch.Tensor  # (d_out, d_in)
    v_norm: torch.Tensor  # ‖V‖_F, scalar


def residual_norm_sq(layer: AsftLayer) -> torch.Tensor:
    """‖(I − Ĉ) B A‖²_F of one layer (B A without the LoRA scale, see the module docstring), differentiable in A, B."""
    a, b = layer.factors.a, layer.factors.b
    residual_b = b - project(layer.v, b, layer.v_norm)
    return frobenius_inner(residual_b, residual_b, a @ a.T)


class AsftLoss:
    """The AsFT regulariser as a :class:`~tokensafe.losses.LossTerm`: λ Σ_layers ‖(I − Ĉ) B A‖²_F per step."""

    name = "asft"
    per_token_columns: tuple[str, ...] = ()
    sample_columns: tuple[str, ...] = ()

    def __init__(self, layers: list[AsftLayer], lam: float = 1.0) -> None:
        if not layers:
            raise ValueError("AsFT needs at least one LoRA layer")
        self.layers = layers
        self.lam = lam

    def regulariser(self) -> torch.Tensor:
        """Σ_layers ‖(I − Ĉ) B A‖²_F (scalar)."""
        return torch.stack([residual_norm_sq(layer) for layer in self.layers]).sum()

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        if self.lam == 0.0:
            return ctx.logits.new_zeros(())  # exactly SFT, without computing anything
        return self.lam * self.regulariser() / (max(1, int(ctx.grad_accum_steps)) * max(1, int(ctx.process_scale)))


def build_asft_loss(model: torch.nn.Module, pair: AlignmentPair, lam: float) -> AsftLoss:
    """Bind every LoRA layer of ``model`` to its alignment direction from ``pair``."""
    layers = []
    for factors in model_lora_factors(model):
        v, v_norm = pair.direction(factors.weight)
        if v.shape != (factors.b.shape[0], factors.a.shape[1]):
            raise ValueError(f"{factors.module}: LoRA update and V = W_aligned − W_base differ in shape")
        device = factors.b.device
        layers.append(AsftLayer(factors, v.to(device), v_norm.to(device)))
    return AsftLoss(layers, lam)


def setup_report(term: AsftLoss, **meta: Any) -> dict[str, Any]:
    """What ``asft_setup.json`` records: the convention, λ, and ‖V‖_F and λ_max(C) of every layer."""
    layers = []
    for layer in term.layers:
        stats = direction_stats(layer.v, layer.v_norm)
        layers.append({"module": layer.factors.module, "lora_scale": layer.factors.scale, **stats})
    return {**meta, "penalty": "B A (no LoRA scale s = alpha / r)", "lambda": term.lam, "layers": layers}


@register_method("asft")
def setup_asft(cfg: Any, model: Any, tokenizer: Any, dataset: Any):
    """METHODS['asft']: CE + λ Σ_layers ‖(I − Ĉ) B A‖²_F with Ĉ from ``safety_aligned_model − safety_base_model``.

    Writes ``<output_dir>/asft_setup.json`` (per-layer ‖V‖_F and λ_max(C)) and prints their range.
    """

    pair = AlignmentPair.load(cfg.safety_aligned_model, cfg.safety_base_model, cfg.cache_dir)
    term = build_asft_loss(model, pair, cfg.asft_lambda)
    output_dir = getattr(cfg, "output_dir", None)
    if output_dir:
        summary = setup_report(term, aligned=cfg.safety_aligned_model, base=cfg.safety_base_model)
        write_json(Path(output_dir) / SETUP_FILE, summary)
        print(f"asft: {format_direction_range(summary['layers'])}", flush=True)
    return MethodSetup(model=model, dataset=dataset, loss_terms=[term])
