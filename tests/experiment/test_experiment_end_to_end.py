"""A whole tiny experiment with the real worker: the tiny random Llama, 2 methods x 1 seed, 2 optimiser steps, 4
prompts per suite. The first invocation runs in a subprocess (each run in its own worker process) and is SIGKILLed
right after its first row is written (``TOKENSAFE_TEST_KILL_AT=experiment.row:1``); the second invocation must run
only the two pending runs and produce a results.json with the schema's keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tokensafe.config import load_config
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.runner import run_experiment
from tokensafe.faults import ENV

pytestmark = pytest.mark.slow


def test_tiny_experiment_killed_then_resumed_end_to_end(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from tokensafe.experiment import runner

    monkeypatch.setattr(runner, "write_reports_if_available", lambda path: None)  # the report has its own tests
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": str(tiny_model_dir),
                "settings": [{"name": "s", "task": "gsm8k", "n_task": 8, "harmful": "advbench", "harmful_share": 0.2}],
                "rows": [
                    {"name": "sft", "label": "SFT", "method": "sft"},
                    {"name": "rand", "method": "sample_random"},
                ],
                "train": {"max_steps": 2, "max_length": 320, "batch_size": 2, "save_steps": 1, "logging_steps": 1},
                "limit": 4,
                "gold_loss_n": 4,
                "eval": {"max_new_tokens": 4, "batch_size": 4, "progress": False},
                "data_dir": str(data_dir),
                "cache_dir": str(tmp_path / "cache"),
                "runs_dir": str(tmp_path / "runs"),
                "output_dir": str(tmp_path / "results"),
                "echo": False,
            }
        )
    )
    env = {**os.environ, ENV: "experiment.row:1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "tokensafe.cli", "experiment", "--config", str(config)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results" / "tiny"
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["initial"]
    assert "| SFT | pending" in (results / "status.md").read_text()  # the live view as the kill left it

    result = run_experiment(load_config(ExperimentConfig, config, {"isolation": "inprocess"}))
    assert result.ran == ["s/sft/seed0", "s/rand/seed0"] and result.exit_code == 0  # initial was not redone
    sft_model = Path(json.loads((results / "runs.jsonl").read_text().splitlines()[1])["model"])
    assert (sft_model / "adapter_config.json").is_file() and not list(sft_model.parent.glob("checkpoint-*"))
    data = json.loads((results / "results.json").read_text())
    assert {
        "experiment",
        "format",
        "created",
        "updated",
        "config",
        "starting_model",
        "machine",
        "suites",
        "runs",
        "artifacts",
        "status",
    } <= set(data)
    assert data["status"] == {"done": 3, "pending": 0, "failed": 0}
    assert list(data["suites"]) == [
        "jbb_harmful",
        "advbench_heldout",
        "xstest_safe",
        "jbb_benign",
        "gsm8k",
        "gold_loss",
    ]
    runs = {run["id"]: run for run in data["runs"]}
    assert list(runs) == ["initial", "s/sft/seed0", "s/rand/seed0"]
    for run in runs.values():
        assert set(run["metrics"]) == set(data["suites"])
        assert all(run["metrics"][s]["n"] == 4 for s in data["suites"])  # every suite capped at 4 prompts
        assert run["metrics"]["gold_loss"]["n_tokens"] > 0 and run["wall_seconds"]["eval"] >= 0
    assert runs["s/rand/seed0"]["wall_seconds"]["train"] > 0 and runs["s/rand/seed0"]["selection"] is True
    assert set(runs["s/rand/seed0"]["vs_sft"]) == set(data["suites"])  # gold_loss: paired on the same rows
    gold = runs["s/rand/seed0"]["vs_sft"]["gold_loss"]
    assert gold["n"] == runs["s/rand/seed0"]["metrics"]["gold_loss"]["n"] and 0 <= gold["p_value"] <= 1
    assert runs["initial"]["fingerprint"] == data["starting_model"]["fingerprint"]
    # What the random selection dropped, split by provenance, as the run's own record says (SFT selects nothing).
    record = json.loads((Path(runs["s/rand/seed0"]["model"]).parent / "sample_selection.json").read_text())
    provenance = runs["s/rand/seed0"]["provenance"]
    assert provenance["level"] == "sample" and runs["s/sft/seed0"]["provenance"] is None
    assert provenance["harmful_samples_dropped"] == [record["dropped_harmful"], record["harmful"]]
    assert sum(provenance["harmful_samples_dropped"][:1] + provenance["benign_samples_touched"][:1]) == 2  # 20% of 10
    # The two advbench poison rows are not evaluation prompts.
    heldout = tmp_path / "runs" / "tiny" / "suites" / "advbench_heldout.jsonl"
    evaluated = [json.loads(line)["id"] for line in heldout.read_text().splitlines()][:4]
    scored = tmp_path / "runs" / "eval" / "tiny--s--rand--seed0" / "advbench_heldout.scored.jsonl"
    assert [json.loads(line)["id"] for line in scored.read_text().splitlines()] == evaluated


def test_a_failing_worker_process_is_a_failed_run(tmp_path, tiny_model_dir, data_dir):
    """The worker's own one-line error ends up in the failure message; the log keeps everything."""
    from tokensafe.experiment.plan import plan_experiment
    from tokensafe.experiment.runner import RunFailed, SubprocessExecutor

    cfg = ExperimentConfig(
        name="fail",
        model=str(tiny_model_dir),
        settings=[{"name": "s", "task": "gsm8k", "n_task": 4}],
        rows=[{"name": "sft", "method": "sft"}],
        suites=["jbb_harmful"],
        runs_dir=str(tmp_path / "runs"),
        output_dir=str(tmp_path / "results"),
    )
    initial = plan_experiment(cfg).runs[0]
    initial.eval["model"] = str(tmp_path / "missing-model")
    with pytest.raises(RunFailed, match="worker exit code 2: .*missing-model.* does not exist"):
        SubprocessExecutor(echo=False)(initial)
    assert "does not exist" in (Path(initial.run_dir) / "log.txt").read_text()


