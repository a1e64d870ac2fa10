"""mirror_index / mirror_indices against numpy.pad(mode="reflect")."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import mirror_index, mirror_indices


def _pad_reference(n, pad):
    """Source indices numpy itself uses, pads may exceed the array size."""
    return np.pad(np.arange(n), pad, mode="reflect")


@pytest.mark.parametrize("n", list(range(1, 41)) + [97, 128])
def test_matches_np_pad_with_huge_pads(n):
    pad = 7 * n + 150  # many multiples of the period 2(n-1)
    ref = _pad_reference(n, pad)
    coords = np.arange(-pad, n + pad)
    np.testing.assert_array_equal(mirror_indices(coords, n), ref)
    got = np.array([mirror_index(int(i), n) for i in coords])
    np.testing.assert_array_equal(got, ref)


def test_known_values_reflect_not_symmetric():
    # "reflect" does not repeat the edge pixel: -1 -> 1 (symmetric would be 0)
    n = 4
    coords = [-7, -6, -3, -1, 0, 3, 4, 6, 7, 9]
    expect = [1, 0, 3, 1, 0, 3, 2, 0, 1, 3]
    assert [mirror_index(i, n) for i in coords] == expect
    np.testing.assert_array_equal(mirror_indices(coords, n), expect)


def test_single_pixel_maps_to_zero():
    coords = np.array([-(10**12), -5, -1, 0, 1, 5, 10**12])
    np.testing.assert_array_equal(mirror_indices(coords, 1), 0)
    assert all(mirror_index(int(i), 1) == 0 for i in coords)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 500),
    i=st.integers(-(10**6), 10**6),
    k=st.integers(-(10**9), 10**9),
)
def test_far_coordinates_are_periodic_and_in_range(n, i, k):
    period = 2 * (n - 1)
    far = i + k * period
    got = mirror_index(far, n)
    assert 0 <= got < n
    assert got == mirror_index(i, n) == int(mirror_indices([far], n)[0])
    if abs(i) <= 3 * n:  # cross-check the base coordinate against np.pad
        assert got == _pad_reference(n, 3 * n)[i + 3 * n]


def test_rejects_empty_axis():
    with pytest.raises(ValueError):
        mirror_indices([0], 0)
