"""Batch collation: right-pad token columns, keep per-token and per-sample extra columns, drop provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tokensafe.data.tokenize import IGNORE_INDEX

PROVENANCE_COLUMNS = ("is_harmful", "source", "id", "truncated")  # analysis only: never reaches a loss


@dataclass
class TokenCollator:
    """Pads ``input_ids`` (pad id), ``labels`` (IGNORE_INDEX) and float per-token columns (0.0) to the longest row.

    Per-token columns must have the row's ``input_ids`` length; a mismatch is a bug upstream (e.g. a mask built
    for another tokenisation) and raises instead of silently shifting weights against tokens.
    """

    pad_token_id: int
    per_token_columns: Sequence[str] = ("weights",)
    sample_columns: Sequence[str] = ()
    pad_to_multiple_of: int | None = None
    float_pad: dict[str, float] = field(default_factory=dict)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {
            "input_ids": torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
        }
        present = [c for c in self.per_token_columns if c in rows[0]]
        for column in present:
            batch[column] = torch.full((len(rows), longest), self.float_pad.get(column, 0.0), dtype=torch.float32)
        for b, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["input_ids"][b, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            batch["attention_mask"][b, :n] = 1
            batch["labels"][b, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            for column in present:
                values = row[column]
                if len(values) != n:
                    raise ValueError(f"column '{column}' has {len(values)} values for a row of {n} tokens")
                batch[column][b, :n] = torch.as_tensor(values, dtype=torch.float32)
        for column in self.sample_columns:
            if column in rows[0]:
                batch[column] = torch.as_tensor([row[column] for row in rows])
        return batch


@dataclass
class PackedCollator:
    """Concatenates a batch into one row without padding (``padding_free``): the same loss, fewer tokens.

    Output (1, T) tensors, T = the batch's summed row lengths: ``input_ids``, ``labels``, float per-token columns,
    and ``position_ids`` that restart at 0 for every row. No ``attention_mask``: transformers reads the restarts as
    packed sequences and builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), so
    no token attends across rows. The label of each row's first token is masked: it would otherwise be predicted
    from the previous row's last token (a chat row's first token is a prompt token, already unlabelled).
    """

    per_token_columns: Sequence[str] = ("weights",)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        present = [c for c in self.per_token_columns if c in rows[0]]
        ids, labels, positions = [], [], []
        columns: dict[str, list[torch.Tensor]] = {c: [] for c in present}
        for row in rows:
            n = len(row["input_ids"])
            ids.append(torch.as_tensor(row["input_ids"], dtype=torch.long))
            row_labels = torch.as_tensor(row["labels"], dtype=torch.long).clone()
            row_labels[0] = IGNORE_INDEX
            labels.append(row_labels)
            positions.append(torch.arange(n, dtype=torch.long))
            for column in present:
                values = row[column]
                if len(values) != n:
                    raise ValueError(f"column '{column}' has {len(values)} values for a row of {n} tokens")
                columns[column].append(torch.as_tensor(values, dtype=torch.float32))
        batch = {
            "input_ids": torch.cat(ids)[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat(positions)[None],
        }
        for column in present:
            batch[column] = torch.cat(columns[column])[None]
        return batch
