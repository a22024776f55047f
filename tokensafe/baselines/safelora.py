"""SafeLoRA (Hsu et al. 2024): after training, project the LoRA update of the layers least similar to the alignment
directions back onto them.

Per LoRA layer with ΔW = s · B A (B: (d_out, r), A: (r, d_in)) and V = W_aligned − W_base (d_out, d_in)::

    C    = V Vᵀ / ‖V‖_F                              (d_out, d_out): never formed, see directions.project
    cos  = ⟨C B A, B A⟩_F / (‖C B A‖_F ‖B A‖_F)      the official code's cosine of the flattened matrices
    B   ← C B                                        for the selected layers only

Selection: the ``n`` layers with the lowest cosine (``number``, official default 10) or every layer whose cosine is
below ``threshold`` (0.5). The cosines use only r × r Gram matrices (``frobenius_inner``), so a layer costs two
thin products with V and memory holds one V at a time. A layer whose B A is 0 (never trained) gets cosine 1:
projecting it changes nothing, so it is never worth selecting.

Usable two ways: ``tokensafe safelora --adapter DIR`` on a saved adapter (writes a new adapter directory and
``safelora_report.json``), or ``--method safelora`` in ``tokensafe train`` (SFT, then the projection as
``post_train`` on the in-memory adapter before it is saved).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokensafe.atomic import atomic_path, write_json
from tokensafe.baselines.config import SAFELORA_SELECT, SafeLoraArgs
from tokensafe.baselines.directions import (
    AlignmentPair,
    LoraFactors,
    adapter_lora_factors,
    direction_stats,
    format_direction_range,
    frobenius_inner,
    model_lora_factors,
    project,
)
from tokensafe.config import check_model_spec, option, require, save_config
from tokensafe.errors import UsageError
from tokensafe.methods import MethodSetup, register_method

REPORT_FILE = "safelora_report.json"


@dataclass
class LayerProjection:
    """One layer's cosine, and its projected B (kept only until the selection is known; (d_out, r) like B)."""

    module: str
    cosine: float
    projected_b: torch.Tensor
    selected: bool = False
    direction: dict[str, float] = field(default_factory=dict)  # ‖V‖_F and λ_max(C) (directions.direction_stats)


def layer_cosine(b: torch.Tensor, a: torch.Tensor, projected_b: torch.Tensor) -> float:
    """cos(C B A, B A) from B (d_out, r), A (r, d_in) and C B (d_out, r) through r × r Gram matrices."""
    gram = a @ a.T
    inner = frobenius_inner(projected_b, b, gram)
    norms = frobenius_inner(projected_b, projected_b, gram).clamp_min(0).sqrt()
    norms = norms * frobenius_inner(b, b, gram).clamp_min(0).sqrt()
    if float(norms) == 0.0:
        return 1.0  # B A = 0 (or C B A = 0 with nothing to keep): projecting changes nothing measurable
    return float(inner / norms)


def select_layers(cosines: list[float], mode: str, n: int, threshold: float) -> list[int]:
    """Indices of the layers to project: the ``n`` lowest cosines (ties: the earlier layer) or those < threshold."""
    if mode == "number":
        if n < 0:
            raise ValueError(f"safelora_layers must be >= 0, got {n}")
        order = sorted(range(len(cosines)), key=lambda i: (cosines[i], i))
        return sorted(order[:n])
    if mode == "threshold":
        return [i for i, c in enumerate(cosines) if c < threshold]
    raise ValueError(f"safelora_select must be one of {list(SAFELORA_SELECT)}, got {mode!r}")


def safelora_projections(
    factors: list[LoraFactors], pair: AlignmentPair, mode: str = "number", n: int = 10, threshold: float = 0.5
) -> list[LayerProjection]:
    """Cosine and projected B of every layer (one V in memory at a time), with the selection marked."""
    layers = []
    for layer in factors:
        v, v_norm = pair.direction(layer.weight)
        b, a = layer.b.detach().float().cpu(), layer.a.detach().float().cpu()
        if v.shape != (b.shape[0], a.shape[1]):
            raise ValueError(
                f"{layer.module}: LoRA B A is {b.shape[0]} x {a.shape[1]} but V = W_aligned − W_base is "
                f"{tuple(v.shape)}; the adapter was trained on another architecture"
            )
        projected = project(v, b, v_norm)
        cosine = layer_cosine(b, a, projected)
        layers.append(LayerProjection(layer.module, cosine, projected, direction=direction_stats(v, v_norm)))
        del v
    for i in select_layers([layer.cosine for layer in layers], mode, n, threshold):
        layers[i].selected = True
    return layers


def report(layers: list[LayerProjection], **meta: Any) -> dict[str, Any]:
    """The per-layer report (JSON-ready): cosine, whether projected, ‖V‖_F and λ_max(C) of every layer."""
    selected = [layer.module for layer in layers if layer.selected]
    return {
        **meta,
        "n_layers": len(layers),
        "n_projected": len(selected),
        "projected": selected,
        "layers": [
            {"module": layer.module, "cosine": round(layer.cosine, 6), "projected": layer.selected, **layer.direction}
            for layer in layers
        ],
    }


def _meta(args: SafeLoraArgs) -> dict[str, Any]:
    return {
        "aligned": args.safety_aligned_model,
        "base": args.safety_base_model,
        "select": args.safelora_select,
        "n": args.safelora_layers,
        "threshold": args.safelora_threshold,
    }


