"""gather_tiles (Numba) vs gather_tiles_numpy vs slicing np.pad(reflect)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import gather_tiles, gather_tiles_numpy

DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]
PAD = 400  # > |offset| + tile size used below, and > image size
SIZES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 5, 7, 13, 31, 37]))


def _random_image(rng, h, w, c, dtype):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=(h, w, c)).astype(dtype)
    return rng.uniform(-1000, 1000, size=(h, w, c)).astype(dtype)


def _pad_reference(image, ys, xs, th, tw, mix, offset, scale):
    """Independent reference: slice a huge np.pad copy, math in float64."""
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    tiles = []
    for y, x in zip(ys, xs):
        patch = padded[y + PAD : y + PAD + th, x + PAD : x + PAD + tw].astype(np.float64)
        v = patch @ mix.astype(np.float64).T  # (th, tw, C_model)
        v = (v - offset.astype(np.float64)) * scale.astype(np.float64)
        tiles.append(np.moveaxis(v, -1, 0))
    return np.stack(tiles)


def _needed_rows(h, ys, th):
    """Image rows the tiles read, found via np.pad (not via mirror_indices)."""
    rows = np.pad(np.arange(h), PAD, mode="reflect")
    used = np.concatenate([rows[y + PAD : y + PAD + th] for y in ys])
    return int(used.min()), int(used.max())


def _tolerance(image, mix, offset, scale):
    mag = float(np.abs(image.astype(np.float64)).max(initial=0.0))
    bound = (np.abs(mix).sum(axis=1) * mag + np.abs(offset)) * np.abs(scale)
    return 2e-6 * float(bound.max()) + 1e-30


@settings(max_examples=60, deadline=None)
@given(
    h=SIZES,
    w=SIZES,
    th=st.integers(1, 64),
    tw=st.integers(1, 64),
    dtype=st.sampled_from(DTYPES),
    c_src=st.sampled_from([1, 3]),
    c_model=st.integers(1, 3),
    coords=st.lists(
        st.tuples(st.integers(-300, 300), st.integers(-300, 300)), min_size=1, max_size=4
    ),
    extra_slots=st.integers(0, 2),
    band=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_twin_and_np_pad_agree(
    h, w, th, tw, dtype, c_src, c_model, coords, extra_slots, band, seed
):
    rng = np.random.default_rng(seed)
    image = _random_image(rng, h, w, c_src, dtype)
    ys = np.array([c[0] for c in coords], dtype=np.int64)
    xs = np.array([c[1] for c in coords], dtype=np.int64)
    mix = rng.uniform(-1, 1, size=(c_model, c_src)).astype(np.float32)
    offset = rng.uniform(-100, 100, size=c_model).astype(np.float32)
    scale = rng.uniform(0.001, 2, size=c_model).astype(np.float32)

    # A row band that just holds what the tiles need (plus random slack).
    lo, hi = _needed_rows(h, ys, th)
    row0 = int(round(lo * (1 - band[0])))
    row1 = hi + 1 + int(round((h - hi - 1) * band[1]))
    src = image[row0:row1]

    b = len(ys)
    ref = _pad_reference(image, ys, xs, th, tw, mix, offset, scale)
    tol = _tolerance(image, mix, offset, scale)
    for fn in (gather_tiles, gather_tiles_numpy):
        out = np.full((b + extra_slots, c_model, th, tw), -7.0, dtype=np.float32)
        fn(src, row0, h, ys, xs, mix, offset, scale, out)
        np.testing.assert_allclose(out[:b], ref, rtol=1e-5, atol=tol, err_msg=fn.__name__)
        assert np.all(out[b:] == -7.0), "slots beyond B must stay untouched"
    out_k = np.empty((b, c_model, th, tw), np.float32)
    out_n = np.empty_like(out_k)
    gather_tiles(src, row0, h, ys, xs, mix, offset, scale, out_k)
    gather_tiles_numpy(src, row0, h, ys, xs, mix, offset, scale, out_n)
    # Same float32 operations in the same order (no FMA): bit-identical, -0.0 included. The
    # vectorized kernel must never change a result, only its speed.
    assert out_k.tobytes() == out_n.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rgb_to_gray_memmap(tmp_path, dtype):
    rng = np.random.default_rng(3)
    image = _random_image(rng, 23, 17, 3, dtype)
    mm = np.memmap(tmp_path / "img.raw", dtype=dtype, mode="w+", shape=image.shape)
    mm[:] = image
    mm.flush()
    mm = np.memmap(tmp_path / "img.raw", dtype=dtype, mode="r", shape=image.shape)
    mix = np.array([[0.299, 0.587, 0.114]], np.float32)
    offset = np.array([10.0], np.float32)
    scale = np.array([1 / 50.0], np.float32)
    ys = np.array([-92, 0, 20, 5], np.int64)
    xs = np.array([-92, 0, 15, 300], np.int64)
    ref = _pad_reference(image, ys, xs, 60, 44, mix, offset, scale)
    for fn in (gather_tiles, gather_tiles_numpy):
        out = np.empty((4, 1, 60, 44), np.float32)
        fn(mm, 0, 23, ys, xs, mix, offset, scale, out)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=_tolerance(image, mix, offset, scale))


def test_identity_gray_exact():
    image = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6, 1)
    one = np.ones(1, np.float32)
    out = np.empty((1, 1, 9, 10), np.float32)
    gather_tiles(image, 0, 5, np.array([-2]), np.array([-2]), one[None], one * 0, one, out)
    ref = np.pad(image[..., 0], 2, mode="reflect")[:9, :10]
    np.testing.assert_array_equal(out[0, 0], ref.astype(np.float32))


@pytest.mark.parametrize("fn", [gather_tiles, gather_tiles_numpy])
def test_band_too_small_is_rejected(fn):
    image = np.zeros((30, 8, 1), np.float32)
    one = np.ones(1, np.float32)
    out = np.empty((1, 1, 4, 4), np.float32)
    with pytest.raises(IndexError):  # tile needs rows 0..3, band holds 10..19
        fn(image[10:20], 10, 30, np.array([0]), np.array([0]), one[None], one, one, out)
    with pytest.raises(ValueError):  # mix does not match C_src
        fn(image, 0, 30, np.array([0]), np.array([0]), np.ones((1, 3), np.float32), one, one, out)


@pytest.mark.parametrize("fn", [gather_tiles, gather_tiles_numpy])
def test_tile_origins_must_be_1d_and_paired(fn):
    image = np.zeros((30, 8, 1), np.float32)
    one = np.ones(1, np.float32)
    out = np.empty((4, 1, 4, 4), np.float32)
    for ys, xs in ((np.array([0, 1]), np.array([0])),  # unequal lengths
                   (np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64))):  # equal, 2-D
        with pytest.raises(ValueError, match="1-D arrays of equal length"):
            fn(image, 0, 30, ys, xs, one[None], one, one, out)


@pytest.mark.parametrize("fn", [gather_tiles, gather_tiles_numpy])
def test_more_tiles_than_slots_is_refused(fn):
    """The kernel does not bounds-check: writing a tile past the batch buffer is refused."""
    image = np.zeros((30, 8, 1), np.float32)
    one = np.ones(1, np.float32)
    out = np.empty((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="fewer slots than tiles"):
        fn(image, 0, 30, np.array([0, 4]), np.array([0, 0]), one[None], one, one, out)
