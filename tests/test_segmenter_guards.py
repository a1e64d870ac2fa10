"""Segmenter guards at their edges (README "Embedding"): failures are reported once, wrapped
with the model path and counted; the out-of-memory fallback ends (on the CPU, or with the OOM
error when there is no CPU fallback) instead of retrying forever; frames at the limits of the
input checks (1-pixel sides, channels-first look-alikes, ROIs touching the frame edge)."""

from __future__ import annotations

import numpy as np
import pytest

from unet_deploy import Segmenter
from unet_deploy.backends import onnxruntime as ort_backend
from unet_deploy.backends.base import Backend
from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.errors import BackendError, InputError


class Raising(Backend):
    """ONNX Runtime inside; ``fail(batch)`` may raise before each call."""

    name = "fake-gpu"
    thread_safe = True

    def __init__(self, path, fail=None, deactivate_error=None):
        super().__init__()
        self.inner = OnnxRuntimeBackend(path)
        self.info = self.inner.info
        self.fail = fail
        self.deactivate_error = deactivate_error
        self.calls = 0

    def _activate(self):
        self.inner.activate()

    def _deactivate(self):
        self.inner.deactivate()
        if self.deactivate_error:
            raise self.deactivate_error

    def infer(self, batch):
        self.calls += 1
        if self.fail:
            self.fail(batch)
        return self.inner.infer(batch)


@pytest.fixture(scope="module")
def frame(real_crop):
    return np.ascontiguousarray(real_crop[:150, :170])


def oom(batch):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_failures_are_wrapped_with_the_model_path_once_and_counted(tiny_model, frame):
    def boom(batch):
        raise RuntimeError("boom")

    be = Raising(tiny_model, boom)
    with Segmenter(tiny_model, backend=be, warmup=False) as s:
        with pytest.raises(BackendError) as ei:
            s(frame)
        msg = str(ei.value)
        assert msg.startswith(f"{tiny_model}: backend fake-gpu failed (boom)")
        assert "restart()" in msg and msg.count(str(tiny_model)) == 1
        assert s.health()["failures"] == 1 and s.health()["error"] == "boom"
        s.restart()
        with pytest.raises(BackendError):
            s(frame)
        assert s.health()["failures"] == 2

    def own(batch):  # a BackendError that already names the model is passed on unchanged
        raise BackendError(f"{tiny_model}: engine lost its context; rebuild it")

    with Segmenter(tiny_model, backend=Raising(tiny_model, own), warmup=False) as s:
        with pytest.raises(BackendError) as ei:
            s(frame)
        assert str(ei.value) == f"{tiny_model}: engine lost its context; rebuild it"

    def bare(batch):  # a BackendError without the model path gets it, like any failure
        raise BackendError("device lost")

    with Segmenter(tiny_model, backend=Raising(tiny_model, bare), warmup=False) as s:
        with pytest.raises(BackendError) as ei:
            s(frame)
        assert str(ei.value).startswith(f"{tiny_model}: backend fake-gpu failed (device lost)")


def test_oom_on_the_cpu_too_ends_with_the_error(tiny_model, frame, monkeypatch):
    """OOM at batch 1 falls back to the CPU; if the CPU is out of memory as well, the job
    fails (once) instead of falling back again and again."""
    cpu_calls = []
    real = OnnxRuntimeBackend._infer

    def cpu_oom(self, batch):
        cpu_calls.append(len(batch))
        raise MemoryError("no RAM left")

    be = Raising(tiny_model, oom)
    with Segmenter(tiny_model, backend=be, batch_size=1, tile=92, warmup=False) as s:
        monkeypatch.setattr(OnnxRuntimeBackend, "_infer", cpu_oom)
        with pytest.warns(RuntimeWarning, match="falling back"):
            with pytest.raises(BackendError, match="no RAM left|MemoryError"):
                s(frame)
        h = s.health()
        assert h["status"] == "failed" and h["fallback"] and h["backend"] != "fake-gpu"
    assert be.calls == 1 and cpu_calls == [1]
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", real)


