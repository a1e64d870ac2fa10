"""Stitch kernels vs NumPy twins vs a plain paste-into-canvas reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import (
    stitch_classes,
    stitch_classes_numpy,
    stitch_labels,
    stitch_labels_numpy,
    stitch_probabilities,
    stitch_probabilities_numpy,
)

LABEL_DTYPES = [np.uint8, np.uint16, np.int32]
MARGIN = 8


def _canvas_paste(tiles, ys, xs, h, w, row0, band_rows, fill, accumulate=False):
    """Independent reference: paste (B, oh, ow, ...) tiles into an oversized
    canvas with plain slicing, then crop to the band and the image width."""
    b, oh, ow = tiles.shape[:3]
    m = MARGIN  # tiles may start up to MARGIN pixels above/left of the image
    big = np.full((h + oh + 64 + m, w + ow + 64 + m) + tiles.shape[3:], fill, dtype=np.float64)
    if accumulate:
        big[...] = 0
    for t, y, x in zip(tiles, ys, xs):
        if accumulate:
            big[m + y : m + y + oh, m + x : m + x + ow] += t
        else:
            big[m + y : m + y + oh, m + x : m + x + ow] = t
    return big[m + row0 : m + row0 + band_rows, m : m + w]


@st.composite
def stitch_case(draw):
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    oh = draw(st.integers(1, 64))
    ow = draw(st.integers(1, 64))
    k = draw(st.integers(1, 5))
    n = draw(st.integers(1, 5))
    # origins also above/left of the image: the crop's j0/i0 > 0 paths
    ys = draw(st.lists(st.integers(-MARGIN, h + 8), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(-MARGIN, w + 8), min_size=n, max_size=n))
    row0 = draw(st.integers(0, h - 1))
    band_rows = draw(st.integers(1, h - row0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Coarse values produce plenty of argmax ties.
    probs = (rng.integers(0, 4, size=(n + draw(st.integers(0, 2)), k, oh, ow)) / 3).astype(
        np.float32
    )
    return dict(
        h=h, w=w, probs=probs, row0=row0, band_rows=band_rows, rng=rng,
        ys=np.array(ys, np.int64), xs=np.array(xs, np.int64),
    )


@settings(max_examples=60, deadline=None)
@given(case=stitch_case(), dtype=st.sampled_from(LABEL_DTYPES))
def test_stitch_labels(case, dtype):
    p, ys, xs = case["probs"], case["ys"], case["xs"]
    n = len(ys)
    labels = np.argmax(p[:n], axis=1)  # (n, oh, ow), ties -> lowest index
    ref = _canvas_paste(labels, ys, xs, case["h"], case["w"], case["row0"], case["band_rows"], 9)
    for fn in (stitch_labels, stitch_labels_numpy):
        out = np.full((case["band_rows"], case["w"]), 9, dtype=dtype)
        fn(p, ys, xs, out, case["row0"])
        np.testing.assert_array_equal(out, ref, err_msg=fn.__name__)


@settings(max_examples=60, deadline=None)
@given(case=stitch_case())
def test_stitch_probabilities(case):
    p, ys, xs = case["probs"], case["ys"], case["xs"]
    n, k = len(ys), p.shape[1]
    tiles = np.moveaxis(p[:n], 1, -1)  # (n, oh, ow, K)
    ref = _canvas_paste(tiles, ys, xs, case["h"], case["w"], case["row0"], case["band_rows"], -1)
    for fn in (stitch_probabilities, stitch_probabilities_numpy):
        out = np.full((case["band_rows"], case["w"], k), -1, dtype=np.float32)
        fn(p, ys, xs, out, case["row0"])
        np.testing.assert_array_equal(out, ref, err_msg=fn.__name__)


def test_label_dtype_too_small_is_rejected():
    probs = np.zeros((1, 300, 2, 2), np.float32)
    out = np.zeros((2, 2), np.uint8)
    for fn in (stitch_labels, stitch_labels_numpy):
        with pytest.raises(ValueError):
            fn(probs, np.array([0]), np.array([0]), out, 0)


def test_labels_nan_and_ties_like_np_argmax():
    probs = np.array([0.5, np.nan, 0.5, np.nan], np.float32).reshape(1, 4, 1, 1)
    probs = np.concatenate([probs, np.full((1, 4, 1, 1), 0.25, np.float32)])
    out = np.zeros((1, 2), np.uint8)
    stitch_labels(probs, np.array([0, 0]), np.array([0, 1]), out, 0)
    assert out.tolist() == [[1, 0]]


@settings(max_examples=60, deadline=None)
@given(case=stitch_case(), dtype=st.sampled_from(LABEL_DTYPES),
       src_dtype=st.sampled_from(LABEL_DTYPES))
def test_stitch_classes_equals_stitch_labels(case, dtype, src_dtype):
    """A backend that returns its argmax (class maps) stitches to the same band as one that
    returns probabilities."""
    p, ys, xs = case["probs"], case["ys"], case["xs"]
    classes = np.argmax(p, axis=1).astype(src_dtype)
    want = np.full((case["band_rows"], case["w"]), 9, dtype=dtype)
    stitch_labels(p, ys, xs, want, case["row0"])
    for fn in (stitch_classes, stitch_classes_numpy):
        out = np.full_like(want, 9)
        fn(classes, ys, xs, out, case["row0"], p.shape[1])
        np.testing.assert_array_equal(out, want, err_msg=fn.__name__)


@settings(max_examples=40, deadline=None)
@given(case=stitch_case(), cut=st.floats(0, 1))
def test_row_ranges_stitched_separately_equal_one_call(case, cut):
    """The merger stitches a band as row ranges on several threads: same result, any order."""
    p, ys, xs, row0, rows = case["probs"], case["ys"], case["xs"], case["row0"], case["band_rows"]
    a = int(cut * rows)
    classes = np.argmax(p, axis=1).astype(np.uint8)
    for fn, src, extra in ((stitch_labels, p, ()), (stitch_classes, classes, (p.shape[1],))):
        whole = np.full((rows, case["w"]), 9, np.uint8)
        fn(src, ys, xs, whole, row0, *extra)
        split = np.full_like(whole, 9)
        fn(src, ys, xs, split[a:], row0 + a, *extra)  # later range first
        fn(src, ys, xs, split[:a], row0, *extra)
        np.testing.assert_array_equal(split, whole, err_msg=fn.__name__)


def test_stitch_classes_rejects_bad_input():
    out = np.zeros((2, 2), np.uint8)
    for fn in (stitch_classes, stitch_classes_numpy):
        with pytest.raises(ValueError, match="classes must be"):
            fn(np.zeros((1, 2, 2), np.float32), np.array([0]), np.array([0]), out, 0)
        with pytest.raises(ValueError, match="do not fit"):
            fn(np.zeros((1, 2, 2), np.uint16), np.array([0]), np.array([0]), out, 0, 300)
        for bad_out in (np.zeros((2, 2), np.float32), np.zeros((2, 2, 1), np.uint8)):
            with pytest.raises(ValueError, match="out must be 2-D uint8/uint16/int32"):
                fn(np.zeros((1, 2, 2), np.uint8), np.array([0]), np.array([0]), bad_out, 0)


def test_labels_kernel_equals_numpy_argmax_on_random_floats():
    """The vectorized argmax is exact (same comparisons as np.argmax), also with NaN."""
    rng = np.random.default_rng(3)
    p = rng.random((3, 4, 37, 41), dtype=np.float32)
    p[rng.random(p.shape) < 0.05] = np.nan
    out = np.zeros((37, 41 * 3), np.uint8)
    stitch_labels(p, np.zeros(3, np.int64), np.arange(3) * 41, out, 0)
    np.testing.assert_array_equal(out, np.concatenate(list(np.argmax(p, axis=1)), axis=1))


@pytest.mark.parametrize("out_dtype,fits,too_many", [(np.uint8, 256, 257),
                                                     (np.uint16, 65536, 65537)])
def test_class_count_boundary_of_the_output_dtype(out_dtype, fits, too_many):
    """Class ids 0..K-1 fit a dtype whose maximum is K-1 exactly; one class more is refused
    (labels from probabilities, and pasted class maps)."""
    ys, xs = np.array([0]), np.array([0])
    for fn in (stitch_labels, stitch_labels_numpy):
        probs = np.zeros((1, fits, 1, 2), np.float32)
        probs[0, fits - 1, 0, 1] = 1.0  # the last class wins at one pixel
        got = fn(probs, ys, xs, np.zeros((1, 2), out_dtype))  # row0 defaults to 0
        np.testing.assert_array_equal(got, [[0, fits - 1]])
        with pytest.raises(ValueError, match=f"^{too_many} classes do not fit in "
                                             f"{np.dtype(out_dtype)}$"):
            fn(np.zeros((1, too_many, 1, 2), np.float32), ys, xs, np.zeros((1, 2), out_dtype))
    classes = np.array([[[0, fits - 1]]], np.int32)
    for fn in (stitch_classes, stitch_classes_numpy):
        got = fn(classes, ys, xs, np.zeros((1, 2), out_dtype), 0, fits)
        np.testing.assert_array_equal(got, [[0, fits - 1]])
        with pytest.raises(ValueError, match="do not fit"):
            fn(classes, ys, xs, np.zeros((1, 2), out_dtype), 0, too_many)


def test_stitch_classes_defaults_take_any_uint8_class_map():
    """Defaults: row0 0 and n_classes 256, i.e. any uint8 class map pastes into uint8."""
    classes = np.array([[[0, 255], [7, 1]]], np.uint8)
    for fn in (stitch_classes, stitch_classes_numpy):
        got = fn(classes, np.array([0]), np.array([0]), np.zeros((2, 2), np.uint8))
        np.testing.assert_array_equal(got, classes[0])


def test_stitch_probabilities_row0_defaults_to_the_image_top():
    probs = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    for fn in (stitch_probabilities, stitch_probabilities_numpy):
        got = fn(probs, np.array([0]), np.array([0]), np.zeros((2, 3, 2), np.float32))
        np.testing.assert_array_equal(got, np.moveaxis(probs[0], 0, -1))
