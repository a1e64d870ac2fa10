import numpy as np
import pytest
from scipy import ndimage

from unet_deploy.train.weights import (
    border_weights,
    class_balance_weights,
    three_class_target,
    unet_weight_map,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _two_discs(r=12, gap=4, shape=(64, 96)):
    """Two discs on row cy; `gap` background pixels between them on that row.

    Disc A spans columns [ca - r, ca + r]; disc B starts at column ca + r + gap + 1,
    so the centres are 2r + gap + 1 apart.
    """
    cy, ca = shape[0] // 2, 20
    cb = ca + 2 * r + gap + 1
    lab = np.zeros(shape, np.int32)
    lab[_disc(shape, cy, ca, r)] = 1
    lab[_disc(shape, cy, cb, r)] = 2
    return lab, cy, ca, r, gap


def _brute_force_border(lab, w0, sigma):
    """Reference: full-image EDT per instance, sort, take the two smallest."""
    ids = np.unique(lab[lab > 0])
    d = np.stack([ndimage.distance_transform_edt(lab != i) for i in ids])
    d.sort(axis=0)
    w = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(lab == 0, w, 0.0)


def test_two_touching_discs_gap_matches_geometry():
    w0, sigma = 10.0, 5.0
    lab, cy, ca, r, gap = _two_discs()
    w = border_weights(lab, w0=w0, sigma=sigma)
    for j in range(1, gap + 1):
        x = ca + r + j
        assert lab[cy, x] == 0
        # Nearest pixel of disc A to (cy, x) is its rightmost pixel on row cy,
        # (r + j - dx)^2 + dy^2 >= j^2 for any disc pixel; likewise for disc B.
        d1, d2 = j, gap + 1 - j
        expected = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        assert w[cy, x] == pytest.approx(expected, rel=1e-5)
    # inside objects there is no border term
    assert np.all(w[lab > 0] == 0)


def test_matches_brute_force_within_cutoff_error():
    rng = np.random.default_rng(0)
    shape = (80, 90)
    lab = np.zeros(shape, np.int32)
    for i in range(1, 15):
        lab[_disc(shape, rng.integers(0, 80), rng.integers(0, 90), rng.integers(3, 8))] = i
    w0, sigma = 10.0, 5.0
    got = border_weights(lab, w0=w0, sigma=sigma)
    ref = _brute_force_border(lab, w0, sigma)
    bound = w0 * np.exp(-((4 * sigma) ** 2) / (2 * sigma**2))
    assert np.max(np.abs(got - ref)) <= bound + 1e-5


def test_far_pixels_get_only_class_weight():
    lab, cy, ca, r, gap = _two_discs(shape=(200, 96))
    w = unet_weight_map(lab, n_classes=2, w0=10.0, sigma=5.0)
    wc = class_balance_weights(lab > 0, 2)
    far = ndimage.distance_transform_edt(lab == 0) > 40
    assert far.any()
    np.testing.assert_allclose(w[far], wc[far], atol=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_or_one_instance_has_no_border_term(n):
    lab = np.zeros((50, 60), np.int32)
    if n:
        lab[_disc(lab.shape, 25, 30, 8)] = 7
    assert not border_weights(lab).any()
    np.testing.assert_allclose(unet_weight_map(lab), class_balance_weights(lab > 0, 2))


def test_sparse_label_ids_are_handled():
    lab, *_ = _two_discs()
    sparse = np.where(lab == 2, 1_000_000, lab)
    np.testing.assert_allclose(border_weights(sparse), border_weights(lab))


def test_class_balance_mean_one_and_rare_class_heavier():
    rng = np.random.default_rng(1)
    classes = (rng.random((100, 100)) < 0.1).astype(np.uint8)
    w = class_balance_weights(classes, 2)
    assert w.dtype == np.float32
    assert w.mean() == pytest.approx(1.0, rel=1e-5)
    assert w[classes == 1].min() > w[classes == 0].max()
    # exact values: 1 / (K f_c)
    f1 = classes.mean()
    assert w[classes == 1][0] == pytest.approx(1 / (2 * f1), rel=1e-5)


def test_class_balance_three_classes_with_absent_class():
    classes = np.zeros((10, 10), np.uint8)
    classes[:2] = 2  # class 1 absent
    w = class_balance_weights(classes, 3)
    assert w.mean() == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.isfinite(w))


def test_three_class_target_borders_thin_and_separating():
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # touches label 1 along a vertical line
    t = three_class_target(lab)
    assert t.dtype == np.uint8
    assert set(np.unique(t)) == {0, 1, 2}
    assert np.all(t[lab == 0] == 0)
    # touching columns: 1 px of border on each side
    assert np.all(t[5:15, 14] == 2) and np.all(t[5:15, 15] == 2)
    assert np.all(t[6:14, 6:14] == 1) and np.all(t[6:14, 16:24] == 1)
    # interiors of the two objects are not connected
    _, n = ndimage.label(t == 1)
    assert n == 2


def test_three_class_weight_map_shape_dtype():
    lab, *_ = _two_discs()
    w = unet_weight_map(lab, n_classes=3)
    assert w.shape == lab.shape and w.dtype == np.float32
    assert np.all(w > 0)


def test_many_discs_match_brute_force_eq2():
    """Hundreds of nuclei, many touching or cut by the image edge: the per-instance
    bounding-box EDTs (the speed-up) give the full-image brute-force eq. 2 weight map,
    class term included, within the documented cutoff error."""
    rng = np.random.default_rng(2)
    shape = (260, 348)
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(1, 121):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(3, 9)
        y0, y1, x0, x1 = max(cy - r, 0), cy + r + 1, max(cx - r, 0), cx + r + 1
        sub = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        lab[y0:y1, x0:x1][sub] = i
    present = np.unique(lab[lab > 0])
    assert present.size > 100
    w0, sigma = 10.0, 5.0
    got = unet_weight_map(lab, n_classes=2, w0=w0, sigma=sigma)
    ref = class_balance_weights(lab > 0, 2) + _brute_force_border(lab, w0, sigma)
    bound = w0 * np.exp(-((4 * sigma) ** 2) / (2 * sigma**2))
    assert got.shape == shape and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= bound + 1e-4
    assert (got - class_balance_weights(lab > 0, 2)).max() > w0 / 2  # real gaps exist