def test_a_training_killed_mid_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from tokensafe.experiment.plan import plan_experiment
    from tokensafe.experiment.runner import RunFailed, SubprocessExecutor

    cfg = ExperimentConfig(
        name="resume",
        model=str(tiny_model_dir),
        settings=[{"name": "s", "task": "sst2", "n_task": 12, "harmful": "beavertails", "harmful_share": 0.2}],
        rows=[{"name": "sft", "method": "sft"}],
        train={"max_steps": 4, "max_length": 160, "batch_size": 2, "save_steps": 2},
        suites=["jbb_harmful"],
        limit=2,
        gold_loss_n=2,
        eval={"max_new_tokens": 2, "progress": False},
        cache_dir=str(tmp_path / "cache"),
        runs_dir=str(tmp_path / "runs"),
        output_dir=str(tmp_path / "results"),
    )
    run = plan_experiment(cfg).runs[1]
    monkeypatch.setenv(ENV, "train.checkpoint:1")  # the worker dies right after writing checkpoint-2
    with pytest.raises(RunFailed, match="worker killed by SIGKILL"):
        SubprocessExecutor(echo=False)(run)
    model_dir = Path(run.train["output_dir"])
    assert (model_dir / "checkpoint-2").is_dir() and not (model_dir / "final").exists()
    monkeypatch.delenv(ENV)
    outcome = SubprocessExecutor(echo=False)(run)
    assert outcome["model"] == str(model_dir / "final") and (model_dir / "final" / "adapter_config.json").is_file()
    log = (Path(run.run_dir) / "log.txt").read_text()
    assert f"resuming from {model_dir / 'checkpoint-2'}" in log and log.count("=====") == 2
