"""Key/value-cache plumbing that works across transformers 5.x.

transformers 5.24 renamed the decoder's ``past_key_values`` argument and output field to ``cache`` (the old name is
deprecated, to be removed in 5.40). The prefix-sharing code paths (TOSS scoring, PACT reference logits) run a shared
prompt prefix once and reuse its cache; both go through :func:`shared_prefix_cache`, so either naming works.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _cache_argument(module_class: type) -> str:
    """The name under which ``forward`` of this module class accepts a key/value cache.

    The first ``forward`` up the class hierarchy that names either argument decides, so a subclass whose forward
    only passes ``**kwargs`` through gets the name of the model it wraps.
    """
    for klass in module_class.__mro__:
        forward = klass.__dict__.get("forward")
        if forward is None:
            continue
        parameters = inspect.signature(forward).parameters
        for name in ("cache", "past_key_values"):
            if name in parameters:
                return name
    return "past_key_values"


def cache_argument(module: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for calling ``module`` with a key/value cache under the name its transformers version uses."""
    return {_cache_argument(type(module)): cache}


def returned_cache(output: Any) -> Any:
    """The key/value cache of a model output (``cache`` in transformers >= 5.24, ``past_key_values`` before)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def shared_prefix_cache(module: torch.nn.Module, input_ids: torch.Tensor, prefix: int) -> dict[str, Any]:
    """Run the first ``prefix`` tokens, which every row of ``input_ids`` (B, L) shares, once as a single row and
    return the keyword argument that hands their key/value cache, repeated over the B rows, to a call of ``module``
    on ``input_ids[:, prefix:]``."""
    cache = returned_cache(module(input_ids=input_ids[:1, :prefix], use_cache=True))
    cache.batch_repeat_interleave(input_ids.size(0))
    return cache_argument(module, cache)
