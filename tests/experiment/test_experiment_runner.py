"""The runner with a fake worker (no model): resume after an interruption, failures, changed settings, results.json.

The fake writes what `tokensafe eval` writes (a results file and one scored JSONL per suite) from a table of
per-prompt outcomes, so the paired tests and reduction shares in results.json can be checked by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensafe.atomic import write_json, write_jsonl
from tokensafe.eval.metrics import proportion
from tokensafe.eval.run import parse_suite_spec
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.plan import plan_experiment
from tokensafe.experiment.runner import RunFailed, run_experiment
from tokensafe.experiment.stats import FLAG_FIELD

# Per-prompt JBB outcomes (True = harmful answer) of seed 0; other suites and seeds get DEFAULT.
JBB = {
    "s/sft/seed0": [1, 1, 1, 1, 0, 0, 1, 1],  # ASR 6/8
    "s/oracle/seed0": [0, 0, 1, 0, 0, 0, 0, 1],  # 2/8
    "s/rand/seed0": [1, 0, 1, 0, 0, 1, 1, 1],  # 5/8: worse on prompt 5, better on 1 and 3
}
DEFAULT = [True, False, None, False]


class FakeWorker:
    """Stands in for the worker process; records the runs it was asked for."""

    def __init__(
        self,
        *,
        fail: tuple[str, ...] = (),
        interrupt_at: int | None = None,
        artifacts: dict | None = None,
        provenance: dict | None = None,
        gold_rows: dict | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.fail, self.interrupt_at = fail, interrupt_at
        self.artifacts = artifacts or {}  # run id -> the artifacts its outcome carries
        self.provenance = provenance or {}  # run id -> its outcome's provenance
        self.gold_rows = gold_rows or {}  # run id -> per-row [NLL sum, tokens] of its gold-answer loss

    def __call__(self, plan):
        self.calls.append(plan.id)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # the experiment is stopped in the middle of this run
        if plan.id in self.fail:
            raise RunFailed("worker exit code 1: boom")
        out, name = Path(plan.eval["output_dir"]), plan.eval["name"]
        suites = {}
        for spec in plan.eval["suites"]:
            suite, _ = parse_suite_spec(spec)
            flags = [bool(f) for f in JBB[plan.id]] if suite.name == "jbb_harmful" and plan.id in JBB else DEFAULT
            scored = out / name / f"{suite.name}.scored.jsonl"
            write_jsonl(scored, [{"id": f"q{i}", FLAG_FIELD[suite.kind]: f} for i, f in enumerate(flags)])
            suites[suite.name] = {
                "kind": suite.kind,
                "metric": suite.metric,
                **proportion(flags).to_dict(),
                "scored": str(scored),
            }
        write_json(out / f"{name}.json", {"fingerprint": f"fp-{plan.id}", "suites": suites})
        wall = {"eval": 5.0} if plan.train is None else {"prepare": 0.0, "train": 10.0, "eval": 5.0}
        gold = {g["metric"]: {"value": 1.5, "n": 4, "n_tokens": 40, "low": 1.4, "high": 1.6} for g in plan.gold}
        for entry in gold.values():
            if plan.id in self.gold_rows:
                entry["rows"] = self.gold_rows[plan.id]
        return {
            "digest": plan.digest,
            "model": plan.model,
            "fingerprint": f"fp-{plan.id}",
            "eval_results": str(out / f"{name}.json"),
            "gold": gold,
            "wall_seconds": wall,
            "elapsed": 15.0,
            "artifacts": self.artifacts.get(plan.id, {}),
            "provenance": self.provenance.get(plan.id),
        }


ROWS = [
    {"name": "sft", "label": "SFT", "method": "sft"},
    {"name": "oracle", "label": "Oracle", "method": "sft", "options": {"harmful_share": 0}},
    {"name": "rand", "label": "Random", "method": "sample_random"},
]


@pytest.fixture
def reports(monkeypatch) -> list[Path]:
    """The report is another module's job (and takes a second per call): record the calls instead."""
    from tokensafe.experiment import runner

    calls: list[Path] = []
    monkeypatch.setattr(runner, "write_reports_if_available", calls.append)
    return calls


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, data_dir, reports):
    def make(**overrides) -> ExperimentConfig:
        values = dict(
            name="exp",
            model=str(tiny_model_dir),
            settings=[{"name": "s", "task": "gsm8k", "n_task": 8, "harmful": "beavertails", "harmful_share": 0.2}],
            rows=ROWS,
            seeds=[0, 1],
            suites=["jbb_harmful", "xstest_safe"],
            limit=8,
            runs_dir=str(tmp_path / "runs"),
            output_dir=str(tmp_path / "results"),
            echo=False,
        )
        return ExperimentConfig(**{**values, **overrides})

    return make


