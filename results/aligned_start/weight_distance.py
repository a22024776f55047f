"""How far each aligned start moved from the base model, and how far the clean GSM8K fine-tuning moved each start.

For every start: the relative Frobenius distance ||W_start - W_base|| / ||W_base|| per module kind (q, k, v, o,
gate, up, down, embeddings), over all layers. For every clean fine-tuning check (LoRA on q/v): the relative size
of the adapter's update ||s * B A|| / ||W_start|| on q and v, and the cosine between that update and the
alignment's own update of the same matrix (negative: the fine-tuning walks the alignment back). Reads the cached
named models and the `runs/ft_clean_*` adapters; single-threaded, ~1 minute.

    .venv/bin/python results/aligned_start/weight_distance.py > results/aligned_start/weight_distance.md
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokensafe.models import resolve_model_path

torch.set_num_threads(1)
# label -> (model: a named model or a directory, its clean fine-tuning check's adapter or None)
STARTS = {
    "aligned_deep (lr 3e-5)": ("aligned_deep", None),
    "aligned_deep, packed build": (
        "/tmp/aligncache_packed/models/aligned_deep_packed",
        "runs/ft_clean_deep_packed/final",
    ),
    "lr 6e-5": ("aligned_deep_lr6e5", "runs/ft_clean_deep_lr6e5/final"),
    "lr 1e-4": ("aligned_deep_lr1e4", "runs/ft_clean_deep_lr1e4/final"),
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
    for label, (name, adapter_dir) in STARTS.items():
        start = weights(name)
        cells = []
        for kind in KINDS:
            keys = [k for k in base if kind in k]
            num = sum(float((start[k] - base[k]).pow(2).sum()) for k in keys) ** 0.5
            den = sum(float(base[k].pow(2).sum()) for k in keys) ** 0.5
            cells.append(100 * num / den)
        rows.append((label, cells))
        if adapter_dir and Path(adapter_dir).is_dir():
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
                ft_rows.append((label, kind, 100 * (size_num / size_den) ** 0.5, dot / (norm_ft * norm_al) ** 0.5))
    print("| start | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(f"{c:.3f}%" for c in cells) + " |")
    print("\n| start | clean-FT adapter on | relative size of s·BA | cosine with the alignment's update |")
    print("|---|---|---|---|")
    for label, kind, size, cosine in ft_rows:
        print(f"| {label} | {kind} | {size:.3f}% | {cosine:+.3f} |")


if __name__ == "__main__":
    main()
