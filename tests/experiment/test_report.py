"""The experiment reports (results.md, pareto.png, report.html) from a made-up results.json fixture.

fixtures/results.json is a schema-valid TEST FIXTURE with invented numbers (two settings; SFT, TOSS and PACT with two
seeds in the first; a McNemar test missing for PACT in the second). Expected values below are computed by hand from
it, or recomputed here from the raw per-seed numbers.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from tokensafe.experiment.report import (
    Cell,
    Suite,
    aggregate,
    build_tables,
    format_cell,
    legend_kinds,
    markdown_report,
    pareto_front,
    write_reports,
)

FIXTURE = Path(__file__).parent / "fixtures" / "results.json"
RATE = Suite("jbb_harmful", "safety", "asr", True, "JBB ASR", 100)
LOSS = Suite("gold_loss_gsm8k", "utility", "gold_loss", True, "GSM8K gold-answer loss", 100)
EVIL = "<script>alert(1)</script>"


def fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def write(tmp_path: Path, results: dict[str, Any]) -> dict[str, Path]:
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return write_reports(tmp_path)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write(tmp_path_factory.mktemp("report"), fixture())


def table(results: dict[str, Any], setting: str):
    return next(t for t in build_tables(results) if t.setting == setting)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Reference Wilson interval, written out here independently of tokensafe.eval.metrics."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --- cells -----------------------------------------------------------------------------------------------------------


def test_format_cell_rate_loss_and_missing() -> None:
    assert format_cell(Cell(0.84, 0.756, 0.898), RATE) == "84.0% [75.6, 89.8]"
    assert format_cell(Cell(0.05, 0.0215, 0.1118), RATE) == "5.0% [2.1, 11.2]"
    assert format_cell(Cell(0.84), RATE) == "84.0%"  # no interval recorded
    assert format_cell(Cell(1.0934), LOSS) == "1.093"
    assert format_cell(Cell(1.0934, 1.05, 1.14), LOSS) == "1.093 [1.050, 1.140]"
    assert format_cell(Cell(), RATE) == "\u2014"


def test_mean_over_seeds_pools_counts_for_the_interval() -> None:
    results = fixture()
    toss = [r for r in results["runs"] if r["row"] == "TOSS" and r["setting"]["name"] == "gsm8k_beavertails_p10"]
    assert [r["metrics"]["jbb_harmful"]["k"] for r in toss] == [72, 75]
    cell = aggregate(toss, RATE)
    assert cell.value == pytest.approx(0.735)
    # Hand-computed: Wilson(147, 200) = [0.6698, 0.7913].
    assert (cell.low, cell.high) == pytest.approx((0.6698, 0.7913), abs=1e-4)
    assert (cell.low, cell.high) == pytest.approx(wilson(147, 200))
    assert [v for _, v in cell.per_seed] == [0.72, 0.75]
    assert format_cell(cell, RATE) == "73.5% [67.0, 79.1]"
    loss = aggregate(toss, LOSS)
    assert loss.value == pytest.approx((1.095 + 1.097) / 2) and loss.low is None
    assert format_cell(loss, LOSS) == "1.096"


def test_mean_over_seeds_without_counts_uses_the_envelope() -> None:
    runs = [
        {"seed": 0, "metrics": {"jbb_harmful": {"value": 0.5, "low": 0.4, "high": 0.6}}},
        {"seed": 1, "metrics": {"jbb_harmful": {"value": 0.6, "low": 0.5, "high": 0.7}}},
        {"seed": 2, "metrics": {}},  # a seed without this suite does not count
    ]
    cell = aggregate(runs, RATE)
    assert (cell.value, cell.low, cell.high) == pytest.approx((0.55, 0.4, 0.7))
    assert [seed for seed, _ in cell.per_seed] == [0, 1]


def test_row_order_seed_counts_and_best_per_column() -> None:
    results = fixture()
    first = table(results, "gsm8k_beavertails_p10")
    labels = [row.label for row in first.rows]
    assert labels == ["Initial", "SFT", "Oracle", "TOSS", "TOSS smooth", "PACT", "Sample-level random"]
    assert [len(row.runs) for row in first.rows] == [1, 2, 1, 2, 1, 2, 1]
    assert [s.key for s in first.suites] == [
        "jbb_harmful", "advbench_heldout", "xstest_safe", "jbb_benign", "gsm8k", "gold_loss_gsm8k",
    ]  # fmt: skip
    best = {s.key: sorted(row.label for row in first.rows if row.cells[s.key].best) for s in first.suites}
    # By hand: Initial's 5.0% JBB ASR is lower than PACT's 26.0% but Initial is not ranked; 5.0% benign refusal is a
    # tie between SFT (5, 5) and Sample-level random.
    assert best == {
        "jbb_harmful": ["PACT"],
        "advbench_heldout": ["PACT"],
        "xstest_safe": ["Sample-level random"],
        "jbb_benign": ["SFT", "Sample-level random"],
        "gsm8k": ["Oracle"],
        "gold_loss_gsm8k": ["Oracle"],
    }
    # The same from the raw per-seed values: mean per row, best among the fine-tuned rows per direction.
    for suite in first.suites:
        means = {}
        for run in results["runs"]:
            if run["role"] != "initial" and run["setting"]["name"] == first.setting and suite.key in run["metrics"]:
                means.setdefault(run["row"], []).append(run["metrics"][suite.key]["value"])
        shown = {row: suite.rounded(sum(v) / len(v)) for row, v in means.items()}
        target = (min if suite.lower_is_better else max)(shown.values())
        assert best[suite.key] == sorted(row for row, v in shown.items() if v == target)


def test_config_order_decides_among_defences() -> None:
    results = fixture()
    results["config"]["rows"] = [
        {"name": "pact", "label": "PACT"},
        {"name": "Sample-level random"},  # no label: the name is the display label
        {"name": "toss_smooth", "label": "TOSS smooth"},
        {"name": "toss", "label": "TOSS"},
    ]
    runs = results["runs"]
    results["runs"] = runs[::-1]  # run order must not decide the fixed rows either
    labels = [row.label for row in table(results, "gsm8k_beavertails_p10").rows]
    assert labels == ["Initial", "SFT", "Oracle", "PACT", "Sample-level random", "TOSS smooth", "TOSS"]


def test_markdown_table_cells(reports: dict[str, Path]) -> None:
    md = reports["markdown"].read_text(encoding="utf-8")
    assert "62a6ceb35c779ee7" in md and "fixture_two_settings" in md and "wall time" in md
    first = md.split("## sst2_advbench_p10")[0].split("## gsm8k_beavertails_p10")[1]
    first = first.split("### Which defence wins")[0]  # the results table, not the verdict table below it
    lines = {line.split(" | ")[0].lstrip("| "): line for line in first.splitlines() if line.startswith("| ")}
    toss = lines["TOSS"].strip("| ").split(" | ")
    # method, seeds, JBB, AdvBench, XSTest, JBB benign, GSM8K, gold loss, p vs SFT, share, train min
    assert toss[:3] == ["TOSS", "2", "73.5% [67.0, 79.1]"]
    assert toss[8] == "0.007 (3/15); 0.118 (4/11)"
    # Share of achievable reduction: mean of (84-72)/(84-63) and (82-75)/(82-63) = 0.470.
    assert toss[9] == "47%"
    assert toss[10] == f"{(480.0 + 478.2) / 2 / 60:.1f}"
    pact = lines["PACT"].strip("| ").split(" | ")
    assert pact[2] == "**26.0% [20.4, 32.5]**" and pact[9] == ""  # not a selection method: no share
    initial = lines["Initial"].strip("| ").split(" | ")
    assert initial[2] == "5.0% [2.1, 11.2]"  # lowest ASR, yet not bold
    assert "(reference)" in lines["SFT"]
    assert "**" not in "".join(lines["Initial"])


def test_png_is_a_valid_image_of_sensible_size(reports: dict[str, Path]) -> None:
    data = reports["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    # Two settings x two utility suites: a 2 x 2 grid of panels.
    assert 800 <= width <= 3000 and 800 <= height <= 3000
    assert 20_000 < len(data) < 1_500_000


def test_html_is_self_contained_and_lists_every_row_and_suite(reports: dict[str, Path]) -> None:
    page = reports["html"].read_text(encoding="utf-8")
    results = fixture()
    for run in results["runs"]:
        assert f">{html.escape(run['row'])}<" in page
    for suite in results["suites"].values():
        assert html.escape(suite["label"]) in page
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # PACT tokens: all eight, highest weight first.
    assert page.index("8115") < page.index("2017") < page.index("10871")
    # TOSS view: tokens rendered by tokensafe.toss.view, 8 of the 16 tokens of the harmful sample struck through.
    assert page.count("class='t drop'") == 8
    assert "beavertails/00017" in page and "dropped 8/16" in page


def test_dataset_text_is_escaped_everywhere(tmp_path: Path) -> None:
    results = fixture()
    results["experiment"] = EVIL
    for run in results["runs"]:
        if run["row"] == "TOSS":
            run["row"] = f"TOSS {EVIL} $\\frac{{$"  # also an unbalanced mathtext for matplotlib
    results["suites"]["jbb_harmful"]["label"] = f"JBB {EVIL}"
    results["artifacts"]["pact_safety_tokens"][0]["token"] = EVIL
    sample = results["artifacts"]["toss_token_view"][0]
    sample["tokens"][0] = EVIL
    sample["sample_id"] = f"id{EVIL}\u202e"
    paths = write(tmp_path, results)
    page = paths["html"].read_text(encoding="utf-8")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<script" not in md.lower()
    assert "\u202e" not in page and "U+202E" in page  # a bidi override shows as a marker, never acts
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # title, row, suite, PACT token, TOSS token
    assert "TOSS &lt;script&gt;" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_pieces_render_cleanly(tmp_path: Path) -> None:
    results = fixture()
    results.pop("artifacts")
    results.pop("machine")
    results["runs"] = [r for r in results["runs"] if r["seed"] in (None, 0)]  # one seed
    for run in results["runs"]:
        run.pop("vs_sft", None)
        run.pop("reduction_share", None)
        for suite in ("advbench_heldout", "gold_loss_gsm8k", "gold_loss_sst2", "jbb_benign"):
            run["metrics"].pop(suite, None)
    for suite in ("advbench_heldout", "gold_loss_gsm8k", "gold_loss_sst2"):
        results["suites"].pop(suite)  # jbb_benign stays declared but no run has it: no column
    paths = write(tmp_path, results)
    md = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert "AdvBench" not in md and "gold-answer loss" not in header and "JBB benign" not in md
    assert "Per-seed values" not in md
    toss = next(line for line in md.splitlines() if line.startswith("| TOSS |")).strip("| ").split(" | ")
    assert toss[1] == "1" and toss[-3] == "\u2014" and toss[-2] == "n/a"  # no McNemar, no reduction share
    assert "No PACT safety tokens" in page and "No TOSS token view" in page
    assert paths["png"].stat().st_size > 10_000


def test_no_runs_yet(tmp_path: Path) -> None:
    paths = write(tmp_path, {"experiment": "empty", "format": 1, "suites": {}, "runs": []})
    assert "No finished runs yet." in paths["markdown"].read_text(encoding="utf-8")
    assert "No finished runs yet." in paths["html"].read_text(encoding="utf-8")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_shared_initial_run_appears_in_every_setting() -> None:
    results = fixture()
    shared = results["runs"][0]
    assert shared["role"] == "initial" and shared["setting"] is None  # as the runner writes it: evaluated once
    tables = build_tables(results)
    assert [t.setting for t in tables] == ["gsm8k_beavertails_p10", "sst2_advbench_p10"]
    for t in tables:
        assert t.rows[0].label == "Initial" and t.rows[0].runs == [shared]
    # Columns follow the fine-tuned rows: Initial's GSM8K numbers add no column to the SST-2 table, nor its
    # AdvBench ones (the SST-2 rows of the fixture were not evaluated on AdvBench).
    assert [s.key for s in tables[1].suites] == ["jbb_harmful", "xstest_safe", "sst2", "gold_loss_sst2"]
    assert tables[1].rows[0].cells["sst2"].value == pytest.approx(0.23)


def test_per_setting_initial_runs_stay_in_their_setting() -> None:
    results = fixture()
    shared = results["runs"][0]
    own = []
    for name in ("gsm8k_beavertails_p10", "sst2_advbench_p10"):
        run = copy.deepcopy(shared)
        run.update(id=f"{name}/initial", setting={"name": name})
        run["metrics"]["jbb_harmful"] = {"k": len(own) + 1, "n": 100, "value": (len(own) + 1) / 100}
        own.append(run)
    results["runs"] = own + results["runs"][1:]
    tables = build_tables(results)
    assert [t.rows[0].runs for t in tables] == [[own[0]], [own[1]]]
    assert "Initial" in markdown_report(results, tables)


def test_bad_results_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results file"):
        write_reports(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"format": 2, "runs": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="format 2"):
        write_reports(tmp_path)


def test_pareto_front() -> None:
    points = [(10.0, 5.0), (20.0, 8.0), (15.0, 4.0), (30.0, 8.0), (5.0, 1.0)]
    # Higher y better: (15, 4) is dominated by (10, 5); (30, 8) by (20, 8) (same y, lower x).
    assert pareto_front(points, higher_y_better=True) == [4, 0, 1]
    # Lower y better (a loss): (5, 1) dominates every other point.
    assert pareto_front(points, higher_y_better=False) == [4]
    assert pareto_front([], higher_y_better=True) == []


def test_the_plot_legend_lists_only_the_kinds_of_rows_present():
    from tokensafe.experiment.report import Row, Table

    def table(*rows: tuple[str, bool]) -> Table:
        return Table("s", "", [RATE], [Row(f"r{i}", role, sel, []) for i, (role, sel) in enumerate(rows)], RATE)

    demo = table(("initial", False), ("baseline", False), ("defence", True), ("defence", False))
    assert legend_kinds([demo]) == ["initial", "baseline", "defence", "selection", "front"]
    assert legend_kinds([table(("initial", False))]) == ["initial"]  # nothing fine-tuned: no front either
    with_oracle = table(("initial", False), ("baseline", False), ("oracle", True))
    assert legend_kinds([demo, with_oracle]) == ["initial", "baseline", "oracle", "defence", "selection", "front"]


def test_header_says_how_the_start_was_aligned():
    from tokensafe.experiment.report import header_facts

    start = {"spec": "aligned_deep", "fingerprint": "12039cef1474208a"}
    record = {"name": "aligned_deep", "samples": 876, "data_fingerprint": "5be8", "base_fingerprint": "7e9b"}
    facts = dict(header_facts({"starting_model": {**start, "aligned_by": record}}))
    assert facts["starting model"] == "aligned_deep (fingerprint 12039cef1474208a)"
    assert "876 samples, data fingerprint 5be8, base 7e9b" in facts["starting model made by"]
    assert "starting model made by" not in dict(header_facts({"starting_model": {**start, "aligned_by": None}}))


def test_crowded_point_labels_become_numbers_explained_in_a_key() -> None:
    """Labels that fit nowhere near their point (a cluster) are replaced by numbers and listed in a key; every label
    written out in full collides with no other label; a sparse plot needs no key."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tokensafe.experiment.report import _place_labels

    def place(points: list[tuple[float, float]]) -> tuple[list[tuple[str, str]], list[Any], Any]:
        fig = Figure(figsize=(6, 4), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 10)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o")
        canvas.draw()
        renderer = canvas.get_renderer()
        items = [(x, y, f"a rather long method label number {i}", "#123456") for i, (x, y) in enumerate(points)]
        return _place_labels(ax, renderer, items), ax.texts, renderer

    keyed, texts, renderer = place([(10, 2), (80, 8)])
    assert keyed == [] and sorted(t.get_text()[-1] for t in texts) == ["0", "1"]

    cluster = [(50 + i * 0.5, 5 + (i % 3) * 0.1) for i in range(8)]
    keyed, texts, renderer = place(cluster)
    assert keyed and [k.split()[0] for k, _ in keyed] == [str(i + 1) for i in range(len(keyed))]
    full = [t for t in texts if t.get_text().startswith("a rather") and t.xycoords == "data"]
    numbers = [t for t in texts if t.get_text().isdigit()]
    in_key = [t for t in texts if t.xycoords == "axes fraction"]
    assert len(full) + len(numbers) == len(cluster) and len(numbers) == len(keyed) == len(in_key)
    boxes = [t.get_window_extent(renderer) for t in full]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_each_safety_token_set_shows_under_the_rows_that_used_it(tmp_path: Path) -> None:
    results = fixture()
    official = results["artifacts"]["pact_safety_tokens"]
    contrastive = [{"token": " illegal", "id": 8543, "weight": 2.0}, {"token": EVIL, "id": 1, "weight": 1.0}]
    results["artifacts"]["pact_safety_token_sets"] = [
        {
            "labels": ["PACT", "TOSS + PACT"],
            "runs": ["a/pact/seed0", "a/pact/seed1", "a/toss_pact/seed0"],
            "tokens": official,
        },
        {"labels": [f"PACT variant {EVIL}"], "runs": ["a/pact_variant/seed0"], "tokens": contrastive},
    ]
    page = write(tmp_path, results)["html"].read_text(encoding="utf-8")
    section = page[page.index("<h2>PACT safety tokens</h2>") : page.index("<h2>TOSS token-risk view</h2>")]
    assert "<script" not in section.lower()
    first, second = section.index("PACT, TOSS + PACT"), section.index("PACT variant &lt;script&gt;")
    assert (
        first
        < section.index("8115")
        < second
        < section.index("<td>8543</td>")
        < section.index("&lt;script&gt;alert", second + 30)
    )
    assert "(3 runs)" in section and "(1 run)" in section
    assert section.count("<table class='tokens'>") == 2
    assert f"{len(official)} tokens, by weight" in section and "2 tokens, by weight" in section


