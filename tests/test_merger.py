"""BandMerger on its own: tiles added in any batch split, on any number of threads, give
complete bands in image order equal to pasting every tile's crop into the image (an
independent NumPy reference); class maps paste like probabilities' argmax; many classes need
uint16 labels; a single-column plan hands on each band as soon as its one tile is in."""

from __future__ import annotations

import numpy as np
import pytest

from unet_deploy.geometry import Geometry
from unet_deploy.merger import BandMerger
from unet_deploy.tiling import plan_tiles
from unet_deploy.workers import Workers


def tiles_for(plan, k, seed=0):
    """Per-tile network outputs (N, K, net_h, net_w) cut from one random "whole-image output"
    (as a valid U-Net's are: where tiles overlap they agree), and that image."""
    rng = np.random.default_rng(seed)
    whole = rng.random((plan.rows * plan.out_h + plan.net_h,
                        plan.cols * plan.out_w + plan.net_w, k)).astype(np.float32)
    probs = np.empty((plan.n_tiles, k, plan.net_h, plan.net_w), np.float32)
    for t in range(plan.n_tiles):
        r, c = divmod(t, plan.cols)
        y, x = r * plan.out_h, c * plan.out_w
        probs[t] = np.moveaxis(whole[y : y + plan.net_h, x : x + plan.net_w], -1, 0)
    return probs, whole[: plan.image_h, : plan.image_w]


def run(merger, probs, batches, workers=None):
    bands = []
    for ids in batches:
        merger.add(probs[ids], np.asarray(ids, np.int64), workers)
        bands += list(merger.pop_complete())
    merger.finalize()
    return np.concatenate(bands)


@pytest.fixture(scope="module")
def plan():
    plan = plan_tiles(150, 170, Geometry(3, "valid"), 132)  # output 44, step 40: overlaps
    assert plan.rows > 2 and plan.cols > 2 and plan.net_h > plan.out_h
    return plan


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("split", ["whole rows", "across rows", "single tiles", "shuffled",
                                   "rows interleaved"])
def test_bands_equal_the_pasted_image(plan, threads, split):
    probs, want = tiles_for(plan, 3)
    ids = np.arange(plan.n_tiles)
    mixed = np.random.default_rng(0).permutation(ids)  # a row's tiles are not one slice
    batches = {"whole rows": [ids[i : i + plan.cols] for i in range(0, plan.n_tiles, plan.cols)],
               "across rows": [ids[i : i + 4] for i in range(0, plan.n_tiles, 4)],
               "single tiles": [[i] for i in ids],
               "shuffled": [ids[[1, 0, 2]], ids[3:]],
               "rows interleaved": [mixed[:7], mixed[7:]]}[split]
    workers = Workers(threads) if threads > 1 else None
    got = run(BandMerger(plan, 3, "probabilities"), probs, batches, workers)
    np.testing.assert_array_equal(got, want)
    labels = run(BandMerger(plan, 3, "labels"), probs, batches, workers)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, want.argmax(-1))
    classes = probs.argmax(1).astype(np.uint8)  # a backend that computed the argmax itself
    pasted = run(BandMerger(plan, 3, "labels"), classes, batches, workers)
    np.testing.assert_array_equal(pasted, want.argmax(-1))


def test_bands_come_in_order_and_only_when_complete(plan):
    probs, want = tiles_for(plan, 2, seed=1)
    m = BandMerger(plan, 2, "probabilities")
    last_row = np.arange((plan.rows - 1) * plan.cols, plan.n_tiles)
    m.add(probs[last_row], last_row)
    assert list(m.pop_complete()) == []  # row 0 not in yet
    rest = np.arange(0, (plan.rows - 1) * plan.cols)
    m.add(probs[rest], rest)
    bands = list(m.pop_complete())
    assert [b.shape[0] for b in bands] == [plan.band(r)[1] - plan.band(r)[0]
                                           for r in range(plan.rows)]
    np.testing.assert_array_equal(np.concatenate(bands), want)
    m.finalize()


def test_single_column_plan_hands_on_each_band_when_its_tile_is_in():
    plan = plan_tiles(200, 30, Geometry(3, "valid"), 132)
    assert plan.cols == 1 and plan.rows > 2
    probs, want = tiles_for(plan, 2, seed=2)
    m = BandMerger(plan, 2, "probabilities")
    assert list(m.pop_complete()) == []  # nothing added, nothing complete
    got = []
    for t in range(plan.n_tiles):
        m.add(probs[[t]], np.array([t]))
        bands = list(m.pop_complete())
        assert len(bands) == 1
        got += bands
    m.finalize()
    np.testing.assert_array_equal(np.concatenate(got), want)


def test_finalize_refuses_missing_tiles(plan):
    probs, _ = tiles_for(plan, 2)
    m = BandMerger(plan, 2, "labels")
    ids = np.arange(plan.n_tiles - 1)
    m.add(probs[ids], ids)
    list(m.pop_complete())
    with pytest.raises(RuntimeError, match=f"not {plan.rows}"):
        m.finalize()


def test_many_classes_need_uint16_labels(plan):
    probs, want = tiles_for(plan, 300, seed=3)
    ids = np.arange(plan.n_tiles)
    labels = run(BandMerger(plan, 300, "labels"), probs, [ids])
    assert labels.dtype == np.uint16 and labels.max() > 255
    np.testing.assert_array_equal(labels, want.argmax(-1))
    assert BandMerger(plan, 256, "labels").label_dtype == np.uint8
    assert BandMerger(plan, 257, "labels").label_dtype == np.uint16  # 0..256 needs 9 bits


def test_class_maps_cannot_give_probabilities(plan):
    m = BandMerger(plan, 2, "probabilities")
    with pytest.raises(ValueError, match="class maps cannot give probabilities"):
        m.add(np.zeros((1, plan.net_h, plan.net_w), np.uint8), np.array([0]))
