"""`unet-deploy export-bioimageio`: a bioimage.io model package (spec 0.5) that the reference
validator accepts offline (bioimageio.core's test_model runs the ONNX weights on the test
tensors with the declared preprocessing and compares with the test output)."""

import json
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from unet_deploy.bioimageio import export_package, scale_range, spdx_licence, validate_package
from unet_deploy.cli import app
from unet_deploy.geometry import Geometry

runner = CliRunner()


def test_shipped_model_package_passes_the_reference_validator(tmp_path):
    pytest.importorskip("bioimageio.spec", reason="bioimageio extra not installed")
    out = tmp_path / "nuclei.zip"
    res = runner.invoke(app, ["export-bioimageio", "nuclei", "-o", str(out), "--validate"])
    assert res.exit_code == 0, res.output
    assert "passed" in res.output or "valid-format" in res.output
    rdf = json.loads(zipfile.ZipFile(out).read("rdf.yaml"))
    assert rdf["license"] == "CC0-1.0"
    dois = [c.get("doi") for c in rdf["cite"]]
    assert "10.1007/978-3-319-24574-4_28" in dois and "10.1002/cyto.a.23863" in dois
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "border"]


def test_package_geometry_and_test_tensors(tiny3_model, tmp_path):
    res = runner.invoke(app, ["export-bioimageio", str(tiny3_model), "-o",
                              str(tmp_path / "t.zip")])
    assert res.exit_code == 2 and "--license" in res.output  # the random model states none
    result = export_package(tiny3_model, tmp_path / "t.zip", licence="MIT",
                            cite=["Some data set | https://example.org/data"])
    zf = zipfile.ZipFile(result.path)
    rdf = json.loads(zf.read("rdf.yaml"))
    geo = Geometry(2, "valid")
    y_in, y_out = rdf["inputs"][0]["axes"][2], rdf["outputs"][0]["axes"][2]
    assert y_in["size"]["step"] == 4 and geo.is_legal(y_in["size"]["min"])
    assert not geo.is_legal(y_in["size"]["min"] - 1) or y_in["size"]["min"] == 1
    for n in range(3):  # the declared rule gives legal sizes with the declared output size
        side = y_in["size"]["min"] + n * y_in["size"]["step"]
        assert geo.output_size(side) == side + y_out["size"]["offset"]
    prep = rdf["inputs"][0]["preprocessing"][0]
    assert prep["id"] == "scale_range" and prep["kwargs"]["max_percentile"] == 99.8
    raw = np.load(zf.open("test_input.npy"))
    expected = np.load(zf.open("test_output.npy"))
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tiny3_model), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: scale_range(raw, 1.0, 99.8)})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert {"cover.png", "README.md", "tiny3.onnx"} <= set(zf.namelist())
    assert rdf["cite"][-1] == {"text": "Some data set", "url": "https://example.org/data"}


def test_licence_text_to_spdx():
    assert spdx_licence("Weights trained on BBBC039 (CC0 1.0). Model weights: CC0 1.0.") == \
        "CC0-1.0"
    assert spdx_licence("research / non-commercial use only") is None


def test_refuses_existing_and_engines(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"old")
    res = runner.invoke(app, ["export-bioimageio", "nuclei", "-o", str(tmp_path / "x.zip")])
    assert res.exit_code == 5 and (tmp_path / "x.zip").read_bytes() == b"old"
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    res = runner.invoke(app, ["export-bioimageio", str(engine)])
    assert res.exit_code == 4 and "ONNX" in res.output


def test_validator_failure_is_a_model_error(tmp_path):
    pytest.importorskip("bioimageio.spec", reason="bioimageio extra not installed")
    out = export_package("nuclei", tmp_path / "n.zip").path
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "test_output.npy":
                arr = np.load(__import__("io").BytesIO(data))
                buf = __import__("io").BytesIO()
                np.save(buf, arr[:, ::-1].copy())  # classes swapped: the test must fail
                data = buf.getvalue()
            dst.writestr(item, data)
    rdf = json.loads(zipfile.ZipFile(bad).read("rdf.yaml"))
    assert rdf["outputs"][0]["test_tensor"]["source"] == "test_output.npy"
    from unet_deploy.errors import ModelError
    with pytest.raises(ModelError, match="bioimageio"):
        validate_package(bad)
