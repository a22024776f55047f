"""The PACT commands. Both share one config (:class:`PactConfig` = the train config with ``method: pact``):

    tokensafe pact safety-tokens --model aligned --pact_base_model default   # S, weights; printed and saved
    tokensafe pact --config configs/pact/sst2_poisoned.yaml                 # S (cached), reference cache, training
    tokensafe train --config ... --method pact                               # the same as `tokensafe pact`

Safety tokens identified once are cached under ``<cache>/pact/safety_tokens/<key>`` (key: both models' fingerprints
and the identification settings), so `pact safety-tokens` followed by `pact` with the same config does the work once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokensafe.config import option, save_config
from tokensafe.methods import MethodName
from tokensafe.train import TrainConfig, TrainResult, run_train


@dataclass
class PactConfig(TrainConfig):
    """PACT: safety-token identification, the frozen reference's cache, and fine-tuning with the calibrated
    safety-token KL. The model, mixture, LoRA and optimiser fields mean what they mean for `tokensafe train`;
    ``model`` is the aligned model being fine-tuned (and the reference), ``pact_base_model`` its base."""

    method: MethodName = option(
        "pact", "training method: pact, or kl (full-vocabulary KL baseline), or any train method"
    )
    output_dir: str = option("runs/pact", "where the safety tokens, checkpoints, the final model and metrics go")


def run_pact(cfg: PactConfig) -> TrainResult:
    """`tokensafe pact`: everything `tokensafe train --method pact` does (S, cache, training)."""
    return run_train(cfg)


def run_safety_tokens(cfg: PactConfig) -> dict[str, Any]:
    """`tokensafe pact safety-tokens`: identify (or load) S for the aligned ``--model``, save and print it."""
    import torch

    from tokensafe.models import load_model
    from tokensafe.pact.method import resolve_safety_tokens

    save_config(cfg, Path(cfg.output_dir) / "config-safety-tokens.yaml")  # at the start, like every command
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tokenizer = load_model(cfg.model, cache_dir=cfg.cache_dir)
    tokens = resolve_safety_tokens(cfg, model, tokenizer)
    out = tokens.save(Path(cfg.output_dir) / "pact_safety_tokens")
    k = len(tokens.token_ids)
    print(f"safety tokens of '{cfg.model}' vs '{cfg.pact_base_model}' (by {tokens.select_by}, K={k}):")
    print(tokens.table(20), flush=True)
    return {
        "safety_tokens": str(out),
        "fingerprint": tokens.fingerprint(),
        "examples": tokens.meta.get("n_examples"),
        "seconds": tokens.meta.get("total_seconds"),
        "use_with": f"--pact_safety_tokens {out}",
    }
