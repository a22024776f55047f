"""SafeInstr (Bianchi et al. 2024, "Safety-tuned LLaMAs"): mix safety demonstrations into the fine-tuning set.

The demonstrations (harmful prompt -> refusal / safe answer) are a *data* option, ``--safeinstr_n N`` of
:class:`~tokensafe.data.mixtures.MixtureArgs`, so they combine with every method and every consumer of the mixture
(TOSS scoring, PACT caches, the sample-level baselines) sees the same records. ``--method safeinstr`` is plain SFT on
such a mixture; it refuses to run without demonstrations, where it would silently be SFT.
"""

from __future__ import annotations

from typing import Any

import datasets

from tokensafe.methods import MethodSetup, register_method


@register_method("safeinstr")
def setup_safeinstr(cfg: Any, model: Any, tokenizer: Any, dataset: datasets.Dataset):
    """METHODS['safeinstr']: SFT on a mixture that holds ``safeinstr_n`` safety demonstrations."""

    if cfg.safeinstr_n <= 0:
        raise ValueError(
            "--method safeinstr trains on added safety demonstrations: set --safeinstr_n N > 0 "
            "(the option also works with any other method)"
        )
    added = sum(1 for source in dataset["source"] if source == cfg.safeinstr_source)
    if added < cfg.safeinstr_n:
        raise ValueError(f"the dataset holds {added} '{cfg.safeinstr_source}' rows, expected {cfg.safeinstr_n}")
    print(f"safeinstr: {added} safety demonstrations from '{cfg.safeinstr_source}' in {len(dataset)} samples")
    return MethodSetup(model=model, dataset=dataset)
