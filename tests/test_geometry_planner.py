import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_deploy.geometry import Geometry
from unet_deploy.tiling import plan_tiles


def test_paper_sizes():
    g = Geometry(4)
    assert g.output_size(572) == 388  # paper Fig. 1
    assert g.halo(572) == 92
    assert g.output_size(573) is None


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_every_pool_sees_an_even_size(depth):
    g = Geometry(depth)
    for n in g.legal_sizes(1, 800):
        s = n
        for _ in range(depth):
            s -= 4
            assert s > 0 and s % 2 == 0
            s //= 2
    # legal sizes are spaced by 2**depth
    sizes = g.legal_sizes(1, 800)
    assert set(np.diff(sizes)) == {2**depth}


def test_same_padding_keeps_size():
    g = Geometry(3, "same")
    assert g.output_size(64) == 64 and g.halo(64) == 0
    assert g.output_size(60) is None  # 60 / 8 is not whole


def coverage(plan):
    hits = np.zeros((plan.image_h, plan.image_w), np.int32)
    for row in range(plan.rows):
        ys, xs = plan.out_origins(row)
        for y, x in zip(ys, xs):
            hits[y : y + plan.out_h, x : x + plan.out_w] += 1
    return hits


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400), depth=st.integers(1, 4),
       k=st.integers(0, 6))
def test_grid_covers_image_exactly_once(h, w, depth, k):
    g = Geometry(depth)
    tile = g.legal_sizes(g.input_for_output(2**depth), 600)[k]
    plan = plan_tiles(h, w, g, tile)
    assert (coverage(plan) == 1).all()
    # more than one tile along an axis: the step keeps the pooling grid aligned
    for step, cells in ((plan.out_h, plan.rows), (plan.out_w, plan.cols)):
        assert cells == 1 or step % 2**depth == 0
    assert plan.tile_h <= tile and g.is_legal(plan.tile_h) and g.is_legal(plan.tile_w)
    assert all(type(v) is int for v in dataclasses.astuple(plan))  # sizes and offsets, no floats
    # a band is exactly the rows its tile row writes
    assert sum(b - a for a, b in (plan.band(r) for r in range(plan.rows))) == h


@pytest.mark.parametrize("shape", [(1, 1), (1, 997), (997, 1), (7919, 3), (13, 17)])
def test_odd_shapes(shape):
    plan = plan_tiles(*shape, Geometry(4), 572)
    assert (coverage(plan) == 1).all()


def test_empty_image_is_refused():
    for shape in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match="at least 1x1"):
            plan_tiles(*shape, Geometry(2), 60)


def test_small_image_gets_small_tile():
    plan = plan_tiles(10, 10, Geometry(4), 1052)
    assert plan.tile_h == 204 and plan.out_h == 20 and plan.n_tiles == 1  # 188 gives only 4


def test_tile_too_small_to_tile_seamlessly():
    with pytest.raises(ValueError, match="at least 204"):
        plan_tiles(100, 100, Geometry(4), 188)  # output 4 < 16
    assert plan_tiles(4, 4, Geometry(4), 188).n_tiles == 1  # one tile: no alignment needed


def test_paper_tile_steps_by_multiple_of_16():
    plan = plan_tiles(2000, 2000, Geometry(4), 572)
    assert (plan.net_h, plan.out_h, plan.halo_y) == (388, 384, 92)


def test_exact_tiles_are_not_shrunk_but_must_be_legal():
    plan = plan_tiles(10, 10, Geometry(4), 572, shrink=False)
    assert (plan.tile_h, plan.tile_w, plan.n_tiles) == (572, 572, 1)
    with pytest.raises(ValueError, match="not legal"):
        plan_tiles(10, 10, Geometry(4), (572, 573), shrink=False)


def test_illegal_tile_is_explained():
    with pytest.raises(ValueError, match="nearest legal sizes: 572 or 588$"):
        plan_tiles(1000, 1000, Geometry(4), 573)
    with pytest.raises(ValueError, match="nearest legal sizes: 60 or 62$"):
        plan_tiles(100, 100, Geometry(1), 61)  # legal sizes 2 apart


def test_repr_is_readable():
    r = repr(plan_tiles(20000, 20000, Geometry(4), 1052))
    assert "1052x1052" in r and "868x868" in r and "step 864x864" in r and "576 tiles" in r
    assert "halo=92/92" in r
