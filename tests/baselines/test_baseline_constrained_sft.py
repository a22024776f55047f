"""Constrained SFT: β schedule, precomputed reference log-probs, loss value and gradient against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from tokensafe.baselines.constrained_sft import (
    REF_COLUMN,
    BetaSchedule,
    ConstrainedSftLoss,
    reference_token_logprobs,
)
from tokensafe.collator import TokenCollator
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.models import LoraArgs, apply_lora
from tokensafe.testing import tiny_llama
from tokensafe.train import OptimArgs, TokenSafeTrainer, training_arguments


def plain_beta(t: int, first=0.5, early=2.0, until=5, late=0.1) -> float:
    if t == 1:
        return first
    if 2 <= t <= until:
        return early
    return late


def with_reference(dataset, model, tokenizer):
    values = reference_token_logprobs(model, dataset, tokenizer.pad_token_id, batch_size=3, disable_adapter=True)
    return dataset.add_column(REF_COLUMN, [v.tolist() for v in values])


def batch_of(dataset, tokenizer):
    collate = TokenCollator(tokenizer.pad_token_id, per_token_columns=(REF_COLUMN,))
    return collate([dataset[i] for i in range(len(dataset))])


def context(model, batch, normaliser=None) -> LossContext:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum() if normaliser is None else normaliser
    return LossContext(model, batch, logits, batch["labels"], torch.as_tensor(float(n)))


def plain_loss(logits, labels, ref, schedule=plain_beta) -> float:
    """Σ_t −(2/β_t) log σ(β_t (log π_θ − log π_ref)) / N with t restarting at 1 in every assistant turn."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, count = 0.0, 0
    for b in range(labels.size(0)):
        t_in_turn = 0
        for pos in range(labels.size(1)):
            if labels[b, pos] == IGNORE_INDEX:
                t_in_turn = 0
                continue
            t_in_turn += 1
            if pos == 0:
                continue
            beta = schedule(t_in_turn)
            delta = logp[b, pos - 1, labels[b, pos]].item() - ref[b, pos].item()
            total += -(2.0 / beta) * math.log(1.0 / (1.0 + math.exp(-beta * delta)))
            count += 1
    return total / count


def test_beta_schedule_per_position():
    t = torch.arange(1, 10)
    assert BetaSchedule()(t).tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1, 0.1, 0.1])
    custom = BetaSchedule(first=1.0, early=3.0, early_until=3, late=0.5)(t)
    assert custom.tolist() == pytest.approx([plain_beta(i, 1.0, 3.0, 3, 0.5) for i in range(1, 10)])
    with pytest.raises(ValueError, match="β must be > 0"):
        BetaSchedule(late=0.0)


def test_reference_logprobs_are_the_base_models_label_logprobs(student, chat_dataset, tokenizer):
    values = reference_token_logprobs(
        student, chat_dataset, tokenizer.pad_token_id, batch_size=3, disable_adapter=True
    )
    base = tiny_llama(tokenizer, seed=0)  # the student's LoRA base, as a separate model
    for row, ref in zip(chat_dataset, values, strict=True):
        ids, labels = torch.tensor([row["input_ids"]]), row["labels"]
        with torch.no_grad():
            logp = torch.log_softmax(base(input_ids=ids).logits[0], dim=-1)
        assert len(ref) == len(labels)
        for t, label in enumerate(labels):
            expected = logp[t - 1, label].item() if t >= 1 and label != IGNORE_INDEX else 0.0
            assert ref[t] == pytest.approx(expected, abs=1e-4)


def test_loss_matches_the_formula_written_out(student, chat_dataset, tokenizer):
    dataset = with_reference(chat_dataset, student, tokenizer)  # student != reference: Δ ≠ 0
    batch = batch_of(dataset, tokenizer)
    ctx = context(student, batch)
    loss = ConstrainedSftLoss()(ctx)
    assert loss.item() == pytest.approx(plain_loss(ctx.logits, batch["labels"], batch[REF_COLUMN]), rel=1e-5)
    # the positions inside each turn restart at 1 in the second assistant turn of the multi-turn chat
    _, beta = ConstrainedSftLoss().token_losses(ctx)
    assert beta.tolist().count(0.5) == 5  # 4 chats, one with two assistant turns


def test_custom_schedule_and_normaliser(student, chat_dataset, tokenizer):
    dataset = with_reference(chat_dataset, student, tokenizer)
    batch = batch_of(dataset, tokenizer)
    ctx = context(student, batch, normaliser=1000)
    schedule = BetaSchedule(first=1.5, early=0.7, early_until=3, late=0.3)
    loss = ConstrainedSftLoss(schedule)(ctx)
    n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    expected = plain_loss(ctx.logits, batch["labels"], batch[REF_COLUMN], lambda t: plain_beta(t, 1.5, 0.7, 3, 0.3))
    assert loss.item() == pytest.approx(expected * n / 1000, rel=1e-5)


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def trainer_for(tmp_path, model, terms):
    args = training_arguments(OptimArgs(output_dir=str(tmp_path), max_steps=1))
    return TokenSafeTrainer(model=model, args=args, loss_terms=terms)


def test_fresh_adapter_gives_exactly_the_sft_gradient(chat_dataset, tokenizer, tmp_path):
    # A fresh LoRA adapter (B = 0) is the reference: Δ = 0, weight 2 (1 − σ(0)) = 1 for every β.
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    batch = batch_of(with_reference(chat_dataset, model, tokenizer), tokenizer)
    trainer = trainer_for(tmp_path, model, [ConstrainedSftLoss()])
    csft = grads(model, trainer.compute_loss(model, dict(batch)))
    sft = grads(model, trainer_for(tmp_path, model, []).compute_loss(model, dict(batch)))
    for name in sft:
        assert torch.allclose(csft[name], sft[name], rtol=1e-4, atol=1e-8), name


def test_small_beta_tends_to_sft(student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)
    tiny_beta = BetaSchedule(first=1e-4, early=1e-4, late=1e-4)
    csft = grads(
        student, trainer_for(tmp_path, student, [ConstrainedSftLoss(tiny_beta)]).compute_loss(student, dict(batch))
    )
    sft = grads(student, trainer_for(tmp_path, student, []).compute_loss(student, dict(batch)))
    for name in sft:
        assert torch.allclose(csft[name], sft[name], rtol=1e-3, atol=1e-6), name
    large = grads(student, trainer_for(tmp_path, student, [ConstrainedSftLoss()]).compute_loss(student, dict(batch)))
    assert any(not torch.allclose(large[n], sft[n], rtol=1e-3, atol=1e-6) for n in sft)  # the default β matters


def test_trainer_replaces_the_ce_with_the_term(student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)
    loss = trainer_for(tmp_path, student, [ConstrainedSftLoss()]).compute_loss(student, dict(batch))
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loss.item() == pytest.approx(plain_loss(logits, batch["labels"], batch[REF_COLUMN]), rel=1e-5)


def test_missing_reference_column_is_an_error(student, chat_dataset, tokenizer):
    batch = TokenCollator(tokenizer.pad_token_id)([chat_dataset[i] for i in range(2)])
    with pytest.raises(KeyError, match=REF_COLUMN):
        ConstrainedSftLoss()(context(student, batch))
