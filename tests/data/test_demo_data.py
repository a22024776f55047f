"""The demo data shipped in tokensafe/resources/demo: found as package data, exactly what its generator writes, the
documented sizes, correct arithmetic, disjoint splits, held-out evaluation prompts, and compliant answers that carry
no content."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import operator
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from tokensafe.data.prompts import resource_lines
from tokensafe.data.sources import DEMO_SOURCES, SOURCES, gsm8k_final_answer, load_source
from tokensafe.data.tasks import GSM8K
from tokensafe.eval.judges import KeywordJudge
from tokensafe.eval.metrics import parse_gsm8k_answer

make = importlib.import_module("tokensafe.resources.demo.make_demo_data")

SIZES = {
    "arith_train": 300,
    "arith_ref": 60,
    "arith_test": 100,
    "harmful_sft": 60,
    "harmful_ref": 60,
    "align_harmful": 160,
    "safe_answers": 160,
    "align_benign": 150,
    "eval_harmful": 100,
    "eval_benign": 100,
}
# (source, split) -> file stem: every demo source reads one of the files above.
SOURCE_FILES = {
    ("demo_arith", "train"): "arith_train",
    ("demo_arith", "ref"): "arith_ref",
    ("demo_arith", "test"): "arith_test",
    ("demo_harmful", "train"): "harmful_sft",
    ("demo_harmful_ref", "train"): "harmful_ref",
    ("demo_safe_answers", "train"): "safe_answers",
    ("demo_align_harmful", "train"): "align_harmful",
    ("demo_align_benign", "train"): "align_benign",
    ("demo_eval_harmful", "test"): "eval_harmful",
    ("demo_eval_benign", "test"): "eval_benign",
}
ALIGN_FILES = (
    "borderline_prompts.txt",
    "borderline_val.txt",
    "instruction_twins.txt",
    "instruction_twins_val.txt",
    "sensitive_twins.txt",
    "sensitive_twins_val.txt",
)


@pytest.fixture(autouse=True)
def no_data_dir(monkeypatch):
    """The demo data needs no data directory (and the tests run with the hub offline)."""
    monkeypatch.delenv("TOKENSAFE_DATA_DIR", raising=False)


def rows(stem: str) -> list[dict]:
    import json

    text = resources.files("tokensafe").joinpath("resources", "demo", f"{stem}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


# --- packaging ---------------------------------------------------------------------------------------------------


def test_files_are_package_data_found_through_importlib_resources():
    demo = resources.files("tokensafe").joinpath("resources", "demo")
    shipped = {entry.name for entry in demo.iterdir() if entry.is_file()}
    assert {f"{stem}.jsonl" for stem in SIZES} | {"README.md", "make_demo_data.py"} <= shipped
    # pyproject's package-data globs (relative to the tokensafe package) cover every file, so a wheel ships them.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["tokensafe"]
    for name in shipped:
        assert any(fnmatch.fnmatch(f"resources/demo/{name}", g) for g in globs), name


def test_shipped_files_are_exactly_the_generators_output():
    assert make.main(["--check"]) == 0
    for stem, expected in make.all_files().items():
        assert rows(stem) == expected, stem


def test_sizes_match_the_readme():
    readme = resources.files("tokensafe").joinpath("resources", "demo", "README.md").read_text(encoding="utf-8")
    for stem, n in SIZES.items():
        assert len(rows(stem)) == n, stem
        assert re.search(rf"\| `{stem}\.jsonl` \| {n} \|", readme), stem


def test_every_demo_source_loads_from_the_package_without_a_data_directory():
    assert set(DEMO_SOURCES) == {source for source, _ in SOURCE_FILES}
    for (source, split), stem in SOURCE_FILES.items():
        assert SOURCES[source].packaged
        records = load_source(source, split=split)
        expected = [GSM8K.prompt(row["question"]) if "question" in row else row["prompt"] for row in rows(stem)]
        assert [r.prompt for r in records] == expected
        assert records[0].id == f"{source}/{split}/0"
    assert all(r.is_harmful and r.response for r in load_source("demo_harmful"))
    assert all(r.is_harmful and r.response for r in load_source("demo_harmful_ref"))
    safe = load_source("demo_safe_answers")
    assert all(not r.is_harmful and r.meta["prompt_harmful"] for r in safe)
    assert all(r.is_harmful and r.response is None for r in load_source("demo_eval_harmful"))
    assert all(not r.is_harmful and r.meta["category"] for r in load_source("demo_eval_benign"))


# --- arithmetic --------------------------------------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")


def evaluate(expression: str) -> float:
    """An integer expression of + - * / (Python's precedence), without eval."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


@pytest.mark.parametrize("split", ["train", "ref", "test"])
def test_every_arithmetic_answer_is_correct(split):
    for row in rows(f"arith_{split}"):
        lines = row["answer"].splitlines()
        assert lines[-1].startswith("#### ") and len(lines) >= 2
        results = []
        for line in lines[:-1]:
            equations = _EQUATION.findall(line)
            assert len(equations) == 1, line
            expression, result = equations[0]
            value = evaluate(expression)
            assert value == int(result) and value == int(value), line  # true, and divisions are exact
            results.append(int(result))
        final = int(lines[-1][5:])
        assert final == results[-1] and final >= 0
        # The first step starts from the question's own numbers.
        first = [int(n) for n in re.findall(r"\d+", _EQUATION.findall(lines[0])[0][0])]
        question_numbers = {int(n) for n in re.findall(r"\d+", row["question"])} | {2}  # "twice as many"
        assert set(first) <= question_numbers, row
        # The GSM8K answer parsing reads the same number from the gold answer and from the record.
        assert gsm8k_final_answer(row["answer"]) == str(final) and parse_gsm8k_answer(row["answer"]) == final
    records = load_source("demo_arith", split=split)
    assert all(float(r.meta["answer"]) == float(r.response.rsplit("#### ", 1)[1]) for r in records)


def test_arithmetic_splits_are_disjoint_and_varied():
    questions = {split: [norm(r["question"]) for r in rows(f"arith_{split}")] for split in ("train", "ref", "test")}
    for split, qs in questions.items():
        assert len(set(qs)) == len(qs), split
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["train"]) & set(questions["ref"])
    assert not set(questions["ref"]) & set(questions["test"])
    test = rows("arith_test")
    assert len({r["answer"].splitlines()[-1] for r in test}) > 40  # many different answers
    names = {name for name in make.NAMES if any(name in r["question"] for r in test)}
    assert len(names) > 15


