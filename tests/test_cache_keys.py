"""Cache keys: content digests, and the three ways the old model fingerprint handed back another model's answers.

Each ``test_failure_*`` reproduces one reported failure end to end through ``tokensafe eval`` on tiny models: the
first evaluation fills the generations cache, the model is then changed the way the report describes, and the
second evaluation must generate again (a cache miss) instead of returning the cached answers.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokensafe import digests
from tokensafe.digests import digest, file_digest, forget_file_digests, tokenizer_key
from tokensafe.eval import run as eval_run
from tokensafe.eval.run import EvalConfig, evaluate
from tokensafe.models import load_model, model_fingerprint
from tokensafe.testing import save_tiny_model, tiny_llama

MIB = 1 << 20


# --------------------------------------------------------------------------------------------------------------
# digests
# --------------------------------------------------------------------------------------------------------------


def test_digest_is_canonical_and_unambiguous():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})  # key order does not matter
    assert digest("a", "b") != digest("ab") != digest(["a", "b"])  # no join ambiguity
    assert digest(1) != digest("1") and digest(True) != digest(1)
    assert len(digest("x")) == 16 and len(digest("x", length=40)) == 40


def test_file_digest_is_the_whole_content_and_remembered(tmp_path, monkeypatch):
    forget_file_digests()
    cache = tmp_path / "cache"
    target = tmp_path / "weights.bin"
    payload = os.urandom(3 * MIB)
    target.write_bytes(payload)
    assert file_digest(target, cache_dir=cache) == hashlib.sha256(payload).hexdigest()

    # Remembered by (path, size, mtime, inode): a second call, in memory or from the on-disk memo of a fresh
    # process (simulated by forgetting the in-memory memo), does not read the file again.
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # noqa: ANN001, ANN202
        if Path(str(file)) == target:
            raise AssertionError("the file was read again")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert file_digest(target, cache_dir=cache) == hashlib.sha256(payload).hexdigest()
    forget_file_digests()
    assert file_digest(target, cache_dir=cache) == hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(builtins, "open", real_open)

    # One byte in the middle changes, same size: the new mtime makes it a new entry, hashed whole.
    changed = bytearray(payload)
    changed[len(changed) // 2] ^= 0xFF
    target.write_bytes(bytes(changed))
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_digest(target, cache_dir=cache) == hashlib.sha256(bytes(changed)).hexdigest()


def test_tokenizer_key_covers_the_chat_template(tokenizer):
    changed = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    assert tokenizer_key(changed) == tokenizer_key(tokenizer)
    changed.chat_template = tokenizer.chat_template.replace("You are a helpful", "You are a terse")
    assert tokenizer_key(changed) != tokenizer_key(tokenizer)


def test_model_key_is_content_not_location(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    (copy / "README.md").write_text("a model card changes nothing the model computes")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    # `tokensafe align`'s records differ between two runs that save the same weights (wall times, name, path).
    (copy / "tokensafe_align.json").write_text('{"name": "b", "seconds_total": 1298.2}')
    (copy / "align_config.yaml").write_text("name: b\nthreads: 1\n")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 2 * config["rms_norm_eps"]}))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)  # what the model computes is still keyed


# --------------------------------------------------------------------------------------------------------------
# helpers for the three failures
# --------------------------------------------------------------------------------------------------------------


def _save_adapter(base_spec: str, target: Path, cache_dir: Path, *, rank: int, seed: int) -> Path:
    """A LoRA adapter over ``base_spec`` with random (non-zero) B matrices, saved like ``tokensafe train`` does."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(base_spec, cache_dir=cache_dir)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(str(target), safe_serialization=True)
    return target


