"""Generic helpers for a model being trained: reach the module inside a wrapper, run it as a frozen reference.

Several methods compare the model being fine-tuned with itself before fine-tuning (PACT's reference, constrained
SFT's log π_ref, TOSS-free baselines that need LoRA layers): they share these helpers, so none reaches into another
method's package for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP/FSDP-style wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


@contextlib.contextmanager
def frozen_reference(model: torch.nn.Module, disable_adapter: bool = False) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (and with its LoRA adapter disabled when asked); the training mode is restored after."""
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        if disable_adapter:
            if not hasattr(inner, "disable_adapter"):
                raise ValueError("the adapter-disabled reference needs a PEFT (LoRA) model; use a separate model")
            with inner.disable_adapter():
                yield inner
        else:
            yield inner
    finally:
        inner.train(was_training)
