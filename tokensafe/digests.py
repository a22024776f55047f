"""Every cache key and content digest of tokensafe, in one place.

A cache key must change whenever anything that changes the cached value changes; a key that misses an input
returns another computation's answer without a word. So keys are built here, from whole contents, never from
sizes, names or partial reads:

- ``digest(*parts)``: sha256 of a canonical JSON encoding of ``parts`` (dict keys sorted), hex-truncated.
- ``file_digest(path)``: sha256 of a file's whole content, streamed in 4 MiB blocks. The digest is remembered by
  (resolved path, size, mtime in ns, inode) in memory and in ``<cache>/file_digests.jsonl``, so a 500 MB weights
  file is read once per change, not once per command.
- ``tokenizer_key(tokenizer)``: vocabulary, added/special tokens and chat template: what decides token ids and the
  text a model is prompted with.
- ``model_key(spec)`` (in :mod:`tokensafe.models`, which resolves specs): config + every weights file + tokenizer
  files + chat template; an adapter's key includes its base model's key.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokensafe.align_record import ALIGN_CONFIG_FILE, ALIGN_SUMMARY_FILE

DEFAULT_LENGTH = 16
_BLOCK = 4 << 20
_MEMO_FILE = "file_digests.jsonl"
_memo: dict[tuple[str, int, int, int], str] = {}
_memo_lock = threading.Lock()
_loaded_memo_files: set[str] = set()


def _canonical(value: Any) -> Any:
    """JSON-able form of ``value``: paths become strings, sets sorted lists, dataclass-likes their dicts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def digest(*parts: Any, length: int = DEFAULT_LENGTH) -> str:
    """sha256 (hex, first ``length`` characters) of a canonical JSON encoding of ``parts``.

    Equal values give equal digests across processes and machines (sorted dict keys, no whitespace); ``("a", "b")``
    and ``("ab",)`` differ, unlike a plain string join.
    """
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


class StreamDigest:
    """Incremental sha256 for content too large to build as one value (token arrays, shards)."""

    def __init__(self, *header: Any) -> None:
        self._hasher = hashlib.sha256()
        if header:
            self.update_json(*header)

    def update_bytes(self, data: bytes) -> None:
        # Length-prefixed, so consecutive chunks cannot run into each other ("ab" + "c" != "a" + "bc").
        self._hasher.update(len(data).to_bytes(8, "little"))
        self._hasher.update(data)

    def update_json(self, *parts: Any) -> None:
        self.update_bytes(json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":")).encode())

    def hexdigest(self, length: int = DEFAULT_LENGTH) -> str:
        return self._hasher.hexdigest()[:length]


