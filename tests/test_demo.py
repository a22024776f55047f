"""`tokensafe demo`: its configs read only the packaged demo data (or, with --data_dir, the real datasets), every
default size fits the shipped files, the aligned model is reused only when its settings match, and the whole demo runs
end to end on the tiny random Llama with a toy size, offline and without a data directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tokensafe.cli import main
from tokensafe.config import ConfigError, config_to_dict
from tokensafe.data.sources import DEMO_SOURCES, load_source
from tokensafe.demo import (
    DemoConfig,
    align_config,
    experiment_config,
    pact_variant_label,
    reusable_aligned_model,
)
from tokensafe.eval.run import parse_suite_spec

PACT_LABEL = "PACT (weighted KL, first 8 tokens)"  # the variant chosen on the selection suites (issue 18)
LABELS = ["Initial", "SFT", "TOSS", PACT_LABEL, f"TOSS + {PACT_LABEL}"]
SUITES = ["demo_eval_harmful", "demo_eval_benign", "demo_arith", "gold_loss"]


def toy_flags(tmp_path: Path, model: Path) -> list[str]:
    """A few rows, one optimiser step per training, a handful of prompts per suite, four new tokens."""
    values = {
        "model": model,
        "cache_dir": tmp_path / "cache",
        "output_dir": tmp_path / "results",
        "runs_dir": tmp_path / "runs",
        "isolation": "inprocess",
        "echo": "false",
        "toss_pact": "true",
        "align_n_harmful": 4,
        "align_n_benign": 2,
        "align_n_borderline": 2,
        "align_max_steps": 1,
        "align_batch_size": 2,
        "align_max_new_tokens": 4,
        "n_task": 6,
        "harmful_share": 0.25,
        "max_steps": 1,
        "batch_size": 2,
        "ref_n": 4,
        "ref_safety_n": 2,
        "ref_max_steps": 1,
        "pact_n_prompts": 2,
        # The random model answers with blank lines; PACT then reads the demo's refusals instead of generating.
        "pact_responses": "given",
        "n_eval_harmful": 3,
        "n_eval_benign": 3,
        "n_eval_task": 2,
        "gold_loss_n": 2,
        "eval_batch_size": 4,
        "max_new_tokens": 4,
    }
    return [token for key, value in values.items() for token in (f"--{key}", str(value))]


def test_the_demo_reads_nothing_but_the_packaged_demo_data():
    cfg = DemoConfig()
    exp = experiment_config(cfg, "aligned_demo")
    assert exp.data_dir is None and exp.exclude_sources == [] and exp.primary_suite == "demo_eval_harmful"
    # TOSS + PACT is opt-in (the 20-minute budget); the end-to-end test below runs it.
    assert [row["label"] for row in exp.rows] == LABELS[1:4]
    assert [row["label"] for row in experiment_config(DemoConfig(toss_pact=True), "m").rows] == LABELS[1:]
    pact_train = {k: exp.train[k] for k in ("pact_target", "pact_positions", "pact_first_k")}
    assert pact_train == {"pact_target": "weighted_kl", "pact_positions": "first_k", "pact_first_k": 8}
    (setting,) = exp.setting_specs()
    sources = {setting.task, setting.harmful, exp.train["pact_prompts"]}
    sources |= {exp.toss[key] for key in ("harmful_ref", "utility_ref", "utility_ref_safety")}
    sources |= {parse_suite_spec(spec)[0].source for spec in exp.suites}
    align = align_config(cfg)
    sources |= {align.harmful_prompt_source, align.benign_source, *align.evaluation_sources}
    assert align.safe_answer_source is None and align.task_source is None and align.data_dir is None
    assert sources <= set(DEMO_SOURCES), sources - set(DEMO_SOURCES)
    # PACT's prompts and TOSS's references are training prompts, never evaluation ones.
    assert {"demo_eval_harmful", "demo_eval_benign"}.isdisjoint(
        {exp.train["pact_prompts"], *map(str, exp.toss.values())}
    )
    assert align.name == "aligned_demo" and exp.model == "aligned_demo"


def test_every_default_size_fits_the_shipped_data():
    cfg = DemoConfig()
    n_harmful = round(cfg.n_task * cfg.harmful_share / (1 - cfg.harmful_share))
    available = {name: len(load_source(name)) for name in DEMO_SOURCES}
    assert cfg.n_task <= available["demo_arith"] and n_harmful <= available["demo_harmful"]
    assert cfg.ref_n <= min(available["demo_harmful_ref"], len(load_source("demo_arith", split="ref")))
    assert cfg.ref_safety_n <= available["demo_safe_answers"] and cfg.pact_n_prompts <= available["demo_align_harmful"]
    assert cfg.n_eval_harmful <= available["demo_eval_harmful"] and cfg.n_eval_benign <= available["demo_eval_benign"]
    test = len(load_source("demo_arith", split="test"))
    assert cfg.n_eval_task <= test and cfg.gold_loss_n <= test
    assert (
        cfg.align_n_harmful <= available["demo_align_harmful"] and cfg.align_n_benign <= available["demo_align_benign"]
    )
    assert cfg.align_n_borderline <= 197
    # At most 40 optimiser steps per training (the wall-time budget of the module doc).
    assert (cfg.n_task + n_harmful) // cfg.batch_size <= 40
    # The demo's results go where git ignores them: results/ holds the README's committed measurement.
    assert Path(cfg.output_dir).parts[0] == "runs" and Path(cfg.runs_dir).parts[0] == "runs"


def test_with_a_data_dir_the_demo_runs_on_the_real_datasets(tmp_path):
    cfg = DemoConfig(data_dir=str(tmp_path))
    exp = experiment_config(cfg, cfg.aligned_name)
    (setting,) = exp.setting_specs()
    assert (setting.task, setting.harmful) == ("gsm8k", "beavertails") and exp.data_dir == str(tmp_path)
    assert [spec.partition(":")[0] for spec in exp.suites] == ["jbb_harmful", "xstest_safe"]
    assert exp.toss["harmful_ref"] == "pure_bad" and "pact_prompts" not in exp.train  # PACT's default prompts
    assert cfg.aligned_name == "aligned" and cfg.experiment_name == "demo_real"
    assert align_config(cfg).data_dir == str(tmp_path) and align_config(cfg).harmful_prompt_source == "harmful_train"
    with pytest.raises(ConfigError, match="pact_responses given reads the demo's refusals"):
        DemoConfig(data_dir=str(tmp_path), pact_responses="given")


def test_the_aligned_model_is_reused_only_when_made_with_the_same_settings(tmp_path):
    cfg = DemoConfig(cache_dir=str(tmp_path))
    saved = tmp_path / "models" / "aligned_demo"
    assert reusable_aligned_model(cfg, align_config(cfg)) is None  # nothing saved yet
    saved.mkdir(parents=True)
    (saved / "config.json").write_text("{}")
    (saved / "align_config.yaml").write_text(yaml.safe_dump(config_to_dict(align_config(cfg))))
    assert reusable_aligned_model(cfg, align_config(cfg)) == saved
    other_threads = dataclasses.replace(cfg, threads=2, runs_dir=str(tmp_path / "elsewhere"))
    assert reusable_aligned_model(other_threads, align_config(other_threads)) == saved  # same weights
    more = dataclasses.replace(cfg, align_n_harmful=cfg.align_n_harmful + 1)
    assert reusable_aligned_model(more, align_config(more)) is None
    # The regular `aligned` model (with --data_dir) is used as it is, like every command that names it.
    real = DemoConfig(cache_dir=str(tmp_path), data_dir=str(tmp_path))
    (tmp_path / "models" / "aligned").mkdir()
    (tmp_path / "models" / "aligned" / "config.json").write_text("{}")
    assert reusable_aligned_model(real, align_config(real)) == tmp_path / "models" / "aligned"


def test_the_command_is_registered_with_its_fields_as_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--data_dir", "--n_task", "--harmful_share", "--pact_responses", "--oracle"))


@pytest.mark.slow
def test_the_demo_runs_end_to_end_offline_and_reuses_its_work(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv("TOKENSAFE_DATA_DIR", raising=False)  # no data directory; the hub is offline (conftest)
    flags = toy_flags(tmp_path, tiny_model_dir)
    assert main(["demo", *flags]) == 0
    out = capsys.readouterr().out
    results_dir = tmp_path / "results" / "demo"
    data = json.loads((results_dir / "results.json").read_text(encoding="utf-8"))
    assert {"experiment", "config", "starting_model", "machine", "suites", "runs", "artifacts", "status"} <= set(data)
    assert data["experiment"] == "demo" and data["config"]["data_dir"] is None
    assert data["status"] == {"done": 5, "pending": 0, "failed": 0}
    assert [run["row"] for run in data["runs"]] == LABELS
    assert list(data["suites"]) == SUITES
    sizes = {"demo_eval_harmful": 3, "demo_eval_benign": 3, "demo_arith": 2, "gold_loss": 2}
    for run in data["runs"]:
        assert {suite: run["metrics"][suite]["n"] for suite in SUITES} == sizes
        if run["row"] not in ("Initial", "SFT"):
            # McNemar against SFT on the same prompts; the gold-answer loss paired on the same held-out rows
            assert set(run["vs_sft"]) == set(SUITES) and run["vs_sft"]["gold_loss"]["test"] == "paired_ratio_z"
    assert data["artifacts"]["pact_safety_tokens"] and data["artifacts"]["toss_token_view"]
    views = data["artifacts"]["toss_token_views"]  # both TOSS-family rows', on the same comparison samples
    assert [view["label"] for view in views] == ["TOSS", f"TOSS + {PACT_LABEL}"]
    compared = [[s["sample_id"] for s in view["samples"] if s["picked"] == "compare"] for view in views]
    assert compared[0] and compared[0] == compared[1]
    html = (results_dir / "report.html").read_text(encoding="utf-8")
    markdown = (results_dir / "results.md").read_text(encoding="utf-8")
    assert (results_dir / "pareto.png").stat().st_size > 0
    for label in LABELS:
        assert f">{label}<" in html and f"| {label} |" in markdown and f"| {label} |" in out
    assert "Harmful ASR (demo, held-out)" in html and f"report: {results_dir / 'report.html'}" in out
    aligned = tmp_path / "cache" / "models" / "aligned_demo"
    assert (aligned / "config.json").is_file()
    summary = json.loads((tmp_path / "runs" / "align_aligned_demo" / "align_summary.json").read_text())
    assert summary["trained_on"]["evaluation_only_sources_never_trained_on"] == [
        "demo_eval_harmful",
        "demo_eval_benign",
    ]
    assert summary["trained_on"]["refusal_prompts"].startswith("demo_align_harmful x4")

    # A second run redoes nothing: the aligned model and every finished run are reused.
    assert main(["demo", *flags]) == 0
    out = capsys.readouterr().out
    assert "reusing the aligned model 'aligned_demo'" in out and "nothing to run" in out
    assert json.loads((results_dir / "results.json").read_text())["status"]["done"] == 5


def test_the_pact_row_label_names_the_variant_that_ran():
    assert pact_variant_label(DemoConfig(pact_target="official", pact_positions="all")) == "PACT"
    assert pact_variant_label(DemoConfig(pact_positions="all")) == "PACT (weighted KL)"
    assert pact_variant_label(DemoConfig(pact_target="official", pact_first_k=4)) == "PACT (first 4 tokens)"