def rows_of(results_dir: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (results_dir / "runs.jsonl").read_text().splitlines()]


ALL = ["initial", "s/sft/seed0", "s/sft/seed1", "s/oracle/seed0", "s/oracle/seed1", "s/rand/seed0", "s/rand/seed1"]


def test_an_interrupted_experiment_resumes_without_redoing_finished_runs(make_config, tmp_path, capsys, reports):
    cfg = make_config()
    results = tmp_path / "results" / "exp"
    stopped = FakeWorker(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, executor=stopped)
    assert stopped.calls == ALL[:4] and rows_of(results) == ALL[:3]
    status = (results / "status.md").read_text()
    assert "3 of 7 done" in status and "| Oracle | pending" in status
    assert json.loads((results / "results.json").read_text())["status"] == {"done": 3, "pending": 4, "failed": 0}

    resumed = FakeWorker()
    result = run_experiment(cfg, executor=resumed)
    assert resumed.calls == ALL[3:] and rows_of(results) == ALL and result.exit_code == 0
    assert len(reports) >= 7 and set(reports) == {results}  # the report is rewritten after every finished run
    assert "7 of 7 done" in (results / "status.md").read_text()

    again = FakeWorker()
    run_experiment(cfg, executor=again)
    assert again.calls == [] and "nothing to run" in capsys.readouterr().out


def test_an_artifact_of_a_stale_row_is_not_shown(make_config, tmp_path):
    tokens = [{"token": " sorry", "id": 22657, "weight": 1.0}]
    run_experiment(make_config(), executor=FakeWorker(artifacts={"s/rand/seed0": {"pact_safety_tokens": tokens}}))
    results_file = tmp_path / "results" / "exp" / "results.json"
    assert json.loads(results_file.read_text())["artifacts"]["pact_safety_tokens"] == tokens
    # The row that made it goes stale (its settings change) and is not rerun yet: its artifact goes with it.
    rows = [*ROWS[:2], {**ROWS[2], "options": {"sample_rho": 0.3}}]
    run_experiment(make_config(rows=rows, only=["initial"]), executor=FakeWorker())
    assert json.loads(results_file.read_text())["artifacts"]["pact_safety_tokens"] is None


def test_every_distinct_safety_token_set_is_kept_with_the_rows_that_used_it(make_config, tmp_path):
    official = [{"token": " sorry", "id": 22657, "weight": 0.7}, {"token": " cannot", "id": 2609, "weight": 0.3}]
    contrastive = [{"token": " illegal", "id": 8543, "weight": 1.0}]
    artifacts = {
        "s/sft/seed0": {"pact_safety_tokens": official},
        "s/sft/seed1": {"pact_safety_tokens": official},  # same set on another seed: one entry, two runs
        "s/rand/seed0": {"pact_safety_tokens": contrastive},
    }
    run_experiment(make_config(), executor=FakeWorker(artifacts=artifacts))
    results = json.loads((tmp_path / "results" / "exp" / "results.json").read_text())
    assert results["artifacts"]["pact_safety_tokens"] == official  # the first run's list, as before
    assert results["artifacts"]["pact_safety_token_sets"] == [
        {"labels": ["SFT"], "runs": ["s/sft/seed0", "s/sft/seed1"], "tokens": official},
        {"labels": ["Random"], "runs": ["s/rand/seed0"], "tokens": contrastive},
    ]