def _tensor_in_the_middle(path: Path) -> str:
    """Name of a tensor whose bytes lie entirely outside the first and last MiB of the safetensors file."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    data_start = 8 + header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        lo, hi = (data_start + offset for offset in entry["data_offsets"])
        if "lora_B" in name and lo >= MIB and hi <= len(raw) - MIB:
            return name
    raise AssertionError(f"{path} ({len(raw)} bytes) has no lora_B tensor in the middle; make the adapter larger")


def _evaluate(model: str, tmp_path: Path, cache_dir: Path) -> dict:
    cfg = EvalConfig(
        model=model,
        name="m",
        suites=["jbb_harmful:2"],
        subset="first",
        judge="keyword",
        batch_size=2,
        max_new_tokens=3,
        output_dir=str(tmp_path / "eval"),
        cache_dir=str(cache_dir),
        progress=False,
    )
    return evaluate(cfg).results["suites"]["jbb_harmful"]


@pytest.fixture
def counted_loads(monkeypatch) -> list[str]:
    """Records every model load made by ``tokensafe eval``."""
    loads: list[str] = []

    def counting_load(spec, **kwargs):  # noqa: ANN001, ANN202
        loads.append(str(spec))
        return load_model(spec, **kwargs)

    monkeypatch.setattr(eval_run, "load_model", counting_load)
    return loads


# --------------------------------------------------------------------------------------------------------------
# the three failures
# --------------------------------------------------------------------------------------------------------------


def test_failure_adapter_weights_differing_mid_file(tokenizer, tmp_path, data_dir, counted_loads):
    """Two adapters that differ only in one lora_B tensor in the middle of a > 2 MiB file are two models."""
    cache = tmp_path / "cache"
    base = save_tiny_model(tmp_path / "base", tokenizer)
    first = _save_adapter(str(base), tmp_path / "adapter_a", cache, rank=512, seed=0)
    weights = first / "adapter_model.safetensors"
    middle = _tensor_in_the_middle(weights)
    second = shutil.copytree(first, tmp_path / "adapter_b")
    tensors = load_file(str(weights))
    tensors[middle] = tensors[middle] + 1.0
    save_file(tensors, str(second / "adapter_model.safetensors"), metadata={"format": "pt"})

    # The situation of the report: same size, same first and last MiB (what the old fingerprint read).
    raw_a, raw_b = weights.read_bytes(), (second / "adapter_model.safetensors").read_bytes()
    assert len(raw_a) == len(raw_b) > 2 * MIB and raw_a != raw_b
    assert raw_a[:MIB] == raw_b[:MIB] and raw_a[-MIB:] == raw_b[-MIB:]
    assert model_fingerprint(first, cache) != model_fingerprint(second, cache)

    assert _evaluate(str(first), tmp_path, cache)["generated"] == 2
    assert _evaluate(str(first), tmp_path, cache)["generated"] == 0  # the cache works for the same model
    assert _evaluate(str(second), tmp_path, cache)["generated"] == 2  # and misses for the other one
    assert counted_loads == [str(first), str(second)]


def test_failure_adapter_over_a_recreated_base(tokenizer, tmp_path, data_dir, counted_loads):
    """Re-running `align` (a new model under the same name) changes the key of every adapter trained over it."""
    cache = tmp_path / "cache"
    named_base = cache / "models" / "aligned"
    save_tiny_model(named_base, tokenizer, seed=0)
    adapter = _save_adapter("aligned", tmp_path / "adapter", cache, rank=4, seed=0)
    before = model_fingerprint(adapter, cache)
    assert _evaluate(str(adapter), tmp_path, cache)["generated"] == 2

    shutil.rmtree(named_base)
    save_tiny_model(named_base, tokenizer, seed=1)  # "align" again: same name, other weights
    assert model_fingerprint(adapter, cache) != before
    assert _evaluate(str(adapter), tmp_path, cache)["generated"] == 2
    assert len(counted_loads) == 2


def test_failure_changed_chat_template(tokenizer, tmp_path, data_dir, counted_loads):
    """A new system prompt in the chat template is another model: its answers are generated, not looked up."""
    cache = tmp_path / "cache"
    model_dir = save_tiny_model(tmp_path / "model", tokenizer)
    before = model_fingerprint(model_dir, cache)
    first = _evaluate(str(model_dir), tmp_path, cache)
    assert first["generated"] == 2

    edited = tokenizer.__class__.from_pretrained(str(model_dir))
    edited.chat_template = tokenizer.chat_template.replace("You are a helpful", "You are a careful")
    assert edited.chat_template != tokenizer.chat_template
    edited.save_pretrained(str(model_dir))
    assert model_fingerprint(model_dir, cache) != before
    second = _evaluate(str(model_dir), tmp_path, cache)
    assert second["generated"] == 2 and counted_loads == [str(model_dir), str(model_dir)]
    rows = [json.loads(line) for line in Path(second["generations"]).read_text().splitlines()[1:]]
    assert len(rows) == 2


def test_every_key_goes_through_digests():
    """No module but tokensafe.digests hashes on its own (one owner of every cache key)."""
    package = Path(digests.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "digests.py" and "hashlib" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_tiny_models_differ_by_seed(tokenizer):
    # Guard for the base-recreation test: seeds 0 and 1 must give different weights.
    a, b = tiny_llama(tokenizer, seed=0), tiny_llama(tokenizer, seed=1)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
