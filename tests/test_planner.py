"""The cost-optimal planner (tiling.choose_plan / plan_for): exact cost model, minimal among all
legal plans (brute force on small cases), memory cap, --tile override, and still seamless."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.metadata import ModelInfo
from unet_deploy.pipeline import segment_array, segment_whole
from unet_deploy.tiling import (choose_plan, max_tile_of, plan_cost, plan_for, plan_memory,
                                plan_tiles, tile_macs)


def info_of(depth=2, base=4, classes=2, in_channels=1) -> ModelInfo:
    names = ["background", "foreground", "border"][:classes]
    return ModelInfo(depth=depth, base=base, classes=names, in_channels=in_channels, tile=92)


def all_legal_plans(h, w, info, max_side=None):
    """Every plan with legal tiles from the smallest seamless one up to the covering one."""
    geo = info.geometry
    sides = {}
    for n, axis in ((h, 0), (w, 1)):
        cover = geo.input_for_output(n)
        lo = min(cover, geo.input_for_output(2**geo.depth))
        sides[axis] = [t for t in geo.legal_sizes(lo, cover) if max_side is None or t <= max_side]
    for th, tw in itertools.product(sides[0], sides[1]):
        yield plan_tiles(h, w, geo, (th, tw), shrink=False)


@pytest.mark.parametrize("kw", [dict(depth=2, base=4), dict(depth=3, base=2, classes=3),
                                dict(depth=1, base=3, in_channels=3, tile=60),
                                dict(depth=4, base=2, tile=220)])
def test_tile_macs_equals_graph_count(model_dir, kw):
    from unet_deploy.flops import conv_macs
    from unet_deploy.model_store import read_onnx

    pytest.importorskip("torch")
    from unet_deploy.testing import random_unet_onnx

    path = random_unet_onnx(model_dir / f"macs_{'_'.join(map(str, kw.values()))}.onnx",
                            parity=False, **kw)
    info = read_onnx(path).info
    sizes = info.geometry.legal_sizes(1, 400)
    for th, tw in [(sizes[0], sizes[0]), (sizes[1], sizes[4]), (sizes[5], sizes[2])]:
        assert tile_macs(info, th, tw) == conv_macs(path, 1, th, tw)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), depth=st.integers(1, 3),
       batch=st.integers(1, 4), mem_kb=st.sampled_from([None, 200, 800, 3000]))
def test_chosen_plan_is_cost_minimal(h, w, depth, batch, mem_kb):
    info = info_of(depth=depth)
    memory = (mem_kb or 1 << 20) * 1024
    plan = choose_plan(h, w, info, batch, memory=memory)
    plans = list(all_legal_plans(h, w, info))
    fitting = [p for p in plans if plan_memory(info, p, batch) <= memory]
    if fitting:
        assert plan_memory(info, plan, batch) <= memory
        assert plan_cost(info, plan) == min(plan_cost(info, p) for p in fitting)
    else:  # nothing fits: the least memory
        assert plan_memory(info, plan, batch) == min(plan_memory(info, p, batch) for p in plans)
    # still a seamless grid: legal tiles, steps of 2**depth, every pixel owned once
    assert info.geometry.is_legal(plan.tile_h) and info.geometry.is_legal(plan.tile_w)
    for step, cells in ((plan.out_h, plan.rows), (plan.out_w, plan.cols)):
        assert cells == 1 or step % 2**depth == 0
    assert plan.rows * plan.out_h >= h and (plan.rows - 1) * plan.out_h < h
    assert plan.cols * plan.out_w >= w and (plan.cols - 1) * plan.out_w < w


def test_max_side_is_respected():
    info = info_of(depth=2)
    plan = choose_plan(300, 200, info, max_side=92)
    assert plan.tile_h <= 92 and plan.tile_w <= 92
    best = min(plan_cost(info, p) for p in all_legal_plans(300, 200, info, max_side=92))
    assert plan_cost(info, plan) == best


def test_small_frame_is_one_covering_tile():
    """The issue's case: a 512² frame with the paper-size net is one 700² tile, not 2x2 of 572."""
    info = ModelInfo(depth=4, base=16, classes=["background", "interior", "border"])
    plan = choose_plan(512, 512, info)
    assert (plan.tile_h, plan.tile_w, plan.n_tiles) == (700, 700, 1)
    old = plan_tiles(512, 512, info.geometry, 572)
    assert old.n_tiles == 4 and plan_cost(info, old) > 2 * plan_cost(info, plan)


