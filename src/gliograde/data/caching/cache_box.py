"""Where each patient's stored voxels sit in a lean cache, and how to read them back on the full grid.

The cache keeps, per patient, only a slab of axial slices (see ``SlabRule``: those the run's
slice strategy can select, plus a margin), and of each slice only a ``block`` of rows x
columns that is the same for every patient: the largest brain box's extent plus a margin,
placed at the patient's own (y, x) origin. The slices of every patient are stacked as rows
of one ``[row, modality, block_y, block_x]`` array, so an axial slice is one contiguous row
whatever the patient; reading puts the zeros around the block back, so the batch equals the
full grid's. Slices outside the slab read as zeros only where the slab holds every brain
slice (``slab == "brain"``); otherwise reading one is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gliograde.data.discovery.specs import SliceSpec

BOX_MARGIN = 2  # voxels kept around each patient's brain box, in y and x
SLAB_MARGIN = 2  # axial slices kept on each side of the slices a strategy can select
SLAB_KINDS = ("brain", "tumour", "range")

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
    slab: str = "brain"  # the SlabRule kind: "brain" stores every slice holding brain

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
        if self.slab not in SLAB_KINDS:
            raise ValueError(f"unknown slab kind {self.slab!r}")

    @property
    def first_row(self) -> np.ndarray:
        """``[patient]``: the row of the stored array where each slot's slices begin."""
        return np.concatenate([[0], np.cumsum(self.depth)[:-1]]).astype(np.int64)

    @property
    def rows(self) -> int:
        """Rows (stored slices) of the stored array, every patient's together."""
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
    def around(cls, boxes: Sequence[Bounds], grid: ZYX, margin: int | None, slab: str = "brain") -> BoxLayout:
        """The layout holding each of ``boxes``: its slices exactly (the slab, already
        widened), its rows and columns widened by ``margin`` voxels (clipped to the grid);
        ``margin=None`` stores the full grid."""
        if margin is None:
            return cls.full(grid, len(boxes))
        start = np.array([b[0] for b in boxes], dtype=np.int64).reshape(-1, 3)
        stop = np.array([b[1] for b in boxes], dtype=np.int64).reshape(-1, 3)
        size = np.asarray(grid, dtype=np.int64)
        widen = np.array([0, margin, margin], dtype=np.int64)
        low = np.maximum(start - widen, 0)
        high = np.minimum(stop + widen, size)
        block = np.minimum((high - low).max(axis=0), size)[1:] if len(boxes) else size[1:]
        # Centre-free placement: start at the widened box, pushed back inside the grid.
        yx = np.minimum(low[:, 1:], size[1:] - block)
        origin = np.concatenate([low[:, :1], yx], axis=1)
        return cls(tuple(grid), (int(block[0]), int(block[1])), origin, high[:, 0] - low[:, 0], slab)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The layout as the cache index's arrays."""
        return {
            "layout_grid": np.array(self.grid, dtype=np.int64),
            "layout_block": np.array(self.block, dtype=np.int64),
            "layout_origin": np.asarray(self.origin, dtype=np.int64),
            "layout_depth": np.asarray(self.depth, dtype=np.int64),
            "layout_slab": np.array(self.slab),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> BoxLayout:
        """The layout from the cache index's arrays (``to_arrays``'s keys, e.g. an open npz)."""
        return cls(
            tuple(int(v) for v in arrays["layout_grid"]),
            tuple(int(v) for v in arrays["layout_block"]),
            np.asarray(arrays["layout_origin"], dtype=np.int64),
            np.asarray(arrays["layout_depth"], dtype=np.int64),
            str(arrays["layout_slab"]),
        )

    def crop(self, slot: int, full: np.ndarray) -> np.ndarray:
        """Patient ``slot``'s stored rows taken from its full-grid ``[z, modality, y, x]``."""
        (z0, y0, x0), d = self.origin[slot], self.depth[slot]
        by, bx = self.block
        return full[z0 : z0 + d, :, y0 : y0 + by, x0 : x0 + bx]

    def expand(self, slot: int, stored: np.ndarray) -> np.ndarray:
        """Patient ``slot``'s stored rows back on the full grid ``[z, modality, y, x]``, zeros
        around them: the volume itself only where ``slab == "brain"`` (see ``CachedCohort.volume``)."""
        z, y, x = self.grid
        out = np.zeros((z, stored.shape[1], y, x), dtype=stored.dtype)
        self.crop(slot, out)[...] = stored
        return out



@dataclass(frozen=True)
class SlabRule:
    """Which axial slices of each patient a cache stores: every slice holding brain
    (``brain``), holding tumour (``tumour``), or the slices ``z_range`` (``range``, bounds
    inclusive, negative ones counted from the end, as ``data.slices.z_min``/``z_max``),
    widened by ``margin`` slices on each side. A patient whose slab would be empty (no
    tumour, a range off the grid) keeps its brain slices."""

    kind: str = "brain"
    margin: int = SLAB_MARGIN
    z_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        has_range = self.z_range is not None
        if self.kind not in SLAB_KINDS or self.margin < 0 or (self.kind == "range") != has_range:
            raise ValueError(f"bad slab rule {self}")

    @classmethod
    def for_slices(cls, spec: SliceSpec, margin: int = SLAB_MARGIN) -> SlabRule:
        """The smallest slab every slice ``spec`` (``data.slices``) can select lies in. Coronal
        and sagittal slices cross every axial slice of the brain: they keep the brain slab."""
        strategy = spec.strategy
        if spec.plane != "axial" or strategy in ("brain", "middle"):
            return cls("brain", margin)
        if strategy in ("tumor_topk", "tumor_all"):
            return cls("tumour", margin)
        if strategy == "range":
            return cls("range", margin, (int(spec.z_min), int(spec.z_max)))
        raise ValueError(f"unknown slice strategy {strategy!r}")

    def settings(self) -> dict:
        """What the cache key and meta.json record of the rule. A brain slab's margin is left
        out: the slices outside it are background, read back as zeros whatever the margin."""
        if self.kind == "brain":
            return {"kind": "brain"}
        z_range = list(self.z_range) if self.z_range else None
        return {"kind": self.kind, "margin": self.margin, "z_range": z_range}

    def covering(self) -> list[SlabRule]:
        """Other rules whose caches hold every slice this one can need: a brain slab holds
        every slice with brain, and any other slice reads as zeros from it."""
        return [] if self.kind == "brain" else [SlabRule("brain", self.margin)]

    def bounds(self, brain: np.ndarray, tumour: np.ndarray | None) -> tuple[int, int]:
        """(start, stop) of the stored slices, from per-axial-slice brain and tumour areas."""
        depth = len(brain)
        inside = np.flatnonzero(brain)
        if self.kind == "tumour" and tumour is not None and np.any(tumour):
            inside = np.flatnonzero(tumour)
        elif self.kind == "range":
            low, high = (v + depth if v < 0 else v for v in self.z_range)
            low, high = max(low, 0), min(high, depth - 1)
            if low <= high:
                inside = np.array([low, high])
        return max(int(inside[0]) - self.margin, 0), min(int(inside[-1]) + 1 + self.margin, depth)
