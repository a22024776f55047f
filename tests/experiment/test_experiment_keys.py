"""Train keys: only non-default settings key a run (a new option that is off by default keeps every finished model),
and a finished model whose saved settings disagree with the run's (a changed default) is retrained, not reused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tokensafe.experiment import worker
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.plan import non_default, plan_experiment, settings_conflicts

ROWS = [
    {"name": "sft", "method": "sft"},
    {"name": "pact", "method": "pact"},
]


@pytest.fixture
def make_plan(tmp_path, tiny_model_dir, data_dir):
    def make(rows=ROWS, **train):
        cfg = ExperimentConfig(
            name="exp",
            model=str(tiny_model_dir),
            settings=[{"name": "s", "task": "gsm8k", "n_task": 8, "harmful": "beavertails", "harmful_share": 0.25}],
            rows=rows,
            seeds=[0],
            suites=["jbb_harmful"],
            limit=4,
            train={"pact_base_model": str(tiny_model_dir), **train},
            data_dir=str(data_dir),
            runs_dir=str(tmp_path / "runs"),
            output_dir=str(tmp_path / "results"),
            echo=False,
        )
        return {run.id: run for run in plan_experiment(cfg).runs if run.train_key}

    return make


def test_an_option_written_at_its_default_keys_the_same_run(make_plan):
    from tokensafe.train import TrainConfig

    default_target = TrainConfig.__dataclass_fields__["pact_target"].default
    plain, same = make_plan(), make_plan(pact_target=default_target)
    assert {k: r.train_key for k, r in plain.items()} == {k: r.train_key for k, r in same.items()}
    # ... and the full settings (defaults included) travel with the plan for the changed-default check.
    assert same["s/pact/seed0"].train_settings["train"]["pact_target"] == default_target


def test_a_non_default_value_changes_only_the_rows_it_applies_to(make_plan):
    rows = [ROWS[0], {**ROWS[1], "options": {"pact_lambda": 0.25}}]
    plain, changed = make_plan(), make_plan(rows=rows)
    assert plain["s/sft/seed0"].train_key == changed["s/sft/seed0"].train_key
    assert plain["s/pact/seed0"].train_key != changed["s/pact/seed0"].train_key


def test_a_new_option_with_a_default_leaves_the_key_input_unchanged():
    @dataclasses.dataclass
    class Before:
        lr: float = 1e-4
        epochs: float = 1.0

    @dataclasses.dataclass
    class After(Before):
        new_option: str = "off"

    values = {"lr": 3e-4, "epochs": 1}  # an int in a float field is canonicalised like 1.0
    assert non_default(Before(), values) == non_default(After(), {**values, "new_option": "off"}) == {"lr": 3e-4}
    assert non_default(After(), {**values, "new_option": "on"}) == {"lr": 3e-4, "new_option": "on"}


def test_settings_conflicts_name_changed_fields_and_ignore_added_ones():
    saved = {"train": {"lr": 1e-4, "rank": 8}, "toss": None}
    wanted = {"train": {"lr": 1e-4, "rank": 16, "new_option": "off"}, "toss": None}
    assert settings_conflicts(saved, wanted) == ["train.rank: 8 -> 16"]
    assert settings_conflicts(saved, {"train": {"lr": 1e-4, "rank": 8, "new": 1}}) == []


def _finished_model(out, plan, settings):
    (out / "final").mkdir(parents=True)
    (out / "train_summary.json").write_text("{}")
    (out / worker.TRAIN_MARKER).write_text(json.dumps({"key": plan.train_key, "settings": settings}))


def test_a_finished_model_is_reused_only_when_no_saved_setting_differs(make_plan, tmp_path, capsys):
    plan = make_plan()["s/sft/seed0"]
    out = tmp_path / "model"
    older = json.loads(json.dumps(plan.train_settings))
    del older["train"]["pact_target"]  # trained before that option existed: still the same training
    _finished_model(out, plan, older)
    assert worker._trained(out, plan)

    changed = json.loads(json.dumps(plan.train_settings))
    changed["train"]["learning_rate"] = 1.0  # the default was different when this model was trained
    (out / worker.TRAIN_MARKER).write_text(json.dumps({"key": plan.train_key, "settings": changed}))
    assert not worker._trained(out, plan)
    assert not out.exists()  # never resume or reuse another training's files
    said = capsys.readouterr().out
    assert "train.learning_rate: 1.0 -> " in said and "retraining" in said


def test_a_killed_training_under_other_settings_is_removed_not_resumed(make_plan, tmp_path):
    plan = make_plan()["s/sft/seed0"]
    out = tmp_path / "model"
    (out / "checkpoint-2").mkdir(parents=True)  # killed before final/: resuming would mix two trainings
    changed = json.loads(json.dumps(plan.train_settings))
    changed["train"]["learning_rate"] = 1.0
    (out / worker.TRAIN_MARKER).write_text(json.dumps({"key": plan.train_key, "settings": changed}))
    assert not worker._trained(out, plan) and not out.exists()
    (out / "checkpoint-2").mkdir(parents=True)  # the same run's own checkpoint is kept for --resume last
    (out / worker.TRAIN_MARKER).write_text(json.dumps({"key": plan.train_key, "settings": plan.train_settings}))
    assert not worker._trained(out, plan) and (out / "checkpoint-2").is_dir()
