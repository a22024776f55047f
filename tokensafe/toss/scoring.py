"""Per-token reference losses for every response token: one model, two LoRA adapters, sharded and resumable.

What makes this cheap compared with the official code:

* **One base, two adapters.** U and D are LoRA adapters of the same base; the model is loaded once and
  ``set_adapter`` switches between them (no second full copy in memory).
* **Only the labels' log-probabilities.** The decoder's hidden states are computed once per batch and adapter; the
  vocabulary projection runs only at positions that predict a response token, in chunks of ``chunk_tokens`` rows,
  and each row reduces to ``logsumexp(logits) - logits[label]``. No (B, L, V) logits or log-softmax tensor is ever
  materialised (for SmolLM2 that tensor is 200 MB per 4 x 256 batch).
* **Length-sorted batches under a token budget.** Samples are sorted by the length that matters (up to their last
  response token: later tokens are never inputs of a scored prediction) and packed until ``batch_tokens`` padded
  tokens, so little compute is spent on padding.
* **Shared prefixes run once.** Rows of a batch usually start with the same tokens (the chat template's system
  prompt, a task instruction); that prefix runs once as a single row and its key/value cache is repeated over the
  batch (``share_prefix``: the shortest prefix worth it; 0 = off).
* **Sharded and resumable.** Batches are grouped into shards; each finished shard is written atomically. A killed
  run continues after the last finished shard. The batch plan depends only on the token lengths and settings, so a
  resumed run computes every batch exactly as an uninterrupted run does and the result is bit-identical.
* **Every rank used.** Under ``torchrun`` / ``accelerate launch`` the shards still to compute are split across the
  ranks (:mod:`tokensafe.distributed`); each rank writes its shards to the shared shard directory, and the merge is
  the same scatter of shards into dataset order, so the scores equal a single process's bit for bit (each shard is
  the same batches through the same code). Resuming works per shard whatever the number of ranks.

Losses are stored in the sample order of the dataset, flattened as described in :mod:`tokensafe.toss.store`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokensafe import distributed
from tokensafe.atomic import atomic_path, write_json
from tokensafe.digests import array_digest, digest
from tokensafe.faults import maybe_kill
from tokensafe.kv_cache import shared_prefix_cache
from tokensafe.toss.store import TokenScores, response_positions, token_digest


@dataclass
class ScoringPlan:
    """Which samples go into which batch and shard. A function of token lengths and settings only."""

    batches: list[np.ndarray]  # sample indices per batch (ascending effective length)
    shards: list[list[int]]  # batch indices per shard
    batch_tokens: int
    shard_samples: int

    def key(self) -> str:
        batches = (np.asarray(batch, dtype=np.int64) for batch in self.batches)
        return array_digest("scoring-plan", self.batch_tokens, self.shard_samples, *batches)


def plan_batches(lengths: Sequence[int], batch_tokens: int, shard_samples: int) -> ScoringPlan:
    """Sort samples by length (ties by index) and pack them into batches of at most ``batch_tokens`` padded tokens.

    Samples of length 0 (nothing to score) get no batch. A sample longer than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    batches: list[np.ndarray] = []
    start = 0
    while start < order.size:
        end = start + 1
        # Ascending lengths: the padded size of order[start:end + 1] is (end + 1 - start) * lengths[order[end]].
        while end < order.size and (end + 1 - start) * lengths[order[end]] <= batch_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    shards: list[list[int]] = []
    current: list[int] = []
    in_current = 0
    for b, batch in enumerate(batches):
        current.append(b)
        in_current += batch.size
        if in_current >= shard_samples:
            shards.append(current)
            current, in_current = [], 0
    if current:
        shards.append(current)
    return ScoringPlan(batches, shards, batch_tokens, shard_samples)


# --- the loss kernel ------------------------------------------------------------------------------------------


