"""The frozen reference of PACT: its logits restricted to the safety tokens S, in the full and no-prompt views.

The reference (the aligned model before fine-tuning) and its inputs are fixed, so everything PACT needs from it is
|S| logits per answer position and view. :func:`build_reference_cache` computes them once; the loss then reads
rows of a flat array instead of running two extra forwards per step. Live sources compute the same quantities on
the fly: ``adapter`` mode runs the trained LoRA model with its adapter disabled (no second copy of the weights),
``model`` mode runs a separate frozen model (the official PACT design).

Cache layout (one safetensors file plus a JSON sidecar for humans):

* ``full``: (N, |S|) logits of the full-context view, N = answer positions of the whole dataset, in dataset row
  order and, within a row, in the order of :func:`~tokensafe.pact.layout.answer_layout`.
* ``post``: (N, |S|) logits of the no-prompt view (absent when the method does not use it).
* ``offsets``: (n_rows + 1,) int64, row i owns ``full[offsets[i]:offsets[i + 1]]``.
* ``token_ids``: (|S|,) int64; ``header_ids``: the no-prompt header.
* metadata: ``tokens_fingerprint`` (tokenizer + every row's input_ids and labels). Loading the cache for a
  dataset with another fingerprint is an error: the rows would be silently misaligned otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from tokensafe import distributed
from tokensafe.atomic import atomic_dir, atomic_path, write_json
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.digests import dataset_tokens_key
from tokensafe.errors import UsageError
from tokensafe.faults import maybe_kill
from tokensafe.kv_cache import shared_prefix_cache
from tokensafe.losses import LossContext
from tokensafe.modeling import frozen_reference, unwrap
from tokensafe.pact.layout import AnswerLayout, answer_layout, post_view, restrict

CACHE_FILE = "reference_cache.safetensors"
META_FILE = "reference_cache.json"
CACHE_VERSION = "1"


class CacheMismatchError(UsageError):
    """A reference cache used with a dataset (or safety-token set) it was not built for."""


_HEAD_OK = "_pact_restricted_head_ok"  # per-model flags, set by the one-time checks in _answer_logits
_PREFIX_OK = "_pact_shared_prefix_ok"


def _shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> int:
    """Leading tokens that every row of the batch has in common (the system turn, the no-prompt header), capped so
    that every logit we need still lies after them."""
    if input_ids.size(0) < 2 or positions.numel() == 0:
        return 0
    same = ((input_ids == input_ids[:1]) & (attention_mask == 1)).all(dim=0)
    return min(int(same.int().cumprod(0).sum()), int(positions.min()))


def _logits_at(
    model, input_ids, attention_mask, rows, positions, token_ids, *, head: bool, prefix: int
) -> torch.Tensor:
    """Logits over S at (rows, positions): (n, |S|) float32.

    ``head``: run the decoder and project only the needed hidden states onto S's rows of the output head, skipping
    the (B, L, V) logits (the head is ~20% of a 135M model's forward FLOPs and its largest activation).
    ``prefix``: run the ``prefix`` tokens all rows share once, with batch size 1, and the rest of every row on top
    of that key/value cache.
    """
    body = model.get_decoder() if head else model
    cache: dict[str, Any] = {}
    if prefix:
        cache = shared_prefix_cache(body, input_ids, prefix)
        input_ids, positions = input_ids[:, prefix:], positions - prefix
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=bool(cache), **cache)
    if not head:
        return restrict(body(**kwargs).logits, rows, positions, token_ids).float()
    hidden = body(**kwargs).last_hidden_state
    out_head = model.get_output_embeddings()
    weight = out_head.weight if token_ids is None else out_head.weight[token_ids]
    out = hidden[rows, positions] @ weight.T
    bias = getattr(out_head, "bias", None)
    if bias is not None:
        out = out + (bias if token_ids is None else bias[token_ids])
    return out.float()


def _verified(inner: torch.nn.Module, flag: str, fast, plain) -> bool:
    """Run the one-time check ``fast() ≈ plain()`` for ``flag`` on ``inner`` (False when ``fast`` cannot run)."""
    if getattr(inner, flag, None) is None:
        try:
            ok = bool(torch.allclose(fast(), plain(), atol=1e-4, rtol=1e-4))
        except (AttributeError, TypeError, NotImplementedError, RuntimeError, ValueError):
            ok = False
        object.__setattr__(inner, flag, ok)
    return getattr(inner, flag)


def _answer_logits(model, input_ids, attention_mask, rows, positions, token_ids, fast: bool) -> torch.Tensor:
    """S-restricted logits at (rows, positions). With ``fast``, through the restricted head and the shared prefix
    when each reproduces the plain forward's logits: checked once per model on one or two rows, so a soft-capped or
    scaled head, or a cache type without batch expansion, falls back to the plain full forward."""
    plain = dict(head=False, prefix=0)
    inner = unwrap(model)
    if not fast or rows.numel() == 0:
        return _logits_at(model, input_ids, attention_mask, rows, positions, token_ids, **plain)
    head, prefix = False, _shared_prefix_length(input_ids, attention_mask, positions)
    if hasattr(inner, "get_decoder") and hasattr(inner, "get_output_embeddings"):
        one = rows == rows[0]
        probe = (input_ids[rows[0] : rows[0] + 1], attention_mask[rows[0] : rows[0] + 1])
        probe += (torch.zeros_like(rows[one]), positions[one], token_ids)
        head = _verified(
            inner,
            _HEAD_OK,
            lambda: _logits_at(model, *probe, head=True, prefix=0),
            lambda: _logits_at(model, *probe, **plain),
        )
    if prefix and getattr(inner, _PREFIX_OK, None) is None:
        two = rows < 2  # the first two rows (padded differently, sharing a prefix)
        probe = (input_ids[:2], attention_mask[:2], rows[two], positions[two], token_ids)
        probe_prefix = _shared_prefix_length(input_ids[:2], attention_mask[:2], positions[two])
        if probe_prefix:
            _verified(
                inner,
                _PREFIX_OK,
                lambda: _logits_at(model, *probe, head=head, prefix=probe_prefix),
                lambda: _logits_at(model, *probe, **plain),
            )
    if not getattr(inner, _PREFIX_OK, False):
        prefix = 0
    return _logits_at(model, input_ids, attention_mask, rows, positions, token_ids, head=head, prefix=prefix)


@torch.no_grad()
def reference_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    token_ids: torch.Tensor | None,
    *,
    header_ids: list[int] | None,
    pad_token_id: int,
    layout: AnswerLayout | None = None,
    fast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference logits at the answer positions of a batch: (full (n, |S|), post (n, |S|) or None), float32.

    ``header_ids=None`` skips the no-prompt view. ``token_ids=None`` keeps the whole vocabulary.
    ``fast=False`` runs the model's plain full forwards (the official design's cost); ``fast=True`` projects only
    the answer positions onto S and runs the prefix every row shares once (each checked once per model).
    """
    layout = layout if layout is not None else answer_layout(labels)
    full = _answer_logits(model, input_ids, attention_mask, layout.batch_index, layout.logit_index, token_ids, fast)
    if header_ids is None:
        return full, None
    batch = post_view(input_ids, labels, header_ids, pad_token_id)
    if batch.sequence_index.numel() == 0:
        return full, full.new_zeros(full.shape)
    post = _answer_logits(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.sequence_index,
        batch.logit_index,
        token_ids,
        fast,
    )
    return full, post


def answer_counts(dataset: datasets.Dataset) -> list[int]:
    """Number of answer positions (labelled tokens t >= 1) of every row."""
    return [sum(1 for label in labels[1:] if label != IGNORE_INDEX) for labels in dataset["labels"]]


def tokens_fingerprint(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> str:
    """Key of the tokenizer and every row's exact ``input_ids`` and ``labels``: what the cache rows depend on."""
    return dataset_tokens_key(dataset, tokenizer)


@dataclass
class ReferenceCache:
    """Precomputed reference logits over S for every answer position of a dataset (see the module docstring)."""

    full: torch.Tensor
    post: torch.Tensor | None
    offsets: torch.Tensor
    token_ids: torch.Tensor
    header_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.full, self.post) if t is not None)

    def rows_for(self, sample_index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Cache rows of a batch of dataset rows ``sample_index`` (B,) holding ``counts`` (B,) answer positions."""
        sample_index = sample_index.to("cpu", torch.long)
        counts = counts.to("cpu", torch.long)
        if sample_index.numel() and int(sample_index.max()) >= self.n_rows:
            raise CacheMismatchError(f"row {int(sample_index.max())} is outside a cache of {self.n_rows} rows")
        starts = self.offsets[sample_index]
        expected = self.offsets[sample_index + 1] - starts
        if not torch.equal(expected, counts):
            raise CacheMismatchError(
                f"answer positions per row differ from the cache ({counts.tolist()} vs {expected.tolist()}): the "
                "batch was tokenised or truncated differently from the data the cache was built for"
            )
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(int(counts.sum())) - torch.repeat_interleave(first, counts)
        return torch.repeat_interleave(starts, counts) + rank

    def check(self, fingerprint: str | None = None, token_ids: torch.Tensor | None = None) -> None:
        """Raise :class:`CacheMismatchError` unless the cache was built for this tokenisation and this S."""
        if fingerprint is not None and self.meta.get("tokens_fingerprint") != fingerprint:
            raise CacheMismatchError(
                f"the reference cache was built for tokenisation {self.meta.get('tokens_fingerprint')}, the dataset "
                f"has {fingerprint}; rebuild the cache for this dataset"
            )
        if token_ids is not None and not torch.equal(self.token_ids, token_ids.cpu().long()):
            raise CacheMismatchError("the reference cache was built for another safety-token set")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write atomically (temp dir + rename) so concurrent processes never read a half-written cache."""
        target = Path(directory)
        tensors = {
            "full": self.full.contiguous(),
            "offsets": self.offsets.contiguous(),
            "token_ids": self.token_ids.contiguous(),
            "header_ids": torch.as_tensor(self.header_ids, dtype=torch.long),
        }
        if self.post is not None:
            tensors["post"] = self.post.contiguous()
        summary = {**self.meta, "rows": self.n_rows, "positions": int(self.full.shape[0]), "bytes": self.nbytes}
        # Another process that finished the same cache first keeps its copy.
        with atomic_dir(target, keep_existing=lambda path: (path / CACHE_FILE).is_file()) as staging:
            with atomic_path(staging / CACHE_FILE) as path:  # fsync-ed before the directory is renamed into place
                save_file(tensors, str(path), metadata={"meta": json.dumps(self.meta)})
            write_json(staging / META_FILE, summary)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, fingerprint: str | None = None) -> ReferenceCache:
        path = Path(directory) / CACHE_FILE
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        tensors = load_file(str(path))
        cache = cls(
            full=tensors["full"],
            post=tensors.get("post"),
            offsets=tensors["offsets"],
            token_ids=tensors["token_ids"],
            header_ids=tensors["header_ids"].tolist(),
            meta=meta,
        )
        cache.check(fingerprint)
        return cache


