"""Unusable models fail at load (exit code 4, one line naming the file), before inference and
before ONNX Runtime touches anything unsafe; pickle payloads in checkpoints never run."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import ModelError, ModelNotFoundError, UnetDeployError
from unet_deploy.metadata import METADATA_KEY
from unet_deploy.model_store import check_external_data, read_onnx

onnx = pytest.importorskip("onnx")
EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


def cli_refuses(model: Path, tmp_path: Path, text: str, code: int = 4) -> str:
    img = tmp_path / "in.tif"
    if not img.exists():
        tifffile.imwrite(img, tifffile.imread(EXAMPLE)[:64, :64])
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["segment", str(img), "-o", str(out), "--model", str(model), "-q"])
    msg = res.output.strip()
    assert res.exit_code == code, msg
    assert len(msg.splitlines()) == 1 and str(model.name) in msg and text in msg, msg
    assert not out.exists() and not list(tmp_path.glob(".out.tif.partial-*"))
    return msg


def test_missing_empty_truncated_random(tiny_model, tmp_path):
    cli_refuses(tmp_path / "nope.onnx", tmp_path, "no such model file")
    empty = tmp_path / "zero.onnx"
    empty.write_bytes(b"")
    cli_refuses(empty, tmp_path, "model file is empty")
    raw = tiny_model.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 5):
        trunc = tmp_path / f"trunc{cut}.onnx"
        trunc.write_bytes(raw[:cut])
        cli_refuses(trunc, tmp_path, "trunc")
    rnd = tmp_path / "random.onnx"
    rnd.write_bytes(np.random.default_rng(0).bytes(5000))
    msg = cli_refuses(rnd, tmp_path, "not a loadable ONNX model")
    assert "Protobuf parsing failed" in msg  # ONNX Runtime's own reason, on the one line
    # random bytes that happen to contain "location": the exact external-data parse fails
    # too, and ONNX Runtime still gives the one-line reason (no raw protobuf error)
    loc = tmp_path / "random_location.onnx"
    loc.write_bytes(np.random.default_rng(1).bytes(3000) + b"location" + bytes(100))
    cli_refuses(loc, tmp_path, "not a loadable ONNX model")


def _with_external(tiny_model: Path, folder: Path, location: str, name="ext.onnx") -> Path:
    m = onnx.load(str(tiny_model))
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = folder / name
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/hostname"])
def test_external_data_outside_folder_refused(tiny_model, tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(4096))
    folder = tmp_path / "m"
    folder.mkdir()
    path = _with_external(tiny_model, folder, location)
    with pytest.raises(ModelError, match="points outside"):
        check_external_data(path)
    msg = cli_refuses(path, tmp_path, "points outside")
    assert "keep the data file next to the model" in msg


def test_external_data_symlink_out_refused(tiny_model, tmp_path, monkeypatch):
    (tmp_path / "secret.bin").write_bytes(bytes(4096))
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    path = _with_external(tiny_model, folder, "weights.bin")
    import onnxruntime

    def boom(*a, **k):  # ORT must never be reached
        raise AssertionError("ONNX Runtime opened a model with unsafe external data")

    monkeypatch.setattr(onnxruntime, "InferenceSession", boom)
    with pytest.raises(ModelError, match="points outside"):
        read_onnx(path)


@pytest.mark.parametrize("location", ["../secret.bin", "../" + "d/" * 70 + "secrets.bin"])
def test_external_data_fallback_scanner(tiny_model, tmp_path, monkeypatch, location):
    """Without the onnx package the raw protobuf scan finds the same locations (also one
    of 154 bytes: its length takes a two-byte varint, and is even)."""
    import builtins

    from unet_deploy import model_store

    folder = tmp_path / "m"
    folder.mkdir()
    path = _with_external(tiny_model, folder, location)
    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert model_store._external_locations(str(path)) == [location]
    with pytest.raises(ModelError, match="points outside"):
        check_external_data(path)
    assert model_store._external_locations(str(tiny_model)) == []


def test_fallback_scanner_refuses_entries_it_cannot_read(tiny_model, tmp_path, monkeypatch):
    """Protobuf allows the fields of an external-data entry in any order, and ONNX Runtime
    follows such a location all the same. The byte scan (no onnx package) only reads the
    key-first layout, so it must refuse any other mention of "location" rather than accept it."""
    import builtins

    from unet_deploy import model_store

    (tmp_path / "secret.bin").write_bytes(bytes(4096))
    folder = tmp_path / "m"
    folder.mkdir()
    path = _with_external(tiny_model, folder, "../secret.bin")
    loc = b"../secret.bin"
    key_first = b"\x0a\x08location\x12" + bytes([len(loc)]) + loc
    value_first = b"\x12" + bytes([len(loc)]) + loc + b"\x0a\x08location"
    raw = path.read_bytes()
    assert raw.count(key_first) == 1
    path.write_bytes(raw.replace(key_first, value_first))  # same length: still valid protobuf
    # the exact parse (onnx installed) sees the same outside location
    assert model_store._external_locations(str(path)) == ["../secret.bin"]
    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert model_store._external_locations(str(path)) == [""]
    with pytest.raises(ModelError, match="unreadable location; refused for safety"):
        check_external_data(path)


def test_absolute_location_refused_even_inside_the_folder(tiny_model, tmp_path):
    """README: absolute paths are refused (not only those that lead out of the folder)."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(bytes(4096))
    path = _with_external(tiny_model, folder, str(folder / "w.bin"))
    with pytest.raises(ModelError, match="points outside"):
        check_external_data(path)


