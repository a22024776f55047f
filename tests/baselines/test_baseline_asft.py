"""AsFT: the regulariser and its gradient against the explicit (I − Ĉ) B A, λ = 0 is SFT, accumulation scaling, the
per-layer ‖V‖_F / λ_max(C) record."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tokensafe.baselines.asft import SETUP_FILE, build_asft_loss, setup_asft
from tokensafe.baselines.directions import AdapterError, AlignmentPair, direction_stats, lora_modules
from tokensafe.collator import TokenCollator
from tokensafe.losses import LossContext
from tokensafe.testing import tiny_llama
from tokensafe.train import OptimArgs, TokenSafeTrainer, training_arguments


def explicit_regulariser(model, pair_weights) -> torch.Tensor:
    """Σ_layers ‖(I − C) B A‖²_F with the d_out × d_out matrix C = V Vᵀ/‖V‖_F built explicitly.

    B A without the LoRA scale s = α / r (the authors' convention, DESIGN.md §1.3); the student has s = 2, so a
    penalty on s B A would be 4 times this."""
    aligned, base = pair_weights
    total = torch.zeros((), dtype=torch.float64)
    for name, module in lora_modules(model):
        path = name.removeprefix("base_model.model.")
        v = (aligned[f"{path}.weight"] - base[f"{path}.weight"]).double()
        c = v @ v.T / torch.linalg.matrix_norm(v, "fro")
        a, b = module.lora_A["default"].weight.double(), module.lora_B["default"].weight.double()
        delta_w = b @ a
        residual = (torch.eye(c.size(0), dtype=torch.float64) - c) @ delta_w
        total = total + (residual**2).sum()
    return total


def lora_grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture
def pair(aligned_dir, base_dir) -> AlignmentPair:
    return AlignmentPair.load(str(aligned_dir), str(base_dir))


def test_regulariser_value_and_gradient_match_the_explicit_formula(student, pair, pair_weights):
    term = build_asft_loss(student, pair, lam=1.0)
    value = term.regulariser()
    expected = explicit_regulariser(student, pair_weights)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    ours = lora_grads(student, value)
    student.double()  # the explicit formula in float64 for a clean reference gradient
    reference = lora_grads(student, explicit_regulariser(student, pair_weights))
    student.float()
    assert ours.keys() == reference.keys() and len(ours) == 8
    for name in ours:
        assert torch.allclose(ours[name].double(), reference[name], rtol=1e-4, atol=1e-6), name


def test_term_is_lambda_times_regulariser_per_optimiser_step(student, pair, chat_dataset, tokenizer):
    batch = TokenCollator(tokenizer.pad_token_id)([chat_dataset[i] for i in range(2)])
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reg = build_asft_loss(student, pair, lam=1.0).regulariser().item()
    # under DDP (process_scale = P: the trainer multiplies each process's loss by P, then DDP averages over P)
    for lam, accum, processes in [(1.0, 1, 1), (0.3, 1, 1), (2.0, 4, 1), (2.0, 4, 2)]:
        ctx = LossContext(
            student,
            batch,
            logits,
            batch["labels"],
            torch.tensor(10.0),
            grad_accum_steps=accum,
            process_scale=processes,
        )
        expected = lam * reg / (accum * processes)
        assert build_asft_loss(student, pair, lam)(ctx).item() == pytest.approx(expected, rel=1e-6)


def test_lambda_zero_is_sft_exactly(student, pair, chat_dataset, tokenizer, tmp_path):
    batch = TokenCollator(tokenizer.pad_token_id)([chat_dataset[i] for i in range(len(chat_dataset))])
    args = training_arguments(OptimArgs(output_dir=str(tmp_path), max_steps=1))
    with_term = TokenSafeTrainer(model=student, args=args, loss_terms=[build_asft_loss(student, pair, lam=0.0)])
    sft = TokenSafeTrainer(model=student, args=args)
    loss_term = with_term.compute_loss(student, dict(batch))
    grads_term = lora_grads(student, loss_term)
    loss_sft = sft.compute_loss(student, dict(batch))
    grads_sft = lora_grads(student, loss_sft)
    assert loss_term.item() == loss_sft.item()
    for name in grads_sft:
        assert torch.equal(grads_term[name], grads_sft[name]), name
    # and with λ > 0 the regulariser does change the loss
    regularised = TokenSafeTrainer(model=student, args=args, loss_terms=[build_asft_loss(student, pair, lam=1.0)])
    assert regularised.compute_loss(student, dict(batch)).item() > loss_sft.item()


def test_needs_lora_layers(tokenizer, pair):
    with pytest.raises(AdapterError, match="no LoRA layers"):
        build_asft_loss(tiny_llama(tokenizer), pair, lam=1.0)


def test_penalty_ignores_the_lora_scale(student, pair):
    """Doubling α (s: 2 -> 4) changes the applied update, not the penalty on B A."""
    before = build_asft_loss(student, pair, lam=1.0).regulariser().item()
    for _, module in lora_modules(student):
        assert module.scaling["default"] == 2.0
        module.scaling["default"] = 4.0
    assert build_asft_loss(student, pair, lam=1.0).regulariser().item() == pytest.approx(before, rel=1e-6)


def test_direction_stats_match_the_eigenvalues_of_explicit_c():
    torch.manual_seed(0)
    v = torch.randn(12, 7, dtype=torch.float64)
    c = v @ v.T / torch.linalg.matrix_norm(v, "fro")
    stats = direction_stats(v.float())
    assert stats["v_norm"] == pytest.approx(torch.linalg.matrix_norm(v, "fro").item(), rel=1e-5)
    assert stats["lambda_max"] == pytest.approx(torch.linalg.eigvalsh(c).max().item(), rel=1e-5)
    assert stats["lambda_max"] <= stats["v_norm"]  # σ_max² <= Σ σ²


def test_setup_records_v_norm_and_lambda_max_per_layer(student, aligned_dir, base_dir, pair_weights, tmp_path):
    cfg = SimpleNamespace(
        safety_aligned_model=str(aligned_dir),
        safety_base_model=str(base_dir),
        cache_dir=None,
        asft_lambda=0.5,
        output_dir=str(tmp_path),
    )
    setup = setup_asft(cfg, student, None, None)
    record = json.loads((tmp_path / SETUP_FILE).read_text())
    assert record["lambda"] == 0.5 and record["penalty"].startswith("B A") and len(setup.loss_terms) == 1
    aligned, base = pair_weights
    names = [name for name, _ in lora_modules(student)]
    assert [row["module"] for row in record["layers"]] == names and len(names) == 4
    for row in record["layers"]:
        path = row["module"].removeprefix("base_model.model.")
        v = (aligned[f"{path}.weight"] - base[f"{path}.weight"]).double()
        c = v @ v.T / torch.linalg.matrix_norm(v, "fro")
        assert row["v_norm"] == pytest.approx(torch.linalg.matrix_norm(v, "fro").item(), rel=1e-5)
        assert row["lambda_max"] == pytest.approx(torch.linalg.eigvalsh(c).max().item(), rel=1e-4)
        assert row["lora_scale"] == 2.0
