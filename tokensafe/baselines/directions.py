"""Alignment directions V = W_aligned − W_base per LoRA layer, and the projection C·X = V (Vᵀ X) / ‖V‖_F.

SafeLoRA and AsFT both use C = V Vᵀ / ‖V‖_F (d_out × d_out) only through products C·B with a thin LoRA factor
B (d_out × r), so C is never formed: C B = V (Vᵀ B) / ‖V‖_F costs O(d_out · d_in · r) and O(d_in · r) extra memory
instead of O(d_out²) per layer. Weights are read one tensor at a time from the models' safetensors files (no model
is instantiated), so only one layer's V is ever in memory while projecting.

Names: a LoRA module ``base_model.model.model.layers.0.self_attn.q_proj`` (PEFT) wraps the base weight
``model.layers.0.self_attn.q_proj.weight``; :func:`weight_name` maps one to the other.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tokensafe.errors import UsageError
from tokensafe.modeling import unwrap

PEFT_PREFIX = "base_model.model."


class AdapterError(UsageError):
    """A model or adapter without the LoRA layers a method needs, or weights that do not match them."""


def weight_name(module_name: str) -> str:
    """PEFT module path (with or without the ``base_model.model.`` prefix) -> the base weight's state-dict key."""
    name = module_name[len(PEFT_PREFIX) :] if module_name.startswith(PEFT_PREFIX) else module_name
    return f"{name}.weight"


def project(v: torch.Tensor, b: torch.Tensor, v_norm: torch.Tensor | float | None = None) -> torch.Tensor:
    """C B with C = V Vᵀ / ‖V‖_F, without forming C.

    Args:
        v: (d_out, d_in) alignment direction V.
        b: (d_out, r) LoRA up-projection B.
        v_norm: ‖V‖_F if already known.
    Returns:
        (d_out, r) = V (Vᵀ B) / ‖V‖_F.
    """
    norm = v.norm() if v_norm is None else v_norm
    return v @ (v.T @ b) / norm


def direction_stats(v: torch.Tensor, v_norm: torch.Tensor | float | None = None) -> dict[str, float]:
    """‖V‖_F and λ_max(C) = σ_max(V)² / ‖V‖_F (the largest eigenvalue of C = V Vᵀ / ‖V‖_F) of a (d_out, d_in) V.

    C is no projector in general (its eigenvalues σ_i(V)² / ‖V‖_F are not 1 and scale with ‖V‖_F): these two
    numbers say how much C stretches or shrinks the update along V (SafeLoRA's C B, AsFT's I − Ĉ).
    """
    norm = float(v.norm()) if v_norm is None else float(v_norm)
    sigma_max = float(torch.linalg.matrix_norm(v.float(), ord=2))
    return {"v_norm": round(norm, 6), "lambda_max": round(sigma_max**2 / norm, 6) if norm else 0.0}


def format_direction_range(layers: list[dict]) -> str:
    """One line: the range of ‖V‖_F and λ_max(C) over the rows of a report (each with v_norm, lambda_max)."""
    if not layers:
        return "no layers"
    norms = [row["v_norm"] for row in layers]
    lams = [row["lambda_max"] for row in layers]
    return (
        f"{len(layers)} LoRA layers, ‖V‖_F {min(norms):.4g}..{max(norms):.4g}, "
        f"λ_max(C) {min(lams):.4g}..{max(lams):.4g}"
    )


def frobenius_inner(x: torch.Tensor, y: torch.Tensor, gram_a: torch.Tensor) -> torch.Tensor:
    """⟨X A, Y A⟩_F = Σ (Xᵀ Y) ⊙ (A Aᵀ) for X, Y (d_out, r) and gram_a = A Aᵀ (r, r): no (d_out, d_in) product."""
    return ((x.T @ y) * gram_a).sum()


