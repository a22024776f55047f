"""Atomic file writes: a result, marker or report file is either the old one or the complete new one, never torn.

Every final file tokensafe writes goes through :func:`atomic_path`: the content is written to a temporary file in the
same directory (same file system, so the rename cannot turn into a copy), flushed and ``fsync``-ed, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows), and the directory entry is ``fsync``-ed so the
rename survives a power cut. A process killed at any point leaves either the previous file or the new one, plus at
worst a ``.<name>.tmp-*`` file that nothing reads.

Directories (a saved model, a cache entry) go through :func:`atomic_dir`: written in a staging directory beside the
target and renamed into place, so the target always holds either nothing, the old whole or the new whole.

Appends to JSONL caches (generations, self-answers, judge verdicts) are not routed here: they stay appends, and their
readers ignore a torn last line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    """Persist a rename. Some platforms and file systems cannot open a directory for fsync: nothing more to do."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, it replaces ``path``.

    For writers that take a file name (``safetensors.save_file``, ``yaml.safe_dump`` to a handle, ...). The parent
    directory is created. On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh staging directory beside ``path``; when the block ends without an exception it becomes ``path``.

    ``keep_existing(path)`` true at the end (another process finished the same entry first) keeps that copy and
    drops the staged one; otherwise whatever ``path`` held is removed and the staging directory renamed over it. On
    an exception the staging directory is removed and ``path`` is left as it was. Hidden name
    (``.<name>.staging-*``), so a listing of the parent never shows a half-written entry as one of its own.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        if keep_existing is not None and keep_existing(target):
            return
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process published the same entry between the removal and the rename
            if keep_existing is None or not keep_existing(target):
                raise
            return
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after the rename


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2, **dumps: Any) -> Path:
    """Atomically replace ``path`` with ``value`` as JSON (newline-terminated)."""
    return write_text(path, json.dumps(value, indent=indent, **dumps) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Atomically replace ``path`` with one JSON object per line (a finished results file, not an append cache)."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_yaml(path: str | os.PathLike, value: Any) -> Path:
    """Atomically replace ``path`` with ``value`` as YAML (keys in their given order)."""
    import yaml

    return write_text(path, yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
