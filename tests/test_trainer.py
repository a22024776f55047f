"""The training core: loss value, gradient-accumulation normalisation, extra columns, resume."""

from __future__ import annotations

import datasets
import pytest
import torch

from tokensafe.collator import PackedCollator, TokenCollator
from tokensafe.config import ConfigError
from tokensafe.data.dataset import tokenize_records
from tokensafe.data.records import Record
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.testing import tiny_llama
from tokensafe.train import OptimArgs, TokenSafeTrainer, train_model, training_arguments


def make_dataset(tokenizer, n: int = 4) -> datasets.Dataset:
    replies = ["positive", "negative and a little longer", "ok", "a much longer reply with several more words in it"]
    records = [
        Record(
            f"r{i}",
            [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": replies[i % 4]}],
            "test",
        )
        for i in range(n)
    ]
    return tokenize_records(records, tokenizer, max_length=64)


def optim(tmp_path, **kwargs) -> OptimArgs:
    defaults = dict(
        output_dir=str(tmp_path), batch_size=4, grad_accum=1, learning_rate=1e-2, max_steps=1, logging_steps=1, seed=0
    )
    defaults.update(kwargs)
    return OptimArgs(**defaults)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_compute_loss_is_weighted_mean_over_labelled_tokens(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer)
    weights = [[(0.5 if (i + j) % 2 else 1.5) for j in range(len(ids))] for i, ids in enumerate(dataset["input_ids"])]
    dataset = dataset.add_column("weights", weights)
    model = tiny_llama(tokenizer)
    collator = TokenCollator(tokenizer.pad_token_id)
    batch = collator([dataset[i] for i in range(4)])
    trainer = TokenSafeTrainer(
        model=model, args=training_arguments(optim(tmp_path)), train_dataset=dataset, data_collator=collator
    )
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logp = torch.log_softmax(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1
        )
    total, count = 0.0, 0
    for b in range(4):
        for t in range(1, batch["labels"].size(1)):
            label = batch["labels"][b, t].item()
            if label != IGNORE_INDEX:
                total += -batch["weights"][b, t].item() * logp[b, t - 1, label].item()
                count += 1
    assert abs(loss.item() - total / count) < 1e-5


def test_grad_accumulation_matches_one_big_batch(tokenizer, tmp_path):
    # Samples of very different lengths: a per-micro-batch mean (the classic GA bug) would differ.
    dataset = make_dataset(tokenizer)
    big = tiny_llama(tokenizer)
    # Plain SGD: Adam's first step is ~lr * sign(g), which would amplify float noise where g is ~0.
    train_model(big, tokenizer, dataset, optim(tmp_path / "a", batch_size=4, grad_accum=1), optim="sgd")
    small = tiny_llama(tokenizer)
    train_model(small, tokenizer, dataset, optim(tmp_path / "b", batch_size=1, grad_accum=4), optim="sgd")
    for (name, p), q in zip(big.named_parameters(), small.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_zero_weights_leave_the_model_unchanged_and_loss_zero(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer)
    dataset = dataset.add_column("weights", [[0.0] * len(ids) for ids in dataset["input_ids"]])
    model = tiny_llama(tokenizer)
    before = params(model)
    _, log = train_model(model, tokenizer, dataset, optim(tmp_path))
    assert log.history[0]["loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_fully_masked_batch_gives_zero_loss_not_nan(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer)
    dataset = dataset.map(lambda row: {"labels": [IGNORE_INDEX] * len(row["labels"])})
    model = tiny_llama(tokenizer)
    _, log = train_model(model, tokenizer, dataset, optim(tmp_path))
    assert log.history[0]["loss"] == 0.0


def test_extra_loss_term_receives_its_columns(tokenizer, tmp_path):
    seen: dict[str, torch.Tensor] = {}

    class Probe:
        name = "probe"
        per_token_columns = ("ref_score",)
        sample_columns = ("row_index",)

        def __call__(self, ctx: LossContext) -> torch.Tensor:
            seen.update({k: ctx.inputs[k] for k in ("ref_score", "row_index")})
            return ctx.logits.sum() * 0.0 + 1.0

    dataset = make_dataset(tokenizer)
    dataset = dataset.add_column("ref_score", [[float(i)] * len(ids) for i, ids in enumerate(dataset["input_ids"])])
    dataset = dataset.add_column("row_index", list(range(len(dataset))))
    _, log = train_model(tiny_llama(tokenizer), tokenizer, dataset, optim(tmp_path), loss_terms=[Probe()])
    assert sorted(seen["row_index"].tolist()) == [0, 1, 2, 3]
    assert seen["ref_score"].shape[0] == 4
    assert log.history[0]["loss_probe"] == pytest.approx(1.0)


def test_resume_from_checkpoint_reproduces_uninterrupted_run(tokenizer, tmp_path):
    dataset = make_dataset(tokenizer, n=8)
    straight = tiny_llama(tokenizer)
    train_model(straight, tokenizer, dataset, optim(tmp_path / "straight", batch_size=2, max_steps=4))
    first = tiny_llama(tokenizer)
    train_model(first, tokenizer, dataset, optim(tmp_path / "resumed", batch_size=2, max_steps=2, save_steps=2))
    assert (tmp_path / "resumed" / "checkpoint-2" / "model.safetensors").is_file()
    resumed = tiny_llama(tokenizer)
    train_model(resumed, tokenizer, dataset, optim(tmp_path / "resumed", batch_size=2, max_steps=4, resume="last"))
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_packed_collator_concatenates_rows_restarts_positions_and_masks_each_first_label(tokenizer):
    dataset = make_dataset(tokenizer)
    rows = [dict(dataset[i], weights=[float(i + 1)] * len(dataset[i]["input_ids"])) for i in range(3)]
    rows[0]["labels"] = list(rows[0]["input_ids"])  # a fully labelled row: its first label must still be masked
    batch = PackedCollator()(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert set(batch) == {"input_ids", "labels", "position_ids", "weights"}  # no attention_mask: nothing is padded
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == [t for r in rows for t in r["input_ids"]]
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    starts = [sum(lengths[:i]) for i in range(3)]
    for i, start in enumerate(starts):
        assert batch["labels"][0, start].item() == IGNORE_INDEX
        assert batch["labels"][0, start + 1 : start + lengths[i]].tolist() == rows[i]["labels"][1:]
        assert batch["weights"][0, start : start + lengths[i]].tolist() == [float(i + 1)] * lengths[i]


def test_packed_collator_refuses_a_per_token_column_of_another_length(tokenizer):
    row = dict(make_dataset(tokenizer)[0])
    row["weights"] = [1.0] * (len(row["input_ids"]) - 1)
    with pytest.raises(ValueError, match="column 'weights' has"):
        PackedCollator()([row])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_loss_equals_the_per_row_reference(tokenizer, tmp_path, attention):
    """The packed loss must equal the weighted mean NLL computed row by row with no batching at all: a token that
    attended across rows, or a row's first label predicted from the previous row, would change it."""
    dataset = make_dataset(tokenizer)
    weights = [[(0.5 if (i + j) % 2 else 1.5) for j in range(len(ids))] for i, ids in enumerate(dataset["input_ids"])]
    dataset = dataset.add_column("weights", weights)
    model = tiny_llama(tokenizer)
    model.set_attn_implementation(attention)
    trainer = TokenSafeTrainer(
        model=model, args=training_arguments(optim(tmp_path)), train_dataset=dataset, data_collator=PackedCollator()
    )
    loss = trainer.compute_loss(model, dict(PackedCollator()([dataset[i] for i in range(4)])))
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            for t in range(1, len(row["labels"])):
                if row["labels"][t] != IGNORE_INDEX:
                    total += -row["weights"][t] * logp[t - 1, row["labels"][t]].item()
                    count += 1
    assert abs(loss.item() - total / count) < 1e-5


def test_padding_free_training_takes_the_same_steps_as_padded_training(tokenizer, tmp_path):
    # Rows of very different lengths, two SGD steps of two rows: padding is half of some batches.
    dataset = make_dataset(tokenizer)
    padded = tiny_llama(tokenizer)
    train_model(padded, tokenizer, dataset, optim(tmp_path / "a", batch_size=2, max_steps=2), optim="sgd")
    packed = tiny_llama(tokenizer)
    cfg = optim(tmp_path / "b", batch_size=2, max_steps=2, padding_free=True)
    train_model(packed, tokenizer, dataset, cfg, optim="sgd")
    moved = 0.0
    for (name, p), q, start in zip(
        padded.named_parameters(), packed.parameters(), tiny_llama(tokenizer).parameters(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-6), name
        moved = max(moved, (p - start).abs().max().item())
    assert moved > 1e-4  # the steps did move the weights: equal because both trained, not because neither did


def test_padding_free_is_refused_with_a_method_that_adds_loss_terms(tokenizer, tmp_path):
    class Term:
        name = "pact"
        per_token_columns = ()
        sample_columns = ()

        def __call__(self, ctx: LossContext) -> torch.Tensor:
            return ctx.logits.sum() * 0.0

    with pytest.raises(ConfigError, match="padding_free works with plain and token-weighted SFT only.*pact"):
        train_model(
            tiny_llama(tokenizer),
            tokenizer,
            make_dataset(tokenizer),
            optim(tmp_path, padding_free=True),
            loss_terms=[Term()],
        )


def test_train_config_refuses_padding_free_for_a_loss_term_method_before_anything_loads():
    from tokensafe.train import TrainConfig

    assert TrainConfig(method="toss", padding_free=True, scores="x").padding_free  # token weights pack fine
    for method in ("pact", "kl", "toss_pact", "constrained_sft", "asft"):
        with pytest.raises(ConfigError, match=f"--method {method} adds a loss term") as error:
            TrainConfig(method=method, padding_free=True)
        assert error.value.field == "padding_free"
