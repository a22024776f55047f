"""Determinism: the same config and seed give the same weights, scores, masks and safety tokens on one machine.

What is *not* promised: bit-identical results across thread counts or machines. CPU matmul kernels split their
reductions by thread count and instruction set (AVX2 / AVX-512 / ARM), so float sums are added in another order;
the difference is a few ulp per operation and grows with every optimiser step.
"""

from __future__ import annotations

import dataclasses

import kill_worker
import pytest
import torch
from pact.test_pact_safety_tokens import talkative_tiny_llama
from safetensors.torch import load_file

from tokensafe.data.records import Record
from tokensafe.pact.safety_tokens import SafetyTokensArgs, identify_safety_tokens
from tokensafe.testing import tiny_llama
from tokensafe.toss.refs import load_reference_model, save_random_adapter
from tokensafe.toss.scoring import score_dataset
from tokensafe.toss.select import select_tokens
from tokensafe.train import TrainConfig, run_train


@pytest.fixture()
def train_config(tiny_model_dir, data_dir, tmp_path) -> TrainConfig:
    return TrainConfig(
        model=str(tiny_model_dir),
        data_dir=str(data_dir),
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "a"),
        task="sst2",
        n_task=8,
        max_length=96,
        batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        lora_r=4,
        lora_alpha=8,
        save_steps=0,
        save_minutes=0,
        threads=1,
    )


def adapter(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "final" / "adapter_model.safetensors"))


def test_training_twice_in_one_process_gives_the_same_adapter_bit_for_bit(train_config, tmp_path):
    # The second run starts with the global RNG wherever the first left it: only seeding before the LoRA adapter is
    # created makes its initialisation (and so the result) the same.
    run_train(train_config)
    run_train(dataclasses.replace(train_config, output_dir=str(tmp_path / "b")))
    first, second = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    run_train(dataclasses.replace(train_config, output_dir=str(tmp_path / "c"), seed=1))
    other_seed = adapter(tmp_path / "c")
    assert any(not torch.equal(first[name], other_seed[name]) for name in first)  # the seed is what decides


def test_scores_masks_and_safety_tokens_repeat_exactly(tiny_model_dir, tokenizer, tmp_path):
    adapters = {
        name: save_random_adapter(str(tiny_model_dir), tmp_path / name, seed=seed, r=4, alpha=8, std=0.3)
        for name, seed in (("U", 1), ("D", 2))
    }
    dataset = kill_worker.dataset()
    runs = []
    for attempt in range(2):
        model, _ = load_reference_model(str(tiny_model_dir), adapters)
        scores = score_dataset(
            model, dataset, tmp_path / f"scores-{attempt}", fingerprint="f", pad_token_id=tokenizer.pad_token_id
        )
        selection = select_tokens(scores, mode="global", rho=0.3)
        records = [Record(f"h{i}", [{"role": "user", "content": f"harmful request {i}"}], "t") for i in range(3)]
        tokens, _ = identify_safety_tokens(
            talkative_tiny_llama(tokenizer),  # generates printable answers (greedy generation is part of it)
            tiny_llama(tokenizer, seed=1),
            tokenizer,
            records,
            SafetyTokensArgs(max_new_tokens=4, top_k=8, batch_size=2),
        )
        runs.append((scores, selection, tokens))
    (s1, m1, t1), (s2, m2, t2) = runs
    assert s1.score.tobytes() == s2.score.tobytes()
    assert m1.drop.tobytes() == m2.drop.tobytes() and m1.drop.any()
    assert t1.token_ids == t2.token_ids and t1.weights == t2.weights
    assert torch.equal(t1.vocab_diff, t2.vocab_diff)
