"""Constrained SFT: β schedule, precomputed reference log-probs, loss value and gradient against a plain loop, for
both forms (exact: −(2/β) log σ(βΔ); weighted, the default: CE with the detached weight max(2 (1 − σ(βΔ)), 1e-3))."""

from __future__ import annotations

import math

import pytest
import torch

from tokensafe.baselines.constrained_sft import (
    REF_COLUMN,
    BetaSchedule,
    ConstrainedSftLoss,
    reference_token_logprobs,
    setup_constrained_sft,
)
from tokensafe.collator import TokenCollator
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.losses import LossContext
from tokensafe.models import LoraArgs, apply_lora
from tokensafe.testing import tiny_llama
from tokensafe.train import OptimArgs, TokenSafeTrainer, TrainConfig, training_arguments


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


def labelled_steps(labels):
    """(b, pos, t_in_turn) of every labelled position pos ≥ 1, t restarting at 1 in every assistant turn."""
    for b in range(labels.size(0)):
        t_in_turn = 0
        for pos in range(labels.size(1)):
            if labels[b, pos] == IGNORE_INDEX:
                t_in_turn = 0
                continue
            t_in_turn += 1
            if pos >= 1:
                yield b, pos, t_in_turn


def plain_loss(logits, labels, ref, schedule=plain_beta) -> float:
    """Σ_t −(2/β_t) log σ(β_t (log π_θ − log π_ref)) / N with t restarting at 1 in every assistant turn."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, count = 0.0, 0
    for b, pos, t in labelled_steps(labels):
        beta = schedule(t)
        delta = logp[b, pos - 1, labels[b, pos]].item() - ref[b, pos].item()
        total += -(2.0 / beta) * math.log(1.0 / (1.0 + math.exp(-beta * delta)))
        count += 1
    return total / count


def plain_weights(logits, labels, ref, schedule=plain_beta) -> list[float]:
    """max(2 (1 − σ(β_t Δ_t)), 1e-3) per labelled position, in labelled_steps order."""
    logp = torch.log_softmax(logits.detach().double(), dim=-1)
    out = []
    for b, pos, t in labelled_steps(labels):
        delta = logp[b, pos - 1, labels[b, pos]].item() - ref[b, pos].item()
        out.append(max(2.0 * (1.0 - 1.0 / (1.0 + math.exp(-schedule(t) * delta))), 1e-3))
    return out


def plain_weighted_loss(logits, labels, ref, schedule=plain_beta) -> float:
    """Σ_t w_t · (−log π_θ(y_t)) / N."""
    logp = torch.log_softmax(logits.detach().double(), dim=-1)
    weights = plain_weights(logits, labels, ref, schedule)
    nll = [-logp[b, pos - 1, labels[b, pos]].item() for b, pos, _ in labelled_steps(labels)]
    return sum(w * x for w, x in zip(weights, nll, strict=True)) / len(nll)


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
    loss = ConstrainedSftLoss(form="exact")(ctx)
    assert loss.item() == pytest.approx(plain_loss(ctx.logits, batch["labels"], batch[REF_COLUMN]), rel=1e-5)
    # the positions inside each turn restart at 1 in the second assistant turn of the multi-turn chat
    _, beta = ConstrainedSftLoss().token_losses(ctx)
    assert beta.tolist().count(0.5) == 5  # 4 chats, one with two assistant turns


def test_custom_schedule_and_normaliser(student, chat_dataset, tokenizer):
    dataset = with_reference(chat_dataset, student, tokenizer)
    batch = batch_of(dataset, tokenizer)
    ctx = context(student, batch, normaliser=1000)
    schedule = BetaSchedule(first=1.5, early=0.7, early_until=3, late=0.3)
    n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    plain_schedule = lambda t: plain_beta(t, 1.5, 0.7, 3, 0.3)  # noqa: E731
    exact = ConstrainedSftLoss(schedule, form="exact")(ctx)
    expected = plain_loss(ctx.logits, batch["labels"], batch[REF_COLUMN], plain_schedule)
    assert exact.item() == pytest.approx(expected * n / 1000, rel=1e-5)
    weighted = ConstrainedSftLoss(schedule)(ctx)
    expected = plain_weighted_loss(ctx.logits, batch["labels"], batch[REF_COLUMN], plain_schedule)
    assert weighted.item() == pytest.approx(expected * n / 1000, rel=1e-5)


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def trainer_for(tmp_path, model, terms):
    args = training_arguments(OptimArgs(output_dir=str(tmp_path), max_steps=1))
    return TokenSafeTrainer(model=model, args=args, loss_terms=terms)


@pytest.mark.parametrize("form", ["weighted", "exact"])
def test_fresh_adapter_gives_the_sft_gradient(form, chat_dataset, tokenizer, tmp_path):
    # A fresh LoRA adapter (B = 0) is the reference: Δ = 0, weight 2 (1 − σ(0)) = 1 for every β.
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    batch = batch_of(with_reference(chat_dataset, model, tokenizer), tokenizer)
    trainer = trainer_for(tmp_path, model, [ConstrainedSftLoss(form=form)])
    csft = grads(model, trainer.compute_loss(model, dict(batch)))
    sft = grads(model, trainer_for(tmp_path, model, []).compute_loss(model, dict(batch)))
    for name in sft:
        assert torch.allclose(csft[name], sft[name], rtol=1e-4, atol=1e-8), name


@pytest.mark.parametrize("form", ["weighted", "exact"])
def test_small_beta_tends_to_sft(form, student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)
    tiny_beta = BetaSchedule(first=1e-4, early=1e-4, late=1e-4)
    terms = [ConstrainedSftLoss(tiny_beta, form=form)]
    csft = grads(student, trainer_for(tmp_path, student, terms).compute_loss(student, dict(batch)))
    sft = grads(student, trainer_for(tmp_path, student, []).compute_loss(student, dict(batch)))
    for name in sft:
        assert torch.allclose(csft[name], sft[name], rtol=1e-3, atol=1e-6), name
    terms = [ConstrainedSftLoss(form=form)]
    large = grads(student, trainer_for(tmp_path, student, terms).compute_loss(student, dict(batch)))
    assert any(not torch.allclose(large[n], sft[n], rtol=1e-3, atol=1e-6) for n in sft)  # the default β matters


def test_trainer_replaces_the_ce_with_the_term(student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)
    exact = trainer_for(tmp_path, student, [ConstrainedSftLoss(form="exact")]).compute_loss(student, dict(batch))
    weighted = trainer_for(tmp_path, student, [ConstrainedSftLoss()]).compute_loss(student, dict(batch))
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert exact.item() == pytest.approx(plain_loss(logits, batch["labels"], batch[REF_COLUMN]), rel=1e-5)
    assert weighted.item() == pytest.approx(plain_weighted_loss(logits, batch["labels"], batch[REF_COLUMN]), rel=1e-5)


def test_missing_reference_column_is_an_error(student, chat_dataset, tokenizer):
    batch = TokenCollator(tokenizer.pad_token_id)([chat_dataset[i] for i in range(2)])
    with pytest.raises(KeyError, match=REF_COLUMN):
        ConstrainedSftLoss()(context(student, batch))


def own_logprobs(model, batch) -> torch.Tensor:
    """(B, L) log π_model(labels[t] | tokens < t) at every labelled t ≥ 1 of the batch itself, 0 elsewhere."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = torch.zeros(batch["labels"].shape)
    for b, pos, _ in labelled_steps(batch["labels"]):
        out[b, pos] = logp[b, pos - 1, batch["labels"][b, pos]]
    return out


