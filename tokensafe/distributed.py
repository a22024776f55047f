"""Ranks of ``torchrun`` / ``accelerate launch`` for the inference steps: `toss score`, the PACT reference cache and
`eval` generation.

Training scales through the HF Trainer (DDP). The inference steps scale by splitting their units of work (scoring
shards, reference-cache batches, prompts) across ranks with :func:`split`, gathering what every rank computed with
:func:`all_gather` and putting it back in order with :func:`merge`; rank 0 alone writes the merged result. A unit
is computed by exactly the code a single process runs on it (same rows, same padding), so the merged result is the
single-process one.

Run without a launcher (``WORLD_SIZE`` unset or 1), every helper here is free: no process group is created,
:func:`split` returns every index, :func:`all_gather` returns ``[obj]`` and :func:`barrier` returns at once. Under
a launcher the default process group is created on first use (unless the Trainer made one already): nccl when every
rank of the node can own a GPU (``LOCAL_RANK``), else gloo. It is torn down at interpreter exit, because a live
gloo group can abort the C++ runtime at exit after all the work was done. The merged results travel through files
(scoring shards) or as pickled objects (:func:`all_gather`), never as large device tensors.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import torch

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)

# Ranks wait for each other at a barrier or a gather only after their own share, and the shares are balanced, so
# a wait is about one unit of work. The bound is generous because a unit may be a shard of an 8B model's scoring;
# torchrun stops every rank at once when one fails, so no rank waits this long for a dead peer.
TIMEOUT = timedelta(hours=2)


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Number of processes of the launch (1 without a launcher)."""
    return torch.distributed.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return torch.distributed.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """Whether this process is one of several launched together."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the one process that writes merged results, logs summaries and judges."""
    return rank() == 0


def inference_device() -> torch.device:
    """Where this process runs inference (generation, scoring, gold-answer loss): its own GPU when there is one
    (``cuda:LOCAL_RANK`` under a launcher, ``cuda:0`` alone), else the CPU. Training leaves placement to the
    Trainer; the inference steps load their model on the CPU and move it here."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def place_for_inference(model: M) -> M:
    """``model`` moved to :func:`inference_device` (unchanged on a CPU-only machine)."""
    device = inference_device()
    return model if device.type == "cpu" else model.to(device)


def _ensure_group() -> None:
    """Create the default process group from the launcher's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE)."""
    if _initialized():
        return
    # nccl only when every rank of the node can own a GPU (every rank must pick the same backend): it gathers
    # through the device, so each rank sets its own before the first collective.
    if torch.cuda.is_available() and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= torch.cuda.device_count():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if _initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if is_distributed():
        _ensure_group()
        torch.distributed.barrier()


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (any picklable object), indexed by rank, on every rank; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    _ensure_group()
    out: list[T | None] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out  # type: ignore[return-value]


def split(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """Indices of this rank's share of ``n`` units of work: round-robin, ``rank, rank + world, ...``.

    Round-robin rather than contiguous blocks: the callers order their units by length, so every rank gets units of
    every length and the shares cost about the same. ``rank_`` / ``world`` default to this process's.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} is not one of {world} ranks")
    return range(rank_, n, world)


def merge(parts: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of :func:`split`: ``parts[r]`` holds the results of ``split(n, r, len(parts))`` in that order; returns
    the ``n`` results in unit order.

    Raises:
        ValueError: a part's length is not that of its rank's share (the parts are not one split of ``n`` units).
    """
    world = len(parts)
    n = sum(len(part) for part in parts)
    out: list[T] = [None] * n  # type: ignore[list-item]
    for r, part in enumerate(parts):
        if len(part) != len(range(r, n, world)):
            raise ValueError(f"part {r} holds {len(part)} results, not its share of {n} units over {world} ranks")
        out[r::world] = part
    return out


def gather_split(mine: Sequence[T]) -> list[T]:
    """Every rank's results of its :func:`split` share, merged into unit order on every rank."""
    return merge(all_gather(list(mine)))
