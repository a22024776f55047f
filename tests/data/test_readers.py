"""read_rows / read_hub: every supported format, and every malformed input naming its file, row and field."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokensafe.data.errors import DataError
from tokensafe.data.readers import read_hub, read_rows


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may reach the network, whatever the developer's environment says.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- formats ------------------------------------------------------------------------------------------------


def test_csv_with_header_and_multiline_quoted_field(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", 'goal,target\n"line one\nline two","Sure, here"\nb,c\n')
    assert read_rows(path) == [{"goal": "line one\nline two", "target": "Sure, here"}, {"goal": "b", "target": "c"}]


def test_csv_utf8_bom_does_not_leak_into_first_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufeffgoal,target\nx,y\n".encode())
    assert read_rows(path) == [{"goal": "x", "target": "y"}]


def test_headerless_csv_with_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "test.csv", '"3","Title","Desc, with comma"\n"4","T2","D2"\n')
    rows = read_rows(path, header=False, column_names=["class", "title", "description"])
    assert rows == [
        {"class": "3", "title": "Title", "description": "Desc, with comma"},
        {"class": "4", "title": "T2", "description": "D2"},
    ]


def test_column_names_replace_a_header(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "A,B\n1,2\n")
    assert read_rows(path, column_names=["a", "b"]) == [{"a": "1", "b": "2"}]


def test_headerless_without_column_names_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "1,2\n")
    with pytest.raises(DataError, match="headerless file needs column_names") as info:
        read_rows(path, header=False)
    assert info.value.file == str(path)


def test_tsv_is_unquoted_like_glue(tmp_path: Path) -> None:
    # A GLUE sentence may start with an unmatched quote; quoting must not swallow the following rows.
    path = write(tmp_path / "train.tsv", 'sentence\tlabel\n" a quote opens \t1\nplain \t0\n')
    assert read_rows(path) == [{"sentence": '" a quote opens ', "label": "1"}, {"sentence": "plain ", "label": "0"}]


def test_json_list_of_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", json.dumps([{"instruction": "i", "output": "o", "n": 3}]))
    assert read_rows(path) == [{"instruction": "i", "output": "o", "n": 3}]


def test_json_dict_of_parallel_lists_drops_empty_lists(tmp_path: Path) -> None:
    # The safetyinstr_eval layout: {"instructions": [...], "inputs": []}.
    path = write(tmp_path / "I-Alpaca.json", json.dumps({"instructions": ["a", "b"], "tags": [1, 2], "inputs": []}))
    assert read_rows(path) == [{"instructions": "a", "tags": 1}, {"instructions": "b", "tags": 2}]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2}\n')
    assert read_rows(path) == [{"a": 1}, {"a": 2}]


def test_jsonl_skips_blank_lines_and_keeps_unicode_line_separators(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"q": "x\u2028y"}\n\n{"q": "z"}\n')
    assert read_rows(path) == [{"q": "x\u2028y"}, {"q": "z"}]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"sentence": ["good", "bad"], "label": [1, 0]}), path)
    assert read_rows(path) == [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}]


def test_fmt_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", "a\tb\n1\t2\n")
    assert read_rows(path, fmt="tsv") == [{"a": "1", "b": "2"}]
    assert read_rows(path, fmt=".TSV") == [{"a": "1", "b": "2"}]


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(info.value) == f"file {path}: file not found"


def test_unknown_suffix_and_unknown_fmt(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xml", "<a/>")
    with pytest.raises(DataError, match=r"unknown format: cannot tell it from the suffix '\.xml'") as info:
        read_rows(path)
    assert info.value.file == str(path)
    with pytest.raises(DataError, match="unknown format 'xlsx'"):
        read_rows(path, fmt="xlsx")


def test_non_utf8_csv_names_line_and_row_after_a_multiline_field(tmp_path: Path) -> None:
    # Row 0 spans lines 2-3; the latin-1 byte sits in row 1 on line 4.
    path = write(tmp_path / "latin.csv", b'goal,target\n"a\nb",c\nd,caf\xe9\n')
    with pytest.raises(DataError) as info:
        read_rows(path)
    err = info.value
    assert (err.file, err.row, err.field) == (str(path), 1, None)
    assert str(err).startswith(f"file {path}, row 1: not valid UTF-8 at line 4 (byte offset ")
    assert "e9" in str(err)


def test_non_utf8_headerless_csv_row(tmp_path: Path) -> None:
    path = write(tmp_path / "test.csv", b'"1","a","b"\n"2","\xff","c"\n')
    with pytest.raises(DataError, match="line 2") as info:
        read_rows(path, header=False, column_names=["class", "title", "description"])
    assert info.value.row == 1


def test_non_utf8_jsonl_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b'{"a": "ok"}\n{"a": "ok"}\n{"a": "\x80"}\n')
    with pytest.raises(DataError, match="not valid UTF-8 at line 3") as info:
        read_rows(path)
    assert (info.value.file, info.value.row) == (str(path), 2)


def test_non_utf8_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", b'[\n{"a": "ok"},\n{"a": "\xc3("}\n]')
    with pytest.raises(DataError, match="not valid UTF-8 at line 3") as info:
        read_rows(path)
    assert info.value.file == str(path)


def test_jsonl_line_that_is_not_json(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2\n')
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert (info.value.file, info.value.row) == (str(path), 1)
    assert str(info.value).startswith(f"file {path}, row 1: line 2 is not valid JSON: ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"a": 1}\n["a", 2]\n', "row 1: line 2 is a JSON array, expected an object"),
        ("b.json", '[{"a": 1}, {"a": 2}, "oops"]', "row 2: list element is a JSON string, expected an object"),
        ("c.csv", "goal,target\na,b\nc\n", "row 1: has 1 fields but there are 2 columns (goal, target)"),
    ],
)
def test_row_that_is_not_an_object_or_is_ragged(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(info.value) == f"file {path}, {message}"


def test_invalid_json_document(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '[{"a": 1},\n{"a": }]')
    with pytest.raises(DataError, match="not valid JSON at line 2") as info:
        read_rows(path)
    assert info.value.file == str(path)


def test_json_scalar_and_bad_parallel_lists(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", "3")
    with pytest.raises(DataError, match="top level is a JSON number"):
        read_rows(path)
    path = write(tmp_path / "b.json", json.dumps({"instructions": ["a", "b"], "tags": ["x"]}))
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert info.value.field == "tags"
    assert "'tags' has 1 items, 'instructions' has 2" in str(info.value)
    path = write(tmp_path / "c.json", json.dumps({"judge": "a prompt"}))
    with pytest.raises(DataError, match="'judge' is a JSON string") as info:
        read_rows(path)
    assert info.value.field == "judge"


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet") as info:
        read_rows(path)
    assert info.value.file == str(path)


# --- hub ----------------------------------------------------------------------------------------------------


def test_read_hub_offline_says_to_pass_a_data_dir() -> None:
    with pytest.raises(DataError) as info:
        read_hub("stanfordnlp/sst2", split="validation")
    message = str(info.value)
    assert "stanfordnlp/sst2 split 'validation'" in message
    assert "hub is unreachable" in message
    # The advice is the hint (a caller with better advice replaces it); the CLI's line shows both.
    assert "--data-dir" in info.value.hint and "TOKENSAFE_DATA_DIR" in info.value.hint
    assert info.value.one_line().endswith(info.value.hint)


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> None:
    """Replace the datasets package so no test imports it (slow) or touches the network."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_read_hub_connection_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(
        DataError, match=r"openai/gsm8k \(config main\) split 'test': the Hugging Face hub is unreachable"
    ) as info:
        read_hub("openai/gsm8k", split="test", config="main")
    assert "--data-dir or TOKENSAFE_DATA_DIR" in info.value.one_line()


def test_read_hub_missing_dataset_is_not_called_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataError, match=r"nobody/nothing split 'train': not found on the Hugging Face hub"):
        read_hub("nobody/nothing", split="train")


def test_read_hub_returns_row_dicts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(dataset_id, config, split):
        calls.append((dataset_id, config, split))
        return [{"question": "q", "answer": "#### 1"}]

    fake_datasets(monkeypatch, load_dataset)
    assert read_hub("openai/gsm8k", split="test", config="main") == [{"question": "q", "answer": "#### 1"}]
    assert calls == [("openai/gsm8k", "main", "test")]