def test_zero_weight_safety_tokens_are_listed_on_one_line_after_the_weighted_ones() -> None:
    from tokensafe.experiment.report import pact_tokens_html

    tokens = [
        {"token": " to", "id": 288, "weight": 0.0},
        {"token": " sorry", "id": 22657, "weight": 0.5},
        {"token": " cannot", "id": 2526, "weight": 1.0},
        {"token": EVIL, "id": 1, "weight": 0.0},
    ]
    page = pact_tokens_html(tokens)
    table, _, rest = page.partition("</table>")
    assert "4 tokens, by weight" in table and table.count("<tr>") == 3  # header + the two weighted tokens
    assert table.index("2526") < table.index("22657") and "288" not in table
    assert "2 more with weight 0:" in rest and " to</code>" in rest and "&lt;script&gt;" in rest
    assert "<script" not in page


def test_every_toss_rows_view_shows_the_same_answers_side_by_side(tmp_path: Path) -> None:
    results = fixture()
    harmful, benign = (dict(s) for s in results["artifacts"]["toss_token_view"][:2])
    raw = {**harmful, "picked": "compare"}
    # The smoothed row keeps the opener (first four tokens) and drops the last two instead: 6 of 16 dropped.
    smooth = {**harmful, "picked": "compare", "kept": [True] * 4 + harmful["kept"][4:14] + [False, False]}
    risky = {**benign, "sample_id": f"gsm8k/{EVIL}", "picked": "riskiest"}
    results["artifacts"]["toss_token_views"] = [
        {"run": "a/toss/seed0", "label": "TOSS raw", "setting": "a", "samples": [raw, risky]},
        {"run": "a/smooth/seed0", "label": "TOSS smoothed", "setting": "a", "samples": [smooth]},
    ]
    page = write(tmp_path, results)["html"].read_text(encoding="utf-8")
    view = page[page.index("<h2>TOSS token-risk view</h2>") :]
    # One comparison block for the sample, one line per row, each with its own drops.
    assert view.count("beavertails/00017") == 1
    first, second = view.index("<b>TOSS raw</b>"), view.index("<b>TOSS smoothed</b>")
    assert first < second < view.index("<details")
    assert "dropped 8/16" in view[first:second] and "dropped 6/16" in view[second:]
    expected_drops = 8 + 6 + sum(not k for k in benign["kept"])
    assert view.count("class='t drop'") == expected_drops
    # The riskiest samples sit under their row, escaped.
    assert "TOSS raw: its riskiest samples by mean score" in view
    assert f"gsm8k/{html.escape(EVIL)}" in view and EVIL not in view


def test_results_without_per_row_views_show_the_one_view_they_have(tmp_path: Path) -> None:
    results = fixture()
    results["artifacts"]["toss_token_views"] = []
    page = write(tmp_path, results)["html"].read_text(encoding="utf-8")
    view = page[page.index("<h2>TOSS token-risk view</h2>") :]
    assert "beavertails/00017" in view and "dropped 8/16" in view and "<b>TOSS" not in view
