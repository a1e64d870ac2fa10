"""The embedding API: Segmenter (numpy in/out, submit, ROI, cancel, health, threads, OOM)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from unet_deploy import Segmenter
from unet_deploy.backends.base import Backend
from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.errors import BackendError, Cancelled, InputError, UnetDeployError
from unet_deploy.pipeline import segment_array


class FakeBackend(Backend):
    """Wraps ONNX Runtime; ``hook(batch, calls)`` runs before each inference (raise, sleep)."""

    name = "fake-gpu"

    def __init__(self, path, hook=None, thread_safe=True, mangle=None):
        super().__init__()
        self.path = path
        self.inner = OnnxRuntimeBackend(path)
        self.info = self.inner.info
        self.hook = hook
        self.mangle = mangle
        self.thread_safe = thread_safe
        self.calls = 0
        self.batches: list[int] = []

    def _activate(self):
        self.inner.activate()

    def _deactivate(self):
        self.inner.deactivate()

    def infer(self, batch):
        self.calls += 1
        self.batches.append(len(batch))
        if self.hook:
            self.hook(batch, self.calls)
        out = self.inner.infer(batch)
        return self.mangle(out) if self.mangle else out


@pytest.fixture(scope="module")
def seg(tiny_model):
    with Segmenter(tiny_model, batch_size=4) as s:
        yield s


@pytest.fixture(scope="module")
def crop(real_crop):
    return real_crop[:150, :170]


def test_matches_library_and_cli_path(seg, tiny_model, real_crop):
    assert seg.health()["status"] == "ok" and seg.health()["calls"] >= 3  # warm-up ran
    out = seg(real_crop)
    assert out.shape == real_crop.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, segment_array(real_crop, tiny_model))
    assert len(np.unique(out)) == 2


def test_probabilities_and_rgb(tiny_model, rgb_model, crop):
    with Segmenter(tiny_model, output="probabilities", warmup=False) as s:
        p = s(crop)
    assert p.shape == crop.shape + (2,) and p.dtype == np.float32
    np.testing.assert_allclose(p, segment_array(crop, tiny_model, output="probabilities"))
    rgb = np.stack([crop, crop // 2, crop // 3], -1)
    with Segmenter(rgb_model, batch_size=2, warmup=False) as s:
        np.testing.assert_array_equal(s(rgb), segment_array(rgb, rgb_model))


@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (57, 1), (5, 7), (91, 200)])
def test_any_2d_size(seg, shape):
    frame = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    assert seg(frame).shape == shape


def test_dtypes_are_converted_exactly(seg, crop):
    ref = seg(crop.astype(np.float64))
    for frame in (crop.astype(np.int32), crop.astype(np.uint32), crop.astype(np.int64),
                  crop.astype(">u2"), crop.astype(">f4"), crop.astype(np.float32)):
        np.testing.assert_array_equal(seg(frame), ref, err_msg=str(frame.dtype))
    small = (crop // 64).astype(np.uint8)
    np.testing.assert_array_equal(seg(small.astype(np.float16)), seg(small))
    np.testing.assert_array_equal(seg(crop > crop.mean()), seg((crop > crop.mean()).astype(np.uint8)))
    assert not np.shares_memory(crop, ref)


def test_bad_frames_raise_input_error_and_stay_healthy(seg):
    bad = [np.zeros((0, 5)), np.zeros((3, 4, 5, 6)), np.zeros(5), np.zeros((3, 64, 64)),
           np.zeros((8, 8), np.complex64), np.array([["a"]]), "frame.tif"]
    for frame in bad:
        with pytest.raises(InputError):
            seg(frame)
    assert seg.health()["status"] == "ok"


def test_nan_policy(seg, tiny_model, crop, nan_zero_reference):
    frame = crop.astype(np.float32)
    frame[3, 4] = np.nan
    frame[10, 11] = np.inf
    before = frame.copy()
    with pytest.raises(InputError, match=r"2 NaN/Inf pixel\(s\).*NaN policy to 'zero'"):
        seg(frame)
    with Segmenter(tiny_model, nan_policy="zero", warmup=False) as s:
        got = s(frame)
    # NaN/Inf fed as 0, percentiles from the finite pixels (tests/test_nan_policy.py: 30 % NaN)
    np.testing.assert_array_equal(got, nan_zero_reference(tiny_model, before))
    np.testing.assert_array_equal(frame, before)  # caller's frame untouched


def test_roi(seg, crop):
    got = seg(crop, roi=(10, 110, 20, 150))
    np.testing.assert_array_equal(got, seg(np.ascontiguousarray(crop[10:110, 20:150])))
    assert seg.submit(crop, roi=(0, 1, 0, 1)).result().shape == (1, 1)
    for roi in [(0, 0, 0, 5), (-1, 5, 0, 5), (0, 151, 0, 5), (5, 2, 0, 5), (1, 2, 3), "x"]:
        with pytest.raises(InputError, match="roi"):
            seg(crop, roi=roi)


def test_submit_and_callback(seg, crop):
    done = []
    event = threading.Event()

    def cb(fut):
        done.append(fut.result().shape)
        event.set()

    fut = seg.submit(crop, callback=cb)
    assert event.wait(30)
    np.testing.assert_array_equal(fut.result(), seg(crop))
    assert done == [crop.shape]
    bad = seg.submit(np.zeros(3))
    with pytest.raises(InputError):
        bad.result(30)
    frames = [crop[i * 10 : i * 10 + 60] for i in range(4)]
    for frame, got in zip(frames, seg.map(frames)):
        np.testing.assert_array_equal(got, seg(frame))


def test_eight_threads_equal_sequential(seg, real_crop):
    rng = np.random.default_rng(1)
    frames = []
    for i in range(16):
        h, w = rng.integers(20, 200, 2)
        y, x = rng.integers(0, 100, 2)
        frames.append(real_crop[y : y + h, x : x + w])
    expected = [seg(f) for f in frames]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(t):
        try:
            for i in range(t, len(frames), 8):
                results[i] = seg(frames[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, exp in enumerate(expected):
        np.testing.assert_array_equal(results[i], exp)


def test_thread_unsafe_backend_is_serialised(tiny_model, crop):
    inside = []
    overlap = []

    def hook(batch, calls):
        inside.append(1)
        if len(inside) > 1:
            overlap.append(1)
        time.sleep(0.002)
        inside.pop()

    be = FakeBackend(tiny_model, hook, thread_safe=False)
    with Segmenter(backend=be, batch_size=2, warmup=False) as s:
        ref = s(crop)
        outs = [None] * 8
        threads = [threading.Thread(target=lambda i=i: outs.__setitem__(i, s(crop)))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not overlap
    for o in outs:
        np.testing.assert_array_equal(o, ref)


def test_cancel_queued_and_running(tiny_model, real_crop):
    started = threading.Event()

    def slow(batch, calls):
        started.set()
        time.sleep(0.03)

    be = FakeBackend(tiny_model, slow)
    with Segmenter(backend=be, batch_size=1, warmup=False, tile=92) as s:
        long_job = s.submit(real_crop)  # 56 tiles x 30 ms
        queued = s.submit(real_crop)
        assert started.wait(30)
        assert queued.cancel() and queued.cancelled()
        t0 = time.perf_counter()
        assert not long_job.cancel()  # running: standard Future semantics ...
        with pytest.raises(Cancelled):  # ... but it stops between batches
            long_job.result(30)
        assert time.perf_counter() - t0 < 5
        with pytest.raises(CancelledError):
            queued.result()
        assert s.health()["status"] == "ok"
        ev = threading.Event()
        ev.set()
        with pytest.raises(Cancelled):
            s(real_crop, cancel=ev)
        assert s(real_crop[:40, :40]).shape == (40, 40)
    assert Cancelled.exit_code == 130


def test_backend_failure_marks_failed_then_restart(tiny_model, crop):
    state = {"broken": False}

    def hook(batch, calls):
        if state["broken"]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    be = FakeBackend(tiny_model, hook)
    with Segmenter(backend=be, warmup=False) as s:
        ref = s(crop)
        state["broken"] = True
        with pytest.raises(BackendError, match="illegal memory access"):
            s(crop)
        h = s.health()
        assert h["status"] == "failed" and "illegal memory access" in h["error"]
        state["broken"] = False  # the backend "works" again, but its state is suspect:
        with pytest.raises(BackendError, match="failed earlier"):
            s(crop)
        fut = s.submit(crop)
        with pytest.raises(BackendError):
            fut.result(30)
        s.restart()
        assert s.health()["status"] == "ok"
        np.testing.assert_array_equal(s(crop), ref)


@pytest.mark.parametrize("mangle", [lambda o: o * np.nan, lambda o: o[:, :1], lambda o: o[:1]])
def test_garbage_output_is_refused(tiny_model, crop, mangle):
    be = FakeBackend(tiny_model, mangle=mangle)
    with Segmenter(backend=be, batch_size=2, warmup=False, tile=92) as s:
        with pytest.raises(BackendError):
            s(crop)
        assert s.health()["status"] == "failed"


def test_oom_halves_batch_then_same_output(tiny_model, real_crop):
    def oom_over_1(batch, calls):
        if len(batch) > 1:
            raise BackendError("CUDA out of memory. Tried to allocate 2.00 GiB")

    ref = segment_array(real_crop, tiny_model, batch_size=1)
    be = FakeBackend(tiny_model, oom_over_1)
    with Segmenter(backend=be, batch_size=8, warmup=False, tile=92) as s:
        with pytest.warns(RuntimeWarning, match="out of memory"):
            got = s(real_crop)
        np.testing.assert_array_equal(got, ref)
        h = s.health()
        assert h["status"] == "ok" and h["batch_size"] == 1 and h["fallback"] is None
        assert be.batches[:3] == [8, 4, 2]
        np.testing.assert_array_equal(s(real_crop), ref)  # later calls use the small batch


def test_oom_at_batch_one_falls_back_to_cpu(tiny_model, crop):
    def always_oom(batch, calls):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")

    ref = segment_array(crop, tiny_model)
    be = FakeBackend(tiny_model, always_oom)
    with Segmenter(tiny_model, backend=be, batch_size=4, warmup=False) as s:
        with pytest.warns(RuntimeWarning):
            got = s(crop)
        np.testing.assert_array_equal(got, ref)
        h = s.health()
        assert h["status"] == "ok" and h["fallback"] and h["backend"].startswith("onnxruntime")
    assert not be.active  # the failed backend was released


def test_close_releases_and_refuses(tiny_model, crop):
    s = Segmenter(tiny_model, warmup=False)
    s(crop)
    s.close()
    s.close()
    assert s.health()["status"] == "closed"
    with pytest.raises(BackendError, match="closed"):
        s(crop)
    with pytest.raises(BackendError, match="closed"):
        s.submit(crop)
    assert issubclass(BackendError, UnetDeployError)


def test_bad_constructor_arguments(tiny_model, tmp_path):
    from unet_deploy.errors import ModelError, ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        Segmenter(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk" * 10)
    with pytest.raises(ModelError):
        Segmenter(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="tile"):
        Segmenter(tiny_model, tile=93)
    with pytest.raises(ValueError):
        Segmenter(tiny_model, output="nope")


def test_acquisition_example_runs_on_simulated_frames(tiny_model, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "acquisition_loop.py"
    spec = importlib.util.spec_from_file_location("acquisition_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--simulate", "2", "--model", str(tiny_model), "--out", str(tmp_path),
                   "--interval", "0"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["time0.labels.tif", "time1.labels.tif"]
    assert mod.main(["--simulate", "1", "--model", str(tmp_path / "none.onnx")]) == 4
