"""TOSS test assets: a small chat dataset of mixed lengths and two random LoRA adapters of the tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokensafe.data.dataset import tokenize_records
from tokensafe.data.records import Record
from tokensafe.testing import mixed_length_chats
from tokensafe.toss.refs import save_random_adapter


def make_records(n: int = 10) -> list[Record]:
    return mixed_length_chats(n, "toss-test", harmful_every=3)


@pytest.fixture(scope="session")
def toss_records() -> list[Record]:
    return make_records()


@pytest.fixture(scope="session")
def toss_dataset(tokenizer, toss_records):
    return tokenize_records(toss_records, tokenizer, max_length=96)


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toss-adapters")
    return {
        "U": save_random_adapter(str(tiny_model_dir), root / "U", seed=1, r=4, alpha=8, std=0.3),
        "D": save_random_adapter(str(tiny_model_dir), root / "D", seed=2, r=4, alpha=8, std=0.3),
    }


@pytest.fixture()
def reference_model(tiny_model_dir, tiny_adapters):
    from tokensafe.toss.refs import load_reference_model

    model, tokenizer = load_reference_model(str(tiny_model_dir), tiny_adapters)
    return model, tokenizer
