"""The API judge's verdict cache: an append-only JSONL file of raw judge answers.

The raw answer is stored, not the verdict, so a parser fix applies to cached answers too. The key is a digest of
everything that decides the answer: the endpoint (normalised base URL, without credentials), the judge model, the
template (name, fingerprint, how messages are formed), the prompt and the response. Two endpoints serving a model
under the same name (a local test server and a provider) therefore never share answers. Nothing secret is stored:
the API key is not part of any key or row.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from tokensafe.digests import digest

KEY_VERSION = "verdict-v2"  # v1 keys (before the endpoint was part of them) never match: those answers are re-asked


class VerdictCache:
    """Append-only JSONL cache of raw judge answers keyed by :meth:`key`.

    A line cut short by a crash is skipped on load. Thread-safe for one process; appends from several processes
    interleave whole lines.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        self._torn_tail = False  # the file ends mid-line: the next append must start a fresh line
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            self._torn_tail = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self._answers[row["key"]] = row["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(endpoint: str, model: str, template: str, prompt: str, response: str) -> str:
        """Cache key of one question; ``endpoint`` is the base URL as
        :func:`~tokensafe.eval.http_client.endpoint_key` normalises it (no credentials)."""
        return digest(KEY_VERSION, endpoint, model, template, prompt, response, length=32)

    def get(self, key: str) -> str | None:
        return self._answers.get(key)

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self._answers[key] = answer
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(("\n" if self._torn_tail else "") + json.dumps({"key": key, "answer": answer}) + "\n")
            self._torn_tail = False

    def __len__(self) -> int:
        return len(self._answers)
