"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch: with the CE, and
with AsFT's per-step regulariser (divided by the accumulation steps; the trainer's ×processes and DDP's gradient
average cancel, so every optimiser step carries λR once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def one_and_two_processes(tmp_path: Path, port: int, *extra: str) -> tuple[dict, dict, list[float], list[float]]:
    """Weights and logged losses after training with 1 process × batch 4 and with 2 processes × batch 2."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, str(WORKER), str(single), "4", *extra], check=True, env=env, timeout=300)
    subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(port), str(WORKER), str(double), "2", *extra],
        check=True,
        env=env,
        timeout=300,
    )
    logs = [json.loads(f.with_suffix(".json").read_text()) for f in (single, double)]
    return load_file(str(single)), load_file(str(double)), *logs


def assert_same_training(one: dict, two: dict, one_log: list[float], two_log: list[float]) -> None:
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
    assert one_log == pytest.approx(two_log, abs=1e-4)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, tokenizer):
    one, two, one_log, two_log = one_and_two_processes(tmp_path, 29517)
    assert_same_training(one, two, one_log, two_log)
    # The comparison means something only if training moved the weights.
    from tokensafe.testing import tiny_llama

    initial = tiny_llama(tokenizer).state_dict()
    assert any(not torch.allclose(initial[k], one[k]) for k in one)


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_asft_regulariser(tmp_path, tokenizer):
    from tokensafe.testing import save_tiny_model

    aligned, base = (
        save_tiny_model(tmp_path / "aligned", tokenizer, 0),
        save_tiny_model(tmp_path / "base", tokenizer, 1),
    )
    one, two, one_log, two_log = one_and_two_processes(tmp_path, 29518, str(aligned), str(base))
    assert_same_training(one, two, one_log, two_log)
    assert any("lora_A" in k for k in one) and any("lora_B" in k for k in one)
