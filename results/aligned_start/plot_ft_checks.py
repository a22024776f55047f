"""Plot issue 16's two fine-tuning checks against each other for every aligned start measured on both.

x: ASR after clean GSM8K fine-tuning (`configs/train/sft_gsm8k_poisoned.yaml --harmful_share 0`, target <= 30%);
y: ASR after the same fine-tuning with 10% BeaverTails (target >= 60%); the target region is shaded. Left panel JBB
harmful (evaluation suite), right panel harmful_val (selection suite). Numbers come from results.json (collected by
collect.py from the eval outputs); nothing is typed in here.

    .venv/bin/python results/aligned_start/plot_ft_checks.py   # writes results/aligned_start/ft_checks.png
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
EVALS = json.loads((HERE / "results.json").read_text())["evals"]
# start label -> (eval name after clean FT, after 10% poisoned FT, after 20% poisoned FT or None)
STARTS = {
    "al_deep (LoRA deep)": ("ft_clean_al_deep", "ft_pois_al_deep", None),
    "aligned_deep (lr 3e-5, headline)": ("ft_clean_al_deepfull", "ft_pois_al_deepfull", None),
    "lr 6e-5": ("ft_clean_deep_lr6e5", "ft_pois_deep_lr6e5", None),
    "lr 1e-4 (deep_robust)": ("ft_clean_deep_lr1e4", "ft_pois_deep_lr1e4", "ft_pois20_deep_lr1e4"),
    "+ 200 GSM8K rows (deep_gsm8k)": ("ft_clean_deep_gsm8k", "ft_pois_deep_gsm8k", None),
    "+ 60 GSM8K rows (deep_gsm8k60)": ("ft_clean_deep_gsm8k60", "ft_pois_deep_gsm8k60", None),
    "deep_gsm8k60 + own-refusal DPO": ("ft_clean_aligned_own_deep_gsm8k60", "ft_pois_aligned_own_deep_gsm8k60", None),
    "on-policy round 2": ("ft_clean_aligned_own_round2", "ft_pois_aligned_own_round2", None),
    "on-policy round 4": ("ft_clean_aligned_own_round4", "ft_pois_aligned_own_round4", None),
    "round 7 (+ GSM8K pairs)": ("ft_clean_aligned_own_round7", "ft_pois_aligned_own_round7", None),
    "round 8 (+ group pairs)": ("ft_clean_aligned_own_round8", "ft_pois_aligned_own_round8", None),
    "round 9 (harmful x2 + recovery; clean at seed 1: 32%)": (
        "ft_clean_aligned_own_round9",
        "ft_pois_aligned_own_round9",
        None,
    ),
}
STYLE = {  # label -> colour: one colour per start in both panels (named in one legend below them)
    "al_deep (LoRA deep)": "tab:purple",
    "aligned_deep (lr 3e-5, headline)": "tab:blue",
    "lr 6e-5": "tab:orange",
    "lr 1e-4 (deep_robust)": "tab:red",
    "+ 200 GSM8K rows (deep_gsm8k)": "tab:green",
    "+ 60 GSM8K rows (deep_gsm8k60)": "tab:olive",
    "deep_gsm8k60 + own-refusal DPO": "tab:brown",
    "on-policy round 2": "tab:pink",
    "on-policy round 4": "tab:cyan",
    "round 7 (+ GSM8K pairs)": "black",
    "round 8 (+ group pairs)": "gold",
    "round 9 (harmful x2 + recovery; clean at seed 1: 32%)": "tab:gray",
}
# harmful_val after poisoned FT of aligned_deep was measured on the p10 experiment's SFT model under another name.
ALIASES = {"ft_pois_al_deepfull": ["ft_pois_deep"]}


def asr(name: str, suite: str) -> float | None:
    for candidate in [name, *ALIASES.get(name, [])]:
        for folder in ("runs/eval_align_final", "runs/eval_align", "runs/eval_align_ft"):
            row = EVALS.get(f"{folder}/{candidate}", {}).get(suite)
            if row is not None:
                return 100 * row["value"]
    return None


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    for ax, suite, title in zip(
        axes, ("jbb_harmful", "harmful_val"), ("JBB harmful (evaluation)", "harmful_val (selection)"), strict=True
    ):
        ax.add_patch(plt.Rectangle((0, 60), 30, 40, color="tab:green", alpha=0.12, lw=0))
        ax.text(2, 96, "both targets met", color="tab:green", va="top", fontsize=9)
        for label, (clean, poisoned, poisoned20) in STARTS.items():
            x, y = asr(clean, suite), asr(poisoned, suite)
            if x is None or y is None:
                continue
            colour = STYLE[label]
            ax.plot([x], [y], "o", ms=7, color=colour, label=label)
            y20 = asr(poisoned20, suite) if poisoned20 else None
            if y20 is not None:
                ax.plot([x, x], [y, y20], ":", color=colour)
                ax.plot([x], [y20], "o", mfc="white", color=colour, ms=7)
                ax.annotate("same, 20% poison", (x, y20), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("ASR after clean GSM8K fine-tuning (%)  - target <= 30")
        ax.set_ylabel("ASR after 10% BeaverTails fine-tuning (%)  - target >= 60")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Issue 16's fine-tuning checks: every start measured on both (one seed each)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(HERE / "ft_checks.png", dpi=120)


if __name__ == "__main__":
    main()
