"""mode_2x2 (Numba) vs its NumPy twin vs a per-block Python reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import mode_2x2, mode_2x2_numpy


def _reference(a):
    """Per block: the value with the most occurrences, first in TL, TR, BL, BR order on ties."""
    a = np.concatenate([a, a[:, -1:]], axis=1) if a.shape[1] % 2 else a
    out = np.empty((a.shape[0] // 2, a.shape[1] // 2), a.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = [a[2 * i, 2 * j], a[2 * i, 2 * j + 1], a[2 * i + 1, 2 * j],
                     a[2 * i + 1, 2 * j + 1]]
            counts = [block.count(v) for v in block]
            out[i, j] = block[counts.index(max(counts))]
    return out


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 12), width=st.integers(1, 25), values=st.integers(1, 5),
       dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.int64]),
       seed=st.integers(0, 2**32 - 1))
def test_mode_2x2_matches_twin_and_reference(rows, width, values, dtype, seed):
    a = np.random.default_rng(seed).integers(0, values, (2 * rows, width)).astype(dtype)
    want = _reference(a)
    for fn in (mode_2x2, mode_2x2_numpy):
        got = fn(a)
        assert got.dtype == a.dtype
        np.testing.assert_array_equal(got, want, err_msg=fn.__name__)


def test_mode_2x2_ties_keep_top_left_and_views_work():
    a = np.array([[1, 2, 5, 5], [3, 4, 6, 5]], np.uint32)
    np.testing.assert_array_equal(mode_2x2(a), [[1, 5]])
    big = np.random.default_rng(0).integers(0, 3, (8, 20)).astype(np.uint8)
    np.testing.assert_array_equal(mode_2x2(big[:, 3:17]), mode_2x2_numpy(big[:, 3:17]))
    with pytest.raises(ValueError, match="even number of rows"):
        mode_2x2(np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        mode_2x2(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("shape", [(2, 0), (0, 5), (0, 0)])
def test_mode_2x2_of_an_empty_array_is_empty(shape):
    want = (shape[0] // 2, -(-shape[1] // 2))
    for fn in (mode_2x2, mode_2x2_numpy):
        got = fn(np.zeros(shape, np.uint16))
        assert got.shape == want and got.dtype == np.uint16, fn.__name__