def test_oom_without_a_possible_cpu_fallback_reports_the_oom(tiny_model, frame, monkeypatch):
    be = Raising(tiny_model, oom)
    with Segmenter(tiny_model, backend=be, batch_size=1, tile=92, warmup=False) as s:
        def cannot(*a, **k):
            raise OSError("cannot load the model on the CPU")

        monkeypatch.setattr(ort_backend.OnnxRuntimeBackend, "__init__", cannot)
        with pytest.raises(BackendError, match="out of memory"):
            s(frame)
        h = s.health()
        assert h["status"] == "failed" and h["fallback"] is None
    assert be.calls == 1  # tried once, no retry loop


def test_fallback_survives_a_failing_deactivate(tiny_model, frame):
    ref = Segmenter(tiny_model, warmup=False)(frame)
    be = Raising(tiny_model, oom, deactivate_error=RuntimeError("driver gone"))
    with Segmenter(tiny_model, backend=be, batch_size=1, tile=92, warmup=False) as s:
        with pytest.warns(RuntimeWarning, match="falling back"):
            got = s(frame)
        assert s.health()["status"] == "ok" and s.health()["fallback"]
    np.testing.assert_array_equal(got, ref)


def test_frames_at_the_edges_of_the_input_checks(tiny_model):
    rng = np.random.default_rng(0)
    with Segmenter(tiny_model, warmup=False) as s:
        for shape in ((1, 7), (7, 1), (1, 1), (9, 1, 1)):
            img = rng.integers(0, 4000, shape).astype(np.uint16)
            assert s(img).shape == shape[:2]
        for shape in ((0, 5), (5, 0), (5, 5, 0)):
            with pytest.raises(InputError, match="empty array"):
                s(np.zeros(shape, np.uint16))
        # channels-first look-alikes: at most 4 leading planes and more than 4 trailing
        with pytest.raises(InputError, match="looks channels-first"):
            s(np.zeros((4, 30, 5), np.uint16))
        with pytest.raises(InputError) as ei:  # 5 leading rows: an image with 6 channels
            s(np.zeros((5, 30, 6), np.uint16))
        assert "channels-first" not in str(ei.value) and "6 channels" in str(ei.value)
        assert s(np.zeros((4, 30, 4), np.uint16)).shape == (4, 30)  # a 4x30 RGBA frame


def test_roi_edges(tiny_model, frame):
    h, w = frame.shape
    with Segmenter(tiny_model, warmup=False) as s:
        whole = s(frame, roi=(0, h, 0, w))
        np.testing.assert_array_equal(whole, s(frame))
        assert s(frame, roi=(h - 1, h, w - 1, w)).shape == (1, 1)
        for roi in [(0, h, -1, w), (0, h, 0, w + 1), (0, h, 3, 3), (4, 4, 0, w),
                    (0, h + 1, 0, w)]:
            with pytest.raises(InputError, match="roi"):
                s(frame, roi=roi)


def test_probabilities_from_a_labels_backend_and_after_an_oom_split(tiny_model, frame):
    """A backend that can return class maps still gives probabilities when they are asked
    for, also when an out-of-memory split cuts a batch into parts."""
    ref = Segmenter(tiny_model, output="probabilities", tile=92, warmup=False)(frame)
    labelled = OnnxRuntimeBackend(tiny_model, labels_output=True)
    with Segmenter(tiny_model, backend=labelled, output="probabilities", tile=92,
                   warmup=False) as s:
        np.testing.assert_allclose(s(frame), ref, rtol=0, atol=1e-6)

    def oom_over_2(batch):
        if len(batch) > 2:
            oom(batch)

    be = Raising(tiny_model, oom_over_2)
    with Segmenter(tiny_model, backend=be, output="probabilities", batch_size=8, tile=92,
                   warmup=False) as s:
        with pytest.warns(RuntimeWarning, match="out of memory"):
            got = s(frame)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        assert s.health()["batch_size"] == 2


