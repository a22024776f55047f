"""How much clean fine-tuning adds to each aligned start's JBB ASR: before against after, for every start measured.

x: JBB harmful ASR of the start itself; y: after clean GSM8K fine-tuning (`configs/train/sft_gsm8k_poisoned.yaml
--harmful_share 0`, issue 16's target <= 30%). Dashed lines: y = x + c (a constant increment). Bars: the 95%
Wilson intervals stored with each result (100 JBB prompts each). A start under the target needs both a low x and a
small increment; the figure says which of the two each line of the study lacks. Also prints the table (markdown).
Numbers come from results.json (collected by collect.py); nothing is typed in here.

    .venv/bin/python results/aligned_start/plot_ft_increment.py   # writes results/aligned_start/ft_increment.png
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from plot_jbb_frontier import percent  # noqa: E402  (a result row as a value and its error bars, in %)

HERE = Path(__file__).resolve().parent
EVALS = json.loads((HERE / "results.json").read_text())["evals"]
FOLDER = "runs/eval_align_final"
# label -> (eval name of the start, eval name after its clean fine-tuning, family); the family picks the colour.
STARTS = {
    "al_deep (LoRA)": ("al_deep", "ft_clean_al_deep", "SFT"),
    "aligned_deep (headline)": ("al_deepfull", "ft_clean_al_deepfull", "SFT"),
    "deep, lr 6e-5": ("aligned_deep_lr6e5", "ft_clean_deep_lr6e5", "SFT"),
    "deep, lr 1e-4": ("aligned_deep_lr1e4", "ft_clean_deep_lr1e4", "SFT"),
    "deep_sensitive": ("aligned_deep_sensitive", "ft_clean_deep_sensitive", "SFT"),
    "deep_gsm8k (200 rows)": ("aligned_deep_gsm8k", "ft_clean_deep_gsm8k", "SFT + GSM8K"),
    "deep_gsm8k60": ("aligned_deep_gsm8k60", "ft_clean_deep_gsm8k60", "SFT + GSM8K"),
    "round 1": ("aligned_own_deep_gsm8k60", "ft_clean_aligned_own_deep_gsm8k60", "DPO rounds on deep_gsm8k60"),
    "round 2": ("aligned_own_round2", "ft_clean_aligned_own_round2", "DPO rounds on deep_gsm8k60"),
    "round 4": ("aligned_own_round4", "ft_clean_aligned_own_round4", "DPO rounds on deep_gsm8k60"),
    "round 6": ("aligned_own_round6", "ft_clean_aligned_own_round6", "DPO rounds on deep_gsm8k60"),
    "round 7": ("aligned_own_round7", "ft_clean_aligned_own_round7", "DPO rounds on deep_gsm8k60"),
    "round 8": ("aligned_own_round8", "ft_clean_aligned_own_round8", "DPO rounds on deep_gsm8k60"),
    "round 9": ("aligned_own_round9", "ft_clean_aligned_own_round9", "DPO rounds on deep_gsm8k60"),
    "round 9, seed 1": ("aligned_own_round9", "ft_clean_seed1_aligned_own_round9", "DPO rounds on deep_gsm8k60"),
    "round 10": ("aligned_own_round10", "ft_clean_aligned_own_round10", "DPO rounds on deep_gsm8k60"),
}
# Labels that would sit on another point's label are moved (points: offset from the marker).
LABEL_OFFSET = {"round 1": (5, -10), "round 4": (5, 6), "aligned_deep (headline)": (-5, 6), "round 2": (5, -10)}
COLOURS = {"SFT": "tab:blue", "SFT + GSM8K": "tab:green", "DPO rounds on deep_gsm8k60": "tab:red"}


def jbb_asr(name: str) -> tuple[float, tuple[float, float]] | None:
    """JBB harmful ASR in % and its error bars, or None when not measured."""
    row = EVALS.get(f"{FOLDER}/{name}", {}).get("jbb_harmful")
    return None if row is None else percent(row)


def main() -> None:
    rows = []
    for label, (start, after, family) in STARTS.items():
        before, later = jbb_asr(start), jbb_asr(after)
        if before is not None and later is not None:
            rows.append((label, family, *before, *later))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for c in (0, 10, 20, 30, 40):
        ax.plot([0, 30], [c, 30 + c], color="grey", lw=0.7, ls="--")
        ax.text(29.5, 29.5 + c, f"+{c}", color="grey", fontsize=8, ha="right", va="bottom")
    ax.axhline(30, color="tab:green", lw=1)
    ax.text(1, 31, "target after fine-tuning <= 30%", color="tab:green", fontsize=8)
    seen = set()
    for label, family, x, xerr, y, yerr in rows:
        ax.errorbar(
            [x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o", ms=6,
            color=COLOURS[family], alpha=0.85, elinewidth=0.6, capsize=0,
            label=None if family in seen else family,
        )  # fmt: skip
        seen.add(family)
        ax.annotate(
            label, (x, y), textcoords="offset points", xytext=LABEL_OFFSET.get(label, (5, 3)), fontsize=7,
            ha="right" if LABEL_OFFSET.get(label, (5, 0))[0] < 0 else "left",
        )  # fmt: skip
    ax.set_xlim(0, 30)
    ax.set_ylim(0, 70)
    ax.set_xlabel("JBB harmful ASR of the aligned start (%)")
    ax.set_ylabel("JBB harmful ASR after clean GSM8K fine-tuning (%)")
    ax.set_title("What clean fine-tuning adds to each start (one seed; bars: 95% Wilson)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "ft_increment.png", dpi=120)
    print("| start | JBB ASR before | after clean FT | added |\n|---|---|---|---|")
    for label, _, x, _, y, _ in rows:
        print(f"| {label} | {x:.0f}% | {y:.0f}% | +{y - x:.0f} |")


if __name__ == "__main__":
    main()
