"""`tokensafe prepare`: build the tokenised (cached) mixture and print its statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokensafe.config import check_model_spec, option
from tokensafe.data.dataset import build_tokenized_dataset
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.models import DEFAULT_MODEL, load_tokenizer, resolve_model_path


@dataclass
class PrepareConfig(MixtureArgs):
    """`tokensafe prepare`: tokenise a mixture with the model's chat template and cache it as Arrow."""

    model: str = option(DEFAULT_MODEL, "model whose tokenizer and chat template are used")
    max_length: int = option(256, "maximum tokens per sample (longer samples are truncated and counted)", ge=1)
    cache_dir: str | None = option(None, "cache root for converted models and tokenised data")

    def _check_inputs(self) -> None:
        check_model_spec(self.model, "model", self.cache_dir)


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    records = build_mixture(cfg)
    _, stats = build_tokenized_dataset(records, tokenizer, cfg.max_length, cache_dir=cfg.cache_dir)
    return stats.__dict__