def test_two_threads_out_of_memory_at_once_both_end_on_the_cpu(tiny_model, frame):
    """Threads A and B are both inside the GPU backend when it runs out of memory; A falls
    back to the CPU first, then B's OOM is handled: B retries on the CPU too (no second
    switch, no failure)."""
    import threading
    import time

    ref = Segmenter(tiny_model, tile=92, warmup=False)(frame)
    b_inside = threading.Event()
    holder = {}

    def fail(batch):
        if threading.current_thread().name == "B":
            b_inside.set()
            deadline = time.monotonic() + 60
            while holder["seg"].health()["fallback"] is None:  # until A has switched
                assert time.monotonic() < deadline
                time.sleep(0.01)
        else:
            assert b_inside.wait(60)
        oom(batch)

    be = Raising(tiny_model, fail)
    with Segmenter(tiny_model, backend=be, batch_size=1, tile=92, warmup=False) as s:
        holder["seg"] = s
        results = {}

        def job():
            results[threading.current_thread().name] = s(frame)

        threads = [threading.Thread(target=job, name=n) for n in "AB"]
        with pytest.warns(RuntimeWarning, match="falling back"):
            [t.start() for t in threads]
            [t.join(120) for t in threads]
        assert set(results) == {"A", "B"}, "a thread failed"
        h = s.health()
        assert h["status"] == "ok" and h["fallback"] and h["failures"] == 0
    assert be.calls == 2  # each thread met the OOM once; everything after ran on the CPU
    for got in results.values():
        np.testing.assert_array_equal(got, ref)


def test_unconvertible_frame_and_rgb_roi(tiny_model, real_crop):
    class Broken:
        def __array__(self, *a, **k):
            raise RuntimeError("sensor buffer already released")

    rgb = np.stack([real_crop[:120, :130]] * 3, -1)
    with Segmenter(tiny_model, warmup=False) as s:
        with pytest.raises(InputError, match="cannot convert Broken"):
            s(Broken())
        got = s(rgb, roi=(10, 90, 20, 110))
        np.testing.assert_array_equal(got, s(np.ascontiguousarray(rgb[10:90, 20:110])))
        assert s.health()["status"] == "ok"


def test_a_labels_backend_is_asked_for_labels(tiny_model, frame):
    """For output="labels" a backend that computes labels returns class maps (1 byte per
    pixel off the device), and the result equals the probabilities' argmax."""
    ref = Segmenter(tiny_model, tile=92, warmup=False)(frame)
    be = OnnxRuntimeBackend(tiny_model, labels_output=True)
    calls = {"labels": 0, "probabilities": 0}
    infer, infer_labels = be._infer, be._infer_labels

    def count(kind, fn):
        def wrapped(batch):
            calls[kind] += 1
            return fn(batch)
        return wrapped

    be._infer, be._infer_labels = count("probabilities", infer), count("labels", infer_labels)
    with Segmenter(tiny_model, backend=be, tile=92, warmup=False) as s:
        np.testing.assert_array_equal(s(frame), ref)
    assert calls["labels"] > 0 and calls["probabilities"] == 0


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.float16, np.int8, ">u2"])
def test_other_dtypes_equal_their_float64_frame(tiny_model, dtype):
    """Pixel types the gather kernel does not read directly are converted: the result equals
    that of the same frame given as float64 (and as float32: the kernel rounds every pixel
    to float32)."""
    top = 100 if np.dtype(dtype) == np.int8 else 2000
    frame = np.random.default_rng(7).integers(0, top, (100, 120)).astype(dtype)
    with Segmenter(tiny_model, output="probabilities", tile=92, warmup=False) as s:
        got = s(frame)
        np.testing.assert_array_equal(got, s(frame.astype(np.float64)))
        np.testing.assert_array_equal(got, s(frame.astype(np.float32)))


def test_a_bad_result_from_a_callers_own_infer_marks_the_segmenter_failed(tiny_model, frame):
    """A caller's backend that overrides infer() itself is checked like any other: a wrong
    result is a BackendError naming the model and what was wrong, the failure is counted and
    health says so."""
    class WrongShape(Raising):
        def infer(self, batch):
            return self.inner.infer(batch)[:, :1]

    with Segmenter(tiny_model, backend=WrongShape(tiny_model), tile=92, warmup=False) as s:
        with pytest.raises(BackendError, match=f"^{tiny_model}.*backend fake-gpu failed "
                                               r"\(backend returned shape \(4, 1, "):
            s(frame)
        h = s.health()
        assert h["status"] == "failed" and h["failures"] == 1
