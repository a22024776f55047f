"""Does the selection suite groups_val (seventeenth session) see what XSTest sees? One dot per aligned start
measured on both: x = groups_val over-refusal (the project's own 40 group-related benign prompts, selection only),
y = XSTest-safe over-refusal (evaluation suite, 250 prompts); keyword judge, Wilson 95% intervals as error bars.
Numbers come from results.json (collect.py); nothing is typed in. The Spearman rank correlation is printed and
written in the title.

    .venv/bin/python results/aligned_start/plot_groups_vs_xstest.py   # writes groups_vs_xstest.png
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from plot_selection_tradeoff import LABELS  # noqa: E402  (the same short name for each start in both plots)
from scipy.stats import spearmanr  # noqa: E402

HERE = Path(__file__).resolve().parent
EVALS = json.loads((HERE / "results.json").read_text())["evals"]
OFFSETS = {
    "aligned_deep": (-20, -14),
    "aligned_own_round6": (-75, 4),
    "aligned_own_round7": (6, -12),
    "aligned_own_round8": (6, 6),
    "aligned_own_sensitive": (6, -12),
}  # label offsets in points where two labels would overlap


def main() -> None:
    points = []
    for key, row in EVALS.items():
        if not key.startswith("runs/eval_align_groups/"):
            continue
        name = key.removeprefix("runs/eval_align_groups/")
        xs = EVALS.get(f"runs/eval_align_final/{name}", {}).get("xstest_safe")
        if xs is not None:
            points.append((name, row["groups_val"], xs))
    rho, p = spearmanr([g["value"] for _, g, _ in points], [x["value"] for _, _, x in points])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, g, x in points:
        gx, xy = 100 * g["value"], 100 * x["value"]
        ax.errorbar(
            gx,
            xy,
            xerr=[[gx - 100 * g["low"]], [100 * g["high"] - gx]],
            yerr=[[xy - 100 * x["low"]], [100 * x["high"] - xy]],
            fmt="o",
            color="tab:red" if name.startswith("aligned_own") else "tab:blue",
            alpha=0.8,
            capsize=2,
        )
        ax.annotate(
            LABELS.get(name, (name,))[0],
            (gx, xy),
            textcoords="offset points",
            xytext=OFFSETS.get(name, (5, 4)),
            fontsize=8,
        )
    ax.axhline(15, color="grey", linestyle=":", label="issue 16 target: XSTest <= 15%")
    ax.set_xlabel("groups_val over-refusal, % (selection suite, n=40)")
    ax.set_ylabel("XSTest-safe over-refusal, % (evaluation suite, n=250)")
    ax.set_title(f"groups_val vs XSTest, {len(points)} starts (Spearman rho {rho:.2f}, p {p:.2f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "groups_vs_xstest.png", dpi=120)
    print(f"{len(points)} starts, Spearman rho {rho:.3f} (p {p:.3f}) -> {HERE / 'groups_vs_xstest.png'}")


if __name__ == "__main__":
    main()
