"""`tokensafe experiment` configs: clear errors for bad values, the shipped configs load, the matrix expands with
stable ids, and (where the aligned model exists) every run of every shipped config plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokensafe.config import ConfigError, load_config
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.matrix import INITIAL_ID, baseline_id, expand, matches

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "experiment"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SETTING = {"name": "s", "task": "gsm8k", "n_task": 8, "harmful": "beavertails", "harmful_share": 0.2}


def make(**overrides) -> ExperimentConfig:
    values = {"name": "t", "settings": [SETTING], "rows": [{"name": "sft", "method": "sft"}]}
    return ExperimentConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": None}, "name is required"),
        ({"settings": []}, "settings is empty"),
        ({"rows": [{"name": "x", "method": "nope"}]}, r"rows\[0\] \(x\): unknown method 'nope'"),
        ({"rows": [{"name": "x", "methd": "sft"}]}, r"rows\[0\]: unknown field\(s\) \['methd'\]"),
        ({"rows": [{"name": "a b", "method": "sft"}]}, "is not a safe name"),
        ({"rows": [{"name": "x", "method": "sft"}, {"name": "x", "method": "pact"}]}, r"rows: names repeat: \['x'\]"),
        ({"rows": [{"name": "x", "method": "sft"}, {"name": "y", "method": "sft"}]}, "at most one row may be"),
        ({"rows": [{"name": "x", "method": "sft", "options": {"lr": 1}}]}, "unknown field 'lr'"),
        ({"rows": [{"name": "x", "method": "sft", "options": {"seed": 3}}]}, "'seed' is set by the experiment"),
        ({"train": {"output_dir": "x"}}, "'output_dir' is set by the experiment"),
        ({"toss": {"ref_epoch": 2}}, "did you mean 'ref_epochs'"),
        ({"settings": [{**SETTING, "harmful_share": 1.5}]}, r"settings\[0\] \(s\): harmful_share must be in \[0, 1\)"),
        ({"settings": [{**SETTING, "harmful": None}]}, "needs a harmful source"),
        ({"settings": [SETTING, SETTING]}, "settings: names repeat"),
        ({"suites": ["jbb_harmful", "nope"]}, "unknown suite 'nope'"),
        ({"suites": ["advbench_heldout:x"]}, "must be a positive integer"),
        ({"primary_suite": "xstest_safe", "suites": ["jbb_harmful"]}, "primary_suite 'xstest_safe' is not among"),
        ({"eval": {"model": "x"}}, "'model' is set by the experiment"),
        ({"seeds": [0, 0]}, "seeds repeat"),
    ],
)
def test_bad_values_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make(**overrides)


def test_roles_and_selection_default_from_the_method():
    cfg = make(
        rows=[
            {"name": "sft", "method": "sft"},
            {"name": "oracle", "method": "sft", "options": {"harmful_share": 0}},
            {"name": "toss", "method": "toss"},
            {"name": "kl", "method": "kl"},
            {"name": "rand", "method": "sample_random", "role": "defence", "selection": False},
        ]
    )
    rows = {r.name: r for r in cfg.row_specs()}
    assert [rows[n].resolved_role for n in rows] == ["baseline", "oracle", "defence", "defence", "defence"]
    assert [rows[n].resolved_selection for n in rows] == [False, False, True, False, False]


def test_matrix_expansion_order_and_stable_ids():
    rows = [
        {"name": "sft", "method": "sft", "seeds": [0, 1]},
        {"name": "oracle", "method": "sft", "options": {"harmful_share": 0}},
        {"name": "pact", "method": "pact", "label": "PACT"},
    ]
    settings = [SETTING, {**SETTING, "name": "s2", "harmful_share": 0.1}]
    cfg = make(rows=rows, settings=settings, seeds=[0])
    cells = expand(cfg)
    assert [c.id for c in cells] == [
        INITIAL_ID,
        "s/sft/seed0", "s/sft/seed1", "s/oracle/seed0", "s/pact/seed0",
        "s2/sft/seed0", "s2/sft/seed1", "s2/oracle/seed0", "s2/pact/seed0",
    ]  # fmt: skip
    assert cells[0].is_initial and cells[0].label == "Initial" and cells[0].role == "initial"
    assert cells[4].label == "PACT" and cells[4].method == "pact" and cells[4].seed == 0
    # Adding a row, a seed or a setting renames nothing that exists.
    more = make(rows=[*rows, {"name": "kl", "method": "kl"}], settings=settings, seeds=[0, 1])
    assert {c.id for c in cells} <= {c.id for c in expand(more)}
    # The SFT and oracle runs a cell is compared with: same setting and seed (none for a seed the oracle lacks).
    assert baseline_id(cfg, cells[4]) == "s/sft/seed0" and baseline_id(cfg, cells[4], "oracle") == "s/oracle/seed0"
    assert baseline_id(cfg, cells[2], "oracle") is None and baseline_id(cfg, cells[0]) is None
    assert matches("s/pact/seed0", ["*/pact/*"]) and not matches("s/sft/seed0", ["*/pact/*", "initial"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_state_their_wall_time(path):
    cfg = load_config(ExperimentConfig, path)
    assert cfg.name == path.stem
    text = path.read_text()
    # Either measured (the run and its date are named) or marked as an estimate: never a bare number.
    assert "Expected wall time on 2" in text and ("ESTIMATE" in text or "measured" in text)
    cells = expand(cfg)
    assert cells[0].is_initial and len({c.id for c in cells}) == len(cells)
    roles = [r.resolved_role for r in cfg.row_specs()]
    assert roles.count("baseline") == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_run_of_the_shipped_configs_plans(path, tmp_path, data_dir):
    """Each run's train / TOSS / eval config is built and checked (needs the aligned model of `tokensafe align`)."""
    from tokensafe.config import check_inputs
    from tokensafe.errors import UsageError
    from tokensafe.experiment.plan import plan_experiment

    cfg = load_config(ExperimentConfig, path, {"data_dir": str(data_dir), "runs_dir": str(tmp_path)})
    try:
        check_inputs(cfg)
    except UsageError as exc:
        pytest.skip(f"no starting model here: {exc}")
    plan = plan_experiment(cfg)
    assert [r.id for r in plan.runs] == [c.id for c in expand(cfg)]
    if "advbench_heldout" not in cfg.suite_names():  # a selection-suite experiment (no evaluation prompts)
        assert plan.heldout is None and not any("heldout" in s for r in plan.runs for s in r.eval["suites"])
        return
    assert plan.heldout is not None and plan.heldout.kept >= 100
    assert all(r.eval["suites"][1].endswith("advbench_heldout.jsonl:100") for r in plan.runs if cfg.limit is None)


