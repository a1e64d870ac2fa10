"""Reconstruction by dilation: the Numba kernel (hybrid raster + FIFO) equals its NumPy twin
(plain iteration) and the definition's properties."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import reconstruct_dilation, reconstruct_dilation_numpy


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), levels=st.integers(1, 50),
       drop=st.integers(0, 10), seed=st.integers(0, 2**16), smooth=st.booleans())
def test_kernel_equals_numpy_twin(h, w, levels, drop, seed, smooth):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, levels, (h, w))
    if smooth:  # long plateaus and slopes: values travel far
        mask = np.cumsum(np.cumsum(rng.integers(-1, 2, (h, w)), 0), 1)
    mask = mask.astype(np.int32)
    marker = mask - rng.integers(0, drop + 1, (h, w)).astype(np.int32)
    got = reconstruct_dilation(marker, mask)
    np.testing.assert_array_equal(got, reconstruct_dilation_numpy(marker, mask))
    assert (got <= mask).all() and (got >= np.minimum(marker, mask)).all()


def test_single_peak_floods_its_plateau_only():
    mask = np.array([[5, 5, 0, 7, 7],
                     [5, 5, 0, 7, 7]], np.int32)
    marker = np.zeros_like(mask)
    marker[0, 0] = 9
    np.testing.assert_array_equal(reconstruct_dilation(marker, mask),
                                  [[5, 5, 0, 0, 0], [5, 5, 0, 0, 0]])
    assert reconstruct_dilation(np.zeros((0, 3), np.int32), np.zeros((0, 3), np.int32)).shape \
        == (0, 3)
