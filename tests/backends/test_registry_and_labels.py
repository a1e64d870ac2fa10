"""The public backend registry and the labels form of ``infer`` (class maps computed where the
probabilities are): every path gives the same labels as the host argmax, bit for bit."""

from __future__ import annotations

import types

import numpy as np
import pytest

from unet_deploy import backends as B
from unet_deploy.backends.base import Backend, check_output
from unet_deploy.backends.null import NullBackend, disc_pattern
from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend, with_label_outputs
from unet_deploy.errors import BackendError

TILE = 92


@pytest.fixture(scope="module")
def model3(tmp_path_factory):
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(tmp_path_factory.mktemp("m") / "three.onnx", tile=TILE,
                            classes=["background", "interior", "border"],
                            instance_scheme="none", bias_range=0.1, head_gain=4)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    return (rng.random((300, 260), dtype=np.float32) * 3000).astype(np.uint16)


@pytest.fixture
def null_registered():
    B.register_backend("test-null", NullBackend)
    yield "test-null"
    B.unregister_backend("test-null")


# ------------------------------------------------------------------------ the registry

def test_register_validates_and_refuses_builtins():
    with pytest.raises(ValueError, match="built in"):
        B.register_backend("tensorrt", NullBackend)
    with pytest.raises(ValueError, match="letters, digits"):
        B.register_backend("my backend", NullBackend)
    with pytest.raises(TypeError, match="callable"):
        B.register_backend("x", 3)
    B.register_backend("dup", NullBackend)
    try:
        with pytest.raises(ValueError, match="replace=True"):
            B.register_backend("dup", NullBackend)
        B.register_backend("dup", NullBackend, replace=True)
        assert "dup" in B.registered_backends()
    finally:
        B.unregister_backend("dup")
    assert "dup" not in B.registered_backends()


def test_registered_name_works_everywhere(model3, image, null_registered, tmp_path):
    import tifffile

    from unet_deploy import Segmenter
    from unet_deploy.pipeline import segment_array, segment_file

    assert B.choose_backend(model3, null_registered) == (null_registered, "registered backend")
    assert B.availability(null_registered) == (True, "registered backend")
    assert B.choose_backend(model3)[0] != null_registered  # auto never picks one
    b = B.open_backend(model3, null_registered, threads=3)
    assert isinstance(b, NullBackend) and b.choice[0] == null_registered
    want = segment_array(image, model3, backend=null_registered, tile=TILE)
    # the null backend's constant tile, stitched: the same pattern in every cell
    cell = disc_pattern(52, 52, 3)
    np.testing.assert_array_equal(want[:48, :48], cell[:48, :48])
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    segment_file(src, tmp_path / "out.tif", model3, backend=null_registered, tile=TILE,
                 progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), want)
    with Segmenter(model3, backend=null_registered, tile=TILE, warmup=False) as seg:
        np.testing.assert_array_equal(seg(image), want)


