"""`--method pact` / `--method kl` end to end on a tiny model, the shipped configs, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensafe.cli import main
from tokensafe.config import load_config
from tokensafe.pact.commands import PactConfig
from tokensafe.pact.config import LADDER
from tokensafe.pact.method import apply_ladder
from tokensafe.testing import tiny_pact_train_config as tiny_config
from tokensafe.train import TrainConfig, run_train

ROOT = Path(__file__).resolve().parents[2]


def test_pact_end_to_end_identifies_tokens_caches_the_reference_and_trains(
    tmp_path, tiny_model_dir, base_dir, data_dir
):
    cfg = tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir)
    result = run_train(cfg)
    assert [h["step"] for h in result.loss_history] == [1, 2]
    assert all("loss_pact" in h for h in result.loss_history)
    assert (Path(cfg.output_dir) / "pact_safety_tokens" / "safety_tokens.json").is_file()
    assert (Path(cfg.output_dir) / "final" / "adapter_model.safetensors").is_file()
    caches = list((tmp_path / "cache" / "pact" / "reference").glob("*/reference_cache.safetensors"))
    tokens = list((tmp_path / "cache" / "pact" / "safety_tokens").glob("*/safety_tokens.json"))
    assert len(caches) == 1 and len(tokens) == 1
    meta = json.loads((caches[0].parent / "reference_cache.json").read_text())
    assert meta["views"] == ["full", "post"] and meta["rows"] == 8
    # a second run reuses both (same content keys) and starts from the same loss (later steps depend on the LoRA A
    # initialisation, which run_train draws from the global RNG before the trainer seeds it)
    again = run_train(tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir, output_dir=str(tmp_path / "again")))
    assert again.loss_history[0]["loss"] == pytest.approx(result.loss_history[0]["loss"], abs=1e-5)
    assert len(list((tmp_path / "cache" / "pact" / "reference").iterdir())) == 1


def test_live_references_train_like_the_cache(tmp_path, tiny_model_dir, base_dir, data_dir):
    cached = run_train(tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir)).loss_history[0]
    for reference in ("adapter", "model"):
        out = str(tmp_path / reference)
        live = run_train(
            tiny_config(tmp_path, tiny_model_dir, base_dir, data_dir, pact_reference=reference, output_dir=out)
        )
        first = live.loss_history[0]  # same weights at step 1 (later steps depend on the LoRA A initialisation)
        assert first["loss_pact"] == pytest.approx(cached["loss_pact"], abs=1e-5), reference
        assert first["loss"] == pytest.approx(cached["loss"], abs=1e-5), reference


def test_kl_baseline_needs_no_safety_tokens(tmp_path, tiny_model_dir, data_dir):
    cfg = tiny_config(tmp_path, tiny_model_dir, "no-such-base", data_dir, method="kl")
    result = run_train(cfg)
    assert all("loss_kl" in h for h in result.loss_history)
    assert not (tmp_path / "cache" / "pact").exists()


def test_ladder_stages_set_the_switches():
    cfg = TrainConfig()
    assert apply_ladder(cfg) is cfg
    for stage, switches in LADDER.items():
        staged = apply_ladder(cfg, stage)
        assert {k: getattr(staged, k) for k in switches} == switches
    with pytest.raises(ValueError, match="ladder stage"):
        apply_ladder(cfg, "everything")


def test_pact_configs_load_as_pact_config():
    shipped = sorted((ROOT / "configs" / "pact").glob("*.yaml"))
    assert shipped
    for path in shipped:
        cfg = load_config(PactConfig, path)
        assert cfg.method in ("pact", "kl") and cfg.pact_lambda > 0


def test_safety_tokens_command(tmp_path, tiny_model_dir, base_dir, data_dir, capsys):
    argv = ["pact-safety-tokens", "--model", str(tiny_model_dir), "--pact_base_model", str(base_dir)]
    argv += ["--data_dir", str(data_dir), "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path)]
    argv += ["--pact_prompts", "advbench", "--pact_responses", "given", "--pact_n_prompts", "2", "--pact_top_k", "10"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "weight" in out and "--pact_safety_tokens" in out
    assert (tmp_path / "pact_safety_tokens" / "safety_tokens.safetensors").is_file()
