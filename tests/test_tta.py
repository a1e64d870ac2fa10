"""Test-time augmentation (tta.TTABackend): tiled TTA equals whole-image TTA, like the seamless
property of plain inference; the transforms are right; the model default and the options."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.errors import OptionError
from unet_deploy.geometry import Geometry
from unet_deploy.pipeline import segment_array, segment_whole
from unet_deploy.tta import TRANSFORMS, TTABackend, resolve_mode, with_tta

TILES = Geometry(2).legal_sizes(44, 140)


@pytest.fixture(scope="module")
def backend(tiny_model):
    with OnnxRuntimeBackend(tiny_model, threads=1) as be:
        yield be


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 150), w=st.integers(1, 150), tile=st.sampled_from(TILES),
       batch=st.integers(1, 4), mode=st.sampled_from(["flips", "d4"]),
       seed=st.integers(0, 2**16))
def test_tiled_tta_equals_whole_image_tta(backend, h, w, tile, batch, mode, seed):
    image = (np.random.default_rng(seed).random((h, w)) * 200).astype(np.uint16)
    tta = TTABackend(backend, mode).activate()
    whole = segment_whole(image, tta, "probabilities")
    tiled = segment_array(image, backend=backend, tile=tile, batch_size=batch,
                          output="probabilities", tta=mode)
    assert np.abs(tiled - whole).max() <= 1e-5
    planned = segment_array(image, backend=backend, output="probabilities", tta=mode)
    assert np.abs(planned - whole).max() <= 1e-5


@pytest.mark.parametrize("depth", [3, 4])
def test_deep_net_tiled_tta_equals_whole(deep_models, depth, real_crop):
    geo = Geometry(depth)
    tile = geo.legal_sizes(geo.input_for_output(2**depth), 400)[1]
    image = real_crop[:150, :170]
    with OnnxRuntimeBackend(deep_models[depth], threads=1) as be:
        whole = segment_whole(image, TTABackend(be, "d4").activate(), "probabilities")
        tiled = segment_array(image, backend=be, tile=tile, output="probabilities", tta="d4")
    assert np.abs(tiled - whole).max() <= 1e-5


def test_tta_is_the_mean_over_transformed_images(backend, real_crop):
    """Whole-image d4 TTA = mean of plain whole-image passes over the 8 transformed images
    (square image: every transform keeps the padding symmetric)."""
    image = real_crop[:96, :96]
    tta = segment_whole(image, TTABackend(backend, "d4").activate(), "probabilities")
    parts = []
    for k in range(4):
        for flip in (False, True):
            img = np.rot90(image, k)
            img = img[:, ::-1] if flip else img
            p = segment_whole(np.ascontiguousarray(img), backend, "probabilities")
            p = p[:, ::-1] if flip else p
            parts.append(np.rot90(p, -k))
    assert np.abs(tta - np.mean(parts, axis=0)).max() <= 1e-5
    assert len(TRANSFORMS["d4"]) == 8 and len(TRANSFORMS["flips"]) == 4


def test_modes_and_default(backend):
    assert with_tta(backend, "none") is backend
    assert with_tta(backend, None) is backend  # the tiny model's default is "none"
    assert isinstance(with_tta(backend, "flips"), TTABackend)
    with pytest.raises(OptionError, match="flips, d4"):
        with_tta(backend, "rot")

    class Info:
        tta = "d4"

    assert resolve_mode(None, Info()) == "d4" and resolve_mode("none", Info()) == "none"


def test_model_default_tta_from_metadata(tmp_path, tiny_model, real_crop):
    import shutil

    pytest.importorskip("onnx")
    from unet_deploy.export import update_metadata

    path = tmp_path / "tta_default.onnx"
    shutil.copyfile(tiny_model, path)
    update_metadata(path, tta="flips")
    image = real_crop[:80, :90]
    default = segment_array(image, path, backend="onnxruntime", output="probabilities")
    flips = segment_array(image, tiny_model, backend="onnxruntime", output="probabilities",
                          tta="flips")
    none = segment_array(image, path, backend="onnxruntime", output="probabilities",
                         tta="none")
    assert np.abs(default - flips).max() <= 1e-6
    assert np.abs(default - none).max() > 1e-4


def test_summary_names_the_tta_that_ran(tmp_path, tiny_model, real_crop):
    """A model's default TTA costs 4-8 passes: the run's summary line says it ran."""
    import shutil

    import tifffile

    pytest.importorskip("onnx")
    from unet_deploy.export import update_metadata
    from unet_deploy.pipeline import segment_file

    path = tmp_path / "tta_default.onnx"
    shutil.copyfile(tiny_model, path)
    update_metadata(path, tta="flips")
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, real_crop[:80, :90])
    kw = dict(backend="onnxruntime", overwrite=True, progress=False)
    assert str(segment_file(src, tmp_path / "a.tif", path, **kw)).endswith(", TTA flips")
    assert "TTA" not in str(segment_file(src, tmp_path / "b.tif", path, tta="none", **kw))
    assert "TTA d4" in str(segment_file(src, tmp_path / "c.tif", tiny_model, tta="d4", **kw))


def test_segmenter_tta(tiny_model, real_crop):
    from unet_deploy import Segmenter

    image = real_crop[:120, :100]
    with OnnxRuntimeBackend(tiny_model, threads=1) as be:
        ref = segment_array(image, backend=be, output="probabilities", tta="d4")
    with Segmenter(tiny_model, backend="onnxruntime", output="probabilities", tta="d4",
                   warmup=False) as seg:
        assert seg.tta == "d4"
        assert np.abs(seg(image) - ref).max() <= 1e-5
    with pytest.raises(OptionError):
        Segmenter(tiny_model, backend="onnxruntime", tta="bogus", warmup=False)


def test_cli_tta(tmp_path, tiny_model, real_crop):
    import tifffile
    from typer.testing import CliRunner

    from unet_deploy.cli import app

    image = real_crop[:90, :100]
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(app, ["segment", str(src), "-o", str(out), "--model",
                                   str(tiny_model), "--output", "probabilities", "--tta", "d4",
                                   "-q"])
    assert res.exit_code == 0, res.output
    want = segment_array(image, tiny_model, backend="onnxruntime", output="probabilities",
                         tta="d4")
    assert np.abs(tifffile.imread(out) - want).max() <= 1e-5
    bad = CliRunner().invoke(app, ["segment", str(src), "-o", str(out), "--model",
                                   str(tiny_model), "--tta", "d8", "--overwrite"])
    assert bad.exit_code == 2
