"""Where tokensafe reads data and keeps its caches.

Both locations are resolved at call time (not import time) so tests and CLI flags can redirect them.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "TOKENSAFE_DATA_DIR"
CACHE_DIR_ENV = "TOKENSAFE_CACHE_DIR"


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The local dataset directory: the explicit ``override``, else ``$TOKENSAFE_DATA_DIR``, else None."""
    value = override if override not in (None, "") else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root (converted models, tokenised datasets, scores): override, env var, or ~/.cache/tokensafe."""
    value = override if override not in (None, "") else os.environ.get(CACHE_DIR_ENV)
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "tokensafe"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
