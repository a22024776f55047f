"""Training methods: what a method contributes to `tokensafe train` (:class:`MethodSetup`) and the registry of them.

A method is a function ``setup(cfg, model, tokenizer, dataset) -> MethodSetup``, registered under its ``--method``
name with ``@register_method("name")`` in the module that defines it. Each method module imports this module at
its top; this module imports none of them and nothing heavy (no torch, no transformers), so there is no import
cycle and the method names can be listed without loading a framework. :mod:`tokensafe.train` imports every built-in
method module at its top, which fills :data:`METHODS` before any run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel

    from tokensafe.losses import LossTerm

# The built-in methods; tokensafe.train registers exactly these (tests/test_methods.py checks both lists agree).
MethodName = Literal[
    "sft",
    "toss",
    "pact",
    "kl",
    "toss_pact",
    "constrained_sft",
    "safelora",
    "asft",
    "safeinstr",
    "sample_random",
    "sample_score",
]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)
# The methods whose setup adds a loss term over the (B, L) logits: they cannot train on packed rows (padding_free).
LOSS_TERM_METHODS: frozenset[str] = frozenset({"pact", "kl", "toss_pact", "constrained_sft", "asft"})


@dataclass
class MethodSetup:
    """What a training method contributes: the (augmented) dataset, extra loss terms, and an optional post-step.

    ``dataset`` may gain per-token columns (``weights``, cache indices) that the method's loss terms declare.
    ``post_train(model, output_dir)`` runs after training (e.g. a projection of the adapter) before saving; it changes
    ``model`` in place.
    """

    model: PreTrainedModel
    dataset: datasets.Dataset
    loss_terms: list[LossTerm] = field(default_factory=list)
    post_train: Callable[[PreTrainedModel, str], PreTrainedModel] | None = None


SetupFunction = Callable[[Any, "PreTrainedModel", Any, "datasets.Dataset"], MethodSetup]

METHODS: dict[str, SetupFunction] = {}


def register_method(name: str) -> Callable[[SetupFunction], SetupFunction]:
    """Decorator: make ``setup`` the method ``--method name``. A name is registered once (a second, different
    function under the same name is an error: it would silently replace a method)."""

    def decorate(setup: SetupFunction) -> SetupFunction:
        existing = METHODS.get(name)
        if existing is not None and existing is not setup:
            raise ValueError(f"method '{name}' is already registered by {existing.__module__}.{existing.__qualname__}")
        METHODS[name] = setup
        return setup

    return decorate


def resolve_method(name: str) -> SetupFunction:
    """The setup function registered as ``name`` (import :mod:`tokensafe.train` first for the built-in ones)."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


@register_method("sft")
def setup_sft(cfg: Any, model: PreTrainedModel, tokenizer: Any, dataset: datasets.Dataset) -> MethodSetup:
    """Plain SFT on every response token."""
    return MethodSetup(model=model, dataset=dataset)
