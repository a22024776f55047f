"""Constrained SFT (Qi et al. 2024, "Safety alignment should be made more than just a few tokens deep").

Per response token t (1-based inside its assistant turn), with Δ_t = log π_θ(y_t) − log π_ref(y_t) and
β_1 = 0.5, β_2..5 = 2, β_t>5 = 0.1, two forms of the same objective (``csft_form``)::

    exact:     loss_t = −(2 / β_t) log σ(β_t Δ_t)
    weighted:  loss_t = w_t · (−log π_θ(y_t)),   w_t = max(2 (1 − σ(β_t Δ_t)), 1e-3), computed without gradient
    loss = Σ_t loss_t / N_labelled               normalised like the CE (it replaces the CE)

The exact loss's gradient is 2 (1 − σ(β_t Δ_t)) times the CE gradient of the token, so the weighted form (the
default) has the same gradient wherever the clamp is inactive; the clamp keeps a floor of 1e-3 on tokens far above
the reference (β_t Δ_t > ~7.6). Tokens whose probability rises above the reference (Δ > 0) are pushed less, hardest
so for the first tokens (large β), which is what keeps the model's first answer tokens (the refusal prefix) close to
the aligned reference. At Δ = 0 (e.g. a fresh LoRA adapter, whose B = 0) the weight is exactly 1 for every β: the
weighted form *is* SFT there (same value, same gradients), and as β → 0 both forms tend to SFT everywhere.

The forms differ in their value: the weighted loss is on the CE scale (a weighted CE, comparable with SFT's logged
loss), while the exact loss is not (at Δ = 0 each token contributes (2/β_t) log 2, ≈ 13.9 for β = 0.1) and only its
gradient relates to the CE.

The reference (the model before fine-tuning: the LoRA base with the adapter disabled, or ``csft_reference_model``)
and the tokens are fixed, so log π_ref(y_t) is computed once before training and stored as the per-token column
``csft_ref_logp`` (the value at a labelled position t is log π_ref(labels[t] | tokens < t); 0 elsewhere). The
values are cached on disk by (tokens, reference weights), like PACT's reference cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from tokensafe.atomic import atomic_path
from tokensafe.baselines.config import CsftForm
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext, per_token_nll
from tokensafe.methods import MethodSetup, register_method
from tokensafe.modeling import frozen_reference, unwrap
from tokensafe.pact.layout import answer_layout

REF_COLUMN = "csft_ref_logp"
CSFT_FORMS: tuple[str, ...] = get_args(CsftForm)
MIN_WEIGHT = 1e-3  # floor of the weighted form's per-token weight


@dataclass
class BetaSchedule:
    """β_t by 1-based response-token index t: ``first`` (t = 1), ``early`` (2 ≤ t ≤ ``early_until``), ``late``."""

    first: float = 0.5
    early: float = 2.0
    early_until: int = 5
    late: float = 0.1

    def __post_init__(self) -> None:
        if min(self.first, self.early, self.late) <= 0:
            raise ValueError(f"every β must be > 0 (the loss divides by β), got {self}")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """(n,) 1-based positions -> (n,) float32 β_t."""
        beta = torch.full(t.shape, self.late, dtype=torch.float32, device=t.device)
        beta = torch.where((t >= 2) & (t <= self.early_until), torch.full_like(beta, self.early), beta)
        return torch.where(t == 1, torch.full_like(beta, self.first), beta)


def constrained_token_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """−(2/β) log σ(β (log π_θ − log π_ref)) per token: (n,), (n,), (n,) -> (n,)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (policy_logp - ref_logp))


