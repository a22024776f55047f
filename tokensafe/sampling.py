"""Length-bucketed training order: batches of similar length (less padding) visited in a seeded random order.

transformers' ``LengthGroupedSampler`` sorts each mega-batch by length, longest first, so every mega-batch walks from
long to short samples. When length correlates with the kind of sample (short refusals, longer self-answers), that
turns into a schedule: the low-learning-rate end of each pass sees only one kind. Here every batch is cut from one
global length order and the *batches* are shuffled, so padding stays minimal and no kind is systematically last.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ShuffledLengthBatches(Sampler[int]):
    """Sample indices such that each run of ``batch_size`` consecutive indices has similar lengths.

    Equal lengths are ordered randomly, then all samples are sorted by length and cut into batches; the batches are
    yielded in a random order. Both draws depend only on ``seed`` and the epoch (``set_epoch``), so a resumed run
    sees the same order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.lengths.numel())

    def batches(self) -> list[list[int]]:
        """The epoch's batches (lists of sample indices), in the order they are visited."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        shuffled = torch.randperm(len(self), generator=generator)
        by_length = shuffled[torch.argsort(self.lengths[shuffled], stable=True)].tolist()
        cut = [by_length[i : i + self.batch_size] for i in range(0, len(by_length), self.batch_size)]
        return [cut[b] for b in torch.randperm(len(cut), generator=generator).tolist()]

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch
