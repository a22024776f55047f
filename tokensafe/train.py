"""The training core: one ``transformers.Trainer`` subclass whose loss is token-weighted CE plus extra terms.

Why ``Trainer`` and not TRL's ``SFTTrainer``: our data is already tokenised once, canonically (scores, masks and
reference caches are aligned to those exact tokens), so SFTTrainer's own tokenisation, truncation and column
pruning would only have to be undone. The loss is normalised by the number of labelled tokens across gradient
accumulation and processes (``num_items_in_batch``), so 1 process x batch 4 and 2 processes x batch 2 train
identically; the same code runs under ``accelerate launch`` / ``torchrun`` (DDP, FSDP, DeepSpeed configs).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from tokensafe.baselines.config import BaselineArgs
from tokensafe.collator import TokenCollator
from tokensafe.config import option, save_config
from tokensafe.data.dataset import TokenizedStats, build_tokenized_dataset
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext, LossTerm, weighted_ce_sum
from tokensafe.models import DEFAULT_MODEL, LoraArgs, apply_lora, load_model
from tokensafe.pact.config import PactArgs
from tokensafe.sampling import ShuffledLengthBatches
from tokensafe.toss.config import TossArgs


@dataclass
class OptimArgs:
    """Optimisation settings (CPU-sized defaults)."""

    output_dir: str = option("runs/train", "where checkpoints, the final model and metrics are written")
    epochs: float = option(1.0, "number of epochs")
    max_steps: int = option(-1, "stop after this many optimiser steps (-1 = use epochs)")
    batch_size: int = option(4, "per-device micro-batch size")
    grad_accum: int = option(1, "gradient accumulation steps")
    learning_rate: float = option(2e-4, "peak learning rate")
    lr_scheduler: str = option("constant", "transformers scheduler name (constant, linear, cosine, ...)")
    warmup_ratio: float = option(0.0, "share of steps used for linear warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    seed: int = option(0, "seed for initialisation and data order")
    logging_steps: int = option(5, "log every N optimiser steps")
    save_steps: int = option(0, "checkpoint every N steps (0 = only at the end)")
    save_total_limit: int = option(2, "number of checkpoints kept")
    resume: str | None = option(None, "resume from a checkpoint directory, or 'last' for the newest in output_dir")
    threads: int = option(0, "torch CPU threads (0 = torch default)")
    group_by_length: bool = option(
        False,
        "cut batches from samples of similar length (less padding, faster on CPU) and visit the batches in a "
        "seeded random order",
    )


@dataclass
class TrainConfig(BaselineArgs, TossArgs, PactArgs, MixtureArgs, LoraArgs, OptimArgs):
    """`tokensafe train`: fine-tune a model on a (possibly poisoned) mixture."""

    model: str = option(DEFAULT_MODEL, "model spec: default, a .gguf file, an HF directory, or a named local model")
    method: str = option("sft", "training method: sft, or one registered in tokensafe.train.METHODS")
    max_length: int = option(256, "maximum tokens per sample (longer samples are truncated and counted)")
    cache_dir: str | None = option(None, "cache root for converted models and tokenised data")


class LossLogCallback(TrainerCallback):
    """Keeps every logged training loss so callers (and tests) can check it fell."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers signature
        if logs and "loss" in logs:
            self.history.append(
                {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            )


class TokenSafeTrainer(Trainer):
    """``Trainer`` with loss = sum_t w_t * CE_t / N_labelled + sum of extra terms.

    Inputs per batch: ``input_ids``, ``attention_mask``, ``labels`` (B, L), optional ``weights`` (B, L), plus the
    columns extra terms declare. A batch whose labels are all masked yields loss 0 (never 0/0). A term with
    ``replaces_ce = True`` (constrained SFT) is the whole token loss: the CE is then not computed.
    """

    def __init__(
        self, *args: Any, loss_terms: Sequence[LossTerm] = (), group_by_length: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_terms = list(loss_terms)
        self.group_by_length = group_by_length
        # Make Trainer count labelled tokens across gradient accumulation and processes (num_items_in_batch) and
        # skip its own division by the accumulation steps: our loss is already normalised by that count.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._term_logs: dict[str, list[float]] = {}

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return ShuffledLengthBatches(lengths, self._train_batch_size, seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        labels = inputs["labels"]
        weights = inputs.get("weights")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits
        if any(getattr(term, "replaces_ce", False) for term in self.loss_terms):
            ce_sum, n_labelled = logits.new_zeros(()), (labels[:, 1:] != IGNORE_INDEX).sum()
        else:
            ce_sum, n_labelled = weighted_ce_sum(logits, labels, weights)
        total = num_items_in_batch if num_items_in_batch is not None else n_labelled
        normaliser = torch.clamp(torch.as_tensor(total, device=logits.device, dtype=torch.float32), min=1.0)
        loss = ce_sum / normaliser
        # DDP averages gradients over processes while our normaliser already counts every process's tokens.
        process_scale = (
            self.accelerator.num_processes
            if num_items_in_batch is not None and self.args.average_tokens_across_devices
            else 1
        )
        if self.loss_terms:
            ctx = LossContext(
                model=model,
                inputs=inputs,
                logits=logits,
                labels=labels,
                normaliser=normaliser,
                grad_accum_steps=getattr(self, "current_gradient_accumulation_steps", 1),
                process_scale=process_scale,
            )
            for term in self.loss_terms:
                value = term(ctx)
                loss = loss + value
                self._term_logs.setdefault(term.name, []).append(float(value.detach()))
        if process_scale != 1:
            loss = loss * process_scale
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for name, values in self._term_logs.items():
            if values:
                logs[f"loss_{name}"] = round(sum(values) / len(values), 6)
        self._term_logs = {}
        super().log(logs, *args, **kwargs)


def training_arguments(cfg: OptimArgs, **overrides: Any) -> TrainingArguments:
    """CPU-safe TrainingArguments from our config: fp32, no hub, no external reporters, safetensors checkpoints."""
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=cfg.save_total_limit,
        report_to=[],
        remove_unused_columns=False,  # extra per-token columns (weights, caches) must reach compute_loss
        bf16=False,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def find_last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def training_columns(loss_terms: Sequence[LossTerm]) -> tuple[list[str], list[str]]:
    per_token = ["weights"] + [c for t in loss_terms for c in t.per_token_columns]
    per_sample = [c for t in loss_terms for c in t.sample_columns]
    return per_token, per_sample


def train_model(
    model: PreTrainedModel,
    tokenizer: Any,
    dataset: datasets.Dataset,
    cfg: OptimArgs,
    *,
    loss_terms: Sequence[LossTerm] = (),
    callbacks: Sequence[TrainerCallback] = (),
    **argument_overrides: Any,
) -> tuple[TokenSafeTrainer, LossLogCallback]:
    """Train ``model`` on a tokenised dataset (input_ids, labels, optional weights and term columns).

    Provenance columns are removed before the trainer ever sees the data, so no method can read them.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    per_token, per_sample = training_columns(loss_terms)
    keep = [c for c in ["input_ids", "labels", *per_token, *per_sample] if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    loss_log = LossLogCallback()
    trainer = TokenSafeTrainer(
        model=model,
        args=training_arguments(cfg, **argument_overrides),
        train_dataset=dataset,
        data_collator=TokenCollator(tokenizer.pad_token_id, per_token_columns=per_token, sample_columns=per_sample),
        processing_class=tokenizer,
        loss_terms=loss_terms,
        group_by_length=cfg.group_by_length,
        callbacks=[loss_log, *callbacks],
    )
    resume = find_last_checkpoint(cfg.output_dir) if cfg.resume == "last" else cfg.resume
    trainer.train(resume_from_checkpoint=resume)
    return trainer, loss_log


@dataclass
class MethodSetup:
    """What a training method contributes: the (augmented) dataset, extra loss terms, and an optional post-step.

    ``dataset`` may gain per-token columns (``weights``, cache indices) that the method's loss terms declare.
    ``post_train(model, output_dir)`` runs after training (e.g. a projection of the adapter) before saving; it changes
    ``model`` in place.
    """

    model: PreTrainedModel
    dataset: datasets.Dataset
    loss_terms: list[LossTerm] = field(default_factory=list)
    post_train: Callable[[PreTrainedModel, str], PreTrainedModel] | None = None


def setup_sft(cfg: TrainConfig, model: PreTrainedModel, tokenizer: Any, dataset: datasets.Dataset) -> MethodSetup:
    """Plain SFT on every response token."""
    return MethodSetup(model=model, dataset=dataset)


# method name -> "module:function" with the signature of setup_sft; resolved lazily so methods stay optional.
METHODS: dict[str, str] = {
    "sft": "tokensafe.train:setup_sft",
    "toss": "tokensafe.toss.method:setup_toss",
    "pact": "tokensafe.pact.method:setup_pact",
    "kl": "tokensafe.pact.method:setup_kl",
    "constrained_sft": "tokensafe.baselines.constrained_sft:setup_constrained_sft",
    "safelora": "tokensafe.baselines.safelora:setup_safelora",
    "asft": "tokensafe.baselines.asft:setup_asft",
    "safeinstr": "tokensafe.baselines.safeinstr:setup_safeinstr",
    "sample_random": "tokensafe.baselines.sample_selection:setup_sample_random",
    "sample_score": "tokensafe.baselines.sample_selection:setup_sample_score",
}


def resolve_method(name: str) -> Callable[..., MethodSetup]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    module, _, function = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass
class TrainResult:
    output_dir: str
    final_model_dir: str
    stats: TokenizedStats
    loss_history: list[dict[str, float]]
    seconds: float
    sources: dict[str, int] = field(default_factory=dict)  # samples per data source (provenance of the mixture)

    def summary(self) -> dict[str, Any]:
        losses = [h["loss"] for h in self.loss_history]
        return {
            "output_dir": self.output_dir,
            "final_model_dir": self.final_model_dir,
            "first_loss": losses[0] if losses else math.nan,
            "last_loss": losses[-1] if losses else math.nan,
            "logged_losses": losses,
            "seconds": round(self.seconds, 1),
            "data": self.stats.__dict__,
            "sources": self.sources,
        }


def finish_distributed() -> None:
    """Under torchrun: wait for every rank, then tear the process group down.

    Exiting with a live gloo process group leaves its worker threads joinable, and the C++ runtime can then abort at
    interpreter exit ("terminate called without an active exception") after all the work was done and saved.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_train(cfg: TrainConfig) -> TrainResult:
    """`tokensafe train`: build the mixture, tokenise (cached), fine-tune, save the final adapter/model."""
    setup_method = resolve_method(cfg.method)
    start = time.time()
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    records = build_mixture(cfg)
    dataset, stats = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    print("\n".join(["data:", *("  " + line for line in stats.lines())]), flush=True)
    model = apply_lora(model, cfg)
    setup = setup_method(cfg, model, tokenizer, dataset)
    trainer, loss_log = train_model(setup.model, tokenizer, setup.dataset, cfg, loss_terms=setup.loss_terms)
    if setup.post_train is not None:
        setup.post_train(trainer.model, cfg.output_dir)
    final_dir = Path(cfg.output_dir) / "final"
    trainer.save_model(str(final_dir))  # adapter_model.safetensors for LoRA, model.safetensors for full FT
    sources = dict(sorted(Counter(setup.dataset["source"]).items())) if "source" in setup.dataset.column_names else {}
    result = TrainResult(cfg.output_dir, str(final_dir), stats, loss_log.history, time.time() - start, sources)
    if trainer.is_world_process_zero():  # under torchrun every rank gets here; one writes (save_model already does)
        # save_model also pickles TrainingArguments; the final model is safetensors + config files only (the
        # settings are in config.yaml).
        (final_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(final_dir))
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
        summary = json.dumps(result.summary(), indent=2)
        (Path(cfg.output_dir) / "train_summary.json").write_text(summary, encoding="utf-8")
    finish_distributed()
    return result
