import numpy as np
import pytest

from unet_deploy.train.augment import (
    affine_matrix,
    elastic_displacement,
    gray_value_jitter,
    random_augment,
    warp,
)


def _sample(shape=(48, 56), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    labels[5:20, 5:25] = 3
    labels[25:40, 10:50] = 17
    labels[30:35, 30:35] = 250
    weights = (1.0 + rng.random(shape)).astype(np.float32)
    return image, labels, weights


def test_zero_displacement_no_affine_is_identity():
    image, labels, weights = _sample()
    zero = np.zeros(image.shape, np.float32)
    np.testing.assert_allclose(warp(image, zero, zero, order=3), image, atol=1e-5)
    np.testing.assert_array_equal(warp(labels, zero, zero, order=0), labels)
    np.testing.assert_allclose(warp(weights, zero, zero, order=1), weights, atol=1e-6)
    np.testing.assert_array_equal(warp(labels, None, None, order=0), labels)


def test_random_augment_all_disabled_is_identity():
    image, labels, weights = _sample()
    img, lab, wts = random_augment(
        image, labels, weights, np.random.default_rng(0),
        flip=False, rot90=False, max_angle=0, max_shift=0, elastic_sigma=0, gray=False,
    )
    np.testing.assert_allclose(img, image, atol=1e-5)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_allclose(wts, weights, atol=1e-6)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [(False, False), (True, False), (False, True)])
def test_right_angles_and_flips_are_exact_permutations(k, flip):
    _, labels, _ = _sample(shape=(40, 40))
    out = warp(labels, None, None, order=0, angle=90.0 * k, flip=flip)
    # a pure permutation of pixels: same histogram, and matches an np.rot90/flip
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(labels, axis=None))
    candidates = [np.rot90(labels, j) for j in range(4)]
    candidates += [np.flip(c, a) for c in candidates[:4] for a in (0, 1)]
    assert any(np.array_equal(out, c) for c in candidates)


def test_elastic_displacement_shape_dtype_and_smoothness():
    dy, dx = elastic_displacement((64, 80), np.random.default_rng(0), grid=3, sigma=10.0)
    assert dy.shape == dx.shape == (64, 80)
    assert dy.dtype == dx.dtype == np.float32
    # smooth: neighbouring pixels move by much less than a pixel relative to each other
    assert np.abs(np.diff(dy, axis=0)).max() < 2.0
    assert np.abs(np.diff(dx, axis=1)).max() < 2.0


def test_elastic_displacement_interpolates_grid_nodes():
    shape, grid, sigma = (41, 61), 3, 10.0
    dy, dx = elastic_displacement(shape, np.random.default_rng(5), grid=grid, sigma=sigma)
    nodes = np.random.default_rng(5).normal(0.0, sigma, size=(2, grid, grid))
    iy, ix = np.ix_([0, 20, 40], [0, 30, 60])
    np.testing.assert_allclose(dy[iy, ix], nodes[0], atol=1e-4)
    np.testing.assert_allclose(dx[iy, ix], nodes[1], atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_labels_keep_value_set_and_dtype(seed):
    image, labels, weights = _sample(seed=seed)
    img, lab, wts = random_augment(image, labels, weights, np.random.default_rng(seed), max_shift=5)
    assert lab.dtype == labels.dtype
    assert set(np.unique(lab)) <= set(np.unique(labels))
    assert img.dtype == np.float32 and wts.dtype == np.float32
    assert img.shape == lab.shape == wts.shape == labels.shape
    assert wts.min() >= weights.min() - 1e-5  # order-1: no undershoot


def test_bool_labels_supported():
    image, labels, weights = _sample()
    _, lab, _ = random_augment(image, labels > 0, None, np.random.default_rng(0))
    assert lab.dtype == bool


@pytest.mark.parametrize("seed", range(3))
def test_same_transform_for_image_and_labels(seed):
    _, labels, weights = _sample(seed=seed)
    as_image = labels.astype(np.float32)
    img, lab, wts = random_augment(
        as_image, labels, weights, np.random.default_rng(seed),
        image_order=0, gray=False, max_shift=4,
    )
    np.testing.assert_array_equal(img, lab.astype(np.float32))
    # weights are resampled with order 1 at the same coordinates as an order-1 image
    img1, _, wts1 = random_augment(
        weights, labels, weights, np.random.default_rng(seed),
        image_order=1, gray=False, max_shift=4,
    )
    np.testing.assert_allclose(img1, wts1, atol=1e-6)


def test_label_shape_is_aligned_centre_crop():
    image, labels, weights = _sample(shape=(60, 64))
    as_image = labels.astype(np.float32)
    img, lab, wts = random_augment(
        as_image, labels, weights, np.random.default_rng(3),
        out_shape=(60, 64), label_shape=(40, 36), image_order=0, gray=False,
    )
    assert img.shape == (60, 64) and lab.shape == wts.shape == (40, 36)
    np.testing.assert_array_equal(img[10:50, 14:50], lab.astype(np.float32))


def test_odd_margin_rejected():
    image, labels, weights = _sample(shape=(60, 64))
    with pytest.raises(ValueError):
        random_augment(image, labels, weights, np.random.default_rng(0), label_shape=(41, 36))


def test_determinism_with_fixed_seed():
    image, labels, weights = _sample()
    a = random_augment(image, labels, weights, np.random.default_rng(42), max_shift=3)
    b = random_augment(image, labels, weights, np.random.default_rng(42), max_shift=3)
    c = random_augment(image, labels, weights, np.random.default_rng(43), max_shift=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_multichannel_image():
    image, labels, weights = _sample()
    stack = np.stack([image, 2 * image])
    img, lab, _ = random_augment(stack, labels, weights, np.random.default_rng(0), gray=False)
    assert img.shape == stack.shape
    np.testing.assert_allclose(img[1], 2 * img[0], rtol=1e-4, atol=1e-5)


def test_gray_value_jitter_image_only_and_range():
    image, _, _ = _sample()
    out = gray_value_jitter(image * 1000, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all()
    # monotone intensity mapping: order of pixel values preserved
    flat, src = out.ravel(), (image * 1000).ravel()
    assert np.all(np.diff(flat[np.argsort(src)]) >= -1e-3)
    const = gray_value_jitter(np.full((4, 4), 7.0), np.random.default_rng(0))
    np.testing.assert_array_equal(const, 7.0)


def test_affine_matrix_quarter_turns_exact():
    for k in range(4):
        m = affine_matrix(90.0 * k)
        assert np.array_equal(m, np.round(m))