def test_the_cli_reports_a_bad_config_on_one_line(tmp_path, capsys):
    from tokensafe.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsettings: [{name: s, task: gsm8k}]\nrows: [{name: x, method: tos}]\n")
    assert main(["experiment", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tokensafe experiment: error: rows[0] (x): unknown method 'tos'" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_shipped_experiments_share_the_trainings_their_headers_promise(tmp_path, tiny_model_dir, data_dir):
    """gsm8k_clean's SFT is gsm8k_beavertails_p10's oracle, the oracle of every poison share is one training (the
    p = 0 SFT), and the p = 0.1 runs of the sweep are the p10 experiment's seed-0 runs: same train keys (so one model
    directory) and, for TOSS, the same TOSS directory. Planned on the tiny model (the keys' relations do not depend on
    which model starts them)."""
    from tokensafe.experiment.plan import plan_experiment

    def train_keys(name: str) -> dict[str, tuple[str | None, str | None]]:
        overrides = {"data_dir": str(data_dir), "runs_dir": str(tmp_path), "model": str(tiny_model_dir)}
        cfg = load_config(ExperimentConfig, CONFIG_DIR / f"{name}.yaml", overrides)
        return {
            r.id: (r.train_key, r.toss["toss_dir"] if r.toss else None) for r in plan_experiment(cfg).runs if r.train
        }

    p10, clean, sweep = (train_keys(n) for n in ("gsm8k_beavertails_p10", "gsm8k_clean", "poison_sweep"))
    assert clean["gsm8k_clean/sft/seed0"][0] == p10["gsm8k_beavertails_p10/oracle/seed0"][0]
    oracles = {sweep[f"{p}/oracle/seed0"][0] for p in ("p0", "p0.05", "p0.1", "p0.2")}
    assert oracles == {sweep["p0/sft/seed0"][0]} == {p10["gsm8k_beavertails_p10/oracle/seed0"][0]}
    for row in ("sft", "toss", "pact"):
        assert sweep[f"p0.1/{row}/seed0"] == p10[f"gsm8k_beavertails_p10/{row}/seed0"], row
    # Different mixtures are different trainings and TOSS directories (their reference adapters are shared by the
    # reference store, tests/toss/test_commands.py).
    assert len({sweep[f"{p}/toss/seed0"][1] for p in ("p0", "p0.05", "p0.1", "p0.2")}) == 4


def test_the_headline_queue_covers_every_run_of_the_shipped_headline_experiments():
    """scripts/headline.sh --list: every run of the four headline experiments is matched by exactly one queue entry
    (none left out, none run twice), and every entry matches a run."""
    import fnmatch
    import subprocess

    root = CONFIG_DIR.parents[1]
    listed = subprocess.run(
        ["bash", str(root / "scripts" / "headline.sh"), "--list"], capture_output=True, text=True, check=True, cwd=root
    ).stdout.split()
    queue = [tuple(item.split(":", 1)) for item in listed]
    names = ("gsm8k_beavertails_p10", "gsm8k_clean", "poison_sweep", "sst2_advbench_p10")
    assert {name for name, _ in queue} == set(names)
    for name in names:
        ids = [c.id for c in expand(load_config(ExperimentConfig, CONFIG_DIR / f"{name}.yaml")) if not c.is_initial]
        patterns = [pattern for queued, pattern in queue if queued == name]
        assert all(any(fnmatch.fnmatchcase(i, p) for i in ids) for p in patterns), name
        matched = {i: sum(fnmatch.fnmatchcase(i, p) for p in patterns) for i in ids}
        assert set(matched.values()) == {1}, {i: n for i, n in matched.items() if n != 1}


def test_the_headline_queue_stops_when_the_cached_start_is_not_the_one_the_committed_rows_name(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A start rebuilt with another fingerprint would turn every finished row into a pending one (hours of runs
    redone on another model): scripts/headline.sh says so and stops before planning anything."""
    import json
    import os
    import shutil
    import subprocess

    from tokensafe.models import model_fingerprint

    root = CONFIG_DIR.parents[1]
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "aligned_deep")
    env = {**os.environ, "TOKENSAFE_CACHE_DIR": str(tmp_path), "COMMIT": "0"}
    done = subprocess.run(
        ["bash", str(root / "scripts" / "headline.sh")], capture_output=True, text=True, cwd=root, env=env, timeout=120
    )
    recorded = json.loads((root / "results/gsm8k_beavertails_p10/results.json").read_text())["starting_model"]
    current = model_fingerprint("aligned_deep", tmp_path)
    assert current != recorded["fingerprint"]
    assert done.returncode == 3, done.stdout + done.stderr
    assert (
        f"aligned_deep is {current}, but the committed rows were measured on {recorded['fingerprint']}" in done.stdout
    )
    assert "runs pending" not in done.stdout  # stopped before the listing and before any run
