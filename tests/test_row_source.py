"""RowSource, what the gather kernel reads from: a reader's own array, zero copy, with the
mapped pages of finished rows handed back; or, for decoded files, one band per tile row
holding exactly the mirrored rows that tile row needs (independent reference: np.pad)."""

from __future__ import annotations

import numpy as np
import pytest

from unet_deploy import tiling
from unet_deploy.geometry import Geometry
from unet_deploy.readers import ArrayReader
from unet_deploy.tiling import RowSource, plan_tiles

GEO = Geometry(2)


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 60000, (150, 70, 1)).astype(np.uint16)


def decoded_reader(image, asked):
    """A reader without an in-memory array (like a compressed TIFF): rows come from read_rows."""
    class Decoded(ArrayReader):
        def read_rows(self, y0, y1):
            asked.append((y0, y1))
            return self.data[y0:y1]

    reader = Decoded(image)
    reader.data, reader.array = reader.array, None
    return reader


@pytest.mark.parametrize("byteorder", ["=", ">"])
def test_band_holds_the_mirrored_rows_of_its_tile_row(image, byteorder):
    asked = []
    src_image = image.astype(image.dtype.newbyteorder(byteorder))
    plan = plan_tiles(150, 70, GEO, 60)
    assert plan.rows > 3
    padded = np.pad(image, ((plan.halo_y, plan.tile_h), (0, 0), (0, 0)), mode="reflect")
    source = RowSource(decoded_reader(src_image, asked), plan)
    for row in range(plan.rows):
        band, row0 = source.rows_for(row)
        again, _ = source.rows_for(row)  # asked twice, read once
        assert again is band and band.dtype.isnative
        y0 = row * plan.out_h - plan.halo_y
        for i in range(plan.tile_h):  # every row of the tile window, mirrored at the borders
            y = y0 + i
            src_y = -y if y < 0 else (2 * (plan.image_h - 1) - y if y >= plan.image_h else y)
            np.testing.assert_array_equal(band[src_y - row0], padded[y + plan.halo_y])
    assert len(asked) == plan.rows
    assert all(hi - lo <= plan.tile_h for lo, hi in asked)


def test_an_in_memory_array_is_used_as_is(image):
    plan = plan_tiles(150, 70, GEO, 60)
    reader = ArrayReader(image)
    source = RowSource(reader, plan)
    for row in range(plan.rows):
        band, row0 = source.rows_for(row)
        assert band is reader.array and row0 == 0


def test_finished_rows_of_a_mapped_array_are_released_and_needed_ones_kept(image, monkeypatch):
    """Each tile row hands back exactly the rows above its own window: never a row it or a
    later tile row reads (those start at row * out_h - halo_y and only move down), and
    nothing stays behind (the mapped input must not pile up in RSS)."""
    released = []
    monkeypatch.setattr(tiling, "release_mapped_rows",
                        lambda array, y0, y1: released.append((y0, y1)))
    plan = plan_tiles(150, 70, GEO, 60)
    assert plan.rows > 3 and plan.halo_y > 0
    source = RowSource(ArrayReader(image), plan)
    for row in range(plan.rows):
        first_needed = max(0, row * plan.out_h - plan.halo_y)
        source.rows_for(row)
        covered = released[-1][1] if released else 0
        assert covered == first_needed
    assert released[0][0] == 0
    assert all(a < b for a, b in released)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(released, released[1:]))


def test_a_non_native_array_is_read_as_native_bands(image, monkeypatch):
    released = []
    monkeypatch.setattr(tiling, "release_mapped_rows",
                        lambda array, y0, y1: released.append((y0, y1)))
    plan = plan_tiles(150, 70, GEO, 60)
    source = RowSource(ArrayReader(image.astype(">u2")), plan)
    band, row0 = source.rows_for(1)
    assert band.dtype == np.dtype("=u2") and row0 == 1 * plan.out_h - plan.halo_y
    np.testing.assert_array_equal(band, image[row0 : row0 + plan.tile_h])
    assert released == []


def reference_tiles(image, plan, ids):
    """Each tile cut from the mirror-padded image with plain slicing (np.pad 'reflect')."""
    pad = max(plan.tile_h, plan.tile_w)
    padded = np.pad(image[..., 0].astype(np.float32), pad, mode="reflect")
    tiles = []
    for t in ids:
        r, c = divmod(int(t), plan.cols)
        y, x = r * plan.out_h - plan.halo_y + pad, c * plan.out_w - plan.halo_x + pad
        tiles.append(padded[y : y + plan.tile_h, x : x + plan.tile_w])
    return np.stack(tiles)[:, None]


@pytest.mark.parametrize("order", ["consecutive", "rows interleaved"])
@pytest.mark.parametrize("threads", [None, 3])
def test_gather_batch_puts_each_tile_in_its_slot(image, order, threads):
    from unet_deploy.normalize import Preprocess
    from unet_deploy.workers import Workers

    plan = plan_tiles(150, 70, GEO, 60)
    assert plan.rows > 2 and plan.cols > 1
    ids = np.arange(plan.n_tiles)
    if order == "rows interleaved":  # a row's tiles are not one slice of the batch
        ids = np.random.default_rng(1).permutation(ids)
    one = np.ones(1, np.float32)
    prep = Preprocess(one[None], one * 0, one)
    out = np.full((len(ids) + 2, 1, plan.tile_h, plan.tile_w), -1, np.float32)
    workers = Workers(threads) if threads else None
    got = tiling.gather_batch(RowSource(ArrayReader(image), plan), plan, ids, prep, out, workers)
    assert got.shape[0] == len(ids)
    np.testing.assert_array_equal(got, reference_tiles(image, plan, ids))
    assert (out[len(ids):] == -1).all()  # spare slots untouched


def test_by_row_gives_slices_for_consecutive_tiles_and_indices_otherwise():
    plan = plan_tiles(150, 70, GEO, 60)
    cols = plan.cols
    assert cols > 1
    got = [(r, w, c.tolist()) for r, w, c in plan.by_row(np.arange(1, cols + 2))]
    assert got == [(0, slice(0, cols - 1), list(range(1, cols))),
                   (1, slice(cols - 1, cols + 1), [0, 1])]
    got = [(r, w.tolist(), c.tolist()) for r, w, c in
           plan.by_row(np.array([cols, 0, cols + 1, 1]))]  # rows interleaved
    assert got == [(0, [1, 3], [0, 1]), (1, [0, 2], [0, 1])]
