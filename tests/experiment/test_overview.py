"""The cross-experiment overview (tokensafe/experiment/overview.py) from the made-up results.json fixture.

Expected cells are worked out by hand from fixtures/results.json (see tests/experiment/test_report.py): ASR is the
mean over a row's seeds; verdicts follow the stated criteria of tokensafe/experiment/verdict.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tokensafe.experiment.overview import main, overview_markdown, read_columns

FIXTURE = Path(__file__).parent / "fixtures" / "results.json"


def results_dir(tmp_path: Path, name: str, results: dict[str, Any]) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return directory


def matrix(text: str) -> dict[str, list[str]]:
    """Row label -> its cells, from the markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_each_row_shows_its_asr_over_seeds_and_its_verdict_in_every_setting(tmp_path: Path) -> None:
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    source = results_dir(tmp_path, "two", fixture)
    text = overview_markdown(read_columns([source]), [str(source)])
    rows = matrix(text)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == (
        "| method | fixture_two_settings: gsm8k_beavertails_p10 | fixture_two_settings: sst2_advbench_p10 |"
    )
    assert rows["Initial"] == ["5%", "5%"]  # the start, evaluated once, heads both settings
    assert rows["SFT"] == ["83%²", "92%"]  # (84 + 82) / 2 over two seeds
    assert rows["Oracle"] == ["63% reference", "48% reference"]
    # PACT: (25 + 27) / 2; p < 0.05 in both seeds; XSTest (16.4 + 17.2) / 2 = 16.8 vs Initial 4.8 (+12 points);
    # gold loss 1.1775 vs SFT's 1.097 (+7.3%). On SST-2 it has no McNemar test, so it is not judged safer.
    assert rows["PACT"] == ["26%² safer · over-refuses, loses task", "20% not safer"]
    # TOSS smooth (seed 0 only): 70 vs SFT seed 0's 84 = -14 points >= 10, p 0.0013, every promise kept.
    assert rows["TOSS smooth"] == ["70% **wins**", "—"]
    assert rows["Sample-level random"] == ["83% not safer", "—"]  # p = 1.0
    # TOSS on GSM8K: seed 1's p = 0.1185 fails "significant in every seed"; on SST-2: -37 points, p 1.1e-9.
    assert rows["TOSS"][0].endswith(" not safer") and rows["TOSS"][0].startswith("7")
    assert rows["TOSS"][1] == "55% **wins**"
    assert "Starting model fingerprint(s): `62a6ceb35c779ee7`." in text
    wins = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(wins) == 2 and "Wins on JBB ASR: TOSS smooth" in wins[0] and "Wins on JBB ASR: TOSS" in wins[1]


def test_one_defence_with_another_label_in_another_experiment_is_one_row(tmp_path: Path) -> None:
    """Rows are matched by their name in the run matrix (``toss``), not their label, which may carry the
    experiment's settings; the labels are joined."""
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    other = copy.deepcopy(fixture)
    other["experiment"] = "other"
    other["starting_model"]["fingerprint"] = "0123456789abcdef"
    other["runs"] = [run for run in other["runs"] if run["id"] == "initial" or run["id"].startswith("sst2")]
    for run in other["runs"]:
        if run.get("row") == "TOSS":
            run["row"] = "TOSS (raw scores)"
    first, second = results_dir(tmp_path, "first", fixture), results_dir(tmp_path, "second", other)
    columns = read_columns([first, second])
    assert [c.title for c in columns] == [
        "fixture_two_settings: gsm8k_beavertails_p10",
        "fixture_two_settings: sst2_advbench_p10",
        "other: sst2_advbench_p10",
    ]
    rows = matrix(overview_markdown(columns, [str(first), str(second)]))
    assert "TOSS (raw scores)" not in rows and rows["TOSS / TOSS (raw scores)"][1:] == ["55% **wins**", "55% **wins**"]
    assert rows["TOSS smooth"] == ["70% **wins**", "—", "—"]


def test_the_command_writes_the_page(tmp_path: Path) -> None:
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    source = results_dir(tmp_path, "two", fixture)
    out = tmp_path / "overview.md"
    main([str(source), "--out", str(out)])
    text = out.read_text(encoding="utf-8")
    assert text == overview_markdown(read_columns([source]), [str(source)])
    assert f"python -m tokensafe.experiment.overview {source} --out <this file>" in text