def _memo_path(cache_dir: str | os.PathLike | None) -> Path | None:
    from tokensafe.paths import cache_dir as resolve_cache_dir

    try:
        return resolve_cache_dir(cache_dir) / _MEMO_FILE
    except OSError:  # a read-only home: digests are still right, only not remembered across processes
        return None


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _load_memo(memo_file: Path) -> None:
    if str(memo_file) in _loaded_memo_files:
        return
    _loaded_memo_files.add(str(memo_file))
    if not memo_file.is_file():
        return
    with open(memo_file, encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                _memo[(entry["path"], entry["size"], entry["mtime_ns"], entry["inode"])] = entry["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: that file is simply hashed again


def file_digest(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, remember: bool = True) -> str:
    """Full sha256 (64 hex characters) of the file's content, remembered by path, size, mtime and inode.

    Any rewrite of the file changes its mtime (and usually its size or inode), so a remembered digest is never
    returned for changed content; a file restored with an old mtime by hand is the one case this cannot see.
    """
    path = Path(path)
    key = _stat_key(path)
    memo_file = _memo_path(cache_dir) if remember else None
    with _memo_lock:
        if memo_file is not None:
            _load_memo(memo_file)
        if key in _memo:
            return _memo[key]
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            hasher.update(block)
    value = hasher.hexdigest()
    if _stat_key(path) != key:  # written to while we read: do not remember a digest of torn content
        return value
    with _memo_lock:
        _memo[key] = value
        if memo_file is not None:
            try:
                entry = {"path": key[0], "size": key[1], "mtime_ns": key[2], "inode": key[3], "sha256": value}
                # One short line per append: concurrent writers interleave whole lines on POSIX (O_APPEND).
                with open(memo_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")
            except OSError:
                pass
    return value


def forget_file_digests() -> None:
    """Drop the in-memory memo (tests; the on-disk memo is re-read on the next call)."""
    with _memo_lock:
        _memo.clear()
        _loaded_memo_files.clear()


def tokenizer_key(tokenizer: Any, length: int = DEFAULT_LENGTH) -> str:
    """Digest of what decides token ids and prompt text: vocabulary, added tokens, special tokens, chat template.

    ``tokenizer`` is a ``PreTrainedTokenizerBase``; the padding side is left out on purpose (it changes batching,
    which keys that depend on it include separately).
    """
    vocab = sorted(tokenizer.get_vocab().items())
    added = sorted((str(t), i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return digest(
        "tokenizer",
        type(tokenizer).__name__,
        vocab,
        [[str(t), i] for t, i in added],
        special,
        str(tokenizer.chat_template or ""),
        str(getattr(tokenizer, "eos_token", "")),
        str(getattr(tokenizer, "pad_token", "")),
        length=length,
    )


# Files of a model directory that do not change what the model computes or how it is prompted: model cards,
# provenance notes, pickled training arguments, and `tokensafe align`'s records (its summary holds wall times and the
# output path, its saved config the name: with them in the key, re-running the same alignment to the same weights gave
# a new fingerprint and made every run keyed on the start stale). Everything else (config, weights, tokenizer files,
# chat template, generation config) is part of the key.
_MODEL_FILES_IGNORED = {
    "README.md",
    "training_args.bin",
    "tokensafe_source.json",
    ALIGN_SUMMARY_FILE,
    ALIGN_CONFIG_FILE,
}
MODEL_KEY_VERSION = "2"  # 1 = config + size + first/last MiB of each weights file (missed mid-file changes)


def model_dir_key(
    path: str | os.PathLike,
    *,
    base_key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    length: int = DEFAULT_LENGTH,
) -> str:
    """Key of a local model or adapter directory: the whole content of every file that affects its outputs.

    Weights (``*.safetensors``), ``config.json`` / ``adapter_config.json``, ``generation_config.json`` and the
    tokenizer files (vocabulary, ``tokenizer_config.json`` with the chat template, ``chat_template.jinja``) are
    hashed whole; only the files in ``_MODEL_FILES_IGNORED`` and sub-directories are left out. An adapter loads
    over a base model, so its key must include ``base_key`` (the base's own key): without it, re-training the base
    under the same name would hand back the answers of the old base + adapter.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name not in _MODEL_FILES_IGNORED)
    if not files:
        raise FileNotFoundError(f"{path} holds no model files")
    contents = [[p.name, file_digest(p, cache_dir=cache_dir)] for p in files]
    return digest("model", MODEL_KEY_VERSION, contents, base_key, length=length)


def token_layout_digest(input_ids: Any, labels: Any, length: int = 32) -> str:
    """sha256 over every row's ``input_ids`` and ``labels`` (int32 bytes, length-prefixed): the exact token layout.

    ``input_ids`` / ``labels`` are sequences of rows (lists or arrays of ints, equal lengths per row). Scores,
    reference caches and masks are indexed by these positions; any change of tokenisation must change the digest.
    """
    return token_rows_digest(zip(input_ids, labels, strict=True), length)


def token_rows_digest(rows: Iterable[tuple[Any, Any]], length: int = 32) -> str:
    """:func:`token_layout_digest` over an iterable of (input_ids, labels) rows (streams large datasets)."""
    import numpy as np

    stream = StreamDigest("token-layout")
    for ids, labs in rows:
        stream.update_bytes(np.asarray(ids, dtype=np.int32).tobytes())
        stream.update_bytes(np.asarray(labs, dtype=np.int32).tobytes())
    return stream.hexdigest(length)


def dataset_tokens_key(dataset: Any, tokenizer: Any, length: int = DEFAULT_LENGTH) -> str:
    """Key of a tokenised ``datasets.Dataset`` (columns ``input_ids``, ``labels``) under ``tokenizer``.

    Everything indexed by answer position (PACT reference caches, constrained-SFT reference log-probs) depends on
    exactly these rows and on the tokenizer that made them. Rows are streamed in batches of 1024: a column read
    whole would be a Python list of every token of the dataset.
    """
    batches = dataset.select_columns(["input_ids", "labels"]).iter(batch_size=1024)
    rows = (pair for batch in batches for pair in zip(batch["input_ids"], batch["labels"], strict=True))
    return digest("token-rows", tokenizer_key(tokenizer), token_rows_digest(rows), length=length)


def array_digest(*parts: Any, length: int = DEFAULT_LENGTH) -> str:
    """Digest of a mix of numpy arrays (dtype, shape and bytes) and JSON-able values."""
    import numpy as np

    stream = StreamDigest("arrays")
    for part in parts:
        if isinstance(part, np.ndarray):
            stream.update_json("ndarray", str(part.dtype), list(part.shape))
            stream.update_bytes(np.ascontiguousarray(part).tobytes())
        else:
            stream.update_json(part)
    return stream.hexdigest(length)