def build_reference_cache(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    token_ids: torch.Tensor,
    *,
    header_ids: list[int] | None,
    pad_token_id: int,
    fingerprint: str,
    batch_size: int = 4,
    dtype: torch.dtype = torch.float32,
    disable_adapter: bool = False,
    meta: dict[str, Any] | None = None,
    log_every: float = 30.0,
) -> ReferenceCache:
    """Run the frozen reference over ``dataset`` once and keep its S-restricted logits (both views).

    Rows are processed longest first (similar lengths share a batch: less padding, and the peak memory shows up at
    once), and written back to their dataset-order slot. Under several ranks (:mod:`tokensafe.distributed`) the
    batches are split round-robin, every rank computes its own with the rows and padding one process gives them,
    and the gathered batches fill the same slots: every rank returns the single-process cache, bit for bit.
    """
    from tokensafe.collator import TokenCollator

    counts = answer_counts(dataset)
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.long), 0)
    n_positions, k = int(offsets[-1]), int(token_ids.numel())
    full = torch.empty((n_positions, k), dtype=dtype)
    post = torch.empty((n_positions, k), dtype=dtype) if header_ids is not None else None
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    batches = [order[first : first + batch_size] for first in range(0, len(order), batch_size)]
    collate = TokenCollator(pad_token_id, per_token_columns=())
    rows = dataset.select_columns(["input_ids", "labels"])
    token_ids = token_ids.long()

    def place(chunk: list[int], z_full: torch.Tensor, z_post: torch.Tensor | None) -> None:
        """Write a batch's (n, |S|) logits, rows of ``chunk`` in turn, to their dataset-order slots."""
        at = 0
        for i in chunk:
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            full[lo:hi] = z_full[at : at + hi - lo].to("cpu", dtype)
            if post is not None and z_post is not None:
                post[lo:hi] = z_post[at : at + hi - lo].to("cpu", dtype)
            at += hi - lo

    several = distributed.is_distributed()
    mine = distributed.split(len(batches))
    computed: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # this rank's batches, when there are ranks
    start, last_log = time.time(), time.time()
    with frozen_reference(model, disable_adapter=disable_adapter) as reference:
        device = next(reference.parameters()).device

        def run(chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
            batch = {k_: v.to(device) for k_, v in collate([rows[i] for i in chunk]).items()}
            return reference_logits(
                reference,
                batch["input_ids"],
                batch["attention_mask"],
                batch["labels"],
                token_ids.to(device),
                header_ids=header_ids,
                pad_token_id=pad_token_id,
            )

        if several and mine and mine[0] != 0:
            # The fast path's one-time checks (_answer_logits) probe the first batch a model sees; one process
            # probes batch 0, so every rank does, and all take the path that process takes.
            run(batches[0])
        for done, b in enumerate(mine, start=1):
            z_full, z_post = run(batches[b])
            if several:  # kept (in the cache dtype) until every rank's batches are gathered
                computed.append((z_full.to("cpu", dtype), None if z_post is None else z_post.to("cpu", dtype)))
            else:
                place(batches[b], z_full, z_post)
            if time.time() - last_log > log_every:
                last_log = time.time()
                print(f"pact reference cache: {done}/{len(mine)} batches", flush=True)
            maybe_kill("pact.reference_batch")
    seconds = time.time() - start
    if several:
        gathered = distributed.all_gather((computed, seconds))
        for chunk, (z_full, z_post) in zip(batches, distributed.merge([part for part, _ in gathered]), strict=True):
            place(chunk, z_full, z_post)
        seconds = max(elapsed for _, elapsed in gathered)  # the same on every rank: its meta is rank 0's too
    meta = {
        "version": CACHE_VERSION,
        "tokens_fingerprint": fingerprint,
        "dtype": str(dtype).replace("torch.", ""),
        "views": ["full", "post"] if post is not None else ["full"],
        "seconds": round(seconds, 2),
        **(meta or {}),
    }
    return ReferenceCache(full, post, offsets, token_ids.cpu(), list(header_ids or []), meta)


def load_or_build_reference_cache(directory: str | os.PathLike, fingerprint: str, **build: Any) -> ReferenceCache:
    """Load the cache in ``directory`` when it exists (checking the fingerprint), else build and save it there.

    Under several ranks they build it together, rank 0 saves it, and no rank returns before it is on disk.
    """
    directory = Path(directory)
    # Every rank must take the same branch (building is collective): all load only when every rank sees the file.
    if all(distributed.all_gather((directory / CACHE_FILE).is_file())):
        cache = ReferenceCache.load(directory, fingerprint)
        print(f"pact reference cache: loaded {directory} ({cache.full.shape[0]} positions)", flush=True)
        return cache
    cache = build_reference_cache(fingerprint=fingerprint, **build)
    if distributed.is_main():
        cache.save(directory)
    distributed.barrier()
    if not distributed.is_main():
        return cache
    print(
        f"pact reference cache: {cache.full.shape[0]} positions x {cache.full.shape[1]} tokens, "
        f"{cache.nbytes / 2**20:.1f} MiB, {cache.meta['seconds']} s -> {directory}",
        flush=True,
    )
    return cache


class CachedReference:
    """Reference logits read from a :class:`ReferenceCache`; batches carry ``pact_index`` (their dataset row)."""

    index_column = "pact_index"

    def __init__(self, cache: ReferenceCache, use_post: bool = True) -> None:
        if use_post and cache.post is None:
            raise CacheMismatchError("the reference cache has no no-prompt view; rebuild it with the post view")
        self.cache = cache
        self.use_post = use_post

    def __call__(
        self, ctx: LossContext, layout: AnswerLayout, token_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.index_column not in ctx.inputs:
            raise KeyError(f"the batch has no '{self.index_column}' column; the cached reference needs it")
        rows = self.cache.rows_for(ctx.inputs[self.index_column], layout.counts(ctx.labels.size(0)))
        device = ctx.logits.device
        full = self.cache.full[rows].to(device, torch.float32, non_blocking=True)
        post = None
        if self.use_post and self.cache.post is not None:
            post = self.cache.post[rows].to(device, torch.float32, non_blocking=True)
        return full, post


class LiveReference:
    """Reference logits computed on the fly: a separate frozen ``model``, or (``model=None``) the trained LoRA model
    with its adapter disabled."""

    index_column = None

    def __init__(
        self,
        model: torch.nn.Module | None,
        *,
        header_ids: list[int] | None,
        pad_token_id: int,
        fast: bool = True,
    ) -> None:
        self.model = model
        self.header_ids = header_ids
        self.pad_token_id = pad_token_id
        self.fast = fast  # False: plain full forwards, as the official code runs them
        if model is not None:
            model.eval()
            model.requires_grad_(False)

    def __call__(
        self, ctx: LossContext, layout: AnswerLayout, token_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        source = self.model if self.model is not None else ctx.model
        with frozen_reference(source, disable_adapter=self.model is None) as reference:
            return reference_logits(
                reference,
                ctx.inputs["input_ids"],
                ctx.inputs["attention_mask"],
                ctx.labels,
                token_ids,
                header_ids=self.header_ids,
                pad_token_id=self.pad_token_id,
                layout=layout,
                fast=self.fast,
            )
