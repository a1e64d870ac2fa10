"""Every stitch kernel and its NumPy twin are checked on their OWN results, on the inputs where
they are most likely to differ (NaN, ties, tiles cut by the band and the image edge)."""

import numpy as np
import pytest

from unet_deploy.kernels import (
    gather_tiles,
    gather_tiles_numpy,
    stitch_labels,
    stitch_labels_numpy,
    stitch_probabilities,
    stitch_probabilities_numpy,
)


def _nan_tie_probs():
    rng = np.random.default_rng(5)
    p = (rng.integers(0, 3, (4, 3, 9, 11)) / 2).astype(np.float32)  # many ties
    p[rng.random(p.shape) < 0.1] = np.nan
    return p


@pytest.mark.parametrize("fn", [stitch_labels, stitch_labels_numpy])
def test_labels_twin_nan_ties_and_crops(fn):
    p = _nan_tie_probs()
    ys = np.array([-3, 0, 5, 12], np.int64)  # above the band, inside, past its end
    xs = np.array([-4, 6, 14, 20], np.int64)  # left of the image, inside, past its right edge
    row0, rows, width = 2, 10, 22
    canvas = np.full((40, 60), 9, np.int64)
    for b in range(4):  # independent reference: paste np.argmax into a padded canvas
        canvas[ys[b] + 10 : ys[b] + 19, xs[b] + 10 : xs[b] + 21] = np.argmax(p[b], axis=0)
    want = canvas[row0 + 10 : row0 + 10 + rows, 10 : 10 + width]
    out = np.full((rows, width), 9, np.uint8)
    got = fn(p, ys, xs, out, row0)
    assert got is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fn", [stitch_probabilities, stitch_probabilities_numpy])
def test_probabilities_twin_keeps_nan_and_crops(fn):
    p = _nan_tie_probs()
    ys = np.array([-3, 0, 5, 12], np.int64)
    xs = np.array([-4, 6, 14, 20], np.int64)
    row0, rows, width = 2, 10, 22
    canvas = np.full((40, 60, 3), -1, np.float32)
    for b in range(4):
        canvas[ys[b] + 10 : ys[b] + 19, xs[b] + 10 : xs[b] + 21] = np.moveaxis(p[b], 0, -1)
    want = canvas[row0 + 10 : row0 + 10 + rows, 10 : 10 + width]
    out = np.full((rows, width, 3), -1, np.float32)
    got = fn(p, ys, xs, out, row0)
    assert got is out
    np.testing.assert_array_equal(out, want)  # NaN == NaN for assert_array_equal


@pytest.mark.parametrize("fn", [gather_tiles, gather_tiles_numpy])
def test_gather_one_pixel_wide_and_empty_images(fn):
    """A 1-pixel-wide (or 1-pixel-high) image mirrors to that column everywhere; an empty image
    is refused, not read out of bounds."""
    one = np.ones(1, np.float32)
    col = np.arange(7, dtype=np.float32).reshape(7, 1, 1)
    out = np.full((1, 1, 5, 6), -1, np.float32)
    fn(col, 0, 7, np.array([-2]), np.array([-3]), one[None], one * 0, one, out)
    want = np.pad(col[:, :, 0], ((2, 0), (0, 0)), mode="reflect")[:5]  # rows -2..2 mirrored
    np.testing.assert_array_equal(out[0, 0], np.repeat(want, 6, axis=1))
    row = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
    fn(row, 0, 1, np.array([-1]), np.array([-1]), one[None], one * 0, one, out)
    np.testing.assert_array_equal(out[0, 0], np.tile(np.pad(row[0, :, 0], (1, 0),
                                                            mode="reflect")[:6], (5, 1)))
    for empty, h in ((np.zeros((0, 4, 1), np.float32), 0), (np.zeros((3, 0, 1), np.float32), 3)):
        with pytest.raises(ValueError, match="non-empty"):
            fn(empty, 0, h, np.array([0]), np.array([0]), one[None], one, one, out)
