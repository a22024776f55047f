"""Adapters name their base portably: an adapter over a named model moves to another machine (another cache, another
directory) and loads there; old adapters holding absolute paths still load; a base re-created under the same name
is noticed."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from tokensafe.models import (
    DEFAULT_MODEL,
    MODEL_META_FILE,
    LoraArgs,
    ModelNotFoundError,
    adapter_base_spec,
    apply_lora,
    load_model,
    model_fingerprint,
    models_dir,
    portable_model_name,
    record_base_model,
)
from tokensafe.testing import save_tiny_model

NAME = "tiny-named"


def save_adapter(cache: Path, target: Path, seed: int = 1) -> torch.nn.Module:
    """A LoRA adapter with random non-zero B over the named model ``NAME`` of ``cache``, saved by PEFT at target."""
    model, _ = load_model(NAME, cache_dir=cache)
    model = apply_lora(model, LoraArgs(lora_r=4, lora_alpha=8))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(str(target))
    return model.eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


@pytest.fixture
def machine_a(tmp_path, tokenizer) -> Path:
    cache = tmp_path / "cache_a"
    save_tiny_model(models_dir(cache) / NAME, tokenizer, seed=0)
    return cache


def move_to_machine_b(tmp_path: Path, cache_a: Path, adapter: Path) -> tuple[Path, Path]:
    """Copy the named base into another cache and the adapter elsewhere; remove the originals."""
    cache_b = tmp_path / "cache_b"
    shutil.copytree(models_dir(cache_a) / NAME, models_dir(cache_b) / NAME)
    moved = Path(shutil.copytree(adapter, tmp_path / "elsewhere" / "adapter"))
    shutil.rmtree(cache_a)
    shutil.rmtree(adapter)
    return cache_b, moved


def test_adapter_over_a_named_model_moves_to_another_machine(tmp_path, machine_a):
    adapter = tmp_path / "adapter"
    original = save_adapter(machine_a, adapter)
    assert Path(adapter_base(adapter)).is_absolute()  # what PEFT writes: this machine's cache path
    meta = record_base_model(adapter, NAME, machine_a)
    assert adapter_base(adapter) == NAME
    assert meta == {
        "base_model": NAME,
        "base_model_spec": NAME,
        "base_fingerprint": model_fingerprint(NAME, machine_a),
    }
    assert json.loads((adapter / MODEL_META_FILE).read_text()) == meta
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    expected = logits(original, ids)
    key = model_fingerprint(str(adapter), machine_a)

    cache_b, moved = move_to_machine_b(tmp_path, machine_a, adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, _ = load_model(str(moved), cache_dir=cache_b)
    assert not [w for w in caught if "fingerprint" in str(w.message)]  # same base weights: no warning
    torch.testing.assert_close(logits(loaded, ids), expected)
    assert not torch.allclose(expected, logits(load_model(NAME, cache_dir=cache_b)[0], ids))  # the adapter matters
    assert model_fingerprint(str(moved), cache_b) == key  # same content, same base: same key


def test_old_adapter_with_a_vanished_cache_path_finds_the_named_model(tmp_path, machine_a):
    adapter = tmp_path / "adapter"
    original = save_adapter(machine_a, adapter)  # not recorded: the absolute path stays, as in older adapters
    ids = torch.tensor([[2, 4, 8, 16]])
    expected = logits(original, ids)
    cache_b, moved = move_to_machine_b(tmp_path, machine_a, adapter)
    assert not Path(adapter_base(moved)).exists()
    assert adapter_base_spec(moved, cache_b) == NAME
    torch.testing.assert_close(logits(load_model(str(moved), cache_dir=cache_b)[0], ids), expected)


def test_old_adapter_with_an_existing_absolute_path_still_loads(tmp_path, tiny_model_dir):
    adapter = tmp_path / "adapter"
    model, _ = load_model(str(tiny_model_dir))
    apply_lora(model, LoraArgs(lora_r=4, lora_alpha=8)).save_pretrained(str(adapter))
    assert adapter_base_spec(adapter) == adapter_base(adapter)
    assert Path(adapter_base(adapter)).resolve() == tiny_model_dir.resolve()
    load_model(str(adapter))
    # a vanished path outside any models cache has nowhere else to look: the error names it
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="gone"):
        load_model(str(adapter))


def test_a_base_recreated_under_the_same_name_is_noticed(tmp_path, machine_a, tokenizer):
    adapter = tmp_path / "adapter"
    save_adapter(machine_a, adapter)
    record_base_model(adapter, NAME, machine_a)
    shutil.rmtree(models_dir(machine_a) / NAME)
    save_tiny_model(models_dir(machine_a) / NAME, tokenizer, seed=5)  # other weights, same name
    with pytest.warns(UserWarning, match=f"trained on base '{NAME}' with fingerprint"):
        load_model(str(adapter), cache_dir=machine_a)


def test_portable_names(tmp_path, machine_a, tiny_model_dir, monkeypatch):
    for alias in ("default", "base", "smollm2"):
        assert portable_model_name(alias, machine_a) == DEFAULT_MODEL
    assert portable_model_name(NAME, machine_a) == NAME
    assert portable_model_name(str(models_dir(machine_a) / NAME), machine_a) == NAME  # the cache path, named
    assert portable_model_name(str(tiny_model_dir), machine_a) == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tiny_model_dir.parent)
    assert portable_model_name(tiny_model_dir.name, machine_a) == str(tiny_model_dir.resolve())  # never relative
