"""The contract every backend honours, run by one subclass per backend, plus backend choice.

GPU subclasses skip with a reason where there is no CUDA GPU / TensorRT; on a GPU machine run
``pytest -m gpu tests/backends``.
"""

import importlib.util
import threading

import numpy as np
import pytest

from unet_deploy import backends as B
from unet_deploy.errors import BackendError

TILE, OUT = 92, 52  # depth-2 U-Net


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from unet_deploy.testing import random_unet_onnx

    # decisive, non-trivial outputs: random biases, larger head
    return random_unet_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx", tile=TILE,
                            classes=["background", "interior", "border"],
                            instance_scheme="none", bias_range=0.1, head_gain=4)


@pytest.fixture(scope="session")
def tiles():
    rng = np.random.default_rng(0)
    return rng.uniform(-0.5, 1.5, (3, 1, TILE, TILE)).astype(np.float32)


@pytest.fixture(scope="session")
def reference(tiny_model, tiles):
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(tiny_model) as b:
        return b.infer(tiles)


class BackendContract:
    """Subclasses set ``tolerance`` and implement ``make(model_path)``."""

    tolerance = 1e-4
    sum_tolerance = 1e-4

    def make(self, model):
        raise NotImplementedError

    @pytest.fixture
    def backend(self, tiny_model):
        b = self.make(tiny_model)
        yield b
        b.deactivate()

    def test_infer_shape_and_dtype(self, backend, tiles):
        with backend:
            for n in (1, 3):
                out = backend.infer(tiles[:n])
                assert out.shape == (n, 3, OUT, OUT) and out.dtype == np.float32

    def test_probabilities_sum_to_one(self, backend, tiles):
        with backend:
            out = backend.infer(tiles)
        assert np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
        assert np.abs(out.sum(1) - 1).max() <= self.sum_tolerance

    def test_context_manager_activates_and_deactivates(self, backend, tiles):
        assert not backend.active and backend.info.tile == TILE
        with backend as b:
            assert b is backend and backend.active
            backend.infer(tiles[:1])
        assert not backend.active
        with pytest.raises(BackendError, match="before activate"):
            backend.infer(tiles[:1])
        backend.activate()
        backend.activate()  # idempotent
        assert backend.active

    def test_parity_with_onnxruntime_cpu(self, backend, tiles, reference):
        with backend:
            out = backend.infer(tiles)
        self.check_parity(out, reference)

    def test_labels_are_the_argmax_of_its_probabilities(self, backend, tiles):
        """``infer(labels=True)``: the class map (computed where the probabilities are) or,
        from a backend that cannot, probabilities; either way the same labels."""
        with backend:
            probs = backend.infer(tiles)
            out = backend.infer(tiles, labels=True)
        if backend.computes_labels:
            assert out.shape == (len(tiles), OUT, OUT) and out.dtype == np.uint8
        else:
            assert out.shape == probs.shape
            out = out.argmax(1)
        exact = self.tolerance <= 1e-4  # reduced precision: ties may break differently
        assert np.mean(out == probs.argmax(1)) >= (1.0 if exact else 0.999)

    def test_threads_get_consistent_results(self, backend, tiles, reference):
        """Many threads calling one backend at once (README: any number of threads may share
        one Segmenter) each get what a lone call gets, and that is the reference."""
        with backend:
            alone = backend.infer(tiles)
            results, errors = {}, []
            start = threading.Barrier(6)

            def run(i):
                try:
                    start.wait()
                    results[i] = [backend.infer(tiles) for _ in range(3)]
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
            ts = [threading.Thread(target=run, args=(i,)) for i in range(6)]
            [t.start() for t in ts]
            [t.join() for t in ts]
        assert not errors and len(results) == 6
        for outs in results.values():
            for out in outs:
                np.testing.assert_allclose(out, alone, rtol=0, atol=1e-6)
        self.check_parity(alone, reference)

    def check_parity(self, out, reference):
        assert np.abs(out - reference).max() <= self.tolerance
        assert np.mean(out.argmax(1) == reference.argmax(1)) >= 0.99


