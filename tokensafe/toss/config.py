"""TOSS settings that `tokensafe train` needs (a light module: `tokensafe.train` imports it for its config).

The full TOSS pipeline config (reference training, scoring, TOSS-Pro) lives in :mod:`tokensafe.toss.commands`;
this mixin only holds what selective fine-tuning reads: where the scores are and how to turn them into a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from tokensafe.config import Checked, check_exists, check_source, check_steps, option

SelectionMode = Literal["global", "per_sample", "threshold", "soft"]
SELECTION_MODES: tuple[str, ...] = get_args(SelectionMode)


@dataclass
class TossArgs(Checked):
    """Token selection for `tokensafe train --method toss` (and every `toss-*` command)."""

    scores: str | None = option(
        None, "TOSS token scores (a scores.safetensors file or a directory holding one) for --method toss"
    )
    toss_mode: SelectionMode = option(
        "global",
        "how scores become a mask: global (drop the top rho of all response tokens, the paper's default), "
        "per_sample (top rho of each sample), threshold (drop score > toss_threshold), soft (weight sigmoid(-s/tau))",
    )
    toss_rho: float = option(0.2, "share of response tokens dropped by the global / per_sample modes", ge=0, le=1)
    toss_threshold: float = option(0.0, "threshold mode: drop tokens whose score (nats) is above this")
    toss_tau: float = option(1.0, "soft mode: temperature tau of the weight sigmoid(-score / tau)", gt=0)
    toss_smooth: int = option(
        0,
        "rank a centred moving average of the scores over +-w response tokens of the same sample instead of the raw "
        "score (0 = off, the paper); the average is less noisy than one token's loss difference",
        ge=0,
    )


@dataclass
class ReferenceArgs(Checked):
    """The two TOSS reference adapters: corpora (disjoint from the fine-tuning set) and their LoRA training.

    Paper settings: LoRA r=16, alpha=16, dropout 0 on q_proj,v_proj; AdamW lr 1e-5 constant, betas (0.9, 0.95);
    2 epochs; global batch 64; each reference trained on ~20% of the data volume. A CPU run trains on ~100 samples
    per reference with batch 8, i.e. ~25 optimiser steps instead of hundreds, so the default learning rate is
    scaled up (2e-4) to move the adapters as far in a few minutes; the other settings follow the paper.
    """

    toss_dir: str = option("runs/toss", "where reference adapters, scores, selections and TOSS-Pro rounds go")
    harmful_ref: str = option("pure_bad", "named harmful source the safety-degraded reference D is trained on")
    harmful_ref_split: str | None = option(None, "split of harmful_ref (none = its default split)")
    harmful_ref_path: str | None = option(None, "explicit file for harmful_ref (same layout as the source)")
    harmful_ref_n: int | None = option(None, "use the first N records of harmful_ref (none = all)", ge=1)
    utility_ref: str = option("alpaca", "named utility source the utility reference U is trained on")
    utility_ref_split: str | None = option(None, "split of utility_ref (none = its default split)")
    utility_ref_path: str | None = option(None, "explicit file for utility_ref (same layout as the source)")
    utility_ref_n: int | None = option(100, "use the first N records of utility_ref (none = all)", ge=1)
    utility_ref_safety: str | None = option(
        None,
        "named source of safety demonstrations (harmful prompt -> refusal, e.g. safeinstr) added to U's corpus so "
        "that U keeps the aligned model's refusals: fine-tuning on benign data alone erodes them, and a U that "
        "explains harmful answers as well as D does cannot tell them apart",
    )
    utility_ref_safety_n: int = option(100, "use the first N records of utility_ref_safety", ge=1)
    ref_max_length: int | None = option(None, "maximum tokens per reference training sample (none = max_length)", ge=1)
    ref_drop_overlap: bool = option(
        False, "drop reference records that overlap the fine-tuning set instead of refusing to train"
    )
    ref_lora_r: int = option(16, "reference LoRA rank (paper: 16)", ge=1)
    ref_lora_alpha: int = option(16, "reference LoRA alpha (paper: 16)", gt=0)
    ref_lora_dropout: float = option(0.0, "reference LoRA dropout (paper: 0)", ge=0, lt=1)
    ref_lora_target_modules: list[str] = option(["q_proj", "v_proj"], "reference LoRA target modules (paper: q,v)")
    ref_learning_rate: float = option(
        2e-4, "reference learning rate, constant (paper: 1e-5 with ~10x more steps)", gt=0
    )
    ref_epochs: float = option(2.0, "reference training epochs (paper: 2)", gt=0)
    ref_u_epochs: float | None = option(
        None, "epochs of U alone (none = ref_epochs): a small task corpus is memorised long before D has moved", gt=0
    )
    ref_max_steps: int = option(-1, "stop reference training after this many steps (-1 = use ref_epochs)")
    ref_batch_size: int = option(8, "reference micro-batch size", ge=1)
    ref_grad_accum: int = option(1, "reference gradient accumulation (paper: global batch 64)", ge=1)
    ref_adam_beta1: float = option(0.9, "reference AdamW beta1 (paper: 0.9)", ge=0, lt=1)
    ref_adam_beta2: float = option(0.95, "reference AdamW beta2 (paper: 0.95)", ge=0, lt=1)

    def _check(self) -> None:
        check_steps(self, "ref_max_steps")
        check_source(self.harmful_ref, "harmful_ref", self.harmful_ref_split, "harmful_ref_split")
        check_source(self.utility_ref, "utility_ref", self.utility_ref_split, "utility_ref_split")
        check_source(self.utility_ref_safety, "utility_ref_safety")

    def _check_inputs(self) -> None:
        check_exists(self.harmful_ref_path, "harmful_ref_path", "file")
        check_exists(self.utility_ref_path, "utility_ref_path", "file")


@dataclass
class ScoringArgs(Checked):
    """Per-token scoring of the fine-tuning set under U and D."""

    score_batch_tokens: int = option(4096, "padded tokens per scoring batch (samples are sorted by length)", ge=1)
    score_shard_samples: int = option(128, "samples per shard; a killed run resumes after the last full shard", ge=1)
    score_chunk_tokens: int = option(
        64, "positions per vocabulary-projection chunk (memory: chunk x vocab floats)", ge=1
    )
    score_share_prefix: int = option(
        8,
        "run a prefix shared by a whole batch (system prompt, instruction) once when it has >= N tokens (0 = off)",
        ge=0,
    )


@dataclass
class ProArgs(Checked):
    """TOSS-Pro: retrain D on the flagged tokens, re-score, re-select, until the flagged set settles."""

    use_pro: bool = option(False, "the `toss` pipeline runs TOSS-Pro rounds before fine-tuning")
    pro_rounds: int = option(3, "maximum TOSS-Pro rounds R", ge=1)
    pro_jaccard_stop: float = option(
        0.9, "stop when the flagged set's Jaccard overlap with the last round exceeds this (> 1 = never)", ge=0
    )
    pro_folds: int = option(
        2,
        "cross-fitting folds: D for fold k is trained on the flagged tokens of the other folds, so no token is "
        "scored by a model trained on it (1 = train and score on everything, the literal reading)",
        ge=1,
    )
    pro_rho: float | None = option(
        None,
        "share of tokens (global top) that D is retrained on each round (none = toss_rho); smaller = purer",
        ge=0,
        le=1,
    )
    pro_init: Literal["reference", "base"] = option(
        "reference", "D_{r+1} starts from: reference (the trained D adapter) or base (fresh LoRA)"
    )
    pro_epochs: float | None = option(None, "epochs of each D retraining (none = ref_epochs)", gt=0)


@dataclass
class ViewArgs(Checked):
    """The token-risk view."""

    view_html: str | None = option(None, "HTML token-risk page to write (none = <toss_dir>/token_view.html)")
    view_samples: int = option(40, "samples shown on the page (the highest-scoring first)", ge=1)
    view_sample: int = option(-1, "print this sample's tokens coloured by score in the terminal (-1 = none)", ge=-1)