def _head_transform(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Post-projection logit transforms some architectures apply inside ``forward`` (scaling, soft-capping)."""
    config = model.config
    scaling = getattr(config, "logits_scaling", None)  # Granite divides logits by this
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scaling:
            logits = logits / scaling
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


def label_nll(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    chunk_tokens: int = 64,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """-log softmax(head(hidden))[target] for N rows, computed ``chunk_tokens`` rows at a time.

    Args:
        hidden: (N, H) final hidden states at the positions that predict ``targets``.
        targets: (N,) token ids.
        head: the output projection (vocabulary V).
    Returns:
        (N,) float32 NLL. Peak extra memory is one (chunk_tokens, V) float32 block, not (N, V).
    """
    out = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), chunk_tokens):
        logits = head(hidden[start : start + chunk_tokens]).float()
        if transform is not None:
            logits = transform(logits)
        picked = logits.gather(-1, targets[start : start + chunk_tokens, None]).squeeze(-1)
        out[start : start + chunk_tokens] = torch.logsumexp(logits, dim=-1) - picked
    return out


class AdapterScorer:
    """Per-token label losses of a (PEFT) causal LM under each of its adapters.

    ``adapters`` names PEFT adapters loaded on ``model``; ``None`` scores the base model with adapters disabled.
    """

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 64, share_prefix: int = 8) -> None:
        self.model = model.eval()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = inner.get_decoder()
        self.head = inner.get_output_embeddings()
        self.transform = _head_transform(inner)
        self.chunk_tokens = chunk_tokens
        self.share_prefix = share_prefix
        self.device = next(model.parameters()).device

    def _activate(self, adapter: str | None) -> Any:
        import contextlib

        if adapter is None:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
        """Final hidden states of positions [prefix, L). The first ``prefix`` tokens are the same in every row: they
        run once, as a single row, and their key/value cache is repeated over the batch."""
        if prefix == 0:
            return self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        cache = shared_prefix_cache(self.decoder, ids, prefix)
        return self.decoder(input_ids=ids[:, prefix:], attention_mask=mask, use_cache=True, **cache).last_hidden_state

    @torch.inference_mode()
    def batch_losses(
        self,
        input_ids: Sequence[np.ndarray],
        positions: Sequence[np.ndarray],
        pad_token_id: int,
        adapters: Sequence[str | None],
    ) -> dict[str | None, np.ndarray]:
        """Losses of the tokens at ``positions[i]`` of ``input_ids[i]``, concatenated in sample order per adapter."""
        lengths = [int(p[-1]) for p in positions]  # inputs needed: tokens [0, last scored position)
        longest = max(lengths)
        ids = torch.full((len(input_ids), longest), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, (seq, pos, n) in enumerate(zip(input_ids, positions, lengths, strict=True)):
            ids[b, :n] = torch.as_tensor(seq[:n], dtype=torch.long)
            mask[b, :n] = 1
            rows.append(np.full(pos.size, b, dtype=np.int64))
            cols.append(pos.astype(np.int64) - 1)  # hidden state at t - 1 predicts token t
            targets.append(np.asarray(seq, dtype=np.int64)[pos])
        # Chat-template batches share a prefix (system prompt, task instruction): compute it once per adapter. It
        # must end before the first hidden state that is needed (first scored position - 1).
        prefix = 0
        if self.share_prefix and len(input_ids) > 1:
            limit = min(int(p[0]) - 1 for p in positions)
            differs = (ids[:, :limit] != ids[:1, :limit]).any(dim=0).nonzero()
            prefix = int(differs[0]) if differs.numel() else limit
            prefix = prefix if prefix >= self.share_prefix else 0
        ids, mask = ids.to(self.device), mask.to(self.device)
        row_idx = torch.from_numpy(np.concatenate(rows)).to(self.device)
        col_idx = torch.from_numpy(np.concatenate(cols) - prefix).to(self.device)
        target = torch.from_numpy(np.concatenate(targets)).to(self.device)
        out: dict[str | None, np.ndarray] = {}
        for adapter in adapters:
            with self._activate(adapter):
                hidden = self._hidden(ids, mask, prefix)
                nll = label_nll(hidden[row_idx, col_idx], target, self.head, self.chunk_tokens, self.transform)
            out[adapter] = nll.cpu().numpy()
        return out


# --- sharded, resumable driver ----------------------------------------------------------------------------------


class ShardFailure(RuntimeError):
    """Raised by test hooks to simulate a run killed between shards."""


def _adapter_key(adapter: str | None) -> str:
    return "base" if adapter is None else adapter


def _manifest_key(manifest: Path) -> str | None:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def compute_token_losses(
    scorer: AdapterScorer,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    adapters: Sequence[str | None],
    work_dir: str | os.PathLike,
    pad_token_id: int,
    run_key: str,
    batch_tokens: int = 4096,
    shard_samples: int = 256,
    after_shard: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per-token losses under each adapter for every response token, resuming from finished shards in ``work_dir``.

    ``run_key`` identifies what is being scored (data fingerprint, model and adapter fingerprints): shards written
    under another key are stale and are discarded. ``after_shard(k)`` runs after shard k is written (tests use it
    to simulate a crash). Returns (offsets (N+1), positions (T), {adapter: losses (T)}) in dataset order.

    Under several ranks (:mod:`tokensafe.distributed`) each computes its round-robin share of the missing shards into
    the shared ``work_dir``, and every rank returns the merged losses of all shards.
    """
    from safetensors.numpy import load_file, save_file

    positions = [response_positions(lab) for lab in labels]
    counts = np.array([p.size for p in positions], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat_positions = np.concatenate(positions) if positions else np.zeros(0, np.int32)
    lengths = [int(p[-1]) if p.size else 0 for p in positions]
    plan = plan_batches(lengths, batch_tokens, shard_samples)
    names = [_adapter_key(a) for a in adapters]
    key = digest("scoring-run", run_key, plan.key(), names, scorer.share_prefix)

    work_dir = Path(work_dir)
    manifest = work_dir / "plan.json"
    shard_path = [work_dir / f"shard-{k:05d}.safetensors" for k in range(len(plan.shards))]
    todo: list[int] = []
    if distributed.is_main():  # the only rank that clears or starts the shard directory
        # Shards are trusted only under a readable manifest with this run's key (it is written before any shard).
        if work_dir.exists() and _manifest_key(manifest) != key:
            log(f"[toss] {work_dir} holds shards of another scoring run: starting over")
            shutil.rmtree(work_dir)
        if _manifest_key(manifest) != key:
            write_json(manifest, {"key": key, "shards": len(plan.shards), "samples": len(positions)})
        todo = [k for k, path in enumerate(shard_path) if not path.is_file()]
    # Under several ranks: rank 0's list of missing shards, split round-robin (shards ascend in length, so every
    # rank gets short and long ones). The gather also holds the other ranks until the directory is ready.
    todo = distributed.all_gather(todo)[0]
    mine = [todo[i] for i in distributed.split(len(todo))]

    results = {name: np.zeros(int(offsets[-1]), dtype=np.float32) for name in names}
    done = 0
    start_time = time.time()
    for k in mine:
        shard, path = plan.shards[k], shard_path[k]
        sample_order = np.concatenate([plan.batches[b] for b in shard])
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for b in shard:
            batch = plan.batches[b]
            losses = scorer.batch_losses(
                [np.asarray(input_ids[i]) for i in batch], [positions[i] for i in batch], pad_token_id, adapters
            )
            for adapter, name in zip(adapters, names, strict=True):
                pieces[name].append(losses[adapter])
        tensors = {"sample_index": sample_order.astype(np.int64)}
        tensors.update({f"loss.{name}": np.concatenate(pieces[name]) for name in names})
        with atomic_path(path) as tmp:  # a shard exists only once it is complete
            save_file(tensors, str(tmp), metadata={"key": key})
        done += sample_order.size
        elapsed = time.time() - start_time
        where = f" (rank {distributed.rank()}/{distributed.world_size()})" if distributed.is_distributed() else ""
        log(f"[toss] shard {k + 1}/{len(plan.shards)}{where}: {done} samples scored in {elapsed:.1f}s")
        if after_shard is not None:
            after_shard(k)
        maybe_kill("toss.shard")
    distributed.barrier()  # every rank's shards are written
    for path in shard_path:
        shard_data = load_file(str(path))
        sample_order = shard_data["sample_index"]
        # Scatter the shard's per-sample runs back to dataset order.
        run = counts[sample_order]
        run_start = np.concatenate([[0], np.cumsum(run)[:-1]])
        dest = np.arange(int(run.sum()), dtype=np.int64) + np.repeat(offsets[sample_order] - run_start, run)
        for name in names:
            results[name][dest] = shard_data[f"loss.{name}"]
    distributed.barrier()  # every rank has read every shard: a caller may remove them now
    return offsets, flat_positions, results


def score_dataset(
    model: torch.nn.Module,
    dataset: Any,
    out_path: str | os.PathLike,
    *,
    fingerprint: str,
    pad_token_id: int,
    run_key: str = "",
    batch_tokens: int = 4096,
    shard_samples: int = 256,
    chunk_tokens: int = 64,
    share_prefix: int = 8,
    after_shard: Callable[[int], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> TokenScores:
    """Score every response token of ``dataset`` under adapters ``U`` and ``D`` of ``model`` and save the result.

    ``dataset`` needs only ``input_ids`` and ``labels`` (nothing else is read). Shards go to
    ``<out_path>.shards/`` while the run is in progress and are removed once the scores file is written. Under
    several ranks rank 0 writes the scores file and every rank returns it as written.
    """
    input_ids, labels = dataset["input_ids"], dataset["labels"]
    content = token_digest(input_ids, labels)
    out_path = Path(out_path)
    work_dir = out_path.with_name(out_path.name + ".shards")
    start = time.time()
    offsets, positions, losses = compute_token_losses(
        AdapterScorer(model, chunk_tokens, share_prefix),
        input_ids,
        labels,
        adapters=("U", "D"),
        work_dir=work_dir,
        pad_token_id=pad_token_id,
        run_key=digest("scores", fingerprint, content, run_key),
        batch_tokens=batch_tokens,
        shard_samples=shard_samples,
        after_shard=after_shard,
    )
    info = {"run_key": run_key, "seconds": round(time.time() - start, 1), **(meta or {})}
    scores = TokenScores(offsets, positions, losses["U"], losses["D"], fingerprint, content, info)
    if distributed.is_main():
        scores.save(out_path)
    distributed.barrier()  # the scores file is written
    if not distributed.is_main():
        return TokenScores.load(out_path)  # rank 0's file, its metadata (timing) included
    shutil.rmtree(work_dir, ignore_errors=True)
    return scores
