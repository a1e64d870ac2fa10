"""CPU INT8 (ONNX Runtime static Q/DQ) build and the accuracy gate."""

import glob
import json

import numpy as np
import onnx
import pytest

from unet_deploy.errors import InputError, ModelError
from unet_deploy.gate import gate_report
from unet_deploy.metadata import METADATA_KEY
from unet_deploy.model_store import read_onnx
from unet_deploy.quantize import (QUANT_METADATA_KEY, calibration_tiles, default_int8_path,
                                  quantize_int8)

IMAGES = sorted(glob.glob("/work/shared/data/bbbc039/images/*.tif"))[:3]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(tmp_path_factory.mktemp("q") / "tiny.onnx", instance_scheme="none",
                            head_gain=4)


@pytest.fixture(scope="module")
def images():
    if not IMAGES:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 4000, (200, 260)).astype(np.uint16) for _ in range(3)]
    return IMAGES


def test_gate_report_numbers():
    ref = np.zeros((1, 2, 2, 5), np.float32)
    ref[:, 0] = 0.9
    ref[:, 1] = 0.1
    cand = ref.copy()
    cand[0, :, 0, 0] = [0.4, 0.6]  # 1 of 10 pixels flips
    r = gate_report(ref, cand, 0.95)
    assert r.label_agreement == pytest.approx(0.9) and not r.passed
    assert r.max_abs_error == pytest.approx(0.5) and r.pixels == 10
    assert gate_report(ref, cand, 0.9).passed
    cand[0, 0, 1, 1] = np.nan
    assert not gate_report(ref, cand, 0.0).passed  # non-finite output never passes
    assert gate_report(ref, cand, 0.0).label_agreement == 0.0
    with pytest.raises(ModelError, match="shapes differ"):
        gate_report(ref, cand[:, :, :1])


def test_calibration_tiles_use_the_pipeline_normalization(tiny_onnx, images):
    info = read_onnx(tiny_onnx).info
    t = calibration_tiles(images, info, 92, n_tiles=6)
    assert t.shape == (6, 1, 92, 92) and t.dtype == np.float32
    assert -0.5 < np.median(t) < 1.0 and t.max() < 50  # percentile-normalized, not raw uint16


def test_int8_model_keeps_metadata_and_segments(tiny_onnx, images, tmp_path):
    from unet_deploy.pipeline import segment_array

    out = tmp_path / "tiny.int8.onnx"
    res = quantize_int8(tiny_onnx, out, calibration=images, n_tiles=6, min_agreement=0.0)
    assert res.path == out and out.is_file()
    src = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    q = onnx.load(str(out))
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta[METADATA_KEY] == src[METADATA_KEY]
    qm = json.loads(meta[QUANT_METADATA_KEY])
    assert qm["format"] == "QDQ" and qm["gate"]["tiles"] == 6
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert read_onnx(out).info.tile == 92
    img = np.random.default_rng(0).integers(0, 1000, (120, 130)).astype(np.uint16)
    a = segment_array(img, tiny_onnx)
    b = segment_array(img, out)
    assert a.shape == b.shape == (120, 130)
    assert np.mean(a == b) > 0.8
    assert 0.0 <= res.report.label_agreement <= 1.0 and res.report.passed


def test_gate_failure_writes_nothing(tiny_onnx, images, tmp_path):
    out = tmp_path / "x.int8.onnx"
    with pytest.raises(ModelError, match="rejected by the accuracy gate: FAIL"):
        quantize_int8(tiny_onnx, out, calibration=images[:1], n_tiles=2, min_agreement=1.01)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_needs_calibration_images(tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="calibration"):
        quantize_int8(tiny_onnx, tmp_path / "a.onnx")
    with pytest.raises(InputError, match="not found"):
        quantize_int8(tiny_onnx, tmp_path / "a.onnx", calibration=[tmp_path / "nope.tif"])
    assert default_int8_path(tiny_onnx).name == "tiny.int8.onnx"
