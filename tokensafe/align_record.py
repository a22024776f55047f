"""What `tokensafe align` leaves beside an aligned model's weights, and how to read it back.

``tokensafe_align.json`` (the run's summary: sources, data fingerprint, base fingerprint, wall times) and
``align_config.yaml`` (every setting) let a results file say how its starting model was made, so a later session can
rebuild the same start and check that it gets the same fingerprint. Neither is part of the model's key
(:mod:`tokensafe.digests`): they hold wall times, paths and the name, which differ between two runs that save the same
weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

ALIGN_SUMMARY_FILE = "tokensafe_align.json"
ALIGN_CONFIG_FILE = "align_config.yaml"
# Settings that say where and how fast a run went, not what it trained: left out of the record.
RUN_ONLY_SETTINGS = frozenset(
    {
        "output_dir",
        "data_dir",
        "cache_dir",
        "threads",
        "resume",
        "logging_steps",
        "save_steps",
        "save_minutes",
        "save_total_limit",
    }
)


def read_align_record(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """How the aligned model in ``model_dir`` was made, or None when `tokensafe align` did not make it.

    Returns ``{"name", "base_fingerprint", "data_fingerprint", "samples", "settings"}``; ``settings`` are the align
    settings without paths and run-only fields (:data:`RUN_ONLY_SETTINGS`). Unreadable records count as absent: this
    is a description for a results file, never an input to a computation.
    """
    directory = Path(model_dir)
    try:
        summary = json.loads((directory / ALIGN_SUMMARY_FILE).read_text(encoding="utf-8"))
        settings = yaml.safe_load((directory / ALIGN_CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(summary, dict) or not isinstance(settings, dict):
        return None
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    return {
        "name": summary.get("name"),
        "base_fingerprint": summary.get("base_fingerprint"),
        "data_fingerprint": data.get("fingerprint"),
        "samples": data.get("samples"),
        "settings": {k: v for k, v in settings.items() if k not in RUN_ONLY_SETTINGS},
    }
