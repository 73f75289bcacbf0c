"""The stored box of a lean cache: the part of the (z, y, x) grid that the cache keeps.

A cohort registered to one atlas (BraTS: SRI24) has its brain in the same region of the grid
for every patient, so the cache keeps one box for all of them: the union of every patient's
brain box, widened by a margin and clipped to the grid. Everything outside it is background,
which the cache stores as zeros anyway; reading puts those zeros back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

BOX_MARGIN = 2  # voxels kept around the union of the brain boxes

ZYX = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """Half-open bounds ``[start, stop)`` in (z, y, x) of the stored part of a (z, y, x) grid."""

    start: ZYX
    stop: ZYX
    grid: ZYX

    def __post_init__(self) -> None:
        if not all(0 <= a < b <= n for a, b, n in zip(self.start, self.stop, self.grid)):
            raise ValueError(f"box {self.start}..{self.stop} does not fit the grid {self.grid}")

    @classmethod
    def full(cls, grid: ZYX) -> Box:
        """The whole grid (a cache that stores every voxel)."""
        return cls((0, 0, 0), tuple(grid), tuple(grid))

    @property
    def shape(self) -> ZYX:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def is_full(self) -> bool:
        return self.start == (0, 0, 0) and self.stop == self.grid

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def to_array(self) -> np.ndarray:
        """``[[start], [stop], [grid]]`` as int64, for the cache's index."""
        return np.array([self.start, self.stop, self.grid], dtype=np.int64)

    @classmethod
    def from_array(cls, array: np.ndarray) -> Box:
        start, stop, grid = (tuple(int(v) for v in row) for row in np.asarray(array).reshape(3, 3))
        return cls(start, stop, grid)

    def expand(self, stored: np.ndarray) -> np.ndarray:
        """One patient's stored ``[z, modality, y, x]`` block back on the full grid (zeros outside)."""
        z, y, x = self.grid
        out = np.zeros((z, stored.shape[1], y, x), dtype=stored.dtype)
        zs, ys, xs = self.slices
        out[zs, :, ys, xs] = stored
        return out


def brain_box(brain: np.ndarray) -> tuple[ZYX, ZYX] | None:
    """``(start, stop)`` of the smallest (z, y, x) box holding every True voxel; None if none."""
    bounds = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(brain.any(axis=others))
        if hit.size == 0:
            return None
        bounds.append((int(hit[0]), int(hit[-1]) + 1))
    start, stop = zip(*bounds)
    return tuple(start), tuple(stop)


def union_box(boxes: Iterable[tuple[ZYX, ZYX] | None], grid: ZYX, margin: int | None) -> Box:
    """The union of ``boxes`` widened by ``margin`` voxels and clipped to ``grid``.

    ``margin=None`` gives the full grid. Patients without brain voxels add nothing; if no
    patient has any, the box is one voxel (every slice reads as zeros).
    """
    if margin is None:
        return Box.full(grid)
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return Box((0, 0, 0), (1, 1, 1), tuple(grid))
    start = tuple(max(0, min(b[0][i] for b in boxes) - margin) for i in range(3))
    stop = tuple(min(grid[i], max(b[1][i] for b in boxes) + margin) for i in range(3))
    return Box(start, stop, tuple(grid))
