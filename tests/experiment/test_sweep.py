"""The harmful-share view: which tables form a sweep, and that its tables and figure carry the per-setting numbers."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

from tokensafe.atomic import write_json
from tokensafe.eval.metrics import wilson_interval
from tokensafe.experiment.report import build_tables, write_reports
from tokensafe.experiment.sweep import find_sweep

FIXTURE = Path(__file__).parent / "fixtures" / "results.json"
SHARES = (0.2, 0.0, 0.05, 0.1)  # not in order: the view sorts them
# JBB harmful ASR per (row, share): made up, k out of 100.
ASR = {"SFT": (80, 40, 55, 68), "Oracle": (38, 40, 39, 41), "TOSS": (60, 41, 45, 52), "PACT": (30, 12, 15, 20)}


def sweep_results() -> dict[str, Any]:
    """The fixture's GSM8K setting copied to four harmful shares, each row's JBB ASR set to ``ASR``."""
    base = json.loads(FIXTURE.read_text(encoding="utf-8"))
    source = [r for r in base["runs"] if (r.get("setting") or {}).get("name") == "gsm8k_beavertails_p10"]
    runs = [r for r in base["runs"] if r["role"] == "initial"]
    for i, share in enumerate(SHARES):
        for run in copy.deepcopy(source):
            if run["row"] not in ASR or run.get("seed") not in (0, None):
                continue
            run["setting"] = {**run["setting"], "name": f"p{share:g}", "harmful_share": share}
            k = ASR[run["row"]][i]
            low, high = wilson_interval(k, 100)
            run["metrics"]["jbb_harmful"] = {"k": k, "n": 100, "value": k / 100, "low": low, "high": high}
            runs.append(run)
    return {**base, "runs": runs}


def test_settings_that_differ_only_in_harmful_share_form_a_sweep_in_share_order() -> None:
    sweep = find_sweep(build_tables(sweep_results()))
    assert sweep is not None and sweep.shares == [0.0, 0.05, 0.1, 0.2]
    assert [t.setting for t in sweep.tables] == ["p0", "p0.05", "p0.1", "p0.2"]
    assert sweep.labels == ["Initial", "SFT", "Oracle", "TOSS", "PACT"]
    assert sweep.primary is not None and sweep.primary.key == "jbb_harmful"
    pact = [sweep.cell("PACT", t, sweep.primary).value for t in sweep.tables]
    assert pact == [0.12, 0.15, 0.20, 0.30]


def test_no_sweep_for_one_setting_or_settings_that_differ_in_more_than_the_share() -> None:
    base = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert find_sweep(build_tables(base)) is None  # GSM8K and SST-2: other task, rows, harmful source
    one = {**base, "runs": [r for r in base["runs"] if (r.get("setting") or {}).get("task") != "sst2"]}
    assert find_sweep(build_tables(one)) is None
    results = sweep_results()
    for run in results["runs"]:
        if (run.get("setting") or {}).get("name") == "p0.2":
            run["setting"]["n_task"] = 500
    assert find_sweep(build_tables(results)) is None
    results = sweep_results()
    for run in results["runs"]:
        if (run.get("setting") or {}).get("name") == "p0.2":
            run["setting"]["harmful_share"] = 0.1  # two tables at one share
    assert find_sweep(build_tables(results)) is None


def test_reports_carry_the_sweep_tables_and_figure(tmp_path: Path) -> None:
    write_json(tmp_path / "results.json", sweep_results())
    paths = write_reports(tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    section = md[md.index("## By harmful share") :]
    asr = section[section.index("### JBB ASR") :].split("\n\n")[1].splitlines()
    assert asr[0] == "| method | 0% | 5% | 10% | 20% |"
    pact = next(line for line in asr if line.startswith("| PACT |"))
    low, high = wilson_interval(12, 100)
    assert pact.split(" | ")[1] == f"12.0% [{100 * low:.1f}, {100 * high:.1f}]"
    assert [c.split(" [")[0] for c in pact.strip("| ").split(" | ")[1:]] == ["12.0%", "15.0%", "20.0%", "30.0%"]
    assert "![metrics against harmful share](sweep.png)" in md
    png = paths["sweep_png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1500 and 400 < height < 700  # one panel for ASR, one per utility suite (accuracy, loss)
    page = paths["html"].read_text(encoding="utf-8")
    assert "<h2>By harmful share</h2>" in page and page.count("data:image/png;base64,") == 2


def test_an_experiment_without_a_sweep_writes_no_sweep_figure(tmp_path: Path) -> None:
    write_json(tmp_path / "results.json", json.loads(FIXTURE.read_text(encoding="utf-8")))
    paths = write_reports(tmp_path)
    assert "sweep_png" not in paths and not (tmp_path / "sweep.png").exists()
    assert "By harmful share" not in paths["markdown"].read_text(encoding="utf-8")
