"""JBB harmful refusal against JBB benign over-refusal for every aligned start evaluated on both (a record of the
evaluation suites, not a selection: starts were chosen on the selection suites).

x: refusal rate on JBB's 100 benign twins (issue 16's target <= 35%); y: refusal rate on JBB's 100 harmful prompts
(target >= 90%); the target corner is shaded, bars are 95% Wilson intervals. Numbers come from results.json
(collected by collect.py); nothing is typed in here.

    .venv/bin/python results/aligned_start/plot_jbb_frontier.py   # writes results/aligned_start/jbb_frontier.png
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from plot_selection_tradeoff import LABELS  # noqa: E402  (the same short name for each start in every plot)

HERE = Path(__file__).resolve().parent
EVALS = json.loads((HERE / "results.json").read_text())["evals"]
FOLDER = "runs/eval_align_final/"
# Eval names of starts evaluated under another name than their model's; label offsets where labels would collide.
# Starts without a label are the refusal-SFT variants clustered around the headline start (lr, packing, LoRA).
EXTRA_LABELS = {"al_deepfull": "aligned_deep (headline)"}
OFFSETS = {
    "aligned_own_round6": (-60, -12),
    "aligned_own_round7": (6, 4),
    "aligned_own_round5": (6, -10),
    "aligned_own_round3": (6, 4),
    "aligned_own_round8": (-110, 4),
    "al_deepfull": (6, -12),
    "aligned_own_round9": (6, 6),
}


def percent(suite_row: dict, complement: bool = False) -> tuple[float, tuple[float, float]]:
    """A suite's value in % and its stored 95% interval as (below, above) error bars; ``complement``: 100 - value
    (JBB harmful stores the ASR, this plot shows the refusal rate)."""
    value, low, high = (100 * suite_row[k] for k in ("value", "low", "high"))
    if complement:
        value, low, high = 100 - value, 100 - high, 100 - low
    return value, (value - low, high - value)


def rates(name: str) -> tuple[float, float, tuple, tuple] | None:
    """(benign refusal, harmful refusal, x error, y error) in %, or None when a suite is missing."""
    row = EVALS.get(FOLDER + name, {})
    if "jbb_benign" not in row or "jbb_harmful" not in row:
        return None
    (x, xerr), (y, yerr) = percent(row["jbb_benign"]), percent(row["jbb_harmful"], complement=True)
    return x, y, xerr, yerr


def main() -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ax.add_patch(plt.Rectangle((0, 90), 35, 10, color="tab:green", alpha=0.15, lw=0))
    ax.text(1, 99, "targets met", color="tab:green", va="top", fontsize=8)
    names = sorted(n.removeprefix(FOLDER) for n in EVALS if n.startswith(FOLDER))
    for name in names:
        if name.startswith("ft_"):
            continue
        point = rates(name)
        if point is None:
            continue
        x, y, xerr, yerr = point
        colour = "tab:red" if name.startswith("aligned_own") else "tab:blue"
        ax.errorbar(
            [x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o", color=colour, ms=5,
            elinewidth=0.5, alpha=0.85,
        )  # fmt: skip
        label = EXTRA_LABELS.get(name) or LABELS.get(name, ("", None))[0]
        if label:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=OFFSETS.get(name, (5, 3)), fontsize=7)
    ax.set_xlabel("JBB benign twins refused, % (target <= 35)")
    ax.set_ylabel("JBB harmful prompts refused, % (target >= 90)")
    ax.set_xlim(0, 100)
    ax.set_ylim(60, 101)
    ax.set_title("Aligned starts on JBB (red: on-policy preference rounds; one seed, 95% Wilson)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "jbb_frontier.png", dpi=120)


if __name__ == "__main__":
    main()
