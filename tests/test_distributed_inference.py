"""The inference steps under several processes (tokensafe.distributed): split, gather and merge helpers, and two CPU
processes (torchrun, gloo) against one for `toss score`, the PACT reference cache and `eval` generation.

Every unit of work (a scoring shard, a cache batch, a prompt) runs through the code a single process runs on it, so
scores and cache logits must equal the single process's bit for bit. Generation is compared byte for byte too: the
tiny chatty model has no near-tied argmax for the changed batch neighbours of a prompt to flip (on a real model a
different batch composition can flip one, as with any other change of the engine's batch; see engine.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokensafe import distributed

WORKER = Path(__file__).with_name("inference_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}


# --- split / merge helpers (fast) -----------------------------------------------------------------------------------


@given(st.integers(0, 200), st.integers(1, 9))
def test_split_then_merge_restores_the_order(n, world):
    items = [f"unit-{i}" for i in range(n)]
    parts = [[items[i] for i in distributed.split(n, r, world)] for r in range(world)]
    assert distributed.merge(parts) == items
    # Disjoint, covering, and balanced: shares differ by at most one unit.
    indices = sorted(i for r in range(world) for i in distributed.split(n, r, world))
    assert indices == list(range(n))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_split_is_round_robin_and_checks_the_rank():
    assert list(distributed.split(7, 1, 3)) == [1, 4]
    assert list(distributed.split(2, 2, 3)) == []
    with pytest.raises(ValueError, match="rank 3 is not one of 3 ranks"):
        distributed.split(5, 3, 3)


def test_merge_refuses_parts_that_are_not_one_split():
    with pytest.raises(ValueError, match="part 1 holds 2 results"):
        distributed.merge([["a", "d"], ["b", "e"], []])  # of 4 units over 3 ranks, rank 1 has one, not two


def test_a_single_process_creates_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_distributed()) == (1, 0, False)
    assert distributed.is_main()
    distributed.barrier()
    assert distributed.all_gather({"x": 1}) == [{"x": 1}]
    assert distributed.gather_split(["a", "b"]) == ["a", "b"]
    assert list(distributed.split(3)) == [0, 1, 2]
    assert not torch.distributed.is_initialized()


def test_rank_and_world_come_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (4, 2, False)
    assert list(distributed.split(10)) == [2, 6]


# --- two processes against one (slow) -------------------------------------------------------------------------------


def torchrun(port: int, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    runner = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = [runner, "--nproc_per_node", "2", "--master_port", str(port), *args]
    return subprocess.run(command, env=env or ENV, capture_output=True, text=True, timeout=300, check=check)


def single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=300, check=True)


def work(out_dir: Path, rank: int) -> dict[str, int]:
    return json.loads((out_dir / f"work-{rank}.json").read_text())


def toss_flags(tmp_path: Path, tiny_model_dir: Path, data_dir: Path, name: str) -> list[str]:
    """`toss score` of a 16-sample mixture in 5 shards, under two random reference adapters."""
    from tokensafe.toss.refs import save_random_adapter

    toss_dir = tmp_path / name
    for adapter, seed in (("U", 1), ("D", 2)):
        save_random_adapter(str(tiny_model_dir), toss_dir / "refs" / adapter, seed=seed, r=4, alpha=8, std=0.3)
    values = {
        "model": tiny_model_dir,
        "data_dir": data_dir,
        "cache_dir": tmp_path / f"cache-{name}",
        "toss_dir": toss_dir,
        "task": "agnews",
        "n_task": 12,
        "harmful": "beavertails",
        "harmful_share": 0.25,
        "max_length": 160,
        "score_batch_tokens": 400,
        "score_shard_samples": 3,
        "threads": 1,
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def one_process_scores(tmp_path_factory, tiny_model_dir, data_dir) -> tuple[Path, int]:
    """`python -m tokensafe.cli toss-score`: the scores file of one process and its number of shards."""
    root = tmp_path_factory.mktemp("toss-one")
    one = single("-m", "tokensafe.cli", "toss-score", *toss_flags(root, tiny_model_dir, data_dir, "one"))
    shards = one.stdout.count("[toss] shard")
    assert shards >= 4
    return root / "one" / "scores" / "scores.safetensors", shards


def assert_same_scores(one_path: Path, two_path: Path) -> None:
    from tokensafe.toss.store import TokenScores

    one, two = TokenScores.load(one_path), TokenScores.load(two_path)
    assert one.n_tokens > 100 and one.n_samples == 16
    for field in ("offsets", "positions", "loss_u", "loss_d", "score"):
        assert getattr(one, field).tobytes() == getattr(two, field).tobytes(), field
    assert (one.fingerprint, one.content_digest) == (two.fingerprint, two.content_digest)


@pytest.mark.slow
def test_toss_score_on_two_ranks_equals_one_process(tmp_path, tiny_model_dir, data_dir, one_process_scores):
    """`torchrun -m tokensafe.cli toss score` (the documented launch) against `python -m tokensafe.cli toss-score`."""
    one, shards = one_process_scores
    two = torchrun(
        29532, "-m", "tokensafe.cli", "toss", "score", *toss_flags(tmp_path, tiny_model_dir, data_dir, "two")
    )
    # Every shard was scored once, by one of the two ranks, and both ranks took part.
    assert two.stdout.count("[toss] shard") == shards
    assert two.stdout.count("(rank 0/2)") == -(-shards // 2) and two.stdout.count("(rank 1/2)") == shards // 2
    scores = tmp_path / "two" / "scores" / "scores.safetensors"
    assert_same_scores(one, scores)
    assert not scores.with_name(scores.name + ".shards").exists()  # removed once the merged file is written


@pytest.mark.slow
def test_toss_score_killed_between_shards_resumes_on_two_ranks(tmp_path, tiny_model_dir, data_dir, one_process_scores):
    """A run killed after 2 shards is resumed by two ranks: they share only the missing shards, and the scores equal
    an uninterrupted run's (shards do not depend on the number of ranks)."""
    from tokensafe.faults import ENV as KILL_AT

    one, shards = one_process_scores
    flags = toss_flags(tmp_path, tiny_model_dir, data_dir, "two")
    killed = subprocess.run(
        [sys.executable, "-m", "tokensafe.cli", "toss-score", *flags],
        env={**ENV, KILL_AT: "toss.shard:2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode != 0
    scores = tmp_path / "two" / "scores" / "scores.safetensors"
    left = sorted(p.name for p in scores.with_name(scores.name + ".shards").glob("shard-*"))
    assert left == ["shard-00000.safetensors", "shard-00001.safetensors"] and not scores.exists()
    resumed = torchrun(29533, "-m", "tokensafe.cli", "toss-score", *flags)
    assert resumed.stdout.count("[toss] shard") == shards - 2
    assert "(rank 0/2)" in resumed.stdout and "(rank 1/2)" in resumed.stdout
    assert f"[toss] shard 1/{shards}" not in resumed.stdout and f"[toss] shard 2/{shards}" not in resumed.stdout
    assert_same_scores(one, scores)


@pytest.mark.slow
def test_pact_reference_cache_on_two_ranks_equals_one_process(pact_and_eval_runs):
    from inference_worker import PACT_BATCH, PACT_SAMPLES

    from tokensafe.pact.reference import META_FILE, ReferenceCache

    tmp_path, _ = pact_and_eval_runs
    one, two = ReferenceCache.load(tmp_path / "one" / "cache"), ReferenceCache.load(tmp_path / "two" / "cache")
    assert one.n_rows == PACT_SAMPLES and one.full.shape[0] > 50
    assert torch.equal(one.full, two.full) and torch.equal(one.post, two.post)
    assert torch.equal(one.offsets, two.offsets) and torch.equal(one.token_ids, two.token_ids)
    assert {k: v for k, v in one.meta.items() if k != "seconds"} == {
        k: v for k, v in two.meta.items() if k != "seconds"
    }
    assert (tmp_path / "two" / "cache" / META_FILE).is_file()
    # 6 batches: rank 0 computes 0, 2, 4; rank 1 computes 1, 3, 5 after running batch 0 once for the fast-path checks.
    batches = -(-PACT_SAMPLES // PACT_BATCH)
    assert work(tmp_path / "one", 0)["reference_batches"] == batches
    assert work(tmp_path / "two", 0)["reference_batches"] == 3
    assert work(tmp_path / "two", 1)["reference_batches"] == 3 + 1


@pytest.fixture(scope="module")
def chatty_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The tiny model with prompt-specific answers (the default init answers every prompt alike)."""
    from tokensafe.testing import chatty_tiny_llama

    target = tmp_path_factory.mktemp("chatty")
    chatty_tiny_llama(tokenizer).save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def pact_and_eval_runs(tmp_path_factory, chatty_model_dir, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """One process and two ranks each build the PACT reference cache, then run `eval` of the chatty model, in one
    worker launch (a launch costs more than the work). Returns the root of ``one/`` and ``two/`` and the two-rank
    launch's output."""
    tmp_path = tmp_path_factory.mktemp("pact-and-eval")

    def flags(name: str) -> list[str]:
        values = {
            "model": chatty_model_dir,
            "name": "chatty",
            "suites": "jbb_harmful:5,xstest_safe:4,sst2:4",
            "subset": "first",
            "judge": "keyword",
            "batch_size": 2,  # rows meet other neighbours in the engine's batch than on one process
            "max_new_tokens": 12,
            "data_dir": data_dir,
            "cache_dir": tmp_path / f"cache-{name}",
            "output_dir": tmp_path / name,
            "progress": "false",
            "threads": 1,
        }
        return ["eval", *(item for key, value in values.items() for item in (f"--{key}", str(value)))]

    single(str(WORKER), "pact+cli", str(tmp_path / "one"), *flags("one"))
    return tmp_path, torchrun(29534, str(WORKER), "pact+cli", str(tmp_path / "two"), *flags("two"))


@pytest.mark.slow
def test_eval_generation_on_two_ranks_equals_one_process(pact_and_eval_runs):
    tmp_path, proc = pact_and_eval_runs
    # Each rank gave its engine a share of the 13 prompts; only rank 0 judged and printed the results.
    assert work(tmp_path / "one", 0)["prompts"] == 13
    assert (work(tmp_path / "two", 0)["prompts"], work(tmp_path / "two", 1)["prompts"]) == (7, 6)
    assert proc.stdout.count('"results":') == 1
    summaries = [json.loads((tmp_path / "two" / f"evaluate-{rank}.json").read_text()) for rank in (0, 1)]
    assert summaries[0] == summaries[1]  # rank 1's evaluate returns what rank 0 wrote
    files = sorted((tmp_path / "one" / "generations").glob("*.jsonl"))
    assert len(files) == 3
    responses = set()
    for path in files:
        other = tmp_path / "two" / "generations" / path.name
        assert other.read_bytes() == path.read_bytes(), path.name  # same rows, same order, each written once
        rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        assert len({row["id"] for row in rows}) == len(rows)
        responses |= {row["response"] for row in rows}
    assert len(responses) > 5  # answers differ between prompts: the comparison is not of identical strings
    one, two = (json.loads((tmp_path / name / "chatty.json").read_text())["suites"] for name in ("one", "two"))
    for suite in one:
        for key in ("metric", "value", "k", "n", "by_category"):
            assert one[suite][key] == two[suite][key], (suite, key)
        scored = [(tmp_path / name / "chatty" / f"{suite}.scored.jsonl").read_text() for name in ("one", "two")]
        assert scored[0] == scored[1]


def test_inference_placement_is_the_cpu_and_a_no_op_without_a_gpu(monkeypatch):
    import torch

    from tokensafe.distributed import inference_device, place_for_inference

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    layer = torch.nn.Linear(2, 2)
    assert inference_device() == torch.device("cpu")
    assert place_for_inference(layer) is layer


def test_inference_placement_uses_the_local_rank_gpu(monkeypatch):
    import torch

    from tokensafe.distributed import inference_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "6")
    assert inference_device() == torch.device("cuda", 2)
    monkeypatch.delenv("LOCAL_RANK")
    assert inference_device() == torch.device("cuda", 0)