def test_weighted_loss_matches_the_formula_written_out(student, chat_dataset, tokenizer):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)  # Δ ≠ 0
    ctx = context(student, batch)
    loss = ConstrainedSftLoss()(ctx)
    expected = plain_weighted_loss(ctx.logits, batch["labels"], batch[REF_COLUMN])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() != pytest.approx(plain_loss(ctx.logits, batch["labels"], batch[REF_COLUMN]), rel=1e-2)
    # token_losses gives the same per-token view: w_t · CE_t, and it sums to the loss
    losses, _ = ConstrainedSftLoss().token_losses(ctx)
    assert losses.sum().item() / ctx.normaliser.item() == pytest.approx(expected, rel=1e-5)
    weights = plain_weights(ctx.logits, batch["labels"], batch[REF_COLUMN])
    assert min(weights) < 0.9 and max(weights) > 1.1  # the weights really vary around 1 here


def test_weighted_gradient_equals_the_exact_gradient(student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(with_reference(chat_dataset, student, tokenizer), tokenizer)  # Δ ≠ 0
    ctx = context(student, batch)
    assert min(plain_weights(ctx.logits, batch["labels"], batch[REF_COLUMN])) > 1e-3  # the clamp is inactive
    weighted = grads(student, ConstrainedSftLoss(form="weighted")(context(student, batch)))
    exact = grads(student, ConstrainedSftLoss(form="exact")(context(student, batch)))
    sft = grads(student, trainer_for(tmp_path, student, []).compute_loss(student, dict(batch)))
    for name in exact:
        assert torch.allclose(weighted[name], exact[name], rtol=1e-4, atol=1e-8), name
    assert any(not torch.allclose(exact[n], sft[n], rtol=1e-3, atol=1e-6) for n in sft)  # not trivially the CE's


def test_weighted_form_is_sft_exactly_at_zero_delta(chat_dataset, tokenizer, tmp_path):
    # A fresh LoRA adapter (B = 0) whose own log-probs are the reference: Δ = 0, w = 2 (1 − σ(0)) = 1 bit for bit.
    model = apply_lora(tiny_llama(tokenizer, seed=0), LoraArgs(lora_r=4, lora_alpha=8))
    batch = batch_of(
        chat_dataset.add_column(REF_COLUMN, [[0.0] * len(r) for r in chat_dataset["input_ids"]]), tokenizer
    )
    batch[REF_COLUMN] = own_logprobs(model, batch)
    csft_loss = trainer_for(tmp_path, model, [ConstrainedSftLoss()]).compute_loss(model, dict(batch))
    csft = grads(model, csft_loss)
    sft_loss = trainer_for(tmp_path, model, []).compute_loss(model, dict(batch))
    sft = grads(model, sft_loss)
    assert torch.equal(csft_loss, sft_loss)
    for name in sft:
        assert torch.equal(csft[name], sft[name]), name


def test_weighted_form_clamps_the_weight_for_large_delta(student, chat_dataset, tokenizer, tmp_path):
    batch = batch_of(
        chat_dataset.add_column(REF_COLUMN, [[0.0] * len(r) for r in chat_dataset["input_ids"]]), tokenizer
    )
    # Δ = 200 at every token: 2 (1 − σ(β Δ)) ≤ 2 σ(−20) ≈ 4e-9 for every β of the schedule, so w = 1e-3 throughout
    batch[REF_COLUMN] = own_logprobs(student, batch) - 200.0
    ctx = context(student, batch)
    assert set(plain_weights(ctx.logits, batch["labels"], batch[REF_COLUMN])) == {1e-3}
    loss = ConstrainedSftLoss()(ctx)
    expected = plain_weighted_loss(ctx.logits, batch["labels"], batch[REF_COLUMN])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    sft_loss = trainer_for(tmp_path, student, []).compute_loss(student, dict(batch))
    assert loss.item() == pytest.approx(1e-3 * sft_loss.item(), rel=1e-5)
    weighted = grads(student, ConstrainedSftLoss()(context(student, batch)))
    sft = grads(student, trainer_for(tmp_path, student, []).compute_loss(student, dict(batch)))
    exact = grads(student, ConstrainedSftLoss(form="exact")(context(student, batch)))
    for name in sft:
        assert torch.allclose(weighted[name], 1e-3 * sft[name], rtol=1e-4, atol=1e-10), name
        assert exact[name].abs().max() < 1e-3 * sft[name].abs().max()  # the exact form's weight is not floored


def test_form_is_checked_and_read_from_the_config(student, chat_dataset, tokenizer, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="csft_form"):
        ConstrainedSftLoss(form="exactly")
    assert ConstrainedSftLoss().form == "weighted" and TrainConfig().csft_form == "weighted"
    cfg = TrainConfig(model=str(tiny_model_dir), cache_dir=str(tmp_path), csft_form="exact", csft_batch_size=3)
    setup = setup_constrained_sft(cfg, student, tokenizer, chat_dataset)
    (term,) = setup.loss_terms
    assert term.form == "exact" and REF_COLUMN in setup.dataset.column_names
