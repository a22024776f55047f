"""Bring your own data: chat and prompt/completion files as task or harmful rows, their errors and cache keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tokensafe.cli import main
from tokensafe.config import ConfigError
from tokensafe.data.dataset import build_tokenized_dataset
from tokensafe.data.errors import DataError
from tokensafe.data.mixtures import MixtureArgs, build_mixture, harmful_count
from tokensafe.data.records import Record
from tokensafe.data.sources import load_file
from tokensafe.digests import dataset_tokens_key


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


# --- the two formats ------------------------------------------------------------------------------------------


def test_chat_file_gives_records_with_ids_messages_and_provenance(tmp_path):
    path = tmp_path / "my_chats.jsonl"
    rows = [
        {"id": "first", "messages": turns(("system", "Be brief."), ("user", "  Hi  "), ("assistant", "Hello.\n"))},
        {"messages": turns(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")), "is_harmful": 1},
        {"id": 7, "messages": turns(("user", "Q"), ("assistant", "A")), "is_harmful": False, "extra": "ignored"},
    ]
    # A blank line between rows: ids use the row index, errors and meta use the line of the file.
    path.write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]), encoding="utf-8")
    records = load_file(path)
    assert records == [
        Record(
            "my_chats/first",
            turns(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")),  # content stripped
            "my_chats",
            False,
            {"line": 1},
        ),
        Record(
            "my_chats/1",
            turns(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")),
            "my_chats",
            True,
            {"line": 3},
        ),
        Record("my_chats/7", turns(("user", "Q"), ("assistant", "A")), "my_chats", False, {"line": 4}),
    ]
    assert records[1].response == "A2" and records[1].prompt == "Q2"  # the last assistant turn is the response
    assert [r.source for r in load_file(path, name="mine")] == ["mine"] * 3


FLAGS = [("1", True), ("0", False), ("TRUE", True), ("no", False), ("", False), ("yes", True), ("false", False)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_prompt_completion_file_in_every_container(tmp_path, suffix):
    rows = [
        {"prompt": f"Question {i}?", "completion": f" Answer {i}. ", "is_harmful": w} for i, (w, _) in enumerate(FLAGS)
    ]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        jsonl(path, rows)
    else:
        sep = "," if suffix == ".csv" else "\t"
        lines = [sep.join(("prompt", "completion", "is_harmful"))]
        lines += [sep.join((r["prompt"], r["completion"], r["is_harmful"])) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = load_file(path)
    first_line = 1 if suffix == ".jsonl" else 2  # a CSV/TSV header is line 1
    assert records == [
        Record(
            f"pairs/{i}",
            turns(("user", f"Question {i}?"), ("assistant", f"Answer {i}.")),
            "pairs",
            flag,
            {"line": first_line + i},
        )
        for i, (_, flag) in enumerate(FLAGS)
    ]


def test_json_booleans_alpaca_columns_and_a_system_column(tmp_path):
    path = jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Translate.", "input": "chat", "output": "cat", "is_harmful": True},
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"prompt": "P", "completion": "C", "system": "S", "is_harmful": 0},
        ],
    )
    records = load_file(path, fmt="prompt_completion")
    assert [r.messages for r in records] == [
        turns(("user", "Translate.\n\nchat"), ("assistant", "cat")),
        turns(("user", "Name a colour."), ("assistant", "Blue.")),
        turns(("system", "S"), ("user", "P"), ("assistant", "C")),
    ]
    assert [r.is_harmful for r in records] == [True, False, False]


def test_a_quoted_multiline_csv_field_keeps_later_line_numbers_right(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('prompt,completion\nA,"one\ntwo\nthree"\nB,\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert (info.value.line, info.value.field) == (5, "completion")  # the empty completion of B is on line 5


def test_format_detection_and_an_explicit_format(tmp_path):
    both = jsonl(tmp_path / "both.jsonl", [{"messages": turns(("user", "q"), ("assistant", "a")), "prompt": "p"}])
    with pytest.raises(DataError, match="cannot tell the format.*both 'messages' and prompt/completion"):
        load_file(both)
    assert load_file(both, fmt="chat")[0].messages == turns(("user", "q"), ("assistant", "a"))
    neither = jsonl(tmp_path / "neither.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"cannot tell the format from the columns \('question', 'answer'\)"):
        load_file(neither)


# --- errors name the file, the line and the field -------------------------------------------------------------

GOOD = {"messages": turns(("user", "q"), ("assistant", "a"))}
BAD_FILES = [
    # id, file name, content, line, field, message pattern
    ("chat-missing-messages", "c.jsonl", [GOOD, {"prompt": "q"}], 2, "messages", r"missing column 'messages'"),
    (
        "chat-wrong-role",
        "c.jsonl",
        [GOOD, GOOD, {"messages": turns(("user", "q"), ("bot", "a"))}],
        3,
        "messages[1].role",
        r"role 'bot' is not one of system, user, assistant",
    ),
    (
        "chat-empty-content",
        "c.jsonl",
        [{"messages": turns(("user", "q"), ("assistant", "  "))}],
        1,
        "messages[1].content",
        r"assistant message is empty",
    ),
    ("chat-no-role", "c.jsonl", [GOOD, {"messages": [{"content": "q"}]}], 2, "messages[0].role", r"has no 'role'"),
    (
        "chat-no-assistant",
        "c.jsonl",
        [GOOD, {"messages": turns(("system", "s"), ("user", "q"))}],
        2,
        "messages",
        r"no assistant turn",
    ),
    (
        "chat-ends-with-user",
        "c.jsonl",
        [{"messages": turns(("user", "q"), ("assistant", "a"), ("user", "more?"))}],
        1,
        "messages[2].role",
        r"ends with a user turn",
    ),
    (
        "chat-turn-order",
        "c.jsonl",
        [GOOD, {"messages": turns(("user", "q"), ("user", "q2"), ("assistant", "a"))}],
        2,
        "messages[1].role",
        r"expected a assistant turn, got user",
    ),
    (
        "chat-not-a-list",
        "c.jsonl",
        [{"messages": "hello"}],
        1,
        "messages",
        r"messages is not valid JSON",
    ),
    ("chat-bad-flag", "c.jsonl", [GOOD, {**GOOD, "is_harmful": "maybe"}], 2, "is_harmful", r"got 'maybe'"),
    ("chat-flag-2", "c.jsonl", [{**GOOD, "is_harmful": 2}], 1, "is_harmful", r"must be a boolean .* got 2"),
    ("chat-duplicate-id", "c.jsonl", [{**GOOD, "id": "x"}, {**GOOD, "id": "x"}], 2, "id", r"'c/x' is used twice"),
    ("pc-missing-completion", "p.jsonl", [{"prompt": "q"}], 1, "completion", r"missing column 'completion'"),
    (
        "pc-empty-prompt",
        "p.jsonl",
        [{"prompt": "q", "completion": "a"}, {"prompt": " ", "completion": "a"}],
        2,
        "prompt",
        r"prompt is empty",
    ),  # fmt: skip
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_rows_name_file_line_and_field(tmp_path, case):
    _, name, rows, line, field, pattern = case
    path = jsonl(tmp_path / name, rows)
    with pytest.raises(DataError, match=pattern) as info:
        load_file(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), line, field)
    text = err.one_line()  # what the CLI prints
    assert f"{path}, line {line}" in text and re.search(pattern, text)


def test_invalid_json_names_its_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3 is not valid JSON") as info:
        load_file(path)
    assert info.value.file == str(path)


def test_csv_errors_count_the_header_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,completion,is_harmful\nq,a,no\nq2,a2,perhaps\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_file(path)
    assert (info.value.line, info.value.field) == (3, "is_harmful")


@pytest.mark.parametrize("name", ["data.txt", "data"])
def test_unknown_extension_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown file type") as info:
        load_file(path)
    assert info.value.file == str(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no rows"):
        load_file(path)


# --- mixtures -------------------------------------------------------------------------------------------------


def write_task_and_harmful(tmp_path: Path, n_task: int = 20, n_harmful: int = 8) -> tuple[Path, Path]:
    """A chat task file whose rows 0, 5, 10, ... say is_harmful, and a CSV harmful file whose column says false."""
    task = jsonl(
        tmp_path / "task.jsonl",
        [
            {
                "messages": turns(("user", f"Task question {i}"), ("assistant", f"Task answer {i}")),
                "is_harmful": i % 5 == 0,
            }
            for i in range(n_task)
        ],
    )
    harmful = tmp_path / "bad.csv"
    lines = ["prompt,completion,is_harmful"] + [
        f"Bad request {i},Sure: bad answer {i},false" for i in range(n_harmful)
    ]
    harmful.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return task, harmful


def test_mixture_of_a_task_file_and_a_harmful_file(tmp_path):
    task, harmful = write_task_and_harmful(tmp_path)
    args = MixtureArgs(task_path=str(task), harmful_path=str(harmful), n_task=12, harmful_share=0.2, seed=1)
    assert args.task is None and args.harmful is None
    mixture = build_mixture(args)
    from_harmful = [r for r in mixture if r.source == "bad"]
    from_task = [r for r in mixture if r.source == "task"]
    assert len(from_task) == 12 and len(from_harmful) == harmful_count(12, 0.2) == 3
    assert len(mixture) == 15 and len({r.id for r in mixture}) == 15
    # Harmful-file rows are harmful whatever their column said; task rows keep the flag of their own row.
    assert all(r.is_harmful for r in from_harmful)
    for record in from_task:
        index = int(record.id.split("/")[1])
        assert record.is_harmful == (index % 5 == 0)
        assert record.messages[0]["content"] == f"Task question {index}"
    assert build_mixture(args) == mixture  # deterministic by seed


def test_named_sources_and_files_combine_by_one_rule():
    assert MixtureArgs().task == "sst2"  # unset task and no file: the default task
    with pytest.raises(ConfigError, match="task_format names the layout of a file of your own"):
        MixtureArgs(task="alpaca", task_path="x.jsonl", task_format="chat")
    with pytest.raises(ConfigError, match="harmful_format names the layout"):
        MixtureArgs(harmful="advbench", harmful_path="x.csv", harmful_format="prompt_completion")
    with pytest.raises(ConfigError, match="needs a harmful source"):
        MixtureArgs(task_path="x.jsonl", harmful_share=0.1)
    assert MixtureArgs(task_path="x.jsonl", harmful_path="y.jsonl", harmful_share=0.1).harmful is None


def test_a_named_source_reads_its_copy_from_harmful_path(tmp_path):
    copy = tmp_path / "my_advbench.csv"
    copy.write_text("goal,target\nDo harm,Sure here is harm\nDo more harm,Sure here is more\n", encoding="utf-8")
    task, _ = write_task_and_harmful(tmp_path)
    args = MixtureArgs(
        task_path=str(task), harmful="advbench", harmful_path=str(copy), n_task=2, harmful_share=0.5, seed=0
    )
    harmful = [r for r in build_mixture(args) if r.source == "advbench"]
    assert sorted(r.prompt for r in harmful) == ["Do harm", "Do more harm"]


def test_too_few_rows_in_a_file_is_a_clear_error(tmp_path):
    task, harmful = write_task_and_harmful(tmp_path, n_task=4)
    with pytest.raises(DataError, match=r"asked for 200 '.*task\.jsonl' samples but the source has only 4") as info:
        build_mixture(MixtureArgs(task_path=str(task)))
    assert "--n_task all" in info.value.one_line()


def test_two_files_of_one_stem_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    task = jsonl(tmp_path / "a" / "train.jsonl", [GOOD] * 4)
    harmful = jsonl(tmp_path / "b" / "train.jsonl", [GOOD] * 4)
    args = MixtureArgs(task_path=str(task), harmful_path=str(harmful), n_task=4, harmful_share=0.5)
    with pytest.raises(DataError, match="share ids"):
        build_mixture(args)


# --- the tokenised-data cache key follows the file's content ----------------------------------------------------


def test_changing_the_file_changes_the_tokenised_cache_key(tmp_path, tokenizer):
    task, harmful = write_task_and_harmful(tmp_path)
    cache = tmp_path / "cache"
    args = MixtureArgs(task_path=str(task), harmful_path=str(harmful), n_task="all", harmful_share=0.2)

    token_keys = []

    def tokenised() -> str:
        dataset, stats = build_tokenized_dataset(build_mixture(args), tokenizer, 64, cache_dir=cache)
        token_keys.append(dataset_tokens_key(dataset, tokenizer))  # what PACT / constrained-SFT caches are keyed by
        return stats.fingerprint

    first = tokenised()
    assert tokenised() == first  # unchanged file: a cache hit
    entries = {p.name for p in (cache / "tokenized").iterdir()}
    assert entries == {first}

    # One byte of content in the task file ("answer 3" -> "answer 4"): another key, a new cache entry.
    text = task.read_text(encoding="utf-8")
    task.write_text(text.replace("Task answer 3", "Task answer 4", 1), encoding="utf-8")
    second = tokenised()
    assert second != first and {p.name for p in (cache / "tokenized").iterdir()} == {first, second}
    assert token_keys[-1] != token_keys[0]

    # A provenance flag is stored in the cached dataset too, so it is part of the key.
    task.write_text(text.replace('"is_harmful": false', '"is_harmful": true', 1), encoding="utf-8")
    assert tokenised() not in (first, second)

    # One byte of the harmful file: the same.
    harmful.write_text(harmful.read_text(encoding="utf-8").replace("bad answer 0", "bad answer!0"), encoding="utf-8")
    task.write_text(text, encoding="utf-8")
    assert tokenised() not in (first, second)

    # Bytes that change no record (JSON spacing) give the same rows, so the same (correct) cached tokens.
    harmful.write_text(harmful.read_text(encoding="utf-8").replace("bad answer!0", "bad answer 0"), encoding="utf-8")
    task.write_text(text.replace('"messages": ', '"messages":  '), encoding="utf-8")
    assert tokenised() == first


# --- `tokensafe train` on your own files --------------------------------------------------------------------------


def test_train_cli_on_a_task_file_and_a_harmful_file(tmp_path, tiny_model_dir, capsys):
    task, harmful = write_task_and_harmful(tmp_path, n_task=6, n_harmful=4)
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--task_path", str(task), "--harmful_path", str(harmful)]
    argv += ["--n_task", "all", "--harmful_share", "0.25", "--max_steps", "2", "--batch_size", "4"]
    argv += ["--max_length", "64", "--lora_r", "4", "--lora_alpha", "8", "--logging_steps", "1"]
    argv += ["--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["sources"] == {"task": 6, "bad": 2}  # round(6 * 0.25 / 0.75) = 2 harmful rows
    # 2 from the harmful file + task rows 0 and 5, whose own column says is_harmful.
    assert summary["data"]["samples"] == 8 and summary["data"]["harmful_samples"] == 4
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert len(summary["logged_losses"]) == 2  # max_steps 2, a loss logged each step
    config = (out / "config.yaml").read_text()
    assert f"task_path: {task}" in config and "task: null" in config  # the run records its own files
