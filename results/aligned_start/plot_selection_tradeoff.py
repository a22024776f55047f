"""Plot every aligned start of issue 16 on the two selection suites that pull against each other.

x: over-refusal on twins_val (benign requests written like harmful ones; lower is better); y: harmful_val ASR
(keyword judge; lower is better). The issue's targets are on the evaluation suites, so no region is shaded; the
lower-left corner is where a start refuses the harmful and answers the benign. Arrows join each on-policy
preference round to the start it was trained on. Numbers come from results.json (collect.py); nothing is typed in.

    .venv/bin/python results/aligned_start/plot_selection_tradeoff.py   # writes selection_tradeoff.png
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
EVALS = json.loads((HERE / "results.json").read_text())["evals"]
# eval name -> (short label, label offset in points); the other starts measured on both suites are grey dots
LABELS = {
    "aligned_pref_v1": ("template DPO v1", (5, 4)),
    "aligned_pref_v2": ("template DPO v2", (-20, 8)),
    "aligned_deep": ("aligned_deep (headline)", (-60, -14)),
    "aligned_deep_gsm8k60": ("deep_gsm8k60", (4, -12)),
    "aligned_own_deep_gsm8k60": ("own-refusal DPO", (-95, 6)),
    "aligned_own_sensitive": ("+ sensitive pairs (round 1)", (5, 4)),
    "aligned_own_round2": ("round 2", (5, 4)),
    "aligned_own_round3": ("round 3 (SafeInstr)", (6, -9)),
    "aligned_own_round2_harmful2": ("round 2 + harmful x2", (-40, -14)),
    "aligned_own_round4": ("round 4", (5, 4)),
    "aligned_own_round5": ("round 5 (harmful x2, lr/2)", (8, 2)),
    "aligned_own_round6": ("round 6 (lr/2)", (-60, -12)),
    "aligned_own_round7": ("round 7 (lr/2, + GSM8K pairs)", (8, -10)),
    "aligned_own_round8": ("round 8 (+ group pairs)", (-40, 8)),
    "aligned_own_round9": ("round 9 (harmful x2, + recovery pairs)", (6, 4)),
    "aligned_own_round10": ("round 10", (6, -10)),
}
# on-policy rounds: (start, trained model)
ROUNDS = [
    ("aligned_deep_gsm8k60", "aligned_own_deep_gsm8k60"),
    ("aligned_deep_gsm8k60", "aligned_own_sensitive"),
    ("aligned_own_sensitive", "aligned_own_round2"),
    ("aligned_own_round2", "aligned_own_round3"),
    ("aligned_own_round2", "aligned_own_round2_harmful2"),
    ("aligned_own_round2_harmful2", "aligned_own_round4"),
    ("aligned_own_round4", "aligned_own_round5"),
    ("aligned_own_round5", "aligned_own_round6"),
    ("aligned_own_round6", "aligned_own_round7"),
    ("aligned_own_round7", "aligned_own_round8"),
    ("aligned_own_round8", "aligned_own_round9"),
    ("aligned_own_round9", "aligned_own_round10"),
]


def point(name: str) -> tuple[float, float] | None:
    row = EVALS.get(f"runs/eval_align/{name}", {})
    if "twins_val" not in row or "harmful_val" not in row:
        return None
    return 100 * row["twins_val"]["value"], 100 * row["harmful_val"]["value"]


def main() -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    others = [n.removeprefix("runs/eval_align/") for n in EVALS if n.startswith("runs/eval_align/")]
    others = [xy for n in others if n not in LABELS and not n.startswith("ft_") and (xy := point(n))]
    ax.scatter(*zip(*others, strict=True), color="grey", alpha=0.5, zorder=2, label="other refusal-SFT starts")
    for name, (label, offset) in LABELS.items():
        xy = point(name)
        if xy is None:
            continue
        ax.scatter(*xy, color="tab:red" if name.startswith("aligned_own") else "tab:blue", zorder=3)
        ax.annotate(label, xy, textcoords="offset points", xytext=offset, fontsize=8)
    for start, trained in ROUNDS:
        a, b = point(start), point(trained)
        if a and b:
            ax.annotate("", b, a, arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.6})
    ax.set_xlabel("twins_val over-refusal, % (benign twins refused)")
    ax.set_ylabel("harmful_val ASR, % (keyword judge)")
    ax.set_xlim(0, 100)
    ax.set_ylim(-3, 90)
    ax.set_title("Aligned starts on the selection suites (red: on-policy preference rounds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "selection_tradeoff.png", dpi=120)


if __name__ == "__main__":
    main()