class TestOnnxRuntimeCPU(BackendContract):
    def make(self, model):
        return B.open_backend(model, "onnxruntime-cpu")


class TestTorchFromOnnxCPU(BackendContract):
    """The torch-cuda backend's weight mapping (ONNX initializers → UNet), run on the CPU."""

    def make(self, model):
        pytest.importorskip("torch")
        return B.open_backend(model, "torch-cpu")


class TestOnnxRuntimeInt8(BackendContract):
    tolerance = 0.3  # int8 vs fp32 on random tiles; the real gate is in test_quantize
    sum_tolerance = 1e-4

    @pytest.fixture(scope="class")
    def int8_model(self, tiny_model, tiles, tmp_path_factory):
        """A copy of the tiny model with its ``tiny.int8.onnx`` beside it, in a folder of its
        own: the shared model's folder never gains an INT8 sibling (other tests rely on the
        "no INT8 model" path)."""
        import shutil

        import onnx

        from unet_deploy.quantize import quantize_qdq

        folder = tmp_path_factory.mktemp("int8")
        model = shutil.copy(tiny_model, folder / "tiny.onnx")
        proto = onnx.load(str(tiny_model))
        q = quantize_qdq(proto, tiles, symmetric=False)  # calibrated on the test tiles
        q.metadata_props.extend(proto.metadata_props)
        onnx.save(q, str(folder / "tiny.int8.onnx"))
        return model

    @pytest.fixture
    def backend(self, int8_model):
        b = B.open_backend(int8_model, "onnxruntime-int8")
        assert b.path.name == "tiny.int8.onnx"
        yield b
        b.deactivate()

    def check_parity(self, out, reference):
        # int8: single pixels near p = 0.5 may move a lot; the bulk may not
        assert np.abs(out - reference).mean() <= 0.01
        assert np.mean(out.argmax(1) == reference.argmax(1)) >= 0.97

    def test_parity_with_onnxruntime_cpu(self, backend, tiles, reference):
        with backend:
            out = backend.infer(tiles)
        self.check_parity(out, reference)


def _need_cuda():
    if B.cuda_device_count() == 0:
        pytest.skip("no CUDA GPU visible")


@pytest.mark.gpu
class TestTorchCUDAfp32(BackendContract):
    tolerance = 1e-4

    def make(self, model):
        _need_cuda()
        if B.torch_cuda_build() is None:
            pytest.skip("PyTorch is a CPU-only build")
        from unet_deploy.backends.torch_cuda import TorchBackend
        return TorchBackend(model, dtype="fp32")


@pytest.mark.gpu
class TestTorchCUDAfp16(TestTorchCUDAfp32):
    tolerance = 2e-2
    sum_tolerance = 2e-3

    def make(self, model):
        _need_cuda()
        if B.torch_cuda_build() is None:
            pytest.skip("PyTorch is a CPU-only build")
        from unet_deploy.backends.torch_cuda import TorchBackend
        return TorchBackend(model, dtype="fp16")


@pytest.mark.gpu
class TestOnnxRuntimeGPU(BackendContract):
    tolerance = 1e-3

    def make(self, model):
        ok, why = B.availability("onnxruntime-gpu")
        if not ok:
            pytest.skip(why)
        return B.open_backend(model, "onnxruntime-gpu")


@pytest.mark.gpu
@pytest.mark.tensorrt
class TestTensorRT(BackendContract):
    tolerance = 2e-2
    sum_tolerance = 2e-3

    @pytest.fixture
    def backend(self, tiny_model, tmp_path):
        if importlib.util.find_spec("tensorrt") is None:
            pytest.skip("TensorRT is not installed")
        _need_cuda()
        from unet_deploy.engine_build import build_engine
        res = build_engine(tiny_model, tmp_path / "tiny.engine", precision="fp16", batch=4,
                           tile=TILE, min_agreement=0.99)
        b = B.open_backend(res.engine)
        yield b
        b.deactivate()


