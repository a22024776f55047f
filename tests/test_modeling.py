"""tokensafe.modeling: unwrap and frozen_reference (shared by PACT, constrained SFT and the LoRA-direction code)."""

from __future__ import annotations

import pytest
import torch

from tokensafe.modeling import frozen_reference, unwrap
from tokensafe.models import LoraArgs, apply_lora


class Wrapper(torch.nn.Module):
    """What DDP / FSDP look like from outside: the real model under ``.module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


def test_unwrap_reaches_the_innermost_module():
    inner = torch.nn.Linear(2, 2)
    assert unwrap(Wrapper(Wrapper(inner))) is inner and unwrap(inner) is inner


def test_frozen_reference_is_the_model_before_lora_and_restores_training_mode(tiny_model):
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base_logits = tiny_model(input_ids=ids).logits
    model = apply_lora(tiny_model, LoraArgs(lora_r=2, lora_alpha=2))
    for module in model.modules():  # make the adapter change the output (lora_B starts at zero)
        if hasattr(module, "lora_B"):
            for layer in module.lora_B.values():
                torch.nn.init.normal_(layer.weight, std=0.5)
    model.train()
    wrapped = Wrapper(model)
    with torch.no_grad():
        with frozen_reference(wrapped, disable_adapter=True) as reference:
            assert reference is model and not reference.training
            assert torch.allclose(reference(input_ids=ids).logits, base_logits, atol=1e-5)
        assert model.training  # restored
        assert not torch.allclose(model(input_ids=ids).logits, base_logits, atol=1e-3)  # the adapter is back
        model.eval()
        with frozen_reference(model) as reference:
            assert reference is model
        assert not model.training  # eval mode restored as eval


def test_frozen_reference_without_an_adapter_to_disable(tiny_model):
    tiny_model.train()
    with pytest.raises(ValueError, match="the adapter-disabled reference needs a PEFT"):
        with frozen_reference(tiny_model, disable_adapter=True):
            pass
    assert tiny_model.training


def test_one_definition_of_the_model_helpers():
    import tokensafe.baselines.directions as directions
    import tokensafe.pact.reference as reference

    assert directions.unwrap is unwrap and reference.unwrap is unwrap
    assert reference.frozen_reference is frozen_reference