def constrained_token_weight(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """max(2 (1 − σ(β (log π_θ − log π_ref))), 1e-3) per token, without gradient: (n,), (n,), (n,) -> (n,).

    Written 2 σ(−βΔ), which is 2 (1 − σ(βΔ)) without the cancellation for large βΔ; exactly 1 at Δ = 0.
    """
    with torch.no_grad():
        return torch.clamp(2.0 * torch.sigmoid(-beta * (policy_logp - ref_logp)), min=MIN_WEIGHT)


class ConstrainedSftLoss:
    """The constrained objective as a :class:`~tokensafe.losses.LossTerm` that replaces the trainer's CE.

    ``form="weighted"`` (default): Σ_t w_t · CE_t / N with the detached weight of :func:`constrained_token_weight`;
    ``form="exact"``: Σ_t −(2/β_t) log σ(β_t Δ_t) / N. See the module docstring.
    """

    name = "csft"
    per_token_columns: tuple[str, ...] = (REF_COLUMN,)
    sample_columns: tuple[str, ...] = ()
    replaces_ce = True  # TokenSafeTrainer skips its CE: this term is the whole token loss

    def __init__(self, schedule: BetaSchedule | None = None, form: CsftForm = "weighted") -> None:
        if form not in CSFT_FORMS:
            raise ValueError(f"csft_form must be one of {list(CSFT_FORMS)}, got {form!r}")
        self.schedule = schedule or BetaSchedule()
        self.form = form

    def _reference(self, ctx: LossContext, b: torch.Tensor, logit_t: torch.Tensor) -> torch.Tensor:
        if REF_COLUMN not in ctx.inputs:
            raise KeyError(f"the batch has no '{REF_COLUMN}' column: run setup_constrained_sft on the dataset first")
        return ctx.inputs[REF_COLUMN][b, logit_t + 1].to(ctx.logits.device, torch.float32)

    def token_losses(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_t (n,), β_t (n,)) at the labelled positions of the micro-batch (answer_layout order)."""
        layout = answer_layout(ctx.labels)
        b, logit_t = layout.batch_index, layout.logit_index
        reference = self._reference(ctx, b, logit_t)
        # Only the labelled positions' logits go through the log-softmax: (n, V), not (B, L, V).
        policy = -F.cross_entropy(ctx.logits[b, logit_t].float(), ctx.labels[b, logit_t + 1], reduction="none")
        beta = self.schedule(layout.offset + 1).to(policy.device)
        if self.form == "exact":
            return constrained_token_loss(policy, reference, beta), beta
        return constrained_token_weight(policy, reference, beta) * -policy, beta

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        if self.form == "exact":
            losses, _ = self.token_losses(ctx)
            return losses.sum() / ctx.normaliser
        # The weighted CE computed like the trainer's CE (weighted_ce_sum): with every weight 1 (Δ = 0) the value
        # and the gradients are SFT's bit for bit.
        layout = answer_layout(ctx.labels)
        b, logit_t = layout.batch_index, layout.logit_index
        reference = self._reference(ctx, b, logit_t)
        nll = per_token_nll(ctx.logits, ctx.labels)  # (B, L-1), aligned with labels[:, 1:]
        beta = self.schedule(layout.offset + 1).to(nll.device)
        weights = torch.ones_like(nll)
        weights[b, logit_t] = constrained_token_weight(-nll[b, logit_t].detach(), reference, beta)
        mask = ctx.labels[:, 1:] != IGNORE_INDEX
        return (nll * weights * mask).sum() / ctx.normaliser


def reference_token_logprobs(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    pad_token_id: int,
    *,
    batch_size: int = 8,
    disable_adapter: bool = False,
    log_every: float = 30.0,
) -> list[np.ndarray]:
    """log π_ref(labels[t] | tokens < t) at every labelled position t ≥ 1 of every row; 0.0 elsewhere.

    Returns one float32 array per row, as long as its ``input_ids``. Rows run longest first (less padding).
    """
    from tokensafe.collator import TokenCollator
    from tokensafe.pact.reference import reference_logits

    lengths = [len(ids) for ids in dataset["input_ids"]]
    out = [np.zeros(n, dtype=np.float32) for n in lengths]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    collate = TokenCollator(pad_token_id, per_token_columns=())
    rows = dataset.select_columns(["input_ids", "labels"])
    last_log = time.time()
    with frozen_reference(model, disable_adapter=disable_adapter) as reference, torch.no_grad():
        device = next(reference.parameters()).device
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
            layout = answer_layout(batch["labels"])
            # Whole-vocabulary logits at the labelled positions only: (n, V).
            logits, _ = reference_logits(
                reference,
                batch["input_ids"],
                batch["attention_mask"],
                batch["labels"],
                None,
                header_ids=None,
                pad_token_id=pad_token_id,
                layout=layout,
            )
            targets = batch["labels"][layout.batch_index, layout.logit_index + 1]
            logp = (-F.cross_entropy(logits.float(), targets, reduction="none")).cpu().numpy()
            rows_of, positions = layout.batch_index.cpu().numpy(), (layout.logit_index + 1).cpu().numpy()
            for j, i in enumerate(chunk):
                here = rows_of == j
                out[i][positions[here]] = logp[here]
            if time.time() - last_log > log_every:
                last_log = time.time()
                print(f"constrained_sft reference: {first + len(chunk)}/{len(order)} rows", flush=True)
    return out


def _load_or_compute(directory: Path, lengths: list[int], compute: Any) -> list[np.ndarray]:
    """Flat float32 values + row lengths in one safetensors file; recomputed when missing or of another layout."""
    from safetensors.numpy import load_file, save_file

    file = directory / "ref_logp.safetensors"
    if file.is_file():
        stored = load_file(str(file))
        if stored["lengths"].tolist() == lengths:
            print(f"constrained_sft reference: loaded {file}", flush=True)
            return np.split(stored["values"], np.cumsum(lengths)[:-1])
    values = compute()
    directory.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    with atomic_path(file) as tmp:
        save_file({"values": flat, "lengths": np.asarray(lengths, dtype=np.int64)}, str(tmp))
    return values


@register_method("constrained_sft")
def setup_constrained_sft(cfg: Any, model: Any, tokenizer: Any, dataset: datasets.Dataset):
    """METHODS['constrained_sft']: precompute log π_ref of every labelled token once, then train with the term."""
    from tokensafe.digests import dataset_tokens_key, digest
    from tokensafe.models import load_model, model_fingerprint
    from tokensafe.paths import cache_dir as resolve_cache_dir

    schedule = BetaSchedule(cfg.csft_beta_first, cfg.csft_beta_early, cfg.csft_early_until, cfg.csft_beta_late)
    if getattr(cfg, "threads", 0):  # the precompute runs before train_model applies the setting
        torch.set_num_threads(cfg.threads)
    spec = cfg.csft_reference_model or cfg.model
    key = digest("csft-reference", dataset_tokens_key(dataset, tokenizer), model_fingerprint(spec, cfg.cache_dir))
    directory = resolve_cache_dir(cfg.cache_dir) / "baselines" / "csft_reference" / key

    def compute() -> list[np.ndarray]:
        start = time.time()
        if cfg.csft_reference_model:
            reference, disable = load_model(cfg.csft_reference_model, cache_dir=cfg.cache_dir)[0], False
        else:
            # Before training the model *is* the reference; with LoRA the adapter is disabled to make that exact.
            reference, disable = model, hasattr(unwrap(model), "disable_adapter")
        values = reference_token_logprobs(
            reference, dataset, tokenizer.pad_token_id, batch_size=cfg.csft_batch_size, disable_adapter=disable
        )
        print(f"constrained_sft reference: {len(values)} rows in {time.time() - start:.1f} s -> {directory}")
        return values

    values = _load_or_compute(directory, [len(ids) for ids in dataset["input_ids"]], compute)
    if REF_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(REF_COLUMN)
    dataset = dataset.add_column(REF_COLUMN, [v.tolist() for v in values])
    return MethodSetup(model=model, dataset=dataset, loss_terms=[ConstrainedSftLoss(schedule, cfg.csft_form)])