@pytest.mark.parametrize("tail", [b"", b"\xff" * 40], ids=["truncated", "runaway-varint"])
def test_fallback_scanner_refuses_broken_entries(tmp_path, monkeypatch, tail):
    """A "location" key whose length is missing (file ends there) or never terminates: the
    byte scan stops and refuses, it does not crash or read past the data."""
    import builtins

    from unet_deploy import model_store

    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07" + b"\x0a\x08location\x12" + tail)
    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ModelError, match="unreadable location|is missing"):
        check_external_data(path)


def test_external_data_inside_folder_loads(tiny_model, tmp_path):
    from unet_deploy.pipeline import segment_array

    m = onnx.load(str(tiny_model))
    path = tmp_path / "ext_ok.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="ext_ok.onnx.data",
                    size_threshold=0)
    img = tifffile.imread(EXAMPLE)[:64, :64]
    np.testing.assert_array_equal(segment_array(img, path), segment_array(img, tiny_model))
    (tmp_path / "ext_ok.onnx.data").unlink()
    with pytest.raises(ModelError, match="missing"):
        check_external_data(path)


def _graph_model(tmp_path, name, in_shape, elem=None, meta=None, out_shape=None):
    from onnx import TensorProto, helper

    elem = elem or TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", elem, in_shape)
    y = helper.make_tensor_value_info("y", elem, out_shape or in_shape)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if meta is not None:
        helper.set_model_props(m, {METADATA_KEY: meta})
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def _meta(**kw) -> str:
    base = {"name": "t", "depth": 2, "base": 4, "in_channels": 1, "classes": ["a", "b"],
            "padding": "valid", "tile": 92}
    base.update(kw)
    return json.dumps(base)


@pytest.mark.parametrize("name,shape,elem,meta,text", [
    ("rank3.onnx", ["b", 1, 92], None, _meta(), "(batch, channels, height, width)"),
    ("double.onnx", ["b", 1, "h", "w"], 11, _meta(), "float32"),
    ("channels.onnx", ["b", 1, "h", "w"], None, _meta(in_channels=3),
     "input has 1 channels but metadata says 3"),
    ("badtile.onnx", ["b", 1, "h", "w"], None, _meta(tile=93), "not a legal input size"),
    ("nometa.onnx", ["b", 1, "h", "w"], None, None, "metadata"),
    ("badmeta.onnx", ["b", 1, "h", "w"], None, "{not json", "metadata"),
])
def test_unusable_geometry_fails_at_load(tmp_path, name, shape, elem, meta, text):
    path = _graph_model(tmp_path, name, shape, elem, meta)
    with pytest.raises(ModelError, match=re.escape(text)):
        read_onnx(path)
    cli_refuses(path, tmp_path, text)


