"""Every baseline through `tokensafe train` on a tiny model (2 steps), the KL baseline's λ = 0 / temperature, and the
shipped baseline configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import randomise_lora_b  # noqa: E402 - pytest puts this folder on sys.path

from tokensafe.collator import TokenCollator
from tokensafe.config import load_config
from tokensafe.losses import LossContext
from tokensafe.models import apply_lora
from tokensafe.pact.method import setup_kl
from tokensafe.testing import tiny_llama
from tokensafe.train import METHODS, OptimArgs, TokenSafeTrainer, TrainConfig, run_train, training_arguments

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path, model_dir, base_dir, data_dir, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model_dir), data_dir=str(data_dir), task="sst2", n_task=6, harmful="advbench", harmful_share=0.25,
        max_length=96, output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), max_steps=2,
        batch_size=4, logging_steps=1, lora_r=4, lora_alpha=8, safety_aligned_model=str(model_dir),
        safety_base_model=str(base_dir),
    )  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("constrained_sft", {}),
        ("safelora", {"safelora_layers": 3}),
        ("asft", {}),
        ("safeinstr", {"safeinstr_n": 2}),
        ("sample_random", {"sample_rho": 0.25}),
    ],
)
def test_method_trains_end_to_end(method, extra, tmp_path, tiny_model_dir, base_dir, data_dir):
    cfg = tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir, method=method, **extra)
    result = run_train(cfg)
    out = Path(cfg.output_dir)
    assert [h["step"] for h in result.loss_history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.loss_history)
    assert (out / "final" / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    if method == "constrained_sft":
        assert all("loss_csft" in h for h in result.loss_history)
        assert len(list((tmp_path / "cache" / "baselines" / "csft_reference").glob("*/ref_logp.safetensors"))) == 1
        again = run_train(
            tiny_config(
                tmp_path, tiny_model_dir, base_dir, data_dir, method=method, output_dir=str(tmp_path / "again")
            )
        )
        assert again.loss_history[0]["loss"] == pytest.approx(result.loss_history[0]["loss"], abs=1e-5)
    if method == "safelora":
        report = json.loads((out / "safelora_report.json").read_text())
        assert report["n_projected"] == 3 and report["n_layers"] == 4
    if method == "asft":
        assert all("loss_asft" in h for h in result.loss_history)
    if method == "safeinstr":
        assert summary["sources"]["safeinstr"] == 2 and summary["data"]["samples"] == 10
    if method == "sample_random":
        assert json.loads((out / "sample_selection.json").read_text())["dropped"] == 2
        assert sum(summary["sources"].values()) == 6


def test_kl_lambda_zero_is_sft_exactly_and_temperature_is_used(tokenizer, chat_dataset, tmp_path):
    model = randomise_lora_b(apply_lora(tiny_llama(tokenizer), TrainConfig(lora_r=4, lora_alpha=8)))
    batch = TokenCollator(tokenizer.pad_token_id)([chat_dataset[i] for i in range(len(chat_dataset))])
    args = training_arguments(OptimArgs(output_dir=str(tmp_path), max_steps=1))

    def loss_and_grads(terms):
        model.zero_grad()
        loss = TokenSafeTrainer(model=model, args=args, loss_terms=terms).compute_loss(model, dict(batch))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    sft_loss, sft_grads = loss_and_grads([])
    for temperature in (1.0, 3.0):
        cfg = TrainConfig(method="kl", pact_lambda=0.0, pact_temperature=temperature)
        term = setup_kl(cfg, model, tokenizer, chat_dataset).loss_terms[0]
        assert term.name == "kl" and term.cfg.temperature == temperature and term.token_ids is None
        loss, grads = loss_and_grads([term])
        assert loss == sft_loss
        assert all(torch.equal(g, h) for g, h in zip(grads, sft_grads, strict=True))
    # λ > 0: the term is λ T² Σ_t KL(softmax(ref_t / T) ‖ softmax(θ_t / T)) / N over the whole vocabulary
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        with model.disable_adapter():
            ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    b, t = (batch["labels"][:, 1:] != -100).nonzero(as_tuple=True)
    for lam, temperature in ((1.0, 1.0), (0.5, 3.0)):
        cfg = TrainConfig(method="kl", pact_lambda=lam, pact_temperature=temperature)
        term = setup_kl(cfg, model, tokenizer, chat_dataset).loss_terms[0]
        ctx = LossContext(model, dict(batch), logits.float(), batch["labels"], torch.tensor(float(len(b))))
        q = torch.softmax(ref[b, t] / temperature, -1)
        kl = (q * (q.log() - torch.log_softmax(logits[b, t] / temperature, -1))).sum(-1)
        expected = lam * temperature**2 * kl.sum() / len(b)
        assert expected > 1e-4 and term(ctx).item() == pytest.approx(expected.item(), rel=1e-4)


def test_baseline_configs_load_and_name_registered_methods():
    shipped = sorted((ROOT / "configs" / "train").glob("baseline_*.yaml"))
    assert {p.stem.removeprefix("baseline_") for p in shipped} >= {
        "constrained_sft", "safelora", "asft", "safeinstr", "sample_random", "sample_score", "kl",
    }  # fmt: skip
    for path in shipped:
        cfg = load_config(TrainConfig, path)
        assert cfg.method == path.stem.removeprefix("baseline_") and cfg.method in METHODS, path
        assert cfg.harmful == "beavertails" and cfg.harmful_share == 0.1
