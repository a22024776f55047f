"""Integration tests on the real bundled SmolLM2-135M-Instruct (GGUF -> fp32 safetensors cache, LoRA SFT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokensafe.cli import main
from tokensafe.models import load_model, resolve_model_path

pytestmark = pytest.mark.integration


def test_bundled_model_is_converted_once_to_fp32_safetensors():
    path = resolve_model_path("default")
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    config = json.loads((path / "config.json").read_text())
    assert config.get("quantization_config") is None and config["model_type"] == "llama"
    model, tokenizer = load_model("default")
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token == "<|im_end|>" and "<|im_start|>assistant" in tokenizer.chat_template
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert resolve_model_path("default") == path  # cached: same directory, no second conversion


def test_train_cli_lora_sst2_loss_falls_and_adapter_reloads(tmp_path, data_dir):
    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "sft_sst2_lora.yaml"
    argv = ["train", "--config", str(config), "--data_dir", str(data_dir)]
    argv += ["--n_task", "24", "--max_steps", "6", "--learning_rate", "0.001", "--logging_steps", "1"]
    argv += ["--output_dir", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    losses = summary["logged_losses"]
    assert len(losses) == 6 and summary["data"]["samples"] == 24
    assert min(losses[-2:]) < losses[0] * 0.5, losses
    assert (out / "final" / "adapter_model.safetensors").is_file()
    pickled = [p.name for p in (out / "final").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert pickled == []  # the final model directory holds safetensors and text files only
    adapter, _ = load_model(str(out / "final"))
    assert type(adapter).__name__.startswith("PeftModel")
    lora_weights = [p for n, p in adapter.named_parameters() if "lora_B" in n]
    assert lora_weights and any(p.abs().sum() > 0 for p in lora_weights)  # B starts at 0: training moved it
