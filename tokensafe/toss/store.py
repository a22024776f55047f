"""Per-token TOSS scores on disk: flat float32 arrays + per-sample offsets in one safetensors file.

Layout (T = number of scored response tokens of the whole dataset, N = number of samples)::

    offsets   int64  (N + 1)  tokens of sample i are [offsets[i], offsets[i + 1])
    positions int32  (T)      index of the token in the sample's input_ids (its label position)
    loss_u    float32 (T)     l_U = -log p_U(token | context), nats
    loss_d    float32 (T)     l_D
    score     float32 (T)     l_U - l_D (high = better explained by the safety-degraded model = risky)

The header metadata holds the tokenisation fingerprint of the dataset and a digest of its token content
(input_ids and labels of every sample). Scores are only meaningful for the exact token layout they were computed
on, so loading them for another tokenisation raises :class:`ScoresMismatchError` instead of silently shifting
scores against tokens (the official code's drift between scoring and training tokenisation).

"Response tokens" here are labelled positions t >= 1: position 0 has no context to be predicted from, and the
trainer never trains it either (the loss shifts by one). The chat template always puts a system/user turn first,
so in practice every labelled token is scored, the first response token included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.digests import token_layout_digest
from tokensafe.errors import UsageError

FORMAT_VERSION = "2"  # 2: content digest from tokensafe.digests (keys of format 1 are not comparable)
SCORES_FILE = "scores.safetensors"
_META_KEY = "tokensafe_toss"


class ScoresMismatchError(UsageError):
    """Scores were computed for another tokenisation (or another dataset) than the one they are used with."""


def response_positions(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Indices t >= 1 whose label is not IGNORE_INDEX (the tokens a causal LM is trained on), as int32."""
    labels = np.asarray(labels)
    return (np.flatnonzero(labels[1:] != IGNORE_INDEX) + 1).astype(np.int32)


def token_digest(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> str:
    """The exact token layout of the samples (``digests.token_layout_digest``): scores index these positions."""
    return token_layout_digest(input_ids, labels)


def resolve_scores_path(path: str | os.PathLike) -> Path:
    """A scores file, or a directory holding ``scores.safetensors``."""
    path = Path(path)
    return path / SCORES_FILE if path.is_dir() else path


@dataclass
class TokenScores:
    """Token losses of the two reference models for every response token of one tokenised dataset."""

    offsets: np.ndarray
    positions: np.ndarray
    loss_u: np.ndarray
    loss_d: np.ndarray
    fingerprint: str
    content_digest: str
    meta: dict[str, Any] = field(default_factory=dict)
    score: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.positions = np.ascontiguousarray(self.positions, dtype=np.int32)
        self.loss_u = np.ascontiguousarray(self.loss_u, dtype=np.float32)
        self.loss_d = np.ascontiguousarray(self.loss_d, dtype=np.float32)
        n = int(self.offsets[-1]) if self.offsets.size else 0
        if self.offsets.size == 0 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must start at 0 and be non-decreasing")
        if not (self.positions.size == self.loss_u.size == self.loss_d.size == n):
            raise ValueError(
                f"positions/loss_u/loss_d hold {self.positions.size}/{self.loss_u.size}/{self.loss_d.size} values "
                f"but the offsets describe {n} tokens"
            )
        self.score = self.loss_u - self.loss_d  # float32: l_U - l_D = log p_D - log p_U

    @property
    def n_samples(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def counts(self) -> np.ndarray:
        """Scored tokens per sample (int64, N)."""
        return np.diff(self.offsets)

    def sample_ids(self) -> np.ndarray:
        """Sample index of every scored token (int64, T)."""
        return np.repeat(np.arange(self.n_samples, dtype=np.int64), self.counts)

    def token_index(self) -> np.ndarray:
        """Index j of every scored token within its sample's response (0 = first response token), int64 (T)."""
        return np.arange(self.n_tokens, dtype=np.int64) - np.repeat(self.offsets[:-1], self.counts)

    def sample(self, i: int) -> slice:
        """Flat slice of sample ``i``'s tokens."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def with_loss_d(self, loss_d: np.ndarray, **meta: Any) -> TokenScores:
        """The same tokens and l_U with a new l_D (TOSS-Pro re-scores only the safety-degraded model)."""
        return TokenScores(
            self.offsets, self.positions, self.loss_u, loss_d, self.fingerprint, self.content_digest,
            {**self.meta, **meta},
        )  # fmt: skip

    # --- checks -----------------------------------------------------------------------------------------------

    def check_fingerprint(self, fingerprint: str | None) -> None:
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ScoresMismatchError(
                f"these scores were computed for tokenisation {self.fingerprint}, but the data is tokenised as "
                f"{fingerprint} (other records, tokenizer, chat template or max_length): re-run `tokensafe toss-score`"
            )

    def check_dataset(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> None:
        """Raise unless the scores describe exactly these samples' response tokens."""
        digest = token_digest(input_ids, labels)
        if digest != self.content_digest:
            raise ScoresMismatchError(
                f"the dataset's tokens (digest {digest}) differ from those the scores were computed on "
                f"({self.content_digest}): re-run `tokensafe toss-score` for this dataset"
            )

    # --- io -----------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename) so a killed run never leaves a half-written scores file."""
        from safetensors.numpy import save_file

        path = resolve_scores_path(path) if Path(path).is_dir() else Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "content_digest": self.content_digest}
        tensors = {
            "offsets": self.offsets,
            "positions": self.positions,
            "loss_u": self.loss_u,
            "loss_d": self.loss_d,
            "score": self.score,
        }
        from tokensafe.atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps({**header, "meta": self.meta}, default=str)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str | None = None) -> TokenScores:
        """Load a scores file; with ``fingerprint``, raise :class:`ScoresMismatchError` unless it matches."""
        from safetensors import safe_open

        path = resolve_scores_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no TOSS scores at {path} (run `tokensafe toss-score` first)")
        with safe_open(str(path), framework="numpy") as handle:
            header = json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))
            if header.get("format") != FORMAT_VERSION:
                raise ScoresMismatchError(
                    f"{path} is not a TOSS scores file of format {FORMAT_VERSION} (found {header.get('format')!r}): "
                    "re-run `tokensafe toss-score`"
                )
            arrays = {name: handle.get_tensor(name) for name in ("offsets", "positions", "loss_u", "loss_d")}
        scores = cls(
            **arrays,
            fingerprint=header["fingerprint"],
            content_digest=header["content_digest"],
            meta=header.get("meta", {}),
        )
        scores.check_fingerprint(fingerprint)
        return scores
