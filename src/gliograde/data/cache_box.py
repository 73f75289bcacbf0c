"""Where each patient's brain box sits in a lean cache, and how to read it back on the full grid.

The cache keeps, per patient, only the axial slices of its brain box (plus a margin), and of
each slice only a ``block`` of rows x columns that is the same for every patient: the largest
brain box's extent plus the margin, placed at the patient's own (y, x) origin. The slices of
every patient are stacked as rows of one ``[row, modality, block_y, block_x]`` array, so an
axial slice is one contiguous row whatever the patient; reading puts the zeros around the
block and the slices outside the box back, so the batch equals the full grid's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOX_MARGIN = 2  # voxels kept around each patient's brain box

ZYX = tuple[int, int, int]
Bounds = tuple[ZYX, ZYX]  # (start, stop) of a box in (z, y, x), stop exclusive


@dataclass(frozen=True)
class BoxLayout:
    """Stored part of each patient's (z, y, x) grid: slices ``origin[p, 0] : + depth[p]``,
    rows ``origin[p, 1] : + block[0]``, columns ``origin[p, 2] : + block[1]``; they are rows
    ``first_row[p] : + depth[p]`` of the stored array."""

    grid: ZYX
    block: tuple[int, int]
    origin: np.ndarray  # [patient, 3] int64
    depth: np.ndarray  # [patient] int64

    def __post_init__(self) -> None:
        z, y, x = self.grid
        by, bx = self.block
        origin, depth = np.asarray(self.origin), np.asarray(self.depth)
        fits = (
            origin.ndim == 2
            and origin.shape[1] == 3
            and depth.shape == origin.shape[:1]
            and 0 < by <= y
            and 0 < bx <= x
            and bool(np.all(origin >= 0))
            and bool(np.all(depth > 0))
            and bool(np.all(origin[:, 0] + depth <= z))
            and bool(np.all(origin[:, 1] + by <= y))
            and bool(np.all(origin[:, 2] + bx <= x))
        )
        if not fits:
            raise ValueError(f"box layout (block {self.block}) does not fit the grid {self.grid}")

    @property
    def first_row(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.depth)[:-1]]).astype(np.int64)

    @property
    def rows(self) -> int:
        return int(np.sum(self.depth))

    @property
    def is_full(self) -> bool:
        """Whether every patient's full grid is stored."""
        return self.block == self.grid[1:] and bool(np.all(self.depth == self.grid[0]))

    @classmethod
    def full(cls, grid: ZYX, patients: int) -> BoxLayout:
        """Every voxel of ``patients`` grids."""
        origin = np.zeros((patients, 3), np.int64)
        return cls(tuple(grid), tuple(grid[1:]), origin, np.full(patients, grid[0], np.int64))

    @classmethod
    def around(cls, boxes: Sequence[Bounds], grid: ZYX, margin: int | None) -> BoxLayout:
        """The layout holding each of ``boxes`` widened by ``margin`` voxels (clipped to the
        grid); ``margin=None`` stores the full grid."""
        if margin is None:
            return cls.full(grid, len(boxes))
        start = np.array([b[0] for b in boxes], dtype=np.int64).reshape(-1, 3)
        stop = np.array([b[1] for b in boxes], dtype=np.int64).reshape(-1, 3)
        size = np.asarray(grid, dtype=np.int64)
        low = np.maximum(start - margin, 0)
        high = np.minimum(stop + margin, size)
        block = np.minimum((high - low).max(axis=0), size)[1:] if len(boxes) else size[1:]
        # Centre-free placement: start at the widened box, pushed back inside the grid.
        yx = np.minimum(low[:, 1:], size[1:] - block)
        origin = np.concatenate([low[:, :1], yx], axis=1)
        return cls(tuple(grid), (int(block[0]), int(block[1])), origin, high[:, 0] - low[:, 0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The layout as the cache index's arrays."""
        return {
            "layout_grid": np.array(self.grid, dtype=np.int64),
            "layout_block": np.array(self.block, dtype=np.int64),
            "layout_origin": np.asarray(self.origin, dtype=np.int64),
            "layout_depth": np.asarray(self.depth, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays) -> BoxLayout:
        return cls(
            tuple(int(v) for v in arrays["layout_grid"]),
            tuple(int(v) for v in arrays["layout_block"]),
            np.asarray(arrays["layout_origin"], dtype=np.int64),
            np.asarray(arrays["layout_depth"], dtype=np.int64),
        )

    def crop(self, slot: int, full: np.ndarray) -> np.ndarray:
        """Patient ``slot``'s stored rows taken from its full-grid ``[z, modality, y, x]``."""
        (z0, y0, x0), d = self.origin[slot], self.depth[slot]
        by, bx = self.block
        return full[z0 : z0 + d, :, y0 : y0 + by, x0 : x0 + bx]

    def expand(self, slot: int, stored: np.ndarray) -> np.ndarray:
        """Patient ``slot``'s stored rows back on the full grid ``[z, modality, y, x]``."""
        z, y, x = self.grid
        out = np.zeros((z, stored.shape[1], y, x), dtype=stored.dtype)
        self.crop(slot, out)[...] = stored
        return out