def test_memory_cap_limits_the_tile():
    info = ModelInfo(depth=4, base=16, classes=["background", "interior", "border"])
    big = choose_plan(8000, 8000, info, memory=4 << 30)
    small = choose_plan(8000, 8000, info, memory=256 << 20)
    assert plan_memory(info, small) <= 256 << 20 < plan_memory(info, big)
    assert plan_cost(info, small) > plan_cost(info, big)
    # a batch of 4 tiles must fit too
    four = choose_plan(8000, 8000, info, batch=4, memory=1 << 30)
    assert plan_memory(info, four, 4) <= 1 << 30


def test_memory_cap_is_inclusive_and_a_batch_below_one_counts_as_one():
    info = ModelInfo(depth=4, base=16, classes=["background", "interior", "border"])
    best = choose_plan(8000, 8000, info, batch=2, memory=1 << 50)
    need = plan_memory(info, best, 2)
    assert choose_plan(8000, 8000, info, batch=2, memory=need) == best  # exactly fits
    assert choose_plan(8000, 8000, info, batch=2, memory=need - 1) != best
    one = choose_plan(8000, 8000, info, batch=1, memory=256 << 20)
    assert one != choose_plan(8000, 8000, info, batch=2, memory=256 << 20)  # batch matters here
    for batch in (0, -3):
        assert choose_plan(8000, 8000, info, batch=batch, memory=256 << 20) == one
    assert plan_for(8000, 8000, info, memory=256 << 20) == one  # plan_for's default: batch 1


def test_tile_override_and_backend_limit():
    info = info_of(depth=2)
    assert plan_for(500, 500, info, tile=92) == plan_tiles(500, 500, info.geometry, 92)

    class Engine:
        class manifest:
            tile = 124

    assert max_tile_of(Engine()) == 124 and max_tile_of(object()) is None
    plan = plan_for(500, 500, info, backend=Engine())
    assert plan.tile_h <= 124 and plan.tile_w <= 124


def test_default_output_is_the_planned_one(tiny_model, real_crop):
    """segment_array without --tile runs the cost-optimal plan."""
    with OnnxRuntimeBackend(tiny_model, threads=1) as be:
        segment_array(real_crop, backend=be, output="probabilities")
        calls = be.infer_calls
        segment_array(real_crop, backend=be, output="probabilities")
        plan = plan_for(*real_crop.shape, be.info)
        assert be.infer_calls - calls == plan.n_tiles


@pytest.fixture(scope="module")
def backend(tiny_model):
    with OnnxRuntimeBackend(tiny_model, threads=1) as be:
        yield be


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 260), w=st.integers(1, 260), batch=st.integers(1, 3),
       mem_kb=st.sampled_from([100, 400, 1 << 20]), seed=st.integers(0, 2**16))
def test_planned_output_equals_whole_image(backend, h, w, batch, mem_kb, seed):
    image = (np.random.default_rng(seed).random((h, w)) * 300).astype(np.uint16)
    plan = choose_plan(h, w, backend.info, batch, memory=mem_kb * 1024)
    whole = segment_whole(image, backend, "probabilities")
    from unet_deploy.normalize import preprocess_for
    from unet_deploy.pipeline import segment_plane
    from unet_deploy.readers import ArrayReader

    reader = ArrayReader(image)
    tiled = np.concatenate(list(segment_plane(reader, plan, backend,
                                              preprocess_for(reader, backend.info), batch,
                                              "probabilities")))
    assert np.abs(tiled - whole).max() <= 1e-5


def test_memory_cap_from_the_environment(monkeypatch):
    from unet_deploy.errors import OptionError
    from unet_deploy.tiling import DEFAULT_MEMORY, MEMORY_ENV, default_memory

    info = ModelInfo(depth=4, base=16, classes=["background", "interior", "border"])
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    assert default_memory() == DEFAULT_MEMORY
    big = plan_for(8000, 8000, info)
    monkeypatch.setenv(MEMORY_ENV, "256")
    small = plan_for(8000, 8000, info)
    assert plan_memory(info, small) <= 256 << 20 < plan_memory(info, big)
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(OptionError, match=MEMORY_ENV):
        plan_for(8000, 8000, info)
