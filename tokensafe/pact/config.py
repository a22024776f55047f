"""PACT settings read by `tokensafe train --method pact|kl` (a light module: `tokensafe.train` imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokensafe.config import Checked, check_source, option, require

# The paper's ablation ladder (AG News, p = 10%): each stage adds one switch to the previous one.
LADDER: dict[str, dict[str, bool]] = {
    "kl": dict(pact_safety_subset=False, pact_weights=False, pact_post_reference=False, pact_position_decay=False),
    "tokens": dict(pact_safety_subset=True, pact_weights=False, pact_post_reference=False, pact_position_decay=False),
    "weights": dict(pact_safety_subset=True, pact_weights=True, pact_post_reference=False, pact_position_decay=False),
    "post": dict(pact_safety_subset=True, pact_weights=True, pact_post_reference=True, pact_position_decay=False),
    "full": dict(pact_safety_subset=True, pact_weights=True, pact_post_reference=True, pact_position_decay=True),
}


LadderStage = Literal["kl", "tokens", "weights", "post", "full"]


@dataclass
class PactArgs(Checked):
    """PACT settings (only read by --method pact / kl). Defaults are the official ones."""

    pact_safety_tokens: str | None = option(
        None,
        "safety tokens from `tokensafe pact safety-tokens` (directory or JSON); none = identify them now (cached)",
    )
    pact_base_model: str = option("default", "base model the aligned --model is compared with to find safety tokens")
    pact_prompts: str = option("harmful_train", "harmful prompt source for identifying safety tokens (training set)")
    pact_n_prompts: int = option(100, "number of harmful prompts for identifying safety tokens", ge=1)
    pact_prompts_split: str | None = option(None, "split of pact_prompts (none = the source's default split)")
    pact_responses: Literal["generate", "given"] = option(
        "generate", "responses to the harmful prompts: generate (the aligned model's greedy answers) or given"
    )
    pact_max_new_tokens: int = option(
        64, "maximum length of the aligned model's responses when identifying tokens", ge=1
    )
    pact_top_k: int = option(50, "K, the number of safety tokens", ge=1)
    pact_select_by: Literal["prob", "diff"] = option(
        "prob", "rank safety tokens by 'prob' (official code) or 'diff' (paper text)"
    )
    pact_lambda: float = option(1.0, "λ, weight of the KL term (1 in the code README, 3 in the paper)", ge=0)
    pact_temperature: float = option(2.0, "T, KL temperature", gt=0)
    pact_gate_alpha: float = option(2.0, "α, gate slope")
    pact_gate_bias: float = option(0.0, "b, gate bias")
    pact_gate_mass: float = option(0.9, "top-k mass threshold of the dispersion proxy", gt=0, le=1)
    pact_gate_temperature: float = option(
        1.0, "temperature of the softmax inside the dispersion proxy (spec: 1)", gt=0
    )
    pact_decay_start: int = option(8, "N, answer tokens before the position decay starts", ge=0)
    pact_decay_tau: float = option(8.0, "τ, position decay length", gt=0)
    pact_ladder: LadderStage | None = option(
        None, "ablation stage kl|tokens|weights|post|full; sets the four switches below (none = use them as given)"
    )
    pact_safety_subset: bool = option(True, "restrict the KL to the safety tokens (false = whole vocabulary)")
    pact_weights: bool = option(True, "weight the target by the safety-token weights (false = w = 1)")
    pact_post_reference: bool = option(True, "mix in the no-prompt reference through the gate")
    pact_position_decay: bool = option(True, "decay the no-prompt mixing with the answer position")
    pact_reference: Literal["cache", "adapter", "model"] = option(
        "cache", "reference source: cache (precomputed), adapter (LoRA disabled, live), model (separate frozen copy)"
    )
    pact_reference_model: str | None = option(None, "model used as the reference (default: --model before training)")
    pact_post_system: Literal["keep", "drop"] = option(
        "keep", "no-prompt view keeps the template's system turn (keep) or drops it"
    )
    pact_cache_dtype: Literal["float32", "float16"] = option(
        "float32", "dtype of the cached reference logits (float32 or float16)"
    )
    pact_batch_size: int = option(4, "batch size of PACT's no-grad passes (generation, teacher forcing, cache)", ge=1)
    # Remedies for over-refusal (issue 18; none is in the official code, only the paper weighting is in the paper;
    # all off by default): docs/methods/pact.md §8.
    pact_target: Literal["official", "weighted_kl", "floor"] = option(
        "official",
        "KL target (not in the paper unless official): official = KL(normalize(p_ref ⊙ w) ‖ p_θ); weighted_kl = "
        "Σ_S w̄_s (p_ref ln(p_ref/p_θ) − p_ref + p_θ), w̄ = w / mean_S(w), minimum at p_θ = p_ref; floor = official "
        "minus its value at the starting model (same gradient, only the logged value changes)",
    )
    pact_weighting: Literal["official", "paper"] = option(
        "official",
        "safety-token weights: official = D on S z-scored, L2-normalised, clamped at 0; paper = max(D, 0) as it is "
        "(not in the official code)",
    )
    pact_positions: Literal["all", "first_k", "ref_mass"] = option(
        "all",
        "answer positions that get the KL (not in the paper unless all): all; first_k = the first pact_first_k "
        "tokens of each answer; ref_mass = where the reference puts >= pact_ref_mass_min of its probability on S",
    )
    pact_first_k: int = option(8, "K of pact_positions=first_k: answer tokens (from the first) that get the KL", ge=1)
    pact_ref_mass_min: float = option(
        0.1, "m of pact_positions=ref_mass: minimum total reference probability on S (whole vocabulary)", ge=0, le=1
    )
    pact_contrast_borderline: int = option(
        0,
        "add this many borderline-but-safe training prompts to the safety-token identification and subtract their "
        "answers' P and D (contrastive S; not in the paper; 0 = off)",
        ge=0,
    )

    def _check(self) -> None:
        check_source(self.pact_prompts, "pact_prompts", self.pact_prompts_split, "pact_prompts_split")
        from tokensafe.pact.safety_tokens import EVALUATION_SOURCES

        require(
            self.pact_prompts not in EVALUATION_SOURCES,
            f"pact_prompts {self.pact_prompts!r} is an evaluation set (identifying safety tokens on it leaks the test "
            "prompts)",
            field="pact_prompts",
            hint="use a training set such as harmful_train or advbench",
        )
        require(
            self.pact_positions != "ref_mass" or self.pact_safety_subset,
            "pact_positions=ref_mass needs the safety-token subset (over the whole vocabulary the mass is always 1)",
            field="pact_positions",
        )