def test_cli_backend_name(model3, image, null_registered, tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from unet_deploy.cli import app

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    res = CliRunner().invoke(app, ["segment", str(src), "-o", str(tmp_path / "o.tif"),
                                   "--model", str(model3), "--backend", null_registered,
                                   "--tile", str(TILE), "--quiet"])
    assert res.exit_code == 0, res.output
    assert tifffile.imread(tmp_path / "o.tif").shape == image.shape
    res = CliRunner().invoke(app, ["segment", str(src), "-o", str(tmp_path / "p.tif"),
                                   "--model", str(model3), "--backend", "no-such-backend"])
    assert res.exit_code != 0 and "register_backend" in res.output


def test_factory_errors_are_one_line(model3):
    def broken(path, threads):
        raise RuntimeError("driver exploded\nsecond line")

    B.register_backend("broken", broken)
    B.register_backend("not-a-backend", lambda path, threads: object())
    try:
        with pytest.raises(BackendError, match="'broken' failed to open three.onnx: driver "
                                                "exploded$"):
            B.open_backend(model3, "broken")
        with pytest.raises(BackendError, match="not a unet_deploy.backends.base.Backend"):
            B.open_backend(model3, "not-a-backend")
    finally:
        B.unregister_backend("broken")
        B.unregister_backend("not-a-backend")
    with pytest.raises(BackendError, match="unknown backend 'nope'.*register_backend"):
        B.open_backend(model3, "nope")


def test_entry_point_plugin_loaded_on_first_use(model3, monkeypatch):
    import importlib.metadata as md

    ep = types.SimpleNamespace(name="plugged", value="pkg:factory", load=lambda: NullBackend)
    calls = []

    def entry_points(group):
        calls.append(group)
        return [ep] if group == B.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(md, "entry_points", entry_points)
    try:
        assert B.choose_backend(model3, "plugged")[0] == "plugged"
        assert isinstance(B.open_backend(model3, "plugged"), NullBackend)
        assert "plugged" in B.registered_backends()
    finally:
        B.unregister_backend("plugged")
    calls.clear()
    B.choose_backend(model3, "onnxruntime")  # built-in names never scan plugins
    assert calls == []


# ------------------------------------------------------------------- the labels form

def test_check_output_labels_form():
    k = 3
    labels = np.zeros((2, 5, 5), np.uint8)
    assert check_output(labels, 2, k, labels=True) is labels
    with pytest.raises(BackendError, match="probabilities .* are needed here"):
        check_output(labels, 2, k)
    with pytest.raises(BackendError, match="outside 0..2"):
        check_output(labels + 3, 2, k, labels=True)
    with pytest.raises(BackendError, match="outside 0..2"):
        check_output(np.full((2, 5, 5), -1, np.int32), 2, k, labels=True)
    with pytest.raises(BackendError, match="expected \\(2, h, w\\)"):
        check_output(labels[:1], 2, k, labels=True)
    wide = check_output(labels.astype(np.int64), 2, k, labels=True)  # e.g. a raw ArgMax
    assert wide.dtype == np.uint8
    probs = np.full((2, 3, 5, 5), 1 / 3, np.float32)
    assert check_output(probs, 2, k, labels=True) is probs  # probabilities stay allowed


class _Flaky(NullBackend):
    computes_labels = True

    def _infer_labels(self, batch):
        labels, _ = super()._infer_labels(batch)
        return labels, False  # the device saw a NaN


def test_nonfinite_on_device_is_refused(model3):
    b = _Flaky(model3).activate()
    x = np.zeros((1, 1, TILE, TILE), np.float32)
    with pytest.raises(BackendError, match="NaN/Inf probabilities"):
        b.infer(x, labels=True)
    assert b.infer(x).shape == (1, 3, 52, 52)  # probabilities are still checked on the host


def test_onnxruntime_label_outputs_bit_identical(model3, image):
    from unet_deploy.pipeline import segment_array

    plain, labelled = OnnxRuntimeBackend(model3), OnnxRuntimeBackend(model3, labels_output=True)
    assert not plain.labels_output  # CPU default: the host argmax is as fast
    with plain, labelled:
        assert labelled.computes_labels and not plain.computes_labels
        x = np.random.default_rng(0).uniform(-0.5, 1.5, (3, 1, TILE, TILE)).astype(np.float32)
        probs = plain.infer(x)
        cls = labelled.infer(x, labels=True)
        assert cls.dtype == np.uint8 and cls.shape == (3, 52, 52)
        np.testing.assert_array_equal(cls, probs.argmax(1))
        np.testing.assert_array_equal(labelled.infer(x), probs)  # probabilities unchanged
        for threads in (1, 2):
            np.testing.assert_array_equal(
                segment_array(image, backend=labelled, tile=TILE, batch_size=3,
                              threads=threads),
                segment_array(image, backend=plain, tile=TILE, batch_size=3, threads=threads))


def test_onnxruntime_labels_graph_has_the_extra_outputs(model3):
    import onnx

    data = with_label_outputs(model3.read_bytes(), 3)
    proto = onnx.load_model_from_string(data)
    onnx.checker.check_model(proto)
    names = [o.name for o in proto.graph.output]
    assert names == ["probabilities", "unet_deploy_labels", "unet_deploy_probability_sum"]
    assert [n.op_type for n in proto.graph.node[-3:]] == ["ArgMax", "Cast", "ReduceSum"]
    with pytest.raises(ValueError):
        with_label_outputs(b"\x07garbage", 3)


def test_onnxruntime_gpu_fallback_to_cpu_is_refused(model3, monkeypatch):
    """onnxruntime-gpu silently runs on the CPU when CUDA libraries do not load: refuse."""
    import onnxruntime as ort

    real = ort.InferenceSession

    class FellBack(real):
        def __init__(self, source, opts=None, providers=None):
            super().__init__(source, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    b = OnnxRuntimeBackend(model3, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert b.labels_output  # on by default with the CUDA provider
    with pytest.raises(BackendError) as e:
        b.activate()
    msg = str(e.value)
    assert "did not start its CUDA execution provider" in msg and "\n" not in msg
    assert "onnxruntime-cpu" in msg and not b.active


def test_torch_cpu_labels_bit_identical(model3, image):
    pytest.importorskip("torch")
    from unet_deploy.pipeline import segment_array

    t = B.open_backend(model3, "torch-cpu")
    assert t.computes_labels
    with t:
        x = np.random.default_rng(1).uniform(-0.5, 1.5, (2, 1, TILE, TILE)).astype(np.float32)
        probs = t.infer(x)
        np.testing.assert_array_equal(t.infer(x, labels=True), probs.argmax(1))
        t.computes_labels = False  # the host argmax of the same probabilities
        host = segment_array(image, backend=t, tile=TILE, batch_size=2)
        t.computes_labels = True
        np.testing.assert_array_equal(segment_array(image, backend=t, tile=TILE,
                                                    batch_size=2), host)


def test_torch_cuda_calls_are_serialised(model3, monkeypatch):
    """CUDA graph capture is process-global and replays share buffers: two threads (and two
    backends) never run the CUDA path at once. Checked on the CPU with the CUDA path faked."""
    torch = pytest.importorskip("torch")
    import threading
    import time

    from unet_deploy.backends import torch_cuda

    active, overlap = [0], []

    def fake_cuda(self, batch, labels):
        active[0] += 1
        overlap.append(active[0])
        time.sleep(0.02)
        active[0] -= 1
        return np.zeros((len(batch), 3, 52, 52), np.float32)

    monkeypatch.setattr(torch_cuda.TorchBackend, "_infer_cuda", fake_cuda)
    backends = [torch_cuda.TorchBackend(model3, device="cpu", dtype="fp32") for _ in range(2)]
    for b in backends:
        b.device = torch.device("cuda")  # route _infer to the (faked) CUDA path
        b.active = True
    x = np.zeros((1, 1, TILE, TILE), np.float32)
    threads = [threading.Thread(target=b._infer, args=(x,)) for b in backends * 3]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(overlap) == 6 and max(overlap) == 1
    assert torch_cuda.TorchBackend.thread_safe


def test_segmenter_passes_labels_and_survives_a_cpu_fallback(model3, image):
    """A Segmenter over a labels backend gives the same frames; a batch split across an
    out-of-memory fallback (labels, then probabilities) is merged to labels."""
    from unet_deploy import Segmenter
    from unet_deploy.pipeline import segment_array

    ref = segment_array(image, model3, tile=TILE)
    labelled = OnnxRuntimeBackend(model3, labels_output=True)
    with Segmenter(model3, backend=labelled, tile=TILE, batch_size=4, warmup=False) as seg:
        np.testing.assert_array_equal(seg(image), ref)
        guard = seg._guard
        assert guard.computes_labels
        seg._max_batch = 2
        calls = []
        real = Backend.infer

        def flip(self, batch, labels=False):  # second half answers with probabilities
            calls.append(labels)
            return real(self, batch, labels=labels and len(calls) == 1)

        x = np.random.default_rng(2).uniform(0, 1, (4, 1, TILE, TILE)).astype(np.float32)
        try:
            Backend.infer = flip
            out = guard.infer(x, labels=True)
        finally:
            Backend.infer = real
        assert out.shape == (4, 52, 52) and out.dtype == np.uint8
        with OnnxRuntimeBackend(model3) as plain:
            np.testing.assert_array_equal(out, plain.infer(x).argmax(1))


def test_null_backend_forms_agree(model3):
    b = NullBackend(model3).activate()
    x = np.zeros((2, 1, TILE, TILE), np.float32)
    probs, labels = b.infer(x), b.infer(x, labels=True)
    assert probs.flags.c_contiguous and labels.flags.c_contiguous
    np.testing.assert_array_equal(labels, probs.argmax(1))
    assert set(np.unique(labels)) == {0, 1, 2}
