"""The per-slice modality-code counts equal a plain bincount of every slice."""

from __future__ import annotations

import numpy as np
import pytest

from gliograde.data.caching.preprocess import CODES, code_counts

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def _bincount_per_slice(code: np.ndarray, axis: int) -> np.ndarray:
    slices = np.moveaxis(code, axis, 0)
    return np.stack([np.bincount(s.ravel(), minlength=CODES) for s in slices]).astype(np.int32)


@pytest.mark.parametrize("codes_present", [(0,), (0, 15), (0, 1, 3, 15), tuple(range(CODES))])
def test_code_counts_equal_a_bincount_of_every_slice(codes_present):
    rng = np.random.default_rng(len(codes_present))
    code = rng.choice(np.array(codes_present, dtype=np.uint8), size=(7, 9, 11))
    counts = code_counts(code)
    for plane, axis in AXES.items():
        np.testing.assert_array_equal(counts[plane], _bincount_per_slice(code, axis))
        assert counts[plane].dtype == np.int32