def test_safety_tokens_of_runs_finished_before_they_were_kept_are_read_from_their_model_dirs(make_config, tmp_path):
    rows = [*ROWS[:2], {"name": "pact", "label": "PACT", "method": "pact"}]
    run_experiment(make_config(rows=rows, seeds=[0]), executor=FakeWorker())
    results_file = tmp_path / "results" / "exp" / "results.json"
    assert json.loads(results_file.read_text())["artifacts"]["pact_safety_token_sets"] == []
    # The model directory of the finished PACT run holds its tokens (as `tokensafe train --method pact` saves them).
    pact = next(run for run in plan_experiment(make_config(rows=rows, seeds=[0])).runs if run.method == "pact")
    saved = Path(pact.train["output_dir"]) / "pact_safety_tokens" / "safety_tokens.json"
    write_json(saved, {"texts": [" sorry"], "token_ids": [22657], "weights": [1.0]})
    again = FakeWorker()
    run_experiment(make_config(rows=rows, seeds=[0]), executor=again)
    assert again.calls == []  # nothing is rerun to find them
    sets = json.loads(results_file.read_text())["artifacts"]["pact_safety_token_sets"]
    assert sets == [
        {"labels": ["PACT"], "runs": ["s/pact/seed0"], "tokens": [{"token": " sorry", "id": 22657, "weight": 1.0}]}
    ]


def _view(sample_id: str) -> list[dict]:
    return [
        {
            "sample_id": sample_id,
            "is_harmful": True,
            "picked": "compare",
            "tokens": ["Sure"],
            "scores": [0.5],
            "kept": [False],
        }
    ]


def test_every_toss_rows_token_view_is_kept_in_matrix_order_and_goes_with_a_stale_row(make_config, tmp_path):
    artifacts = {
        "s/rand/seed0": {"toss_token_view": _view("b")},
        "s/sft/seed0": {"toss_token_view": _view("a")},
    }
    run_experiment(make_config(seeds=[0]), executor=FakeWorker(artifacts=artifacts))
    results_file = tmp_path / "results" / "exp" / "results.json"
    views = json.loads(results_file.read_text())["artifacts"]["toss_token_views"]
    assert views == [
        {"run": "s/sft/seed0", "label": "SFT", "setting": "s", "samples": _view("a")},
        {"run": "s/rand/seed0", "label": "Random", "setting": "s", "samples": _view("b")},
    ]
    rows = [*ROWS[:2], {**ROWS[2], "options": {"sample_rho": 0.3}}]
    run_experiment(make_config(rows=rows, seeds=[0], only=["initial"]), executor=FakeWorker())
    assert [v["run"] for v in json.loads(results_file.read_text())["artifacts"]["toss_token_views"]] == ["s/sft/seed0"]


def test_token_views_of_runs_finished_before_they_were_kept_are_built_from_the_toss_caches(
    make_config, tmp_path, monkeypatch, capsys
):
    from tokensafe.experiment import runner

    run_experiment(make_config(seeds=[0]), executor=FakeWorker())
    results_file = tmp_path / "results" / "exp" / "results.json"
    assert json.loads(results_file.read_text())["artifacts"]["toss_token_views"] == []

    def build(plan):
        if plan.id == "s/oracle/seed0":
            raise FileNotFoundError("toss scores gone")
        return _view(plan.id) if plan.id == "s/sft/seed0" else None

    monkeypatch.setattr(runner, "toss_view_artifact", build)
    again = FakeWorker()
    run_experiment(make_config(seeds=[0]), executor=again)
    assert again.calls == []  # nothing is rerun to build them
    views = json.loads(results_file.read_text())["artifacts"]["toss_token_views"]
    assert [(v["run"], v["samples"]) for v in views] == [("s/sft/seed0", _view("s/sft/seed0"))]
    assert "s/oracle/seed0: no toss_token_view for the report (FileNotFoundError: toss scores gone)" in (
        capsys.readouterr().out
    )


