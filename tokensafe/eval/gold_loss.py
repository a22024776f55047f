"""Gold-answer loss: the mean per-token cross-entropy of a task's gold answers on held-out rows.

Why it exists: at 135M scale GSM8K accuracy sits near the floor (a few percent either way is noise), while the loss
of the reference answers moves smoothly with what fine-tuning taught or destroyed. Lower is better.

What is measured: each held-out row (prompt + gold answer) is tokenised exactly as training tokenises it
(:func:`tokensafe.data.tokenize.tokenize_chat`: the model's own chat template, labels on the assistant tokens only,
the end-of-turn token included), teacher-forced through the model, and the negative log-likelihood of every labelled
token is summed. The value is token-weighted: sum over all answer tokens / number of answer tokens, so it is the
training loss of plain SFT measured on rows the model never saw. A full model directory and a LoRA adapter
directory both work (``tokensafe.models.load_model`` resolves either).

Interval: answers of one row are not independent tokens, so the 95% interval treats rows as the sampling unit (the
ratio estimator's linearised variance, sum_i (s_i - r c_i)^2 / (m (m - 1) c_bar^2) for row sums s_i, token counts
c_i and r = sum s / sum c).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tokensafe.data.records import Record
from tokensafe.data.sources import load_source
from tokensafe.data.tokenize import IGNORE_INDEX, tokenize_chat
from tokensafe.eval.metrics import Z95
from tokensafe.losses import per_token_nll

# The held-out split of each task: never a training split (the task rows of a mixture come from "train").
HELDOUT_SPLITS: dict[str, str] = {"sst2": "dev", "agnews": "test", "gsm8k": "test"}
DEFAULT_MAX_LENGTH = 1024  # long enough that no GSM8K test answer is cut (a cut answer loses its last tokens)


@dataclass
class GoldLoss:
    """Mean per-token NLL (nats) of the gold answers, over ``n`` rows holding ``n_tokens`` answer tokens."""

    value: float
    n: int
    n_tokens: int
    low: float | None = None
    high: float | None = None
    truncated: int = 0  # rows cut at max_length (their cut-off answer tokens are not counted)
    rows: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (NLL sum, answer tokens) per row

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "n": self.n,
            "n_tokens": self.n_tokens,
            "low": self.low,
            "high": self.high,
            "truncated": self.truncated,
            # Per row, so that two models scored on the same rows can be compared pairwise (experiment vs_sft).
            "rows": [[round(s, 6), c] for s, c in self.rows],
        }


def heldout_records(
    task: str, n: int | None, *, data_dir: str | os.PathLike | None = None, split: str | None = None
) -> list[Record]:
    """The first ``n`` rows (all when None) of ``task``'s held-out split (:data:`HELDOUT_SPLITS`, or ``split``)."""
    if split is None:
        if task not in HELDOUT_SPLITS:
            known = ", ".join(sorted(HELDOUT_SPLITS))
            raise ValueError(f"no held-out split is known for task {task!r} (known: {known}); pass split=")
        split = HELDOUT_SPLITS[task]
    records = load_source(task, data_dir=data_dir, split=split, limit=n)
    return [r for r in records if r.response is not None]


def ratio_interval(rows: Sequence[tuple[float, int]], z: float = Z95) -> tuple[float | None, float | None]:
    """Normal interval of sum(s) / sum(c) with rows as the sampling unit, cut at 0 (a loss is never negative);
    (None, None) below two rows."""
    rows = [(s, c) for s, c in rows if c > 0]
    m = len(rows)
    if m < 2:
        return None, None
    total_s, total_c = sum(s for s, _ in rows), sum(c for _, c in rows)
    ratio, c_bar = total_s / total_c, total_c / m
    variance = sum((s - ratio * c) ** 2 for s, c in rows) / (m * (m - 1) * c_bar**2)
    half = z * math.sqrt(variance)
    return max(0.0, ratio - half), ratio + half


@torch.inference_mode()
def row_losses(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 4,
) -> tuple[list[tuple[float, int]], int]:
    """(NLL sum over the answer tokens, number of answer tokens) per record, in record order; and how many records
    were truncated at ``max_length``.

    Rows are batched by length (longest first, right padding with an attention mask) so padding stays small; the
    result does not depend on the batching.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chats = [tokenize_chat(tokenizer, r.messages, max_length) for r in records]
    order = sorted(range(len(chats)), key=lambda i: -len(chats[i].input_ids))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = [(0.0, 0)] * len(chats)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            longest = max(len(chats[i].input_ids) for i in rows)
            input_ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(rows), longest), dtype=torch.long)
            labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
            for b, i in enumerate(rows):
                n = len(chats[i].input_ids)
                input_ids[b, :n] = torch.as_tensor(chats[i].input_ids)
                attention[b, :n] = 1
                labels[b, :n] = torch.as_tensor(chats[i].labels)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            nll = per_token_nll(logits, labels.to(device))  # (B, L-1), 0 where unlabelled
            counted = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
            for b, i in enumerate(rows):
                out[i] = (float(nll[b].sum()), int(counted[b]))
    finally:
        model.train(was_training)
    return out, sum(c.truncated for c in chats)


def gold_answer_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 4,
) -> GoldLoss:
    """Token-weighted mean NLL of the records' final assistant turns under ``model`` (see the module docstring)."""
    if not records:
        raise ValueError("gold-answer loss needs at least one row")
    rows, truncated = row_losses(model, tokenizer, records, max_length=max_length, batch_size=batch_size)
    n_tokens = sum(c for _, c in rows)
    if n_tokens == 0:
        raise ValueError("no answer token to score (every answer was cut at max_length?)")
    low, high = ratio_interval(rows)
    value = sum(s for s, _ in rows) / n_tokens
    return GoldLoss(value, len(rows), n_tokens, low, high, truncated, rows)


def evaluate_gold_loss(
    model_spec: str,
    task: str,
    n: int | None,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 4,
) -> GoldLoss:
    """Load ``model_spec`` (model or LoRA adapter directory, named model, ...) and score ``task``'s first ``n``
    held-out rows."""
    from tokensafe.models import load_model

    records = heldout_records(task, n, data_dir=data_dir, split=split)
    from tokensafe.distributed import place_for_inference

    model, tokenizer = load_model(model_spec, cache_dir=cache_dir)
    model = place_for_inference(model)
    try:
        return gold_answer_loss(model, tokenizer, records, max_length=max_length, batch_size=batch_size)
    finally:
        del model