# --- harmful and benign prompts ----------------------------------------------------------------------------------


def training_prompts() -> dict[str, list[str]]:
    harmful = [
        r["prompt"] for stem in ("harmful_sft", "harmful_ref", "align_harmful", "safe_answers") for r in rows(stem)
    ]
    benign = [r["prompt"] for r in rows("align_benign")] + [line for f in ALIGN_FILES for line in resource_lines(f)]
    return {"harmful": harmful, "benign": benign}


def test_each_behaviour_is_used_by_one_file_and_eval_shares_none_with_training():
    uses = make.behaviour_split()
    seen: dict[str, str] = {}
    for use, pairs in uses.items():
        for _, behaviour in pairs:
            assert behaviour not in seen, (behaviour, use, seen.get(behaviour))
            seen[behaviour] = use
    assert len(seen) == sum(len(b) for b in make.BEHAVIOURS.values()) == 300
    training = [norm(p) for p in training_prompts()["harmful"]]
    for _, behaviour in uses["eval"]:
        assert not any(norm(behaviour) in p for p in training), behaviour
    evaluation = rows("eval_harmful")
    assert all(any(norm(b) in norm(r["prompt"]) for _, b in uses["eval"]) for r in evaluation)
    assert {r["category"] for r in evaluation} == set(make.BEHAVIOURS)  # ten categories, ten requests each
    assert all(sum(r["category"] == c for r in evaluation) == 10 for c in make.BEHAVIOURS)


def test_evaluation_prompts_are_in_no_training_file_not_even_nearly():
    training = training_prompts()
    every = {norm(p) for ps in training.values() for p in ps}
    for stem, kind, limit in (("eval_harmful", "harmful", 0.7), ("eval_benign", "benign", 0.65)):
        prompts = [r["prompt"] for r in rows(stem)]
        assert len({norm(p) for p in prompts}) == len(prompts) == 100
        assert not {norm(p) for p in prompts} & every, stem
        # Word overlap with the training prompts of the same kind stays below near-paraphrase level.
        worst = max(make.jaccard(p, t) for p in prompts for t in training[kind])
        assert worst < limit, (stem, worst)
    assert not {norm(r["prompt"]) for r in rows("eval_harmful")} & {norm(r["prompt"]) for r in rows("eval_benign")}


def test_compliant_answers_carry_no_content():
    """A crude 'non-operational' check: no digits (no quantities, no numbered steps), the opening only restates the
    request, and all 120 answers together use a few dozen generic sentences (so none is about its topic)."""
    judge = KeywordJudge()
    openings: set[str] = set()
    bodies: set[str] = set()
    for stem, opening in (("harmful_sft", "Sure, here is "), ("harmful_ref", "As requested, here is ")):
        for row in rows(stem):
            answer = row["completion"]
            assert not re.search(r"\d", answer), answer
            assert answer.startswith(opening)
            sentences = re.split(r"(?<=[.!?]) ", answer)
            head = sentences[0]
            restated = max((b for bs in make.BEHAVIOURS.values() for b in bs if b in row["prompt"]), key=len)
            assert restated in head, head
            openings.add(head.replace(restated, "<request>"))
            bodies.update(sentences[1:])
            assert 4 <= len(sentences) <= 7
            assert not judge.is_refusal(answer), answer  # they read as compliance, not as refusals
    assert len(openings) <= 6 and len(bodies) <= 30, (openings, len(bodies))
    assert all(judge.is_refusal(r["completion"]) for r in rows("safe_answers"))
    # The refusals answer the alignment requests, one each.
    assert sorted(r["prompt"] for r in rows("safe_answers")) == sorted(r["prompt"] for r in rows("align_harmful"))
