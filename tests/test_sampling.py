"""Length-bucketed training order: a permutation, batches of neighbouring lengths, random batch order, reproducible."""

from __future__ import annotations

import pytest
import torch

from tests.test_trainer import make_dataset, optim
from tokensafe.sampling import ShuffledLengthBatches
from tokensafe.testing import tiny_llama
from tokensafe.train import train_model


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_batches_are_cuts_of_one_length_order_in_random_order():
    lengths = [(7 * i) % 23 + 1 for i in range(50)]  # many ties
    sampler = ShuffledLengthBatches(lengths, batch_size=4, seed=3)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert list(sampler) == [i for b in batches for i in b]
    # Sorted by their lengths, the batches tile the globally sorted lengths: no batch straddles another.
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:], strict=False))
    assert [len(b) for b in batches].count(2) == 1 and all(len(b) in (2, 4) for b in batches)
    # Padding is that of the sorted cut (the minimum for this batch size) ...
    ordered = sorted(range(50), key=lambda i: lengths[i])
    assert padded_tokens(batches, lengths) == padded_tokens([ordered[i : i + 4] for i in range(0, 50, 4)], lengths)
    # ... while the visiting order is not sorted by length (no long-to-short schedule).
    first_lengths = [lengths[b[0]] for b in batches]
    assert first_lengths != sorted(first_lengths) and first_lengths != sorted(first_lengths, reverse=True)


def test_order_depends_only_on_seed_and_epoch():
    lengths = list(range(40))
    a, b = ShuffledLengthBatches(lengths, 4, seed=0), ShuffledLengthBatches(lengths, 4, seed=0)
    assert a.batches() == b.batches()
    b.set_epoch(1)
    assert a.batches() != b.batches()
    assert ShuffledLengthBatches(lengths, 4, seed=1).batches() != a.batches()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ShuffledLengthBatches(lengths, 0)


def test_trainer_sees_the_sampler_batches_when_grouping_by_length(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer, n=12)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    dataset = dataset.add_column("row_index", list(range(len(dataset))))
    seen: list[list[int]] = []

    class Probe:
        name = "probe"
        per_token_columns = ()
        sample_columns = ("row_index",)

        def __call__(self, ctx):
            seen.append(ctx.inputs["row_index"].tolist())
            assert ctx.inputs["input_ids"].shape[1] == max(lengths[i] for i in seen[-1])
            return ctx.logits.sum() * 0.0

    cfg = optim(tmp_path, batch_size=4, max_steps=3, group_by_length=True)
    train_model(tiny_llama(tokenizer), tokenizer, dataset, cfg, loss_terms=[Probe()])
    assert seen == ShuffledLengthBatches(lengths, 4, seed=cfg.seed).batches()
    assert torch.tensor([len(b) for b in seen]).sum() == 12