def project_model(model: torch.nn.Module, args: SafeLoraArgs, cache_dir: str | None = None) -> dict[str, Any]:
    """SafeLoRA on a live PEFT model: B ← C B in place for the selected layers; returns the report."""
    pair = AlignmentPair.load(args.safety_aligned_model, args.safety_base_model, cache_dir)
    factors = model_lora_factors(model)
    layers = safelora_projections(factors, pair, args.safelora_select, args.safelora_layers, args.safelora_threshold)
    with torch.no_grad():
        for layer, factor in zip(layers, factors, strict=True):
            if layer.selected:
                factor.b.copy_(layer.projected_b.to(factor.b.device, factor.b.dtype))
    return report(layers, **_meta(args))


def post_train_safelora(args: SafeLoraArgs, cache_dir: str | None = None):
    """``MethodSetup.post_train`` for --method safelora: project, then write the report next to the run."""

    def post_train(model: torch.nn.Module, output_dir: str) -> torch.nn.Module:
        result = project_model(model, args, cache_dir)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(output_dir) / REPORT_FILE, result)
        print(f"safelora: projected {result['n_projected']}/{result['n_layers']} LoRA layers", flush=True)
        print(f"safelora: {format_direction_range(result['layers'])}", flush=True)
        return model

    return post_train


@register_method("safelora")
def setup_safelora(cfg: Any, model: Any, tokenizer: Any, dataset: Any):
    """METHODS['safelora']: plain SFT, then the SafeLoRA projection of the trained adapter before it is saved."""
    from tokensafe.baselines.directions import lora_modules

    next(lora_modules(model))  # fail before training, not after it, when there is no adapter to project
    AlignmentPair.load(cfg.safety_aligned_model, cfg.safety_base_model, cfg.cache_dir)  # and when a model is missing
    return MethodSetup(model=model, dataset=dataset, post_train=post_train_safelora(cfg, cfg.cache_dir))


# --- `tokensafe safelora` -------------------------------------------------------------------------------------------


@dataclass
class SafeLoraConfig(SafeLoraArgs):
    """`tokensafe safelora`: project a trained LoRA adapter (SafeLoRA) and report per-layer cosines."""

    adapter: str = option("", "directory of the trained LoRA adapter (e.g. runs/train/final)")
    output_dir: str | None = option(None, "where the projected adapter goes (none = <adapter>_safelora)")
    cache_dir: str | None = option(None, "cache root for converted models")

    def _check(self) -> None:
        require(
            bool(self.adapter),
            "tokensafe safelora needs --adapter DIR (a trained LoRA adapter)",
            field="adapter",
            hint="pass the final adapter of a LoRA run, e.g. --adapter runs/train/final",
        )

    def _check_inputs(self) -> None:
        source = Path(self.adapter)
        if not (source / "adapter_config.json").is_file():
            raise UsageError(
                f"adapter: {self.adapter!r} is not a LoRA adapter directory (no adapter_config.json)",
                field="adapter",
                hint="pass the final adapter of a LoRA run (use_lora: true), e.g. runs/train/final",
            )
        if self.output_dir is not None:
            require(
                Path(self.output_dir).resolve() != source.resolve(),
                "--output_dir must differ from --adapter (the original adapter is kept)",
                field="output_dir",
            )
        check_model_spec(self.safety_aligned_model, "safety_aligned_model", self.cache_dir)
        check_model_spec(self.safety_base_model, "safety_base_model", self.cache_dir)


def run_safelora(cfg: SafeLoraConfig) -> dict[str, Any]:
    """Read the adapter, project its selected layers, write a new adapter directory and the cosines report."""
    from safetensors.torch import save_file

    if not cfg.adapter:
        raise ValueError("tokensafe safelora needs --adapter DIR (a trained LoRA adapter)")
    source = Path(cfg.adapter)
    target = Path(cfg.output_dir) if cfg.output_dir else source.with_name(f"{source.name}_safelora")
    if target.resolve() == source.resolve():
        raise ValueError("--output_dir must differ from --adapter (the original adapter is kept)")
    factors, state, _ = adapter_lora_factors(source)
    pair = AlignmentPair.load(cfg.safety_aligned_model, cfg.safety_base_model, cfg.cache_dir)
    layers = safelora_projections(factors, pair, cfg.safelora_select, cfg.safelora_layers, cfg.safelora_threshold)
    for layer in layers:
        if layer.selected:
            key = f"{layer.module}.lora_B.weight"
            state[key] = layer.projected_b.to(state[key].dtype).contiguous()
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():  # adapter config, tokenizer files, chat template: everything but the weights
        if file.is_file() and file.name not in ("adapter_model.safetensors", REPORT_FILE):
            shutil.copy2(file, target / file.name)
    with atomic_path(target / "adapter_model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    result = report(layers, adapter=str(source), output_dir=str(target), **_meta(cfg))
    write_json(target / REPORT_FILE, result)
    save_config(cfg, target / "safelora_config.yaml")
    lowest = sorted(result["layers"], key=lambda row: row["cosine"])[:5]
    print("lowest cosines: " + ", ".join(f"{row['module']}={row['cosine']:.3f}" for row in lowest), flush=True)
    print(format_direction_range(result["layers"]), flush=True)
    summary = {k: v for k, v in result.items() if k != "layers"}
    summary["min_cosine"] = min((row["cosine"] for row in result["layers"]), default=math.nan)
    return summary
