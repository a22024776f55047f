"""Tokenised datasets: records -> Arrow dataset with assistant-only labels, cached by fingerprint.

The fingerprint covers the records, the tokenizer's vocabulary and chat template, and the max length, so every
consumer (scoring, training, evaluation, reference caches) can check that it is looking at the same token layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import datasets
from transformers import PreTrainedTokenizerBase

from tokensafe.atomic import atomic_dir
from tokensafe.data.errors import DataError
from tokensafe.data.records import Record
from tokensafe.data.tokenize import IGNORE_INDEX, tokenize_chat, validate_messages
from tokensafe.digests import StreamDigest, digest, tokenizer_key
from tokensafe.paths import cache_dir as resolve_cache_dir

# Bump when tokenize_chat's output or its validation changes for the same inputs (a cached dataset is served without
# re-validating). 2: special-token strings in content and out-of-order turns are refused.
TOKENISATION_VERSION = "2"


@dataclass
class TokenizedStats:
    """Summary printed by ``tokensafe prepare``."""

    samples: int
    harmful_samples: int
    tokens: int
    response_tokens: int
    truncated_samples: int
    samples_without_labels: int
    max_length: int
    mean_length: float
    fingerprint: str

    def lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self.__dict__.items()]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Key of what decides token ids: vocabulary, added/special tokens, chat template (``digests.tokenizer_key``)."""
    return tokenizer_key(tokenizer)


def records_fingerprint(records: list[Record]) -> str:
    stream = StreamDigest("records")
    for record in records:
        # Provenance is stored in the cached dataset too (analysis reads it), so it is part of the key.
        stream.update_json(record.id, record.messages, record.source, bool(record.is_harmful))
    return stream.hexdigest()


def dataset_fingerprint(records: list[Record], tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    return digest(
        "tokenized-dataset", TOKENISATION_VERSION, records_fingerprint(records), tokenizer_key(tokenizer), max_length
    )


def tokenized_features() -> datasets.Features:
    """The columns of every tokenised dataset (training code and caches rely on exactly these)."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "source": datasets.Value("string"),
            "is_harmful": datasets.Value("bool"),
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "truncated": datasets.Value("bool"),
        }
    )


def tokenize_records(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, max_length: int, *, source_file: str | None = None
) -> datasets.Dataset:
    """Tokenise records into columns id, source, is_harmful, input_ids, labels, truncated (one row per record).

    ``is_harmful`` and ``source`` are provenance for analysis only; the training collator drops them.
    """
    columns: dict[str, list] = {k: [] for k in ("id", "source", "is_harmful", "input_ids", "labels", "truncated")}
    for row, record in enumerate(records):
        validate_messages(record.messages, file=source_file or record.source, row=row, tokenizer=tokenizer)
        if record.response is None:
            raise DataError(
                "the record has no assistant response to train on",
                file=source_file or record.source,
                row=row,
                field="messages",
            )
        tokenized = tokenize_chat(tokenizer, record.messages, max_length)
        columns["id"].append(record.id)
        columns["source"].append(record.source)
        columns["is_harmful"].append(bool(record.is_harmful))
        columns["input_ids"].append(tokenized.input_ids)
        columns["labels"].append(tokenized.labels)
        columns["truncated"].append(tokenized.truncated)
    dataset = datasets.Dataset.from_dict(columns, features=tokenized_features())
    return dataset


def compute_stats(dataset: datasets.Dataset, max_length: int, fingerprint: str) -> TokenizedStats:
    lengths = [len(ids) for ids in dataset["input_ids"]]
    response = [sum(1 for label in labels if label != IGNORE_INDEX) for labels in dataset["labels"]]
    return TokenizedStats(
        samples=len(dataset),
        harmful_samples=int(sum(dataset["is_harmful"])),
        tokens=int(sum(lengths)),
        response_tokens=int(sum(response)),
        truncated_samples=int(sum(dataset["truncated"])),
        samples_without_labels=sum(1 for n in response if n == 0),
        max_length=max_length,
        mean_length=round(sum(lengths) / max(1, len(lengths)), 2),
        fingerprint=fingerprint,
    )


def build_tokenized_dataset(
    records: list[Record],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[datasets.Dataset, TokenizedStats]:
    """Tokenise ``records`` (or load the cached Arrow copy with the same fingerprint) and return it with stats."""
    fingerprint = dataset_fingerprint(records, tokenizer, max_length)
    target = resolve_cache_dir(cache_dir) / "tokenized" / fingerprint
    if use_cache and (target / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(str(target))
    else:
        dataset = tokenize_records(records, tokenizer, max_length)
        if use_cache:
            with atomic_dir(target) as staging:
                dataset.save_to_disk(str(staging))
            dataset = datasets.load_from_disk(str(target))
    return dataset, compute_stats(dataset, max_length, fingerprint)
