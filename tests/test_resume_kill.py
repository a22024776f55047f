"""kill -9 tests: a subprocess is SIGKILLed part-way (``TOKENSAFE_TEST_KILL_AT``, tokensafe.faults), the work is
resumed, and the result must equal an uninterrupted run's, bit for bit.

Each computation here is deterministic on one machine (fixed seeds, one thread, greedy decoding; scoring shards and
training batches have fixed boundaries, and the tiny model has no near-tied argmax for the generation engine's
changing row neighbours to flip), so the comparison is exact. What each test compares:

- training: the LoRA weights after a run killed right after its first checkpoint and resumed with ``resume: last``
  (LoRA dropout 0.1, linear decay, two epochs: the optimizer, scheduler, RNG state and data position must all be
  restored) against one uninterrupted run;
- TOSS scoring: l_U and l_D of every token, after a kill following the 2nd of 5 shards (the resume scores 3);
- PACT reference cache: both views' logits, after a kill in the 3rd of 5 batches (the cache is written whole or not
  at all, so the resumed run rebuilds it; the test checks nothing partial was left to be loaded);
- generation (eval's cache): the generations file, byte for byte, after a kill following the 2nd of 4 batches;
- TOSS-Pro: the round's l_D, after a kill following the first of two fold adapters (the resumed run must reuse that
  fold, not retrain it);
- `toss train-refs`: both adapters' weights, after a kill right after U was recorded (the resumed run must keep U
  and train only D).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import kill_worker
import pytest
import torch

from tokensafe.faults import ENV

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("kill_worker.py")


def run_killed(scenario: str, point: str, **kwargs) -> None:
    """Run ``scenario`` in a subprocess that SIGKILLs itself at the ``point`` hit given as ``point:n``."""
    env = {**os.environ, ENV: point, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(WORKER), scenario, json.dumps(kwargs, default=str)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL at {point}, got {proc.returncode}:\n{proc.stderr}"


def test_training_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    from tokensafe.train import find_last_checkpoint

    straight = kill_worker.train(str(tmp_path / "straight"))
    run_killed("train", "train.checkpoint:1", output_dir=tmp_path / "killed")
    assert find_last_checkpoint(tmp_path / "killed") == str(tmp_path / "killed" / "checkpoint-3")
    assert not (tmp_path / "killed" / "checkpoint-6").exists()
    resumed = kill_worker.train(str(tmp_path / "killed"), resume="last")
    assert straight.keys() == resumed.keys() and straight
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_scoring_killed_between_shards_resumes_bit_identically(tmp_path, tiny_model_dir):
    from tokensafe.toss.refs import save_random_adapter

    adapters = {
        name: str(save_random_adapter(str(tiny_model_dir), tmp_path / name, seed=seed, r=4, alpha=8, std=0.3))
        for name, seed in (("U", 1), ("D", 2))
    }
    straight = kill_worker.score(str(tiny_model_dir), adapters, str(tmp_path / "straight.safetensors"))
    out = tmp_path / "killed.safetensors"
    run_killed("score", "toss.shard:2", model_dir=tiny_model_dir, adapters=adapters, out=out)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "killed.safetensors.shards").glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    resumed = kill_worker.score(str(tiny_model_dir), adapters, str(out))
    assert resumed.loss_u.tobytes() == straight.loss_u.tobytes()
    assert resumed.loss_d.tobytes() == straight.loss_d.tobytes()
    assert resumed.offsets.tobytes() == straight.offsets.tobytes()


def test_reference_cache_killed_while_building_is_rebuilt_identically(tmp_path):
    from tokensafe.pact.reference import CACHE_FILE

    straight = kill_worker.pact_cache(str(tmp_path / "straight"))
    target = tmp_path / "killed"
    run_killed("pact_cache", "pact.reference_batch:3", directory=target)
    assert not (target / CACHE_FILE).exists()  # nothing half-built is there to be loaded
    resumed = kill_worker.pact_cache(str(target))
    assert torch.equal(resumed.full, straight.full)
    assert torch.equal(resumed.post, straight.post)
    assert torch.equal(resumed.offsets, straight.offsets)


def test_generation_killed_between_batches_resumes_to_the_same_file(tmp_path):
    straight_path = tmp_path / "straight.jsonl"
    kill_worker.generate(str(straight_path))
    path = tmp_path / "killed.jsonl"
    run_killed("generate", "eval.batch:2", path=path)
    assert len(path.read_text().splitlines()) == 1 + 6  # header + the two finished batches of 3
    _, generated = kill_worker.generate(str(path))
    assert generated == 4  # only the prompts the killed run had not answered
    assert path.read_bytes() == straight_path.read_bytes()


def test_pro_killed_after_a_fold_keeps_it_and_ends_with_the_same_scores(tmp_path, tiny_model_dir):
    import shutil

    from tokensafe.toss.refs import save_random_adapter

    toss_dirs = {name: tmp_path / name for name in ("straight", "killed")}
    adapters = {
        name: save_random_adapter(str(tiny_model_dir), tmp_path / "refs" / name, seed=seed, r=4, alpha=8, std=0.3)
        for name, seed in (("U", 1), ("D", 2))
    }
    scores0 = kill_worker.score(str(tiny_model_dir), {k: str(v) for k, v in adapters.items()}, str(tmp_path / "s0"))
    for toss_dir in toss_dirs.values():
        shutil.copytree(tmp_path / "refs", toss_dir / "refs")
        scores0.save(toss_dir / "scores" / "scores.safetensors")
    args = {"model_dir": str(tiny_model_dir), "cache_dir": str(tmp_path / "cache")}
    straight = kill_worker.pro(toss_dir=str(toss_dirs["straight"]), **args)

    run_killed("pro", "toss.pro_fold:1", toss_dir=toss_dirs["killed"], **args)
    round_dir = toss_dirs["killed"] / "pro" / "round-1"
    assert (round_dir / "D0" / "fold.json").is_file() and not (round_dir / "D1" / "fold.json").exists()
    fold0 = (round_dir / "D0" / "adapter_model.safetensors").stat().st_mtime_ns
    resumed = kill_worker.pro(toss_dir=str(toss_dirs["killed"]), **args)
    assert (round_dir / "D0" / "adapter_model.safetensors").stat().st_mtime_ns == fold0  # reused, not retrained
    assert resumed.loss_d.tobytes() == straight.loss_d.tobytes()
    assert resumed.loss_u.tobytes() == straight.loss_u.tobytes()
    assert resumed.loss_d.tobytes() != scores0.loss_d.tobytes()  # the round did retrain D


def test_train_refs_killed_after_u_keeps_u_and_trains_only_d(tmp_path, tiny_model_dir, data_dir, capsys):
    from safetensors.torch import load_file

    args = {"model_dir": str(tiny_model_dir), "data_dir": str(data_dir), "cache_dir": str(tmp_path / "cache")}
    # The uninterrupted run gets its own cache: in a shared one its adapters would sit in the reference store, and the
    # resumed run would copy D from there instead of training it.
    kill_worker.refs(toss_dir=str(tmp_path / "straight"), **{**args, "cache_dir": str(tmp_path / "cache-straight")})
    killed = tmp_path / "killed"
    run_killed("refs", "toss.ref_adapter:1", toss_dir=killed, **args)
    recorded = json.loads((killed / "refs" / "refs.json").read_text())
    assert set(recorded["adapters"]) == {"U"}  # U was recorded the moment it was finished
    u_file = killed / "refs" / "U" / "adapter_model.safetensors"
    u_written = u_file.stat().st_mtime_ns
    capsys.readouterr()
    kill_worker.refs(toss_dir=str(killed), **args)
    out = capsys.readouterr().out
    assert "reference U is up to date" in out and "training reference D" in out
    assert u_file.stat().st_mtime_ns == u_written
    for name in ("U", "D"):
        straight = load_file(str(tmp_path / "straight" / "refs" / name / "adapter_model.safetensors"))
        resumed = load_file(str(killed / "refs" / name / "adapter_model.safetensors"))
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), name
