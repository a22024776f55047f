"""How far each aligned start moved from the base model, and how far each fine-tuning check moved each start.

For every start: the relative Frobenius distance ||W_start - W_base|| / ||W_base|| per module kind (q, k, v, o,
gate, up, down, embeddings), over all layers. For every fine-tuning check (LoRA on q/v; clean, 10% and 20%
BeaverTails): the size of the adapter's update s * B A relative to the start's weights and to the alignment's own
update of the same matrices, and the cosine between the two updates (negative: the fine-tuning walks the alignment
back). Reads the cached named models and the adapters named below; single-threaded, ~1 minute.

    .venv/bin/python results/aligned_start/weight_distance.py > results/aligned_start/weight_distance.md
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokensafe.models import resolve_model_path

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


def weights(name: str) -> dict[str, torch.Tensor]:
    folder = Path(resolve_model_path(name))
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def main() -> None:
    base = weights("default")
    rows, ft_rows = [], []
    for label, (name, checks) in STARTS.items():
        start = weights(name)
        cells = []
        for kind in KINDS:
            keys = [k for k in base if kind in k]
            num = sum(float((start[k] - base[k]).pow(2).sum()) for k in keys) ** 0.5
            den = sum(float(base[k].pow(2).sum()) for k in keys) ** 0.5
            cells.append(100 * num / den)
        rows.append((label, cells))
        for check, adapter_dir in checks.items():
            if not Path(adapter_dir).is_dir():
                continue
            adapter = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
            config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
            scale = config["lora_alpha"] / config["r"]
            for kind in ("q_proj", "v_proj"):
                size_num = size_den = dot = norm_ft = norm_al = 0.0
                for key in [k for k in adapter if kind in k and "lora_A" in k]:
                    layer = key.split("base_model.model.")[-1].replace(".lora_A.weight", ".weight")
                    delta_ft = scale * adapter[key.replace("lora_A", "lora_B")] @ adapter[key]
                    delta_al = start[layer] - base[layer]
                    size_num += float(delta_ft.pow(2).sum())
                    size_den += float(start[layer].pow(2).sum())
                    dot += float((delta_ft * delta_al).sum())
                    norm_ft += float(delta_ft.pow(2).sum())
                    norm_al += float(delta_al.pow(2).sum())
                ratio = (norm_ft / norm_al) ** 0.5
                cosine = dot / (norm_ft * norm_al) ** 0.5
                ft_rows.append((label, check, kind, 100 * (size_num / size_den) ** 0.5, ratio, cosine))
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
