"""Baseline settings read by `tokensafe train --method <baseline>` (a light module: `tokensafe.train` imports it).

The SafeInstr data option (``safeinstr_n``) lives in :class:`~tokensafe.data.mixtures.MixtureArgs` instead, because it
changes the mixture itself and every consumer of the mixture (TOSS scoring, PACT caches) must see the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from tokensafe.config import Checked, option

SafeLoraSelect = Literal["number", "threshold"]
SAFELORA_SELECT: tuple[str, ...] = get_args(SafeLoraSelect)
CsftForm = Literal["weighted", "exact"]


@dataclass
class AlignmentPairArgs(Checked):
    """The aligned/base pair whose weight difference V = W_aligned − W_base spans the "alignment directions"."""

    safety_aligned_model: str = option(
        "aligned", "aligned model of the pair V = W_aligned − W_base (safelora, asft); usually the model fine-tuned"
    )
    safety_base_model: str = option("default", "base (unaligned) model of the pair V = W_aligned − W_base")


@dataclass
class SafeLoraArgs(AlignmentPairArgs):
    """SafeLoRA (Hsu et al. 2024): project the least alignment-like LoRA updates with C = V Vᵀ/‖V‖_F."""

    safelora_select: SafeLoraSelect = option("number", "layer selection: number (the N lowest cosines) or threshold")
    safelora_layers: int = option(10, "number mode: project this many lowest-cosine LoRA layers", ge=0)
    safelora_threshold: float = option(0.5, "threshold mode: project every LoRA layer whose cosine is below this")


@dataclass
class BaselineArgs(SafeLoraArgs):
    """Baseline defences for `tokensafe train --method constrained_sft|safelora|asft|sample_random|sample_score`."""

    csft_form: CsftForm = option(
        "weighted",
        "constrained_sft: weighted = CE with the detached per-token weight max(2 (1 − σ(β_t Δ_t)), 1e-3) (same "
        "gradient as exact wherever the floor is inactive, value on the CE scale, exactly SFT at Δ = 0); exact = "
        "−(2/β_t) log σ(β_t Δ_t) (Qi et al.'s loss as written; its value is not on the CE scale)",
    )
    csft_beta_first: float = option(0.5, "constrained_sft: β_1, for the first response token", gt=0)
    csft_beta_early: float = option(2.0, "constrained_sft: β_t for response tokens 2 .. csft_early_until", gt=0)
    csft_early_until: int = option(5, "constrained_sft: last response token (1-based) that gets csft_beta_early", ge=1)
    csft_beta_late: float = option(0.1, "constrained_sft: β_t for every later response token", gt=0)
    csft_reference_model: str | None = option(
        None, "constrained_sft: reference model (none = --model before training, i.e. the LoRA base)"
    )
    csft_batch_size: int = option(8, "constrained_sft: batch size of the one-off reference log-prob pass", ge=1)
    asft_lambda: float = option(1.0, "asft: λ, weight of Σ_layers ‖(I − Ĉ) B A‖²_F (B A without the LoRA scale)", ge=0)
    sample_rho: float = option(0.2, "sample_random / sample_score: share of samples dropped", ge=0, lt=1)
