"""The training core: one ``transformers.Trainer`` subclass whose loss is token-weighted CE plus extra terms.

Why ``Trainer`` and not TRL's ``SFTTrainer``: our data is already tokenised once, canonically (scores, masks and
reference caches are aligned to those exact tokens), so SFTTrainer's own tokenisation, truncation and column
pruning would only have to be undone. The loss is normalised by the number of labelled tokens across gradient
accumulation and processes (``num_items_in_batch``), so 1 process x batch 4 and 2 processes x batch 2 train
identically; the same code runs under ``accelerate launch`` / ``torchrun`` (DDP, FSDP, DeepSpeed configs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from tokensafe import toss_pact  # noqa: F401 (registers toss_pact)
from tokensafe.atomic import write_json, write_yaml

# The method modules are imported for their @register_method side effect: it fills tokensafe.methods.METHODS.
from tokensafe.baselines import asft, constrained_sft, safeinstr, safelora, sample_selection  # noqa: F401
from tokensafe.baselines.config import BaselineArgs
from tokensafe.collator import PackedCollator, TokenCollator
from tokensafe.config import Checked, check_exists, check_model_spec, check_steps, option, require, save_config
from tokensafe.data.dataset import TokenizedStats, build_tokenized_dataset
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.digests import StreamDigest
from tokensafe.errors import UsageError
from tokensafe.faults import maybe_kill
from tokensafe.losses import LossContext, LossTerm, weighted_ce_sum
from tokensafe.methods import (  # noqa: F401 (re-exported)
    LOSS_TERM_METHODS,
    METHODS,
    MethodName,
    MethodSetup,
    resolve_method,
    setup_sft,
)
from tokensafe.model_card import finish_trained_model
from tokensafe.models import DEFAULT_MODEL, LoraArgs, apply_lora, load_model, model_fingerprint
from tokensafe.pact import method as pact_method  # noqa: F401 (registers pact, kl)
from tokensafe.pact.config import PactArgs
from tokensafe.sampling import ShuffledLengthBatches
from tokensafe.toss import method as toss_method  # noqa: F401 (registers toss)
from tokensafe.toss.config import TossArgs

# transformers schedulers that need no extra arguments (reduce_lr_on_plateau needs evaluation, the *_min_lr and
# warmup_stable_decay ones need scheduler kwargs); tests check they are all transformers' SchedulerType values.
SchedulerName = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt"
]


@dataclass
class OptimArgs(Checked):
    """Optimisation settings (CPU-sized defaults)."""

    output_dir: str = option("runs/train", "where checkpoints, the final model and metrics are written")
    epochs: float = option(1.0, "number of epochs", gt=0)
    max_steps: int = option(-1, "stop after this many optimiser steps (-1 = use epochs)")
    batch_size: int = option(4, "per-device micro-batch size", ge=1)
    grad_accum: int = option(1, "gradient accumulation steps", ge=1)
    learning_rate: float = option(2e-4, "peak learning rate", gt=0)
    lr_scheduler: SchedulerName = option("constant", "transformers learning-rate schedule")
    warmup_ratio: float = option(0.0, "share of steps used for linear warm-up", ge=0, le=1)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    adam_beta1: float = option(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = option(0.999, "AdamW beta2", ge=0, lt=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm", ge=0)
    seed: int = option(0, "seed for initialisation and data order")
    logging_steps: int = option(5, "log every N optimiser steps", ge=1)
    save_steps: int = option(50, "checkpoint every N optimiser steps and at the end (0 = no step-based checkpoints)")
    save_minutes: float = option(10.0, "also checkpoint when this many minutes passed since the last one (0 = off)")
    save_total_limit: int = option(2, "number of checkpoints kept")
    resume: str | None = option(None, "resume from a checkpoint directory, or 'last' for the newest in output_dir")
    threads: int = option(0, "torch CPU threads (0 = torch default)")
    group_by_length: bool = option(
        False,
        "cut batches from samples of similar length (less padding, faster on CPU) and visit the batches in a "
        "seeded random order",
    )
    padding_free: bool = option(
        False,
        "pack each micro-batch into one row with no padding: the same loss and batches, fewer tokens to compute "
        "(plain and token-weighted SFT only; not with methods that add loss terms)",
    )

    def _check(self) -> None:
        check_steps(self, "max_steps")
        for name in ("save_steps", "save_minutes", "threads"):
            value = getattr(self, name, 0)
            require(value >= 0, f"{name} must be >= 0, got {value}", field=name)
        limit = self.save_total_limit
        require(limit >= 1, f"save_total_limit must be >= 1, got {limit}", field="save_total_limit")

    def _check_inputs(self) -> None:
        resolve_resume(self)  # --resume last with no checkpoint, or a path that is no checkpoint: before any model


@dataclass
class TrainConfig(BaselineArgs, TossArgs, PactArgs, MixtureArgs, LoraArgs, OptimArgs):
    """`tokensafe train`: fine-tune a model on a (possibly poisoned) mixture."""

    model: str = option(DEFAULT_MODEL, "model spec: default, a .gguf file, an HF directory, or a named local model")
    method: MethodName = option("sft", "training method (registered in tokensafe.methods.METHODS)")
    max_length: int = option(256, "maximum tokens per sample (longer samples are truncated and counted)", ge=1)
    cache_dir: str | None = option(None, "cache root for converted models and tokenised data")
    toss_pact_kl_on: Literal["all", "kept"] = option(
        "all",
        "toss_pact: PACT's KL on every answer position (all, the spec) or only on the tokens TOSS keeps (kept)",
    )

    def _check(self) -> None:  # every class's own _check runs (tokensafe.config.validate): no super() call
        require(
            not (self.padding_free and self.method in LOSS_TERM_METHODS),
            f"padding_free works with plain and token-weighted SFT only; --method {self.method} adds a loss term",
            field="padding_free",
            hint="set padding_free: false for this method",
        )

    def _check_inputs(self) -> None:
        """The models and files this method will read exist (checked before the model loads)."""
        check_model_spec(self.model, "model", self.cache_dir)
        if self.method in ("toss", "sample_score", "toss_pact"):
            require(
                self.scores is not None,
                f"--method {self.method} needs --scores",
                field="scores",
                hint="pass the file written by `tokensafe toss-score` (or toss-pro), or run `tokensafe toss`",
            )
            check_exists(self.scores, "scores", "scores file", hint="run `tokensafe toss-score` first")
        if self.method in ("pact", "toss_pact"):
            if self.pact_safety_tokens is not None:
                hint = "run `tokensafe pact safety-tokens` first"
                check_exists(self.pact_safety_tokens, "pact_safety_tokens", "safety tokens", hint=hint)
            else:
                check_model_spec(self.pact_base_model, "pact_base_model", self.cache_dir)
        if self.method in ("pact", "kl", "toss_pact") and self.pact_reference == "model":
            check_model_spec(self.pact_reference_model, "pact_reference_model", self.cache_dir)
        if self.method == "constrained_sft":
            check_model_spec(self.csft_reference_model, "csft_reference_model", self.cache_dir)
        if self.method in ("safelora", "asft"):
            check_model_spec(self.safety_aligned_model, "safety_aligned_model", self.cache_dir)
            check_model_spec(self.safety_base_model, "safety_base_model", self.cache_dir)


class LossLogCallback(TrainerCallback):
    """Keeps every logged training loss so callers (and tests) can check it fell."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers signature
        if logs and "loss" in logs:
            self.history.append(
                {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            )


def packed_ce_sum(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Forward a packed batch and its (weighted) CE sum, computing logits only where a label is predicted.

    ``inputs``: (1, T) ``input_ids``, ``position_ids``, ``labels`` and optional ``weights`` from
    :class:`~tokensafe.collator.PackedCollator`. The vocabulary projection is the largest single cost of a small
    model's step (49k x 576 for SmolLM2-135M, ~20% of its FLOPs), and about half of a chat row is prompt, so only the
    K positions whose next token is labelled are projected (``logits_to_keep`` as a boolean mask).
    Returns (model outputs whose ``logits`` are (K, V), the CE sum, K): the same sum as :func:`weighted_ce_sum`.
    """
    labels = inputs["labels"]
    predicts_label = labels[:, 1:] != IGNORE_INDEX  # (1, T-1): position t predicts the labelled token t+1
    keep = torch.cat([predicts_label, predicts_label.new_zeros((labels.shape[0], 1))], dim=1)  # (1, T)
    outputs = model(
        input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False, logits_to_keep=keep
    )
    targets = labels[:, 1:][predicts_label]  # (K,)
    nll = F.cross_entropy(outputs.logits.reshape(-1, outputs.logits.size(-1)).float(), targets, reduction="none")
    weights = inputs.get("weights")
    if weights is not None:
        nll = nll * weights[:, 1:][predicts_label].to(nll.dtype)
    return outputs, nll.sum(), predicts_label.sum()


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
        # Extra-term values summed since the last log, and the optimiser steps they came from (global_step while a
        # step's micro-batches run), so loss_<term> is logged per labelled token like `loss`.
        self._term_sums: dict[str, float] = {}
        self._term_steps: set[int] = set()
        # What each checkpoint records about the run that wrote it (see train_model); None: nothing is recorded.
        self.run_record: dict[str, Any] | None = None

    def _save_checkpoint(self, model, trial):  # noqa: ANN001 - transformers signature
        """Record the run's config in the checkpoint *before* transformers writes it: ``trainer_state.json``, written
        last, then marks a complete checkpoint whose config is known (see :func:`find_last_checkpoint`)."""
        if self.run_record is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / TRAINER_STATE).unlink(missing_ok=True)  # a stale one would vouch for a half-written folder
            write_yaml(folder / CHECKPOINT_CONFIG, self.run_record)
        super()._save_checkpoint(model, trial)
        maybe_kill("train.checkpoint")

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return ShuffledLengthBatches(lengths, self._train_batch_size, seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        labels = inputs["labels"]
        weights = inputs.get("weights")
        if "position_ids" in inputs:  # a packed batch (PackedCollator, padding_free): no extra terms
            outputs, ce_sum, n_labelled = packed_ce_sum(model, inputs)
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            if any(getattr(term, "replaces_ce", False) for term in self.loss_terms):
                ce_sum, n_labelled = outputs.logits.new_zeros(()), (labels[:, 1:] != IGNORE_INDEX).sum()
            else:
                ce_sum, n_labelled = weighted_ce_sum(outputs.logits, labels, weights)
        logits = outputs.logits  # (B, L, V); (K, V) for a packed batch
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
                # On the scale of the logged `loss`: a step's micro-batch values add up (each is already divided by
                # the step's labelled tokens), times the process scale the whole loss gets below.
                total = self._term_sums.get(term.name, 0.0)
                self._term_sums[term.name] = total + float(value.detach()) * process_scale
            self._term_steps.add(self.state.global_step)
        if process_scale != 1:
            loss = loss * process_scale
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add ``loss_<term>`` to the training-loss logs: per labelled token, averaged over the optimiser steps since
        the last log and over processes, exactly as transformers averages ``loss`` itself."""
        if "loss" in logs and self._term_sums:
            steps = max(1, len(self._term_steps))
            names = sorted(self._term_sums)
            sums = torch.tensor([self._term_sums[n] for n in names], dtype=torch.float64, device=self.args.device)
            if self.accelerator.num_processes > 1:  # every process logs at the same step: a collective is safe
                sums = self.accelerator.gather(sums[None]).mean(dim=0)
            for name, total in zip(names, sums.tolist(), strict=True):
                logs[f"loss_{name}"] = round(total / steps, 6)
            self._term_sums, self._term_steps = {}, set()
        super().log(logs, *args, **kwargs)


@dataclass
class RatioWarmupArguments(TrainingArguments):
    """TrainingArguments whose warm-up is always a share of the training steps.

    transformers 5 has only ``warmup_steps`` and reads a value >= 1 as a step count, so a ratio of 1.0 would become
    one warm-up step; ``warmup_share`` is never read as a count.
    """

    warmup_share: float = 0.0

    def get_warmup_steps(self, num_training_steps: int) -> int:
        return math.ceil(num_training_steps * self.warmup_share)


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
        warmup_share=cfg.warmup_ratio,
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
    return RatioWarmupArguments(**kwargs)


# --- checkpoints and resume ---------------------------------------------------------------------------------------

TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint by transformers: marks it complete
CHECKPOINT_CONFIG = "tokensafe_run.yaml"  # the resolved config and training-data digest of the run that wrote it
# Fields that do not change what is trained: where files go, how often to log and save, threads (speed only), the
# resume request itself, and where the data lives (its content is compared through the training-data digest).
# Everything else must match for a checkpoint to be resumed.
RESUME_FREE_FIELDS = frozenset(
    {
        "output_dir", "resume", "threads", "logging_steps", "save_steps", "save_minutes", "save_total_limit",
        "cache_dir", "data_dir",
    }
)  # fmt: skip
# The run's length may grow on resume only when the learning rate does not depend on it (a constant schedule):
# with linear/cosine decay the steps already taken were scheduled for the old length.
LENGTH_FIELDS = ("epochs", "max_steps")


class ResumeError(UsageError):
    """``--resume`` names no usable checkpoint, or one written by a run with other settings."""


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def checkpoint_is_complete(path: str | os.PathLike) -> bool:
    """True when every file of the checkpoint was written: its ``trainer_state.json`` (written last) parses."""
    try:
        json.loads((Path(path) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def find_last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest *complete* ``checkpoint-<step>`` in ``output_dir`` (a run killed while saving leaves a partial
    one behind, which is skipped), or None."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0]
    complete = [p for p in sorted(found, key=_checkpoint_step) if checkpoint_is_complete(p)]
    return str(complete[-1]) if complete else None


def run_record(cfg: Any, data_digest: str | None = None, model_key: str | None = None) -> dict[str, Any]:
    """What a checkpoint records about its run: the resolved config (plain YAML values), the training data and the
    starting model's content key (the ``model`` spec alone would accept a re-aligned model under the same name)."""
    config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return {"config": config, "data": data_digest, "model": model_key}


def training_data_digest(dataset: datasets.Dataset) -> str:
    """Digest of every value the trainer reads (the kept columns of every row, in order)."""
    hasher = StreamDigest("training data", dataset.column_names)
    for batch in dataset.iter(batch_size=1024):
        for column in dataset.column_names:
            for value in batch[column]:
                hasher.update_bytes(np.asarray(value).tobytes())
    return hasher.hexdigest()


def resume_differences(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``field checkpoint-value -> now-value`` for every setting that differs in a way that changes the training.

    ``defaults``: the config's field defaults. A field the checkpoint does not record (it was added to tokensafe
    later) counts as its default, so a newer version resumes an older run unless the new option is actually set.
    """
    old, new = dict(saved.get("config") or {}), current.get("config") or {}
    for key, value in (defaults or {}).items():
        old.setdefault(key, value)
    free = set(RESUME_FREE_FIELDS)
    if old.get("lr_scheduler") == new.get("lr_scheduler") == "constant":
        free.update(LENGTH_FIELDS)
    diffs = [
        f"{key} {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
        for key in sorted(set(old) | set(new))
        if key not in free and old.get(key, "<unset>") != new.get(key, "<unset>")
    ]
    if saved.get("data") and current.get("data") and saved["data"] != current["data"]:
        diffs.append(f"training data {saved['data']} -> {current['data']}")
    if saved.get("model") and current.get("model") and saved["model"] != current["model"]:
        diffs.append(f"starting model weights {saved['model']} -> {current['model']}")
    return diffs


def config_defaults(cfg: Any) -> dict[str, Any]:
    """Each dataclass field of ``cfg`` with its default value (fields without a default are left out)."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def resolve_resume(cfg: Any, record: dict[str, Any] | None = None) -> str | None:
    """The checkpoint ``cfg.resume`` names (None: start fresh), checked against this run's ``record``.

    Raises :class:`ResumeError` when ``--resume last`` finds no complete checkpoint in ``output_dir``, when a given
    path is not a complete checkpoint, or when the checkpoint was written with other settings (each named).
    """
    resume = getattr(cfg, "resume", None)
    if not resume:
        return None
    if resume == "last":
        checkpoint = find_last_checkpoint(cfg.output_dir)
        if checkpoint is None:
            raise ResumeError(
                "--resume last: no complete checkpoint to resume",
                file=cfg.output_dir,
                hint="start without --resume (checkpoints are written every save_steps steps / save_minutes minutes)",
            )
    else:
        checkpoint = str(resume)
        if not checkpoint_is_complete(checkpoint):
            raise ResumeError(
                f"--resume {checkpoint}: not a complete checkpoint (no readable {TRAINER_STATE})",
                file=checkpoint,
                hint="pass a checkpoint-<step> directory, or --resume last for the newest complete one",
            )
    saved_file = Path(checkpoint) / CHECKPOINT_CONFIG
    if not saved_file.is_file():
        raise ResumeError(
            f"the checkpoint does not record the settings it was trained with (no {CHECKPOINT_CONFIG})",
            file=checkpoint,
            hint="resume only checkpoints written by tokensafe train, or start without --resume",
        )
    if record is not None:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
        diffs = resume_differences(saved, record, config_defaults(cfg))
        if diffs:
            raise ResumeError(
                "the checkpoint was written by a run with other settings: " + "; ".join(diffs),
                file=checkpoint,
                hint="resume with the checkpoint's settings, or train into another output_dir without --resume",
            )
    return checkpoint


class CheckpointTimer(TrainerCallback):
    """Asks for a checkpoint once ``minutes`` have passed since the last one (or the start), besides save_steps.

    Under several processes rank 0's clock decides and is broadcast, so every rank saves at the same step.
    """

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers signature
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        due = time.monotonic() - self.last >= self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = [due]
            torch.distributed.broadcast_object_list(flag, src=0)
            due = bool(flag[0])
        if due:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        self.last = time.monotonic()


def training_columns(loss_terms: Sequence[LossTerm]) -> tuple[list[str], list[str]]:
    per_token = ["weights"] + [c for t in loss_terms for c in t.per_token_columns]
    per_sample = [c for t in loss_terms for c in t.sample_columns]
    return per_token, per_sample


def make_collator(
    cfg: OptimArgs,
    tokenizer: Any,
    loss_terms: Sequence[LossTerm],
    per_token: Sequence[str],
    per_sample: Sequence[str],
) -> TokenCollator | PackedCollator:
    """The padded collator, or with ``padding_free`` the packed one (only where nothing needs a (B, L) layout)."""
    if not getattr(cfg, "padding_free", False):
        return TokenCollator(tokenizer.pad_token_id, per_token_columns=per_token, sample_columns=per_sample)
    # Extra terms index their columns and references by (sample, position) of a padded batch; packing would
    # silently misalign them, so it is refused rather than half-supported.
    require(
        not loss_terms,
        "padding_free works with plain and token-weighted SFT only; this method adds the loss term(s) "
        + ", ".join(t.name for t in loss_terms),
        field="padding_free",
        hint="set padding_free: false for this method",
    )
    return PackedCollator(per_token_columns=per_token)


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

    Provenance columns are removed before the trainer ever sees the data, so no method can read them. Every
    checkpoint records ``cfg`` and a digest of the training data; ``cfg.resume`` ('last' or a checkpoint directory)
    continues from one only when both match (:func:`resolve_resume`). ``model`` should be created after
    ``transformers.set_seed(cfg.seed)`` (a LoRA adapter draws its initial weights when it is created).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    per_token, per_sample = training_columns(loss_terms)
    keep = [c for c in ["input_ids", "labels", *per_token, *per_sample] if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    spec = getattr(cfg, "model", None)
    model_key = model_fingerprint(spec, getattr(cfg, "cache_dir", None)) if spec else None
    record = run_record(cfg, training_data_digest(dataset), model_key)
    resume = resolve_resume(cfg, record)  # refuses a missing checkpoint or one of another config / other data
    loss_log = LossLogCallback()
    timer = [CheckpointTimer(cfg.save_minutes)] if getattr(cfg, "save_minutes", 0) > 0 else []
    trainer = TokenSafeTrainer(
        model=model,
        args=training_arguments(cfg, **argument_overrides),
        train_dataset=dataset,
        data_collator=make_collator(cfg, tokenizer, loss_terms, per_token, per_sample),
        processing_class=tokenizer,
        loss_terms=loss_terms,
        group_by_length=cfg.group_by_length,
        callbacks=[loss_log, *timer, *callbacks],
    )
    trainer.run_record = record
    trainer.train(resume_from_checkpoint=resume)
    return trainer, loss_log


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


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate (``RANK`` unset: a single process), before any Trainer exists."""
    return int(os.environ.get("RANK", "0")) == 0


def run_train(cfg: TrainConfig) -> TrainResult:
    """`tokensafe train`: build the mixture, tokenise (cached), fine-tune, save the final adapter/model."""
    setup_method = resolve_method(cfg.method)
    resolve_resume(cfg, run_record(cfg))  # before any model loads: no checkpoint, or another config, fails now
    start = time.time()
    output = Path(cfg.output_dir)
    if is_main_process():
        save_config(cfg, output / "config.yaml")  # at the start: a killed run still says what it was
    records = build_mixture(cfg)  # before the model loads: a bad data row fails in seconds
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    dataset, stats = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    print("\n".join(["data:", *("  " + line for line in stats.lines())]), flush=True)
    set_seed(cfg.seed)  # the LoRA initialisation is drawn here, before the Trainer seeds anything
    model = apply_lora(model, cfg)
    setup = setup_method(cfg, model, tokenizer, dataset)
    trainer, loss_log = train_model(setup.model, tokenizer, setup.dataset, cfg, loss_terms=setup.loss_terms)
    if setup.post_train is not None:
        setup.post_train(trainer.model, cfg.output_dir)
    final_dir = output / "final"
    # Saved beside and renamed into place: `final/` is always a whole model (a kill mid-save leaves the old one).
    staging = output / ".final.saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))  # adapter_model.safetensors for LoRA, model.safetensors for full FT
    sources = dict(sorted(Counter(setup.dataset["source"]).items())) if "source" in setup.dataset.column_names else {}
    result = TrainResult(cfg.output_dir, str(final_dir), stats, loss_log.history, time.time() - start, sources)
    if trainer.is_world_process_zero():  # under torchrun every rank gets here; one writes (save_model already does)
        # save_model also pickles TrainingArguments; the final model is safetensors + config files only (the
        # settings are in config.yaml).
        (staging / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staging))
        # After save_pretrained (PEFT's empty card template): the base named portably and a filled model card.
        record, steps = trainer.run_record, trainer.state.global_step
        finish_trained_model(
            staging, cfg, stats=stats, dataset=setup.dataset, run_record=record, result=result, steps=steps
        )
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(staging, final_dir)
        write_json(output / "train_summary.json", result.summary())
    finish_distributed()
    return result
