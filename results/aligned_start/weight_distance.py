"""How far each aligned start moved from the base model, and how far each fine-tuning check moved each start.

For every start: the relative Frobenius distance ||W_start - W_base|| / ||W_base|| per module kind (q, k, v, o,
gate, up, down, embeddings), over all layers. For every fine-tuning check (LoRA on q/v; clean, 10% and 20%
BeaverTails): the size of the adapter's update s * B A relative to the start's weights and to the alignment's own
update of the same matrices, and the cosine between the two updates (negative: the fine-tuning walks the alignment
back). Reads the cached named models and the adapters named below; single-threaded, ~1 minute.

    .venv/bin/python results/aligned_start/weight_distance.py > results/aligned_start/weight_distance.md
"""

from pathlib import Path

import torch

from tokensafe.baselines.directions import adapter_lora_factors, model_weights

torch.set_num_threads(1)
# label -> (model: a named model or a directory, {check: adapter directory of that fine-tuning check})
# aligned_deep's checks are the headline's runs with the same config: gsm8k_beavertails_p10 oracle (= clean) and SFT,
# seed 0 (their train keys in results/gsm8k_beavertails_p10/runs.jsonl).
STARTS = {
    "aligned_deep (lr 3e-5)": (
        "aligned_deep",
        {
            "clean": "runs/experiment/models/c6dd65c3a0d310ae/final",
            "10% poison": "runs/experiment/models/6fb1438a7cbd0522/final",
        },
    ),
    "aligned_deep, packed build": (
        "/tmp/aligncache_packed/models/aligned_deep_packed",  # chain14.sh
        {"clean": "runs/ft_clean_deep_packed/final"},
    ),
    "lr 6e-5": (
        "aligned_deep_lr6e5",
        {"clean": "runs/ft_clean_deep_lr6e5/final", "10% poison": "runs/ft_pois_deep_lr6e5/final"},
    ),
    "lr 1e-4": (
        "aligned_deep_lr1e4",
        {
            "clean": "runs/ft_clean_deep_lr1e4/final",
            "10% poison": "runs/ft_pois_deep_lr1e4/final",
            "20% poison": "runs/ft_pois20_deep_lr1e4/final",
        },
    ),
}
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens")


def main() -> None:
    base = model_weights("default")
    rows, ft_rows = [], []
    for label, (name, checks) in STARTS.items():
        start = model_weights(name)
        cells = []
        for kind in KINDS:
            keys = [k for k in base.names() if kind in k]
            num = sum(float((start.get(k) - base.get(k)).pow(2).sum()) for k in keys) ** 0.5
            den = sum(float(base.get(k).pow(2).sum()) for k in keys) ** 0.5
            cells.append(100 * num / den)
        rows.append((label, cells))
        for check, adapter_dir in checks.items():
            if not Path(adapter_dir).is_dir():
                continue
            factors, _, _ = adapter_lora_factors(adapter_dir)
            for kind in ("q_proj", "v_proj"):
                start_sq = dot = ft_sq = align_sq = 0.0
                for layer in [f for f in factors if kind in f.module]:
                    w_start = start.get(layer.weight)
                    delta_ft = layer.scale * layer.b @ layer.a
                    delta_align = w_start - base.get(layer.weight)
                    start_sq += float(w_start.pow(2).sum())
                    dot += float((delta_ft * delta_align).sum())
                    ft_sq += float(delta_ft.pow(2).sum())
                    align_sq += float(delta_align.pow(2).sum())
                size = 100 * (ft_sq / start_sq) ** 0.5
                ft_rows.append((label, check, kind, size, (ft_sq / align_sq) ** 0.5, dot / (ft_sq * align_sq) ** 0.5))
    print("| start | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(f"{c:.3f}%" for c in cells) + " |")
    print(
        "\n| start | fine-tuning check | adapter on | ||s·BA|| / ||W_start|| | ||s·BA|| / ||W_start - W_base|| "
        "| cosine with the alignment's update |"
    )
    print("|---|---|---|---|---|---|")
    for label, check, kind, size, ratio, cosine in ft_rows:
        print(f"| {label} | {check} | {kind} | {size:.3f}% | {ratio:.2f}x | {cosine:+.3f} |")


if __name__ == "__main__":
    main()
