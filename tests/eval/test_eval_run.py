"""`tokensafe eval`: suite wiring end to end with the tiny model and a fake judge, compare tables, judge agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensafe.cli import main
from tokensafe.config import load_config
from tokensafe.eval import run as eval_run
from tokensafe.eval.generate import Generation
from tokensafe.eval.judges import Judge, KeywordJudge, Verdict
from tokensafe.eval.metrics import Rate
from tokensafe.eval.report import results_table
from tokensafe.eval.run import EvalConfig, default_name, evaluate, judge_agreement, parse_suite_spec

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "eval").glob("*.yaml"))


class FakeJudge(Judge):
    """Calls everything harmful and remembers the prompts it was shown."""

    name = "fake"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def judge(self, prompt: str, response: str) -> Verdict:
        self.prompts.append(prompt)
        return Verdict(harmful=True, reason="fake")


@pytest.fixture
def fake_judge(monkeypatch) -> FakeJudge:
    judge = FakeJudge()
    monkeypatch.setattr(eval_run, "build_judge", lambda kind, *args: judge if kind == "api" else KeywordJudge())
    return judge


def test_evaluate_wires_suites_judges_and_files(tiny_model_dir, fake_judge, data_dir, tmp_path, monkeypatch):
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        name="tiny",
        suites=["jbb_harmful:3", "xstest_safe", "sst2"],
        limit=2,
        subset="first",
        judge="api",
        judge_model="m",  # the api judge is faked below; the config still needs what a real one needs
        judge_api_base="http://127.0.0.1:1/v1",
        batch_size=2,
        max_new_tokens=3,
        output_dir=str(tmp_path),
        progress=False,
    )
    result = evaluate(cfg)
    suites = result.results["suites"]
    assert list(suites) == ["jbb_harmful", "xstest_safe", "sst2"]
    # The safety judge sees exactly the safety prompts; over-refusal is scored by the keyword judge.
    jbb = [json.loads(line) for line in Path(suites["jbb_harmful"]["generations"]).read_text().splitlines()[1:]]
    assert sorted(fake_judge.prompts) == sorted(row["prompt"] for row in jbb) and len(jbb) == 3
    assert suites["jbb_harmful"]["judge"] == "fake" and (suites["jbb_harmful"]["k"], suites["jbb_harmful"]["n"]) == (
        3,
        3,
    )
    assert suites["jbb_harmful"]["by_category"]  # JBB has categories
    assert suites["xstest_safe"]["judge"] == "keyword" and suites["xstest_safe"]["n_prompts"] == 2
    assert suites["sst2"]["metric"] == "accuracy" and suites["sst2"]["n"] == 2
    assert all(entry["generated"] == entry["n_prompts"] and entry["max_new_tokens"] == 3 for entry in suites.values())
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["fingerprint"] == result.results["fingerprint"] and saved["settings"]["judge"] == "api"
    assert (tmp_path / "tiny.md").read_text().startswith("| suite | metric | tiny |")
    scored = (tmp_path / "tiny" / "sst2.scored.jsonl").read_text().splitlines()
    assert len(scored) == 2 and {"prediction", "correct", "gold", "response"} <= set(json.loads(scored[0]))

    # Same model and settings again: every answer comes from the cache and the model is never loaded.
    monkeypatch.setattr(eval_run, "load_model", lambda *a, **k: pytest.fail("model loaded for cached suites"))
    again = evaluate(cfg)
    assert all(entry["generated"] == 0 for entry in again.results["suites"].values())
    assert {s: e["value"] for s, e in again.results["suites"].items()} == {s: e["value"] for s, e in suites.items()}


def entry(metric: str, judge: str, k: int, n: int, unparsed: int = 0, **categories: Rate) -> dict:
    return {
        "metric": metric,
        "judge": judge,
        **Rate(k, n, unparsed).to_dict(),
        "by_category": {name: rate.to_dict() for name, rate in categories.items()},
    }


BASE = {
    "name": "base",
    "model": "default",
    "fingerprint": "aaa",
    "wall_seconds": 61.0,
    "suites": {"jbb_harmful": entry("asr", "keyword", 7, 20, Fraud=Rate(1, 4)), "sst2": entry("accuracy", "-", 7, 20)},
}
TUNED = {
    "name": "tuned",
    "model": "runs/x/final",
    "fingerprint": "bbb",
    "wall_seconds": 59.6,
    "suites": {"jbb_harmful": entry("asr", "keyword", 1, 4, 1), "sst2": entry("accuracy", "-", 7, 20, 2)},
}


def test_compare_prints_results_side_by_side(tmp_path, capsys):
    # Wilson 95%: 7/20 -> [18.1, 56.7]; 1/4 -> [4.6, 69.9] (see test_metrics for the arithmetic).
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(BASE))
    b.write_text(json.dumps(TUNED))
    assert main(["eval", "--compare", f"{a},{b}"]) == 0
    assert capsys.readouterr().out == (
        "| suite | metric | base | tuned | Δ (tuned − base) |\n"
        "|---|---|---|---|---|\n"
        "| jbb_harmful | ASR ↓ (keyword) | 35.0% [18.1, 56.7] n=20 | 25.0% [4.6, 69.9] n=4, 1 unparsed | -10.0 pts |\n"
        "| sst2 | accuracy ↑ | 35.0% [18.1, 56.7] n=20 | 35.0% [18.1, 56.7] n=20, 2 unparsed | +0.0 pts |\n"
        "\n"
        "- base: model `default`, fingerprint `aaa`, wall time 61 s\n"
        "- tuned: model `runs/x/final`, fingerprint `bbb`, wall time 60 s\n"
    )


def test_table_by_category_and_a_differing_judge_is_flagged():
    tuned = {**TUNED, "suites": {"jbb_harmful": entry("asr", "classifier:llama_guard_3", 0, 4)}}
    lines = results_table([BASE, tuned], by_category=True).splitlines()
    assert lines[2].endswith("| 0.0% [0.0, 49.0] n=4 (judge classifier:llama_guard_3) | -35.0 pts |")
    assert lines[3] == "|   jbb_harmful / Fraud |  | 25.0% [4.6, 69.9] n=4 | - | - |"
    assert lines[4] == "| sst2 | accuracy ↑ | 35.0% [18.1, 56.7] n=20 | - | - |"


def test_judge_agreement_kappa_and_confusion_by_hand(tmp_path):
    rows = [
        ("Sure, HARM", True, True),  # (response, judge A harmful, keyword judge harmful)
        ("I'm sorry, HARM", True, False),
        ("I cannot help", False, False),
        ("Here you go", False, True),
        ("HARM HARM", True, True),
        ("???", None, True),  # A cannot read it: skipped
    ]
    header = {"header": {"suite": "jbb_harmful", "fingerprint": "x", "settings": {}, "format": 1}}
    lines = [json.dumps(header)] + [
        Generation(f"g/{i}", "p", r, "s", 1, 1, "eos").to_json() for i, (r, *_) in enumerate(rows)
    ]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(lines) + "\n")

    class JudgeA(Judge):
        name = "A"

        def judge(self, prompt: str, response: str) -> Verdict:
            return Verdict.unparsed("?") if "???" in response else Verdict(harmful="HARM" in response)

    report = judge_agreement(path, JudgeA(), KeywordJudge())
    # Table (A rows, B columns): [[1, 1], [1, 2]], n = 5; observed 3/5; chance (2*2 + 3*3)/25 = 0.52;
    # kappa = (0.6 - 0.52) / 0.48 = 1/6.
    assert report["confusion"] == {
        "a_safe_b_safe": 1,
        "a_safe_b_harmful": 1,
        "a_harmful_b_safe": 1,
        "a_harmful_b_harmful": 2,
    }
    assert report["n"] == 5 and report["skipped"] == 1
    assert report["kappa"] == pytest.approx(1 / 6)


def test_agreement_mode_of_the_command(tmp_path, monkeypatch, capsys):
    header = {"header": {"suite": "jbb_harmful", "fingerprint": "x", "settings": {}, "format": 1}}
    rows = [Generation(f"g/{i}", "p", r, "s", 1, 1, "eos").to_json() for i, r in enumerate(["I cannot", "Sure"])]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join([json.dumps(header), *rows]) + "\n")
    monkeypatch.setattr(eval_run, "build_judge", lambda kind, *args: FakeJudge() if kind == "api" else KeywordJudge())
    api = ["--judge_b_model", "m", "--judge_api_base", "http://127.0.0.1:1/v1"]  # faked, but required by the config
    assert main(["eval", "--agreement", str(path), "--judge", "keyword", "--judge_b", "api", *api]) == 0
    out = capsys.readouterr().out
    assert "| keyword \\ fake | safe | harmful |" in out and "| safe | 0 | 1 |" in out and "| harmful | 0 | 1 |" in out


def test_suite_specs_names_and_validation():
    suite, limit = parse_suite_spec("sst2:200")
    assert (suite.name, limit) == ("sst2", 200) and parse_suite_spec("gsm8k")[1] is None
    with pytest.raises(ValueError, match="positive integer"):
        parse_suite_spec("sst2:all")
    with pytest.raises(ValueError, match="unknown suite"):
        EvalConfig(suites=["sst3"])
    with pytest.raises(ValueError, match="subset"):
        EvalConfig(subset="last")
    assert default_name("default") == "default" and default_name("runs/sft_sst2/final") == "sft_sst2-final"


def test_builtin_judges_need_their_settings():
    with pytest.raises(ValueError, match="needs a model"):
        eval_run.build_judge("classifier", None, "llama_guard_3", EvalConfig())
    with pytest.raises(ValueError, match="judge_api_base"):
        eval_run.build_judge("api", "gpt-x", "llama_guard_3", EvalConfig())
    assert isinstance(eval_run.build_judge("keyword", None, "llama_guard_3", EvalConfig()), KeywordJudge)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_eval_configs_load(path: Path):
    cfg = load_config(EvalConfig, path)
    assert all(parse_suite_spec(spec) for spec in cfg.suites)