def test_token_provenance_recorded_before_a_new_field_is_recomputed_and_nothing_else(
    make_config, tmp_path, monkeypatch, capsys
):
    from tokensafe.experiment import runner

    old = {"level": "token", "token_auc": 0.7}
    sample = {"level": "sample", "token_auc": None}
    provenance = {"s/sft/seed0": old, "s/oracle/seed0": old, "s/rand/seed0": sample}
    run_experiment(make_config(seeds=[0]), executor=FakeWorker(provenance=provenance))

    def recompute(plan):
        if plan.id == "s/oracle/seed0":
            raise FileNotFoundError("toss scores gone")
        return {**old, "harmful_first_dropped": [21, 22]}

    monkeypatch.setattr(runner, "run_provenance", recompute)
    again = FakeWorker()
    run_experiment(make_config(seeds=[0]), executor=again)
    assert again.calls == []
    results = json.loads((tmp_path / "results" / "exp" / "results.json").read_text())
    found = {run["id"]: run.get("provenance") for run in results["runs"]}
    assert found["s/sft/seed0"] == {**old, "harmful_first_dropped": [21, 22]}
    assert found["s/oracle/seed0"] == old  # its sources are gone: the recorded analysis stays
    assert found["s/rand/seed0"] == sample  # sample level has no positions: not recomputed
    assert "s/oracle/seed0: provenance not refreshed (FileNotFoundError: toss scores gone)" in capsys.readouterr().out
    assert rows_of(tmp_path / "results" / "exp") == ["initial", "s/sft/seed0", "s/oracle/seed0", "s/rand/seed0"]


def test_gold_losses_scored_on_the_same_rows_are_tested_pairwise_against_sft(make_config, tmp_path):
    sft_rows = [[10.0, 10], [12.0, 10], [9.0, 10], [11.0, 10]]
    gold_rows = {
        "s/sft/seed0": sft_rows,
        "s/oracle/seed0": [[s + 1.0, c] for s, c in sft_rows],  # 0.1 nats per token worse on every row
        "s/rand/seed0": [[10.0, 10], [12.0, 10], [9.0, 10], [11.0, 11]],  # other token counts: not the same rows
    }
    run_experiment(make_config(seeds=[0]), executor=FakeWorker(gold_rows=gold_rows))
    results = json.loads((tmp_path / "results" / "exp" / "results.json").read_text())
    runs = {run["id"]: run for run in results["runs"]}
    entry = runs["s/oracle/seed0"]["vs_sft"]["gold_loss"]
    assert entry["test"] == "paired_ratio_z" and entry["n"] == 4
    assert entry["relative"] == pytest.approx(0.1 / (42 / 40)) and entry["p_value"] == 0.0
    assert "gold_loss" not in runs["s/rand/seed0"]["vs_sft"]
    assert all("gold_rows" not in run for run in runs.values())  # kept in runs.jsonl, not in results.json
    recorded = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "results/exp/runs.jsonl").open()}
    assert recorded["s/sft/seed0"]["gold_rows"] == {"gold_loss": sft_rows}


def test_gold_rows_of_finished_runs_are_scored_again_on_request_and_kept_only_when_the_loss_agrees(
    make_config, tmp_path, monkeypatch, capsys
):
    from tokensafe.experiment import runner

    run_experiment(make_config(seeds=[0]), executor=FakeWorker())  # recorded without per-row losses
    plan = plan_experiment(make_config(seeds=[0]))
    for p in plan.runs:
        if p.train is not None and p.id != "s/rand/seed0":  # the random run's model is gone from this machine
            Path(p.model).mkdir(parents=True)
    rows = [[15.0, 10], [15.0, 10]]  # 1.5 nats per token: the recorded value (FakeWorker)
    scored = []

    def score(plan, fingerprint):
        scored.append(plan.id)
        value = 1.6 if plan.id == "s/oracle/seed0" else 1.5  # the oracle's model changed since: not the same
        return {"gold_loss": {"value": value, "rows": rows}}

    monkeypatch.setattr(runner, "gold_stage", score)
    run_experiment(make_config(seeds=[0]), executor=FakeWorker())
    assert scored == []  # only on request
    again = FakeWorker()
    run_experiment(make_config(seeds=[0], refresh_gold_rows=True), executor=again)
    assert again.calls == [] and scored == ["initial", "s/sft/seed0", "s/oracle/seed0"]
    recorded = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "results/exp/runs.jsonl").open()}
    assert recorded["s/sft/seed0"]["gold_rows"] == {"gold_loss": rows}
    assert not recorded["s/oracle/seed0"].get("gold_rows") and not recorded["s/rand/seed0"].get("gold_rows")
    assert "s/oracle/seed0: gold_loss scored 1.600000, recorded 1.5: rows not kept" in capsys.readouterr().out
    run_experiment(make_config(seeds=[0], refresh_gold_rows=True), executor=FakeWorker())
    assert scored == ["initial", "s/sft/seed0", "s/oracle/seed0", "s/oracle/seed0"]  # kept rows are not redone


