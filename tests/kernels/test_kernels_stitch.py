"""Stitch / blend kernels vs NumPy twins vs a plain paste-into-canvas reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.kernels import (
    blend_add,
    blend_add_numpy,
    blend_finalize,
    blend_finalize_numpy,
    blend_weights,
    stitch_labels,
    stitch_labels_numpy,
    stitch_probabilities,
    stitch_probabilities_numpy,
)

LABEL_DTYPES = [np.uint8, np.uint16, np.int32]


def _canvas_paste(tiles, ys, xs, h, w, row0, band_rows, fill, accumulate=False):
    """Independent reference: paste (B, oh, ow, ...) tiles into an oversized
    canvas with plain slicing, then crop to the band and the image width."""
    b, oh, ow = tiles.shape[:3]
    big = np.full((h + oh + 64, w + ow + 64) + tiles.shape[3:], fill, dtype=np.float64)
    if accumulate:
        big[...] = 0
    for t, y, x in zip(tiles, ys, xs):
        if accumulate:
            big[y : y + oh, x : x + ow] += t
        else:
            big[y : y + oh, x : x + ow] = t
    return big[row0 : row0 + band_rows, :w]


@st.composite
def stitch_case(draw):
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    oh = draw(st.integers(1, 64))
    ow = draw(st.integers(1, 64))
    k = draw(st.integers(1, 5))
    n = draw(st.integers(1, 5))
    ys = draw(st.lists(st.integers(0, h + 8), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(0, w + 8), min_size=n, max_size=n))
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


@settings(max_examples=60, deadline=None)
@given(case=stitch_case())
def test_blend_add(case):
    p, ys, xs, rng = case["probs"], case["ys"], case["xs"], case["rng"]
    n, k, oh, ow = len(ys), *p.shape[1:]
    weights = rng.uniform(0.01, 1, size=(oh, ow)).astype(np.float32)
    args = (case["h"], case["w"], case["row0"], case["band_rows"])
    wt = np.broadcast_to(weights, (n, oh, ow)).astype(np.float64)
    ref_w = _canvas_paste(wt, ys, xs, *args, 0, accumulate=True)
    ref_a = _canvas_paste(wt[..., None] * np.moveaxis(p[:n], 1, -1), ys, xs, *args, 0, True)
    base_a = rng.uniform(0, 1, size=(case["band_rows"], case["w"], k)).astype(np.float32)
    base_w = rng.uniform(0, 1, size=(case["band_rows"], case["w"])).astype(np.float32)
    for fn in (blend_add, blend_add_numpy):
        acc, wsum = base_a.copy(), base_w.copy()
        fn(p, ys, xs, weights, acc, wsum, case["row0"])
        np.testing.assert_allclose(acc, base_a + ref_a, rtol=1e-5, atol=1e-5, err_msg=fn.__name__)
        np.testing.assert_allclose(wsum, base_w + ref_w, rtol=1e-5, atol=1e-5, err_msg=fn.__name__)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (5, 8), (64, 64), (388, 388), (3, 500)])
@pytest.mark.parametrize("sigma_scale", [0.125, 0.01, 1.0])
def test_blend_weights(shape, sigma_scale):
    w = blend_weights(*shape, sigma_scale=sigma_scale)
    assert w.shape == shape and w.dtype == np.float32
    assert np.all(w > 0) and np.all(np.isfinite(w))
    assert w.max() == np.float32(1.0)
    np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)  # centred
    assert w.min() >= np.float32(1e-8)  # floor keeps wsum well away from 0
    if min(shape) >= 5:  # centre weighs more than the corner
        assert w[shape[0] // 2, shape[1] // 2] > w[0, 0]


def test_blend_weights_rejects_bad_args():
    for args in [(0, 4), (4, 0)]:
        with pytest.raises(ValueError):
            blend_weights(*args)
    with pytest.raises(ValueError):
        blend_weights(4, 4, sigma_scale=0)


def _finalize_both(acc, wsum, k, label_dtype=np.uint8):
    results = []
    for fin in (blend_finalize, blend_finalize_numpy):
        lab = np.full(wsum.shape, 99, label_dtype)
        prob = np.full(acc.shape, -1, np.float32)
        fin(acc, wsum, out_labels=lab, out_probs=prob)
        results.append((lab, prob))
    return results


@pytest.mark.parametrize("add", [blend_add, blend_add_numpy])
def test_blend_single_tile_returns_probs(add):
    rng = np.random.default_rng(0)
    h, w, k = 13, 11, 3
    probs = rng.dirichlet(np.ones(k), size=(1, 20, 16)).transpose(0, 3, 1, 2).astype(np.float32)
    weights = blend_weights(20, 16)
    acc, wsum = np.zeros((h, w, k), np.float32), np.zeros((h, w), np.float32)
    add(probs, np.array([0]), np.array([0]), weights, acc, wsum, 0)
    expect = np.moveaxis(probs[0, :, :h, :w], 0, -1)
    for lab, prob in _finalize_both(acc, wsum, k):
        np.testing.assert_allclose(prob, expect, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(lab, np.argmax(expect, axis=-1))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    oh=st.integers(1, 24),
    ow=st.integers(1, 24),
    k=st.integers(1, 4),
    stride_frac=st.floats(0.3, 1.0),
    n_bands=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_blend_overlapping_identical_probs(h, w, oh, ow, k, stride_frac, n_bands, seed):
    """Overlapping tiles carrying the same field average back to that field,
    also when the result is produced band by band."""
    rng = np.random.default_rng(seed)
    field = rng.dirichlet(np.ones(k), size=(h + oh, w + ow)).astype(np.float32)
    sy, sx = max(1, int(oh * stride_frac)), max(1, int(ow * stride_frac))
    grid = [(y, x) for y in range(0, h, sy) for x in range(0, w, sx)]
    ys = np.array([g[0] for g in grid], np.int64)
    xs = np.array([g[1] for g in grid], np.int64)
    probs = np.stack([np.moveaxis(field[y : y + oh, x : x + ow], -1, 0) for y, x in grid])
    weights = blend_weights(oh, ow)
    edges = np.linspace(0, h, n_bands + 1).astype(int)
    for add in (blend_add, blend_add_numpy):
        lab_all, prob_all = [], []
        for r0, r1 in zip(edges[:-1], edges[1:]):
            if r1 == r0:
                continue
            acc, wsum = np.zeros((r1 - r0, w, k), np.float32), np.zeros((r1 - r0, w), np.float32)
            add(probs, ys, xs, weights, acc, wsum, int(r0))
            assert np.all(wsum > 0), "every pixel is covered"
            lab, prob = _finalize_both(acc, wsum, k)[0]
            lab_all.append(lab)
            prob_all.append(prob)
        prob = np.concatenate(prob_all)
        np.testing.assert_allclose(prob, field[:h, :w], rtol=1e-5, atol=1e-6)
        lab = np.concatenate(lab_all)
        # argmax may legitimately flip only where the field has near-ties
        top2 = np.sort(field[:h, :w], axis=-1)[..., -2:] if k > 1 else None
        clear = np.ones((h, w), bool) if k == 1 else (top2[..., 1] - top2[..., 0] > 1e-4)
        np.testing.assert_array_equal(lab[clear], np.argmax(field[:h, :w], -1)[clear])


def test_blend_finalize_uncovered_pixels_are_zero():
    acc = np.ones((2, 3, 2), np.float32)
    wsum = np.array([[2, 0, 1], [0, 4, 0]], np.float32)
    acc[..., 1] = 3
    (lab, prob), _ = _finalize_both(acc, wsum, 2, np.int32)
    assert np.all(prob[wsum == 0] == 0) and np.all(lab[wsum == 0] == 0)
    np.testing.assert_allclose(prob[0, 0], [0.5, 1.5])
    assert lab[0, 0] == 1


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
