"""README promises held through the command line itself: resolution copied end to end, the
``--backend auto`` choice and its reason, exit codes 1 (unexpected), 4 (accuracy gate failure,
engine manifest mismatch) and 6 (backend failure), ``build-engine`` (CPU INT8, its 99.5 % default
gate) and ``export`` (parity checked by the command; nothing written when it fails)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app

runner = CliRunner()
UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimeter


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, code: int, *texts: str) -> str:
    msg = res.output.strip()
    assert res.exit_code == code, msg
    assert len(msg.splitlines()) == 1 and msg.startswith("error: "), msg
    for text in texts:
        assert text in msg, msg
    return msg


@pytest.fixture
def image(tmp_path):
    img = (np.random.default_rng(0).random((150, 170)) * 4000).astype(np.uint16)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, img)
    return path


def pixel_size_um(path: Path) -> tuple[float, float]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit = int(page.tags["ResolutionUnit"].value)
    return UM_PER_UNIT[unit] * xd / xn, UM_PER_UNIT[unit] * yd / yn


@pytest.mark.parametrize("resolution,unit", [((2500.0, 4000.0), "CENTIMETER"),
                                             ((300.0, 150.0), "INCH")])
def test_resolution_copied_end_to_end(tmp_path, tiny_model, resolution, unit):
    img = (np.random.default_rng(1).random((120, 90)) * 4000).astype(np.uint16)
    src = tmp_path / "res.tif"
    tifffile.imwrite(src, img, resolution=resolution, resolutionunit=unit)
    want = pixel_size_um(src)
    for output in ("labels", "probabilities"):
        out = tmp_path / f"res.{output}.tif"
        res = cli("segment", src, "-o", out, "--model", tiny_model, "--output", output, "-q")
        assert res.exit_code == 0, res.output
        assert pixel_size_um(out) == pytest.approx(want, rel=1e-6)


def test_backend_auto_says_which_and_why(image, tiny_model, tmp_path):
    from unet_deploy import backends as B

    name, reason = B.choose_backend(tiny_model)
    res = cli("segment", image, "-o", tmp_path / "o.tif", "--model", tiny_model)
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("backend: ")]
    assert line == [f"backend: {name} ({reason})"]
    assert reason  # a reason, not just a name
    if name == "onnxruntime-cpu":  # this CPU machine: says why each faster backend was skipped
        assert "skipped: tensorrt:" in reason and "onnxruntime-gpu:" in reason
    res = cli("segment", image, "-o", tmp_path / "o2.tif", "--model", tiny_model, "-q")
    assert res.exit_code == 0 and "backend:" not in res.output  # quiet
    res = cli("segment", image, "-o", tmp_path / "o3.tif", "--model", tiny_model,
              "--backend", "onnxruntime-cpu")
    assert res.exit_code == 0 and "backend:" not in res.output  # only auto explains itself


@pytest.mark.parametrize("exc", [ZeroDivisionError("planted bug"),
                                 KeyError("planted bug")])
def test_exit_1_unexpected_error_is_one_line(image, tiny_model, tmp_path, monkeypatch, exc):
    from unet_deploy import errors, normalize

    def broken(*a, **k):
        raise exc

    monkeypatch.delenv("UNET_DEPLOY_DEBUG", raising=False)
    monkeypatch.setattr(normalize, "channel_mix", broken)
    out = tmp_path / "o.tif"
    msg = one_line_error(cli("segment", image, "-o", out, "--model", tiny_model, "-q"), 1,
                         type(exc).__name__, "planted bug")
    assert "Traceback" not in msg and not out.exists()
    assert not list(tmp_path.glob(".o.tif.partial-*"))
    monkeypatch.setattr(normalize, "channel_mix", lambda *a, **k: (_ for _ in ()).throw(
        errors.UnetDeployError("in.tif: something unforeseen; report it")))
    one_line_error(cli("segment", image, "-o", out, "--model", tiny_model, "-q"), 1,
                   "something unforeseen")


def test_exit_6_backend_failure(image, tiny_model, tmp_path):
    """A model whose weights are NaN: ONNX Runtime runs it, the backend refuses its non-finite
    output (README: never garbage), the CLI exits 6 and writes nothing."""
    import onnx

    proto = onnx.load(str(tiny_model))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    w = np.frombuffer(init.raw_data, np.float32).copy()
    w[:] = np.nan
    init.raw_data = w.tobytes()
    bad = tmp_path / "nan_weights.onnx"
    onnx.save(proto, str(bad))
    out = tmp_path / "o.tif"
    one_line_error(cli("segment", image, "-o", out, "--model", bad, "-q"), 6, "NaN/Inf")
    assert not out.exists() and not list(tmp_path.glob(".o.tif.partial-*"))


def _fake_tensorrt():
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0.35"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            raise AssertionError("a mismatched engine must never be deserialized")

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.BuilderFlag = types.SimpleNamespace(FP16=0, BF16=1, INT8=2)
    return trt


def test_exit_4_engine_manifest_mismatch(image, tiny_model, tmp_path, monkeypatch):
    """An engine built for another GPU: refused before deserialization with one line naming
    the mismatch and the exact rebuild command; exit 4; no output."""
    import hashlib

    from unet_deploy import backends as B
    from unet_deploy import engines as E
    from unet_deploy.model_store import file_sha256, read_onnx

    engine = tmp_path / "m.engine"
    data = b"serialized-plan" + bytes(range(64))
    engine.write_bytes(data)
    info = read_onnx(tiny_model).info
    manifest = E.Manifest(
        onnx_sha256=file_sha256(tiny_model), engine_sha256=hashlib.sha256(data).hexdigest(),
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0", precision="fp16", batch=8, tile=92, min_tile=44,
        in_channels=1, shapes={"min": [1, 1, 44, 44], "opt": [8, 1, 92, 92],
                               "max": [8, 1, 92, 92]},
        build_flags=["FP16"], model_info=info.to_json(), onnx_path=str(tiny_model))
    E.manifest_path(engine).write_text(manifest.to_json())
    here = E.Environment("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(B, "_has", lambda mod, real=B._has: True if mod == "tensorrt" else
                        real(mod))
    monkeypatch.setattr(B, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(E, "current_environment", lambda: here)
    out = tmp_path / "o.tif"
    msg = one_line_error(cli("segment", image, "-o", out, "--model", engine, "-q",
                             "--tile", 92), 4,
                         "refusing to run", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
                         "compute capability 9.0", "unet-deploy build-engine")
    assert "Rebuild it: unet-deploy build-engine" in msg and "-o" in msg
    assert not out.exists() and engine.read_bytes() == data  # never rebuilt or touched


@pytest.fixture
def calibration_dirs(tmp_path, blob_images, hot_blob_images):
    good, hot = tmp_path / "calib", tmp_path / "calib_hot"
    for folder, images in ((good, blob_images), (hot, hot_blob_images)):
        folder.mkdir()
        for i, im in enumerate(images):
            tifffile.imwrite(folder / f"img{i}.tif", im)
    return good, hot


def test_build_engine_int8_cli_gate(decisive_model, calibration_dirs, tmp_path):
    """``build-engine -o X.onnx --precision int8``: passes the default 99.5 % gate by
    measurement on representative images; with hot-pixel images the measured agreement (~93 %)
    fails the default gate: exit 4, one line with the numbers, nothing written."""
    from unet_deploy.quantize import QUANT_METADATA_KEY

    good, hot = calibration_dirs
    out = tmp_path / "m.int8.onnx"
    res = cli("build-engine", decisive_model, "-o", out, "--precision", "int8",
              "--calibration", good)
    assert res.exit_code == 0, res.output
    assert "gate pass" in res.output and "required >= 99.50%" in res.output
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    gate = json.loads(meta[QUANT_METADATA_KEY])["gate"]
    assert gate["passed"] and gate["min_agreement"] == 0.995 and gate["label_agreement"] < 1.0
    bad = tmp_path / "hot.int8.onnx"
    msg = one_line_error(cli("build-engine", decisive_model, "-o", bad, "--precision", "int8",
                             "--calibration", hot), 4,
                         "rejected by the accuracy gate", "required >= 99.50%")
    agreement = float(re.search(r"label agreement ([\d.]+)%", msg).group(1))
    assert 60 < agreement < 99.5
    assert not bad.exists() and not list(tmp_path.glob("hot.int8.onnx*"))
    # an explicit --min-agreement below the measurement lets the same build through
    res = cli("build-engine", decisive_model, "-o", bad, "--precision", "int8",
              "--calibration", hot, "--min-agreement", f"{agreement / 100 - 0.01:.4f}")
    assert res.exit_code == 0 and bad.is_file(), res.output


def _training_checkpoint(path: Path) -> None:
    """A checkpoint as the trainer's best.pt writes it (tiny depth-2 net)."""
    torch = pytest.importorskip("torch")
    from unet_deploy.metadata import ModelInfo
    from unet_deploy.train.unet import build_unet

    torch.manual_seed(0)
    info = ModelInfo(name="tiny", depth=2, base=4, tile=92)
    torch.save({"model": build_unet(info).state_dict(), "info": info.to_json(), "step": 3,
                "metrics": json.dumps({})}, path)


def test_export_cli(tmp_path, monkeypatch):
    from unet_deploy import export
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array

    ck = tmp_path / "best.pt"
    _training_checkpoint(ck)
    out = tmp_path / "m.onnx"
    res = cli("export", ck, "-o", out, "--tile", 140)
    assert res.exit_code == 0, res.output
    assert "parity" in res.output and out.is_file()
    assert read_onnx(out).info.tile == 140
    img = (np.random.default_rng(0).random((100, 90)) * 4000).astype(np.uint16)
    assert segment_array(img, out).shape == (100, 90)
    one_line_error(cli("export", ck, "-o", out), 5, "--overwrite")  # never replaced silently
    # the command runs the parity check itself: when it fails, nothing is written
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    failed = tmp_path / "f.onnx"
    one_line_error(cli("export", ck, "-o", failed), 4, "differs from PyTorch", "not written")
    assert not failed.exists() and not list(tmp_path.glob("f.onnx*"))
