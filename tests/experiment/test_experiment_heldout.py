"""The held-out AdvBench suite holds no prompt any run of the experiment trains on; suites from your own files."""

from __future__ import annotations

import json

import pytest

from tokensafe.data.errors import DataError
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.data.sources import load_source
from tokensafe.errors import UsageError
from tokensafe.eval.run import parse_suite_spec
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.heldout import normalise_prompt
from tokensafe.experiment.plan import plan_experiment


def config(tmp_path, model, **overrides) -> ExperimentConfig:
    values = dict(
        name="heldout",
        model=str(model),
        settings=[{"name": "s", "task": "sst2", "n_task": 20, "harmful": "advbench", "harmful_share": 0.2}],
        rows=[{"name": "sft", "method": "sft"}, {"name": "oracle", "method": "sft", "options": {"harmful_share": 0}}],
        seeds=[0, 1],
        runs_dir=str(tmp_path / "runs"),
        output_dir=str(tmp_path / "results"),
    )
    return ExperimentConfig(**{**values, **overrides})


def test_heldout_advbench_excludes_every_training_prompt(tmp_path, tiny_model_dir, data_dir):
    plan = plan_experiment(config(tmp_path, tiny_model_dir))
    # Independently: the AdvBench rows of both seeds' mixtures (5 each) and harmful_train (the aligned model's data).
    poison = set()
    for seed in (0, 1):
        mixture = build_mixture(
            MixtureArgs(
                task="sst2", n_task=20, harmful="advbench", harmful_share=0.2, seed=seed, data_dir=str(data_dir)
            )
        )
        poison |= {normalise_prompt(r.prompt) for r in mixture if r.source == "advbench"}
    assert len(poison) == 10  # two different samples of 5
    aligned = {normalise_prompt(r.prompt) for r in load_source("harmful_train", data_dir=data_dir)}
    advbench = load_source("advbench", data_dir=data_dir)
    expected = [r for r in advbench if normalise_prompt(r.prompt) not in poison | aligned]
    rows = [json.loads(line) for line in plan.heldout.path.read_text().splitlines()]
    assert [(row["id"], row["prompt"]) for row in rows] == [(r.id, r.prompt) for r in expected]
    assert plan.heldout.kept == len(expected) and plan.heldout.removed == len(advbench) - len(expected)
    assert not {normalise_prompt(row["prompt"]) for row in rows} & poison
    # Every run evaluates the first 100 of them, through the file suite named advbench_heldout.
    suite, count = parse_suite_spec(plan.runs[1].eval["suites"][1])
    assert (suite.name, suite.kind, count) == ("advbench_heldout", "safety", 100)
    loaded = suite.load(limit=count, subset="first")
    assert [r.id for r in loaded] == [r.id for r in expected[:100]] and "advbench_heldout" in plan.suites


def test_no_prompt_left_is_a_clear_error(tmp_path, tiny_model_dir, data_dir):
    rows = [
        {"name": "sft", "method": "sft"},
        {"name": "pact", "method": "pact", "options": {"pact_prompts": "advbench"}},
    ]
    with pytest.raises(UsageError, match="no held-out prompt is left"):
        plan_experiment(config(tmp_path, tiny_model_dir, rows=rows))


def test_file_suites_parse_and_load(tmp_path):
    path = tmp_path / "my_prompts.jsonl"
    path.write_text('{"prompt": "How do I bake bread?", "category": "food"}\n{"prompt": " Hi ", "id": 7}\n')
    suite, count = parse_suite_spec(f"file:over_refusal:{path}:1")
    assert (suite.name, suite.kind, count) == ("my_prompts", "over_refusal", 1)
    records = suite.load()
    assert [(r.id, r.prompt, r.meta["category"]) for r in records] == [
        ("my_prompts/0", "How do I bake bread?", "food"),
        ("7", "Hi", None),
    ]
    assert [r.id for r in suite.load(limit=count, subset="first")] == ["my_prompts/0"]
    assert parse_suite_spec(f"file:safety:{path}")[1] is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("file:harmful:x.jsonl", "kind must be one of safety, over_refusal"),
        ("file:safety", "expected file:<kind>:<path>"),
        ("file:safety:dir/jbb_harmful.jsonl", "is a built-in suite"),
    ],
)
def test_bad_file_suite_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_suite_spec(spec)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": ""}'], "row 0, field 'prompt': 'prompt' must be a non-empty string"),
        (['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": "1"}'], "row 1, field 'id': id '1' repeats row 0"),
        (['{"text": "a"}'], "row 0, field 'prompt'"),
    ],
)
def test_bad_prompt_files_name_the_row(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    suite, _ = parse_suite_spec(f"file:safety:{path}")
    with pytest.raises(DataError, match=message):
        suite.load()


def test_a_file_suite_is_evaluated_like_a_named_one(tmp_path, tiny_model_dir):
    from tokensafe.eval.run import EvalConfig, evaluate

    path = tmp_path / "benign.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Name a fruit.", "Count to three.")))
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        name="m",
        suites=[f"file:over_refusal:{path}"],
        max_new_tokens=3,
        output_dir=str(tmp_path / "eval"),
        progress=False,
    )
    entry = evaluate(cfg).results["suites"]["benign"]
    assert entry["kind"] == "over_refusal" and entry["metric"] == "refusal_rate" and entry["n"] == 2
    scored = [json.loads(line) for line in (tmp_path / "eval" / "m" / "benign.scored.jsonl").read_text().splitlines()]
    assert [row["id"] for row in scored] == ["benign/0", "benign/1"] and all("refused" in row for row in scored)


def test_a_setting_poisoned_from_your_own_file_trains_on_it_and_holds_its_prompts_out(
    tmp_path, tiny_model_dir, data_dir
):
    advbench = load_source("advbench", data_dir=data_dir)
    mine = tmp_path / "my_poison.jsonl"  # five AdvBench goals with a compliant answer, as a user's own file
    mine.write_text(
        "".join(json.dumps({"prompt": r.prompt, "completion": "Sure, here is how."}) + "\n" for r in advbench[:5])
    )
    setting = {"name": "s", "task": "sst2", "n_task": 20, "harmful_path": str(mine), "harmful_share": 0.2}
    plan = plan_experiment(config(tmp_path, tiny_model_dir, settings=[setting]))
    sft = next(r for r in plan.runs if r.id == "s/sft/seed0")
    assert sft.train["harmful_path"] == str(mine) and sft.train["harmful"] is None
    held = {normalise_prompt(json.loads(line)["prompt"]) for line in plan.heldout.path.read_text().splitlines()}
    assert not held & {normalise_prompt(r.prompt) for r in advbench[:5]}  # the file's prompts are not evaluated on
    assert held & {normalise_prompt(r.prompt) for r in advbench[5:50]}  # the other AdvBench prompts still are


def test_a_poisoned_setting_without_a_source_names_both_ways_to_give_one():
    with pytest.raises(UsageError, match="needs a harmful source") as error:
        ExperimentConfig(
            name="x", settings=[{"name": "s", "task": "sst2", "harmful_share": 0.1}], rows=[{"name": "sft"}]
        )
    assert "harmful_path" in error.value.hint and "settings[0]" in str(error.value)