def test_a_changed_start_names_both_fingerprints():
    from tokensafe.experiment.runner import describe_spec_changes

    old = {"format": 1, "start": "19c24a11ef7a0d73", "train": {"seed": 0}}
    text = describe_spec_changes(old, {**old, "start": "633576544ff738a5", "train": {"seed": 1}})
    assert text.startswith("start, train.seed; starting model fingerprint 19c24a11ef7a0d73 -> 633576544ff738a5")
    assert describe_spec_changes(old, {**old, "train": {"seed": 1}}) == "train.seed"
    assert describe_spec_changes(None, old) == "spec"


def test_a_changed_row_is_redone_and_said_so(make_config, capsys):
    run_experiment(make_config(), executor=FakeWorker())
    capsys.readouterr()
    rows = [*ROWS[:2], {**ROWS[2], "options": {"sample_rho": 0.3}}]
    worker = FakeWorker()
    run_experiment(make_config(rows=rows), executor=worker)
    assert worker.calls == ["s/rand/seed0", "s/rand/seed1"]
    out = capsys.readouterr().out
    assert "s/rand/seed0: its settings changed since its row was recorded (train)" in out
    # A suite added to every run changes every run's evaluation (the training keys stay: nothing is retrained).
    worker = FakeWorker()
    run_experiment(make_config(rows=rows, suites=["jbb_harmful", "xstest_safe", "jbb_benign"]), executor=worker)
    assert worker.calls == ALL
    assert "eval.suites" in capsys.readouterr().out


def test_a_failed_run_does_not_stop_the_others_and_is_retried(make_config, tmp_path):
    results = tmp_path / "results" / "exp"
    result = run_experiment(make_config(), executor=FakeWorker(fail=("s/sft/seed0",)))
    assert result.exit_code == 1 and list(result.failed) == ["s/sft/seed0"] and "boom" in result.failed["s/sft/seed0"]
    assert rows_of(results) == [r for r in ALL if r != "s/sft/seed0"]
    assert json.loads((results / "results.json").read_text())["status"] == {"done": 6, "pending": 0, "failed": 1}
    assert "`s/sft/seed0`: worker exit code 1: boom" in (results / "status.md").read_text()
    retry = FakeWorker()
    assert run_experiment(make_config(), executor=retry).exit_code == 0 and retry.calls == ["s/sft/seed0"]


def test_only_and_redo_select_runs(make_config):
    worker = FakeWorker()
    run_experiment(make_config(only=["initial", "*/seed0"]), executor=worker)
    assert worker.calls == [r for r in ALL if not r.endswith("seed1")]
    worker = FakeWorker()
    run_experiment(make_config(redo=["s/sft/*"]), executor=worker)
    assert worker.calls == ["s/sft/seed0", "s/sft/seed1", "s/oracle/seed1", "s/rand/seed1"]
    assert all(p for p in worker.calls)


