"""The paper's promise: overlap-tile output of a valid-convolution U-Net equals whole-image output."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.geometry import Geometry
from unet_deploy.pipeline import segment_array, segment_whole

TILES = Geometry(2).legal_sizes(44, 140)  # depth-2 legal tiles: 44, 48, ..., 140


@pytest.fixture(scope="module")
def backend(tiny_model):
    with OnnxRuntimeBackend(tiny_model, threads=1) as be:
        yield be


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 150), w=st.integers(1, 150), tile=st.sampled_from(TILES),
       batch=st.integers(1, 5), dtype=st.sampled_from(["uint8", "uint16", "float32"]),
       seed=st.integers(0, 2**16))
def test_tiled_equals_whole(backend, h, w, tile, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w)) * 200).astype(dtype)
    whole_p = segment_whole(image, backend, "probabilities")
    tiled_p = segment_array(image, backend=backend, tile=tile, batch_size=batch,
                            output="probabilities")
    assert tiled_p.shape == (h, w, 2)
    assert np.abs(tiled_p - whole_p).max() <= 1e-5
    tiled_l = segment_array(image, backend=backend, tile=tile, batch_size=batch)
    np.testing.assert_array_equal(tiled_l, whole_p.argmax(-1))


def test_real_image_is_seamless(backend, real_crop):
    whole = segment_whole(real_crop, backend, "probabilities")
    labels = segment_whole(real_crop, backend, "labels")
    assert 0.01 < labels.mean() < 0.99  # both classes present: the comparison means something
    for tile, batch in [(44, 1), (92, 3), (140, 2)]:
        tiled = segment_array(real_crop, backend=backend, tile=tile, batch_size=batch,
                              output="probabilities")
        assert np.abs(tiled - whole).max() <= 1e-5
        np.testing.assert_array_equal(tiled.argmax(-1), labels)


def test_naive_zero_padding_would_show_seams(backend, real_crop):
    """Sanity check of the test itself: tiles cut without the halo differ from whole-image."""
    whole = segment_whole(real_crop, backend, "probabilities")
    out = np.zeros_like(whole)
    step = 52  # output tile of the 92 tile
    for y in range(0, real_crop.shape[0], step):
        for x in range(0, real_crop.shape[1], step):
            out[y : y + step, x : x + step] = segment_whole(
                real_crop[y : y + step, x : x + step], backend, "probabilities")
    assert np.abs(out - whole).max() > 1e-3


@pytest.mark.parametrize("depth", [3, 4])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 420), w=st.integers(1, 420), k=st.integers(0, 4),
       batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_deep_nets_tiled_equals_whole(deep_models, depth, h, w, k, batch, seed):
    """Output sides of depth-3/4 nets (e.g. 388 for 572) are not multiples of 2**depth; tiles
    stepping by the full output would see a shifted pooling grid and leave seams."""
    geo = Geometry(depth)
    tile = geo.legal_sizes(geo.input_for_output(2**depth), 400)[k]
    image = (np.random.default_rng(seed).random((h, w)) * 1000).astype(np.uint16)
    with OnnxRuntimeBackend(deep_models[depth], threads=1) as be:
        whole = segment_whole(image, be, "probabilities")
        tiled = segment_array(image, backend=be, tile=tile, batch_size=batch,
                              output="probabilities")
    assert np.abs(tiled - whole).max() <= 1e-5
    np.testing.assert_array_equal(tiled.argmax(-1), whole.argmax(-1))


def test_deep_net_real_image_many_tiles(deep_models, real_crop):
    with OnnxRuntimeBackend(deep_models[4], threads=1) as be:
        whole = segment_whole(real_crop, be, "probabilities")
        tiled = segment_array(real_crop, backend=be, tile=220, output="probabilities")
        plan_cells = -(-real_crop.shape[0] // 32) * -(-real_crop.shape[1] // 32)
    assert plan_cells > 50  # 220 -> output 36, step 32: many tiles, many seams to get wrong
    assert np.abs(tiled - whole).max() <= 1e-5
