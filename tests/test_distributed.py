"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch: with the CE, with
AsFT's per-step regulariser (divided by the accumulation steps; the trainer's ×processes and DDP's gradient average
cancel, so every optimiser step carries λR once), and with PACT's term on a cached reference.

One single-process run and one two-process run train all three cases (tests/ddp_worker.py): starting a process
costs more than the training."""

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


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """Output directories of the worker with 1 process × batch 4 and with 2 processes × batch 2."""
    from tokensafe.testing import save_tiny_model

    tmp = tmp_path_factory.mktemp("ddp")
    aligned, base = save_tiny_model(tmp / "aligned", tokenizer, 0), save_tiny_model(tmp / "base", tokenizer, 1)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single, double = tmp / "one", tmp / "two"
    pairs = [str(aligned), str(base)]
    subprocess.run([sys.executable, str(WORKER), str(single), "4", *pairs], check=True, env=env, timeout=600)
    subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(WORKER), str(double), "2", *pairs],
        check=True,
        env=env,
        timeout=600,
    )
    return single, double


def trained(out_dir: Path, case: str) -> tuple[dict, list[float]]:
    return load_file(str(out_dir / f"{case}.safetensors")), json.loads((out_dir / f"{case}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ce", "asft", "pact"])
def test_two_processes_match_one_process(one_and_two_processes, tokenizer, case):
    (one, one_log), (two, two_log) = (trained(d, case) for d in one_and_two_processes)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
    assert one_log == pytest.approx(two_log, abs=1e-4)
    assert len(one_log) == 2  # both optimiser steps were logged
    if case == "asft":
        assert any("lora_A" in k for k in one) and any("lora_B" in k for k in one)
    else:
        # The comparison means something only if training moved the weights.
        from tokensafe.testing import tiny_llama

        initial = tiny_llama(tokenizer).state_dict()
        assert any(not torch.allclose(initial[k], one[k]) for k in one)