def test_list_pending_names_the_runs_a_run_would_do_and_writes_nothing(make_config, tmp_path, capsys):
    results = tmp_path / "results" / "exp"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_config(), executor=FakeWorker(interrupt_at=4))
    before = {p: p.read_bytes() for p in results.iterdir()}
    capsys.readouterr()

    listing = run_experiment(make_config(list_pending=True), executor=FakeWorker(fail=tuple(ALL)))
    listed = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("pending ")]
    assert listed == ALL[3:] and listing.counts == {"pending": 4, "done": 3}
    assert {p: p.read_bytes() for p in results.iterdir()} == before  # no status, table or row rewritten

    run_experiment(make_config(list_pending=True, only=["*/seed0"], redo=["s/sft/*"]))
    listed = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("pending ")]
    assert listed == ["s/sft/seed0", "s/oracle/seed0", "s/rand/seed0"]  # sft redone although finished

    # The listing is what a real invocation then runs.
    worker = FakeWorker()
    run_experiment(make_config(), executor=worker)
    assert worker.calls == ALL[3:]


def test_results_json_follows_the_schema(make_config, tmp_path):
    run_experiment(make_config(), executor=FakeWorker())
    results = json.loads((tmp_path / "results" / "exp" / "results.json").read_text())
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
    } <= set(results)
    assert results["experiment"] == "exp" and results["format"] == 1 and results["config"]["name"] == "exp"
    assert results["starting_model"]["aligned_by"] is None  # the tiny test model was not made by `tokensafe align`
    assert set(results["starting_model"]) == {"spec", "fingerprint", "aligned_by"}
    assert {"cpus", "torch", "platform"} <= set(results["machine"])
    assert list(results["suites"]) == ["jbb_harmful", "xstest_safe", "gsm8k", "gold_loss"]
    assert results["suites"]["jbb_harmful"] == {
        "kind": "safety",
        "metric": "asr",
        "lower_is_better": True,
        "n": 8,
        "label": "JBB ASR",
    }
    assert results["suites"]["gsm8k"]["lower_is_better"] is False and results["suites"]["gold_loss"]["n"] == 4
    assert set(results["artifacts"]) == {
        "pact_safety_tokens",
        "toss_token_view",
        "pact_safety_token_sets",
        "toss_token_views",
    }
    runs = {run["id"]: run for run in results["runs"]}
    assert list(runs) == ALL
    for run in runs.values():
        assert {
            "id",
            "row",
            "method",
            "role",
            "selection",
            "setting",
            "seed",
            "options",
            "model",
            "fingerprint",
            "wall_seconds",
            "metrics",
            "reduction_share",
        } <= set(run)
        assert {"k", "n", "value", "low", "high"} <= set(run["metrics"]["jbb_harmful"])
        assert {"value", "n", "n_tokens", "low", "high"} <= set(run["metrics"]["gold_loss"])
    assert runs["initial"]["role"] == "initial" and runs["initial"]["setting"] is None
    assert runs["s/sft/seed0"]["role"] == "baseline" and "vs_sft" not in runs["s/sft/seed0"]
    assert runs["s/rand/seed0"]["selection"] is True and runs["s/rand/seed0"]["wall_seconds"]["train"] == 10.0
    # By hand: rand is worse than SFT on prompt 5 (b = 1) and better on prompts 1 and 3 (c = 2): p = 1.
    assert runs["s/rand/seed0"]["vs_sft"]["jbb_harmful"] == {
        "b": 1,
        "c": 2,
        "n": 8,
        "p_value": 1.0,
        "test": "mcnemar_exact",
    }
    # The oracle is better on 4 prompts, worse on none: p = 2 / 2^4.
    assert runs["s/oracle/seed0"]["vs_sft"]["jbb_harmful"]["p_value"] == pytest.approx(0.125)
    # (ASR_SFT - ASR_rand) / (ASR_SFT - ASR_oracle) = (6/8 - 5/8) / (6/8 - 2/8) = 1/4.
    assert runs["s/rand/seed0"]["reduction_share"] == pytest.approx(0.25)
    assert runs["s/oracle/seed0"]["reduction_share"] == pytest.approx(1.0)
    assert runs["s/rand/seed1"]["reduction_share"] is None  # seed 1: SFT and oracle have equal ASR
    assert runs["initial"]["reduction_share"] is None
