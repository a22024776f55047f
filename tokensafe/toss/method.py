"""`tokensafe train --method toss`: selective fine-tuning on the tokens TOSS keeps.

Dropped tokens keep their place in the input and lose their label (IGNORE_INDEX); soft mode adds a per-token
``weights`` column instead. The training core normalises the loss by the number of labelled tokens, so the loss is
the mean over retained tokens and a sample whose every token was dropped contributes exactly nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tokensafe.data.dataset import dataset_fingerprint
from tokensafe.data.mixtures import MixtureArgs, build_mixture
from tokensafe.methods import MethodSetup, register_method
from tokensafe.toss.select import apply_selection, format_stats, select_with_args, selection_stats
from tokensafe.toss.store import TokenScores

_MIXTURES: dict[str, list] = {}


def mixture_records(cfg: MixtureArgs) -> list:
    """``build_mixture(cfg)``, remembered per mixture setting: the TOSS steps of one pipeline run share it (a large
    task source such as SST-2 takes seconds to read)."""
    key = json.dumps({f.name: getattr(cfg, f.name) for f in dataclasses.fields(MixtureArgs)}, sort_keys=True)
    if key not in _MIXTURES:
        _MIXTURES.clear()  # keep one mixture in memory, not one per setting ever seen
        _MIXTURES[key] = build_mixture(cfg)
    return _MIXTURES[key]


@register_method("toss")
def setup_toss(cfg: Any, model: Any, tokenizer: Any, dataset: Any) -> Any:
    """Load ``cfg.scores`` (checked against this run's tokenisation), select, and mask the dataset's labels."""

    if not cfg.scores:
        raise ValueError("--method toss needs --scores: the file written by `tokensafe toss-score` (or toss-pro)")
    # The fingerprint this run's tokenisation has; the scores must have been computed on the same one.
    fingerprint = dataset_fingerprint(mixture_records(cfg), tokenizer, cfg.max_length)
    scores = TokenScores.load(cfg.scores, fingerprint=fingerprint)
    selection = select_with_args(scores, cfg)
    print(format_stats(selection_stats(scores, selection)), flush=True)
    return MethodSetup(model=model, dataset=apply_selection(dataset, scores, selection))