class SafetensorsWeights:
    """Lazy reader of one model's weights: a HF directory with ``*.safetensors`` (single file or sharded)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise AdapterError(f"{self.directory} holds no *.safetensors weights")
        self._index: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    self._index[key] = file

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def names(self) -> list[str]:
        """Every weight name the model's files hold."""
        return list(self._index)

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self._index:
            raise AdapterError(f"{self.directory} has no weight '{name}'")
        with safe_open(str(self._index[name]), framework="pt") as handle:
            return handle.get_tensor(name).float()


def model_weights(spec: str, cache_dir: str | os.PathLike | None = None) -> SafetensorsWeights:
    """The weights of a model spec (``aligned``, ``default``, a directory) without loading the model."""
    from tokensafe.models import resolve_model_path

    path = resolve_model_path(spec, cache_dir)
    if not isinstance(path, Path):
        raise AdapterError(f"model '{spec}' is not available locally; the alignment directions need its weights")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise AdapterError(f"model '{spec}' is a LoRA adapter; the alignment directions need a full model")
    return SafetensorsWeights(path)


@dataclass
class AlignmentPair:
    """V = W_aligned − W_base for any weight name, read on demand (one layer in memory at a time)."""

    aligned: SafetensorsWeights
    base: SafetensorsWeights

    @classmethod
    def load(cls, aligned: str, base: str, cache_dir: str | os.PathLike | None = None) -> AlignmentPair:
        return cls(model_weights(aligned, cache_dir), model_weights(base, cache_dir))

    def direction(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(V (d_out, d_in) float32, ‖V‖_F) for the weight ``name``; an error when V = 0 (C undefined)."""
        w_aligned, w_base = self.aligned.get(name), self.base.get(name)
        if w_aligned.shape != w_base.shape:
            raise AdapterError(
                f"'{name}' has shape {tuple(w_aligned.shape)} (aligned) but {tuple(w_base.shape)} (base)"
            )
        v = w_aligned - w_base
        norm = v.norm()
        if norm == 0:
            raise AdapterError(
                f"'{name}' is identical in the aligned and base models (V = 0): pick a base model that differs"
            )
        return v, norm


@dataclass
class LoraFactors:
    """One LoRA layer's factors: ΔW = scale · B A with A (r, d_in), B (d_out, r)."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def weight(self) -> str:
        return weight_name(self.module)


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def lora_modules(model: torch.nn.Module, adapter: str = "default") -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of every PEFT LoRA layer of ``model`` that carries ``adapter``; an error when there is none."""
    from peft.tuners.lora import LoraLayer

    found = False
    for name, module in unwrap(model).named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            found = True
            yield name, module
    if not found:
        raise AdapterError("the model has no LoRA layers: SafeLoRA and AsFT need use_lora: true")


def model_lora_factors(model: torch.nn.Module, adapter: str = "default") -> list[LoraFactors]:
    """Live LoRA factors of a PEFT model (the tensors are the trained parameters themselves)."""
    return [
        LoraFactors(name, module.lora_A[adapter].weight, module.lora_B[adapter].weight, float(module.scaling[adapter]))
        for name, module in lora_modules(model, adapter)
    ]


def adapter_lora_factors(directory: str | os.PathLike) -> tuple[list[LoraFactors], dict[str, torch.Tensor], dict]:
    """LoRA factors of a saved PEFT adapter directory, plus its full state dict and adapter config."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights_file = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterError(f"{directory} is not a LoRA adapter (adapter_config.json + adapter_model.safetensors)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{directory} holds a {config.get('peft_type')} adapter, not LoRA")
    state = load_file(str(weights_file))
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    factors = []
    for key in sorted(state, key=_natural):  # layers.2 before layers.10: the model's own layer order
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            b_key = f"{module}.lora_B.weight"
            if b_key not in state:
                raise AdapterError(f"{weights_file} has {key} but no {b_key}")
            factors.append(LoraFactors(module, state[key].float(), state[b_key].float(), scale))
    if not factors:
        raise AdapterError(f"{weights_file} holds no LoRA layers (no *.lora_A.weight tensors)")
    return factors, state, config
