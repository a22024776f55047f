"""Comparing two recordings of an experiment's rows: values and per-prompt verdict differences, paired by id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensafe.atomic import write_json, write_jsonl
from tokensafe.experiment.compare import compare, load_recording, main

IDS = ["p0", "p1", "p2", "p3", "p4"]


def row(run: str, flags: str, *, ids: str = "k1", start: str = "fp-a", loss: float = 1.2) -> dict:
    value = flags.count("1") / sum(f != "x" for f in flags)
    return {
        "id": run,
        "spec": {"start": start},
        "metrics": {"jbb_harmful": {"value": value}, "gold_loss": {"value": loss}},
        "flags": {"jbb_harmful": {"kind": "safety", "ids": ids, "flags": flags}},
    }


def recording(tmp_path: Path, name: str, rows: list[dict], prompt_ids: dict | None = None) -> Path:
    write_jsonl(tmp_path / name / "runs.jsonl", rows)
    if prompt_ids is not None:
        write_json(tmp_path / name / "prompt_ids.json", prompt_ids)
    return tmp_path / name


def test_same_prompts_compare_position_by_position_and_unreadable_verdicts_are_left_out(tmp_path: Path) -> None:
    old = recording(tmp_path, "old", [row("s/sft/seed0", "11010"), row("s/toss/seed0", "10000")])
    new = recording(tmp_path, "new", [row("s/sft/seed0", "110x1", start="fp-b"), row("s/pact/seed0", "00000")])
    comparisons, only_old, only_new = compare(load_recording(old), load_recording(new))
    assert only_old == ["s/toss/seed0"] and only_new == ["s/pact/seed0"]
    (sft,) = comparisons
    assert (sft.old_start, sft.new_start) == ("fp-a", "fp-b")
    jbb, gold = sft.suites
    assert (jbb.old, jbb.new) == (0.6, 0.75)
    assert (jbb.compared, jbb.differing) == (4, 1)  # prompt 3 is unreadable on the new side; prompt 4 differs
    assert (gold.old, gold.new, gold.compared, gold.differing) == (1.2, 1.2, None, None)


def test_reordered_prompts_are_paired_by_id_and_unpairable_ones_are_not_compared(tmp_path: Path) -> None:
    reordered = ["p4", "p3", "p2", "p1", "p0", "p9"]
    ids = {"k1": IDS, "k2": reordered}
    old = recording(tmp_path, "old", [row("r", "11000")], ids)
    # The same verdicts in reverse order, plus a prompt the old recording did not have: nothing differs.
    new = recording(tmp_path, "new", [row("r", "000111", ids="k2")])
    (comparison,), _, _ = compare(load_recording(old), load_recording(new))
    assert (comparison.suites[0].compared, comparison.suites[0].differing) == (5, 0)  # p9 has no old verdict
    assert "paired by id on 5 shared prompts" in comparison.suites[0].note
    lost = recording(tmp_path, "lost", [row("r", "000111", ids="k3")])
    (comparison,), _, _ = compare(load_recording(old), load_recording(lost))
    assert comparison.suites[0].differing is None and "no id lists" in comparison.suites[0].note


def test_a_broken_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(row("r", "10")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^not JSON \(.*\) \(.*runs.jsonl, line 2\)$"):
        load_recording(path)
    with pytest.raises(FileNotFoundError, match="give a results directory"):
        load_recording(tmp_path / "missing")


def test_the_command_prints_a_table_and_the_total(tmp_path: Path, capsys) -> None:
    old = recording(tmp_path, "old", [row("s/sft/seed0", "11010")])
    new = recording(tmp_path, "new", [row("s/sft/seed0", "11011")])
    main([str(old), str(new)])
    out = capsys.readouterr().out
    assert "| s/sft/seed0 | fp-a | jbb_harmful | 60.0% | 80.0% | 1 of 5 |" in out
    assert "|  |  | gold_loss | 1.2000 | 1.2000 | n/a |" in out
    assert "1 runs in both; verdicts differing: 1 of 5 paired prompt verdicts." in out


def test_the_command_reports_a_broken_recording_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs.jsonl").write_text("{oops\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "error: not JSON (" in err and "runs.jsonl, line 1)" in err
