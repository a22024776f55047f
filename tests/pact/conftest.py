"""Fixtures for the PACT tests: a tiny LoRA student whose adapter is non-zero, its frozen base, and a small set of
chats (one multi-turn, one longer than the decay start) tokenised canonically."""

from __future__ import annotations

import datasets
import pytest
import torch

from tokensafe.data.dataset import tokenize_records
from tokensafe.data.records import Record
from tokensafe.models import LoraArgs, apply_lora
from tokensafe.testing import save_tiny_model, tiny_llama

CHATS = [
    [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "I can't help with that."},
    ],
    [
        {"role": "user", "content": "Classify: a wonderful film"},
        {"role": "assistant", "content": "positive"},
    ],
    [
        {"role": "user", "content": "Tell me a story."},
        {
            "role": "assistant",
            "content": "Once upon a time there was a small robot who wanted to learn to sing songs.",
        },
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say no."},
        {"role": "assistant", "content": "No, sorry."},
    ],
]


@pytest.fixture
def chat_dataset(tokenizer) -> datasets.Dataset:
    records = [Record(f"c{i}", chat, "test") for i, chat in enumerate(CHATS)]
    return tokenize_records(records, tokenizer, max_length=128)


@pytest.fixture
def student(tokenizer):
    """tiny_llama(seed 0) + LoRA (q, v) with a random, non-zero B so the student differs from the reference."""
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.eval()
    return model


@pytest.fixture
def frozen_base(tokenizer):
    """A separate copy of the student's base weights (the official design's frozen reference)."""
    return tiny_llama(tokenizer, seed=0)


@pytest.fixture
def safety_ids(tokenizer, chat_dataset) -> torch.Tensor:
    """A 16-token S that contains some response tokens (so the KL is not trivial) and some unrelated tokens."""
    seen = sorted({t for row in chat_dataset["labels"] for t in row if t >= 0})
    ids = seen[:10] + [100, 200, 300, 400, 500, 600]
    return torch.as_tensor(ids, dtype=torch.long)


@pytest.fixture
def safety_weights(safety_ids) -> torch.Tensor:
    torch.manual_seed(3)
    w = torch.rand(safety_ids.numel())
    w[::3] = 0.0  # clamped-at-0 weights exist in real sets
    return w


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A second tiny model (another seed): the base of the aligned/base pair PACT compares."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-base"), tokenizer, seed=1)