@pytest.mark.parametrize("inputs,outputs,found", [
    (["x", "x2"], ["y"], "2 and 1"),
    (["x"], [], "1 and 0"),  # ONNX Runtime loads a graph without outputs; tiling would not
])
def test_wrong_number_of_inputs_or_outputs_fails_at_load(tmp_path, inputs, outputs, found):
    from onnx import TensorProto, helper

    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", 1, "h", "w"])

    node = helper.make_node("Sum", inputs, ["y"])
    g = helper.make_graph([node], "g", [value(n) for n in inputs], [value(n) for n in outputs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, {METADATA_KEY: _meta()})
    path = tmp_path / "io.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelError, match=f"expected 1 input and >= 1 output, found {found}$"):
        read_onnx(path)


def test_segmenter_refuses_bad_model_at_construction(tmp_path):
    from unet_deploy import Segmenter

    path = _graph_model(tmp_path, "rank3.onnx", ["b", 1, 92], None, _meta())
    with pytest.raises(ModelError):
        Segmenter(path)


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_checkpoint_refused_and_not_run(tmp_path):
    torch = pytest.importorskip("torch")
    from unet_deploy.export import load_checkpoint, load_training_checkpoint

    marker = tmp_path / "PWNED"
    ck = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3, "x": Payload(str(marker))}, ck)
    for loader in (load_checkpoint, load_training_checkpoint):
        with pytest.raises(ModelError) as ei:
            loader(ck)
        assert isinstance(ei.value, UnetDeployError) and "evil.pt" in str(ei.value)
        assert "\n" not in str(ei.value)
    assert not marker.exists(), "pickle payload executed"
    with pytest.raises(ModelNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, good)
    assert load_checkpoint(good)["step"] == 3
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelError, match="junk.pt"):
        load_checkpoint(junk)


def test_invalid_utf8_metadata(tiny_model, tmp_path):
    """Fuzzing find: ORT raises UnicodeDecodeError reading corrupt metadata strings."""
    raw = bytearray(tiny_model.read_bytes())
    at = raw.find(b'"classes"')
    assert at > 0
    raw[at + 1] = 0xFF
    path = tmp_path / "badutf8.onnx"
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError):
        read_onnx(path)
    cli_refuses(path, tmp_path, "badutf8.onnx")


@pytest.mark.parametrize("message,shown", [
    ("E" * 250 + "\nsecond line of the runtime's report", "E" * 200),
    ("   ", "RuntimeError"),
], ids=["long-multiline", "empty"])
def test_unloadable_model_error_shows_the_first_line_only(tmp_path, monkeypatch, message,
                                                          shown):
    """ONNX Runtime's load errors can run to many lines: the ModelError keeps one line, at
    most 200 characters of the first, or the exception type when the message is empty."""
    import onnxruntime

    def refuse(*a, **k):
        raise RuntimeError(message)

    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07not really a model")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(ModelError) as err:
        read_onnx(path)
    text = str(err.value)
    assert f"not a loadable ONNX model ({shown}); re-export" in text
    assert "\n" not in text and "second line" not in text


def test_fallback_scanner_reads_an_entry_at_the_very_start(tmp_path, monkeypatch):
    """The byte scan finds a location entry wherever it is, offset 0 included (the entry
    names its location, it is not refused as unreadable)."""
    import builtins

    from unet_deploy import model_store

    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x0a\x08location\x12\x07../x.pb" + b"\x08\x07")
    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert model_store._external_locations(str(path)) == ["../x.pb"]
    with pytest.raises(ModelError, match="'../x.pb' points outside"):
        check_external_data(path)
