"""The reference's probability mass on the safety tokens at every answer position (``pact_positions: ref_mass``).

Not in the paper (issue 18 remedy, docs/methods/pact.md §8): the KL acts only where the reference itself is about to
say a safety token, i.e. where

    m_t = Σ_{s∈S} p_ref(s | x, y<t) = exp(logsumexp_S ℓ^full_t − logsumexp_V ℓ^full_t) ≥ m

over the *whole* vocabulary, full-context view. The S-restricted reference cache cannot give this (its logits are
renormalised over S), so it is one more no-grad pass of the frozen reference over the training data that keeps only
the answer positions' logits (projected through the output head at those positions only), cached by content under
``<cache>/pact/reference_mass/<key>``. The values reach the loss as the per-token column
:data:`~tokensafe.pact.loss.REF_MASS_COLUMN` (m_t on the answer token t, 0 elsewhere), so every reference mode
(cache, adapter, model) and ``--method toss_pact`` read the same numbers.

Several processes: each computes the whole vector itself when it is not on disk yet (no collective), the main one
saves it; a rank's m_t can differ from another's in the last bits only where their kernels differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file, save_file

from tokensafe import distributed
from tokensafe.atomic import atomic_path
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.modeling import frozen_reference
from tokensafe.pact.layout import answer_layout
from tokensafe.pact.loss import REF_MASS_COLUMN
from tokensafe.pact.reference import answer_counts, reference_logits

MASS_FILE = "reference_mass.safetensors"


@torch.no_grad()
def reference_mass(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    token_ids: torch.Tensor,
    *,
    pad_token_id: int,
    batch_size: int = 4,
    disable_adapter: bool = False,
) -> torch.Tensor:
    """m_t for every answer position of ``dataset``: (N,) float32, dataset row order, ascending t within a row (the
    reference cache's row order). ``token_ids``: (K,) the safety tokens S."""
    from tokensafe.collator import TokenCollator

    collate = TokenCollator(pad_token_id, per_token_columns=())
    rows = dataset.select_columns(["input_ids", "labels"])
    parts: list[torch.Tensor] = []
    with frozen_reference(model, disable_adapter=disable_adapter) as reference:
        device = next(reference.parameters()).device
        ids = token_ids.long().to(device)
        for first in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(first, min(first + batch_size, len(rows)))])
            labels = batch["labels"].to(device)
            logits, _ = reference_logits(  # (n, V): whole vocabulary, answer positions only
                reference,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                labels,
                None,
                header_ids=None,
                pad_token_id=pad_token_id,
                layout=answer_layout(labels),
            )
            logits = logits.float()
            parts.append((torch.logsumexp(logits[:, ids], -1) - torch.logsumexp(logits, -1)).exp().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def mass_column(dataset: datasets.Dataset, mass: torch.Tensor) -> list[list[float]]:
    """The per-token column: row i gets its answer positions' m_t on the answer tokens (t ≥ 1), 0.0 elsewhere."""
    counts = answer_counts(dataset)
    if sum(counts) != mass.numel():
        raise ValueError(f"{mass.numel()} reference-mass values for {sum(counts)} answer positions")
    column, at = [], 0
    values = mass.tolist()
    for labels, n in zip(dataset["labels"], counts, strict=True):
        row = [0.0] * len(labels)
        answer = [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
        for t, value in zip(answer, values[at : at + n], strict=True):
            row[t] = value
        column.append(row)
        at += n
    return column


def add_reference_mass(
    dataset: datasets.Dataset, directory: str | Path, compute: Callable[[], torch.Tensor]
) -> tuple[datasets.Dataset, torch.Tensor]:
    """``dataset`` with :data:`REF_MASS_COLUMN`, the values loaded from ``directory`` or computed by ``compute()``
    (and saved there by the main process). Returns the dataset and the flat (N,) values."""
    path = Path(directory) / MASS_FILE
    if path.is_file():
        mass = load_file(str(path))["mass"]
        print(f"pact reference mass: loaded {path}", flush=True)
    else:
        mass = compute().float().contiguous()
        if distributed.is_main():
            with atomic_path(path) as tmp:
                save_file({"mass": mass}, str(tmp))
    if REF_MASS_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(REF_MASS_COLUMN)
    return dataset.add_column(REF_MASS_COLUMN, mass_column(dataset, mass)), mass
