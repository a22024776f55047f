"""Fixtures for the baseline tests: a small chat set, a tiny LoRA student with a non-zero adapter, and an
aligned/base pair of tiny models on disk (two random initialisations: V = W_aligned − W_base is dense)."""

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
        {"role": "assistant", "content": "I can't help with that, sorry."},
    ],
    [
        {"role": "user", "content": "Classify: a wonderful film"},
        {"role": "assistant", "content": "positive"},
    ],
    [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time a small robot wanted to learn to sing songs."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Say no."},
        {"role": "assistant", "content": "No, sorry, I will not."},
    ],
]


@pytest.fixture
def chat_dataset(tokenizer) -> datasets.Dataset:
    records = [Record(f"c{i}", chat, "test") for i, chat in enumerate(CHATS)]
    return tokenize_records(records, tokenizer, max_length=128)


def randomise_lora_b(model: torch.nn.Module, seed: int = 1, std: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    return model


@pytest.fixture
def student(tokenizer):
    """tiny_llama(seed 0) + LoRA r=4, α=8 (scale 2) on q, v, with a random non-zero B."""
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    return randomise_lora_b(model).eval()


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-aligned"), tokenizer, seed=0)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-base"), tokenizer, seed=1)


@pytest.fixture(scope="module")
def pair_weights(tokenizer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state dicts of aligned_dir and base_dir, built independently of the files."""
    return tiny_llama(tokenizer, seed=0).state_dict(), tiny_llama(tokenizer, seed=1).state_dict()