# ------------------------------------------------------------------ backend choice

@pytest.fixture
def machine(monkeypatch):
    """Pretend hardware/software: set attributes of the returned namespace."""
    import types
    m = types.SimpleNamespace(gpus=0, trt=False, torch_cuda=None, ort=("CPUExecutionProvider",))
    monkeypatch.setattr(B, "cuda_device_count", lambda: m.gpus)
    monkeypatch.setattr(B, "torch_cuda_build", lambda: m.torch_cuda)
    monkeypatch.setattr(B, "ort_providers", lambda: m.ort)
    real_has = B._has
    monkeypatch.setattr(B, "_has", lambda mod: m.trt if mod == "tensorrt" else real_has(mod))
    return m


def test_auto_on_cpu_machine_says_why(tiny_model, machine):
    name, reason = B.choose_backend(tiny_model)
    assert name == "onnxruntime-cpu"
    assert "tensorrt: TensorRT is not installed" in reason
    assert "onnxruntime-gpu: onnxruntime has no CUDA execution provider" in reason
    assert "torch-cuda:" in reason
    b = B.open_backend(tiny_model)
    assert b.choice[0] == "onnxruntime-cpu"


def test_auto_order_on_gpu_machines(tiny_model, machine, monkeypatch):
    machine.gpus, machine.torch_cuda = 1, "12.8"
    assert B.choose_backend(tiny_model)[0] == "torch-cuda"
    machine.ort = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert B.choose_backend(tiny_model)[0] == "onnxruntime-gpu"
    machine.trt = True  # TensorRT installed but no engine for this model: never auto-built
    monkeypatch.setattr(B, "_engine_for", lambda p: (None, "no engine built for tiny.onnx"))
    name, reason = B.choose_backend(tiny_model)
    assert name == "onnxruntime-gpu" and "no engine built" in reason
    monkeypatch.setattr(B, "_engine_for", lambda p: (p.with_suffix(".engine"), "engine ok"))
    assert B.choose_backend(tiny_model) == ("tensorrt", "engine ok")
    machine.gpus = 0
    assert B.choose_backend(tiny_model)[0] == "onnxruntime-cpu"


def test_engine_path_selects_tensorrt(tiny_model, machine, tmp_path):
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"x")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        B.choose_backend(eng)
    machine.trt, machine.gpus = True, 1
    assert B.choose_backend(eng)[0] == "tensorrt"
    with pytest.raises(BackendError, match="runs only on --backend tensorrt"):
        B.choose_backend(eng, "onnxruntime")


def test_explicit_unavailable_and_unknown(tiny_model, machine):
    with pytest.raises(BackendError, match="torch-cuda is not available: .*CPU-only"):
        B.choose_backend(tiny_model, "torch-cuda")
    with pytest.raises(BackendError, match="unknown backend"):
        B.choose_backend(tiny_model, "cuda")
    assert B.choose_backend(tiny_model, "onnxruntime")[0] == "onnxruntime-cpu"
    assert not tiny_model.with_name("tiny.int8.onnx").exists()  # no test may leave one here
    with pytest.raises(BackendError, match="no INT8 model tiny.int8.onnx beside it"):
        B.open_backend(tiny_model, "onnxruntime-int8")


def test_probes_are_cheap_and_sane():
    assert B.cuda_device_count() >= 0
    assert B.torch_cuda_build() is None or B.torch_cuda_build()[0].isdigit()


def test_torch_mapping_rejects_foreign_graph(tmp_path, tiny_model):
    import onnx

    from unet_deploy.errors import ModelError
    from unet_deploy.train.unet import unet_from_onnx
    proto = onnx.load(str(tiny_model))
    meta = [p for p in proto.metadata_props if p.key == "unet_deploy"][0]
    meta.value = meta.value.replace('"depth": 2', '"depth": 3')
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelError, match="convolutions"):
        unet_from_onnx(bad)
