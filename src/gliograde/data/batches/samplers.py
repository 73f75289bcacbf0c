"""Training samplers whose order is a function of (seed, epoch) alone.

Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint at
epoch e draws exactly the batches an uninterrupted run draws at epoch e.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(size)`` drawn from ``seed`` and the epoch."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=self._generator()).tolist())

    def __len__(self) -> int:
        return self.size


class EpochWeightedSampler(EpochShuffleSampler):
    """``len(weights)`` draws with replacement, in proportion to ``weights`` (class balancing)."""

    def __init__(self, weights: torch.Tensor, seed: int = 0):
        super().__init__(len(weights), seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        drawn = torch.multinomial(self.weights, self.size, replacement=True, generator=self._generator())
        return iter(drawn.tolist())
