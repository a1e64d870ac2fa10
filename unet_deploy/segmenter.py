"""The embedding API for acquisition software: load once, segment frames for days.

.. code-block:: python

    from unet_deploy import Segmenter

    with Segmenter("nuclei", backend="auto", batch_size=4) as seg:  # loads once, warms up
        labels = seg(frame)                        # numpy in, numpy out, any 2-D size
        future = seg.submit(frame, callback=fn)    # non-blocking; fn(future) when done
        part = seg(frame, roi=(y0, y1, x0, x1))    # only that region
        seg.health()                               # {"status": "ok", ...}

Guarantees
----------
* **Same result as the CLI**: a frame goes through the same ``image → plan → tiles → batches →
  backend → stitch`` flow as ``segment_file`` (``pipeline.plane_bands``).
* **Thread-safe**: any number of threads may call one Segmenter. Backends that declare
  ``thread_safe = False`` (TensorRT execution contexts) are serialised with a lock; ONNX Runtime
  sessions are shared (``session.run`` is thread-safe).
* **Never garbage**: a backend exception, or a backend output of the wrong shape or with
  NaN/Inf, marks the Segmenter *failed* (``health()["status"] == "failed"``, with the error);
  from then on every call raises ``BackendError`` until ``restart()``. Bad *input* (wrong shape,
  dtype, NaN pixels, bad ROI) raises ``InputError`` and leaves the Segmenter healthy.
* **Out of memory**: when the backend reports out-of-memory, the batch is halved and retried
  (the smaller batch size is kept for later calls); an OOM at batch 1 switches to ONNX Runtime
  on the CPU. The output is identical; ``health()`` reports the batch size and the fallback.
* **Cancellation**: ``future.cancel()`` cancels a queued job (returns True, as usual) and also
  stops a *running* job between two batches: that future then ends with ``Cancelled``.
* **ROI**: ``roi=(y0, y1, x0, x1)`` segments ``frame[y0:y1, x0:x1]`` as if it were the whole
  frame: context beyond the ROI border is the mirror image of the ROI (as at an image border),
  not the real pixels outside it, and intensity normalization is computed on the ROI. The
  result has the ROI's shape.
* **NaN/Inf pixels** (float frames): ``nan_policy="error"`` (default) raises ``InputError``
  naming the count; ``"zero"`` treats them as 0 (on a copy; your frame is never modified).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .backends.base import Backend, check_output
from .errors import BackendError, InputError, UnetDeployError
from .metadata import label_dtype

__all__ = ["Segmenter", "SegmentationFuture", "is_out_of_memory"]

# dtypes the gather kernel takes as they are; everything else is converted exactly.
_KERNEL_DTYPES = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64)}
# Real out-of-memory signatures only (matched case-insensitively on "TypeName message"): a
# non-OOM failure misread as OOM would silently halve the batch and fall back to the CPU.
# PyTorch "CUDA out of memory" / torch.OutOfMemoryError, ONNX Runtime "CUDA failure 2: out of
# memory" / "Failed to allocate memory for requested buffer", CUDA cudaErrorMemoryAllocation /
# CUDA_ERROR_OUT_OF_MEMORY, cuDNN/cuBLAS *_STATUS_ALLOC_FAILED, ENOMEM "Cannot allocate memory",
# C++ std::bad_alloc, TensorRT "GPU memory allocation failed", TensorFlow-style "OOM when
# allocating". "oom" counts only as a word ("room", "zoom", "bloom" are not OOM).
_OOM_PATTERN = re.compile(
    r"out of memory|outofmemory|out_of_memory|cudaerrormemoryallocation|alloc_failed"
    r"|bad_alloc|(?:failed to|cannot|could not|unable to) allocate memory"
    r"|failed to allocate \d|memory allocation failed|\boom\b")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when an exception (or its cause) is a device/host out-of-memory error: a
    ``MemoryError``, or a message with a real OOM signature (``_OOM_PATTERN``)."""
    while exc is not None:
        if isinstance(exc, MemoryError):
            return True
        if _OOM_PATTERN.search(f"{type(exc).__name__} {exc}".lower()):
            return True
        exc = exc.__cause__
    return False


class SegmentationFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also stops a running job.

    ``cancel()`` returns True for a job still queued (it never runs). For a running job it
    returns False (standard semantics) but sets ``cancel_event``: the job stops between two
    batches and the future ends with ``Cancelled``."""

    def __init__(self):
        super().__init__()
        self.cancel_event = threading.Event()

    def cancel(self) -> bool:
        self.cancel_event.set()
        return super().cancel()


class _GuardedBackend:
    """What the pipeline sees: the Segmenter's backend behind a lock (when needed), with
    output checks, health bookkeeping and the out-of-memory fallback."""

    def __init__(self, seg: "Segmenter"):
        self.seg = seg

    @property
    def info(self):
        return self.seg.info

    @property
    def computes_labels(self) -> bool:
        return bool(self.seg._backend.computes_labels)

    def infer(self, batch: np.ndarray, labels: bool = False) -> np.ndarray:
        seg = self.seg
        seg._raise_if_unusable()
        n = len(batch)
        cap = seg._max_batch
        if n > cap:
            parts = [self.infer(batch[i : i + cap], labels) for i in range(0, n, cap)]
            if len({p.ndim for p in parts}) > 1:  # a CPU fallback mid-batch: probabilities
                k = seg.info.out_channels
                parts = [p if p.ndim == 3 else
                         np.argmax(p, axis=1).astype(label_dtype(k))
                         for p in parts]
            return np.concatenate(parts)
        backend, lock = seg._backend, seg._infer_lock
        labels = labels and bool(backend.computes_labels)
        try:
            with lock or contextlib.nullcontext():
                out = backend.infer(batch, labels=True) if labels else backend.infer(batch)
        except Exception as exc:  # noqa: BLE001 - every backend failure is handled here
            if is_out_of_memory(exc):
                if n > 1:
                    seg._shrink_batch(n, exc)
                    return self.infer(batch, labels)
                if seg._fallback_to_cpu(backend, exc):
                    return self.infer(batch, labels)
            raise seg._fail(exc) from exc
        if type(backend).infer is Backend.infer:
            return out  # the base class checked it (a failed check raised above)
        try:  # a caller's backend that overrides infer() itself
            return check_output(out, n, seg.info.out_channels, labels)
        except BackendError as exc:
            raise seg._fail(exc) from None


class Segmenter:
    """Load a model once and segment numpy frames, from any number of threads.

    Parameters
    ----------
    model: shipped model name or ONNX path (default ``nuclei``).
    backend: backend name (see ``unet_deploy.backends.BACKENDS``) or a ``Backend`` instance.
    batch_size: tiles per backend call (large frames); small frames use fewer.
    tile: input tile side (default: the cost-optimal plan for each frame size,
        ``tiling.plan_for``).
    threads: backend threads (0 = all cores).
    output: ``labels`` (uint8 classes), ``probabilities`` (float32 (H, W, K)) or ``instances``
        (uint32 object labels; models with an instance scheme).
    nan_policy: ``error`` or ``zero`` for NaN/Inf pixels of float frames.
    workers: threads running ``submit()`` jobs (default 1: jobs run in submission order).
    warmup: segment dummy frames at start so Numba kernels are compiled (or loaded from their
        cache) before the first real frame.
    tta: test-time augmentation ``none`` | ``flips`` | ``d4`` (``tta.py``); None = the model's
        default (metadata ``tta``).
    """

    def __init__(self, model: str | Path | None = "nuclei", backend="auto", batch_size: int = 4,
                 tile: int | None = None, threads: int = 0, output: str = "labels",
                 nan_policy: str = "error", workers: int = 1, warmup: bool = True,
                 tta: str | None = None):
        from .pipeline import OUTPUTS
        from .tta import TTABackend, check_mode, resolve_mode

        check_mode(tta)

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if nan_policy not in ("error", "zero"):
            raise ValueError(f"nan_policy must be 'error' or 'zero', got {nan_policy!r}")
        if int(batch_size) < 1 or int(workers) < 1:
            raise ValueError("batch_size and workers must be >= 1")
        self.output = output
        self.nan_policy = nan_policy
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self._max_batch = self.batch_size
        self._state_lock = threading.Lock()
        self._status = "ok"
        self._error: str | None = None
        self._fallback: str | None = None
        self._calls = 0
        self._failures = 0
        self._plans: dict[tuple[int, int], object] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._workers = int(workers)
        self._backend = None
        self._backend_spec = backend
        self._model = model
        self._tile_arg = tile
        self._open_backend()
        try:
            self._guard = _GuardedBackend(self)
            self.tta = resolve_mode(tta, self.info)
            self._run = self._guard if self.tta == "none" else \
                TTABackend(self._guard, self.tta).activate()
            if warmup:
                self.warmup()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------
    def _open_backend(self) -> None:
        from .backends import open_backend
        from .model_store import resolve_model
        from .pipeline import default_tile
        from .tiling import plan_tiles

        spec = self._backend_spec
        if isinstance(spec, Backend):
            be = spec
            self.model_path = Path(getattr(be, "path", self._model or ""))
        else:
            self.model_path = resolve_model(self._model)
            be = open_backend(self.model_path, spec, threads=self.threads)
        try:
            be.activate()
        except UnetDeployError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"{self.model_path}: backend {be.name} failed to start "
                               f"({_one_line(exc)}); try backend='onnxruntime'") from exc
        self._backend = be
        self.info = be.info
        self.backend_name = be.name
        safe = getattr(be, "thread_safe", None)
        if safe is None:
            safe = str(be.name).startswith("onnxruntime")
        self._infer_lock = None if safe else threading.Lock()
        self.tile = int(self._tile_arg or self.info.tile)
        try:
            plan_tiles(self.tile, self.tile, self.info.geometry, default_tile(self.info, self.tile))
        except ValueError as exc:
            raise InputError(f"tile={self.tile}: {exc}") from exc
        self._plans.clear()

    def warmup(self) -> None:
        """One dummy full tile (the backend allocates for the real tile shape; the uint16
        kernels compile), then two tiny frames so the uint8 and float32 kernels compile too
        (Numba caches them on disk: later processes only load them)."""
        for dtype, side in ((np.uint16, self.tile), (np.uint8, 8), (np.float32, 8)):
            frame = np.zeros((side, side), dtype)
            frame[::7, ::5] = 1
            self._segment(frame, None, None)

    def close(self) -> None:
        """Cancel queued jobs, wait for running ones, release the backend. Idempotent."""
        with self._state_lock:
            if self._status == "closed":
                return
            self._status = "closed"
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        be, self._backend = self._backend, None
        if be is not None:
            try:
                be.deactivate()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
        self._plans.clear()

    def restart(self) -> None:
        """Reload the backend after a failure (e.g. a CUDA error); health goes back to ok."""
        with self._state_lock:
            if self._status == "closed":
                raise BackendError("Segmenter is closed; create a new one")
        old, self._backend = self._backend, None
        if old is not None:
            try:
                old.deactivate()
            except Exception:  # noqa: BLE001
                pass
        if self._fallback is not None:
            self._backend_spec = "onnxruntime"  # stay on the CPU after an out-of-memory
        self._open_backend()  # a Backend instance given by the caller is re-activated
        with self._state_lock:
            self._status, self._error, self._max_batch = "ok", None, self.batch_size

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter({str(self.model_path)!r}, backend={getattr(self, 'backend_name', '?')}, "
                f"batch_size={self.batch_size}, tile={getattr(self, 'tile', '?')}, "
                f"output={self.output!r}, status={self._status})")

    # -- health ----------------------------------------------------------------------
    def health(self) -> dict:
        """``status``: ok | failed | closed; ``error``: the last backend error (one line) or
        None; plus backend, model, batch size in use, CPU fallback reason, call counts."""
        with self._state_lock:
            return {
                "status": self._status,
                "error": self._error,
                "backend": getattr(self, "backend_name", None),
                "model": str(getattr(self, "model_path", "")),
                "batch_size": self._max_batch,
                "fallback": self._fallback,
                "calls": self._calls,
                "failures": self._failures,
            }

    def _raise_if_unusable(self) -> None:
        status = self._status
        if status == "closed":
            raise BackendError("Segmenter is closed; create a new one")
        if status == "failed":
            raise BackendError(f"backend failed earlier ({self._error}); call restart() or "
                               f"create a new Segmenter")

    def _fail(self, exc: BaseException) -> BackendError:
        msg = _one_line(exc)
        with self._state_lock:
            if self._status == "ok":
                self._status = "failed"
            self._error = msg
            self._failures += 1
        if isinstance(exc, BackendError) and str(exc).startswith(str(self.model_path)):
            return exc
        return BackendError(f"{self.model_path}: backend {self.backend_name} failed ({msg}); "
                            f"call restart() or create a new Segmenter")

    def _shrink_batch(self, n: int, exc: BaseException) -> None:
        with self._state_lock:
            new = min(self._max_batch, n // 2)  # >= 1: only called for n > 1
            self._max_batch = new
        # No stacklevel: this runs inside the pipeline, at a varying depth and perhaps on its
        # backend thread, so no frame of the caller's code can be pointed at.
        warnings.warn(f"backend out of memory at batch {n} ({_one_line(exc)}); retrying with "
                      f"batch {new}", RuntimeWarning)

    def _fallback_to_cpu(self, failed_backend, exc: BaseException) -> bool:
        """Switch to ONNX Runtime on the CPU after an OOM at batch 1. True when switched (or
        another thread already switched)."""
        from .backends.onnxruntime import OnnxRuntimeBackend

        with self._state_lock:
            if self._backend is not failed_backend:
                return True  # another thread switched already
            if self._fallback is not None:
                return False  # already on the CPU and still out of memory
            try:
                cpu = OnnxRuntimeBackend(self.model_path, threads=self.threads).activate()
            except Exception:  # noqa: BLE001 - cannot fall back: report the OOM itself
                return False
            self._backend = cpu
            self._infer_lock = None
            self.backend_name = cpu.name
            self._fallback = f"out of memory on {failed_backend.name} at batch 1: {_one_line(exc)}"
        warnings.warn(f"backend {failed_backend.name} out of memory at batch 1; falling back to "
                      f"onnxruntime on the CPU", RuntimeWarning)  # no stacklevel: see above
        try:
            failed_backend.deactivate()
        except Exception:  # noqa: BLE001
            pass
        return True

    # -- segmentation ----------------------------------------------------------------
    def __call__(self, frame, roi: tuple[int, int, int, int] | None = None, *,
                 cancel: threading.Event | None = None) -> np.ndarray:
        """Segment one frame (H, W) or (H, W, C); returns (H, W) labels/instances or
        (H, W, K) probabilities (of the ROI when ``roi`` is given)."""
        self._raise_if_unusable()
        return self._segment(frame, roi, cancel)

    def submit(self, frame, callback: Callable[[Future], None] | None = None,
               roi: tuple[int, int, int, int] | None = None) -> SegmentationFuture:
        """Queue a frame; returns a Future. ``callback(future)`` runs when it is done
        (also when it failed or was cancelled: call ``future.result()`` inside a try)."""
        with self._state_lock:
            if self._status == "closed":
                raise BackendError("Segmenter is closed; create a new one")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers,
                                                    thread_name_prefix="unet-segmenter")
            executor = self._executor
        fut = SegmentationFuture()
        if callback is not None:
            fut.add_done_callback(callback)
        executor.submit(self._run_job, fut, frame, roi)
        return fut

    def _run_job(self, fut: SegmentationFuture, frame, roi) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = self(frame, roi, cancel=fut.cancel_event)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def map(self, frames, roi=None):
        """Segment an iterable of frames through the job queue, yielding results in order."""
        futures = [self.submit(f, roi=roi) for f in frames]
        for f in futures:
            yield f.result()

    def _plan(self, h: int, w: int):
        from .tiling import plan_for

        key = (h, w)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_for(h, w, self.info, self._tile_arg, self.batch_size, self._backend)
            if len(self._plans) > 256:  # mixed sizes for days: keep the cache bounded
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _prepare(self, frame, roi) -> np.ndarray:
        if isinstance(frame, (str, Path)):
            raise InputError(f"{frame}: Segmenter takes numpy arrays; read the file first "
                             f"(tifffile.imread) or use segment_file")
        try:
            arr = np.asarray(frame)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"frame: cannot convert {type(frame).__name__} to an array "
                             f"({_one_line(exc)}); pass a numpy array") from exc
        if arr.ndim not in (2, 3):
            raise InputError(f"frame: expected a 2-D (H, W) or (H, W, C) array, got shape "
                             f"{arr.shape}; pass one plane at a time")
        if arr.ndim == 3 and arr.shape[2] > 4 and arr.shape[0] <= 4:
            raise InputError(f"frame: shape {arr.shape} looks channels-first; pass (H, W, C), "
                             f"e.g. np.moveaxis(frame, 0, -1)")
        if arr.shape[0] < 1 or arr.shape[1] < 1 or (arr.ndim == 3 and arr.shape[2] < 1):
            raise InputError(f"frame: empty array of shape {arr.shape}; pass a non-empty frame")
        kind = arr.dtype.kind
        if kind not in "biuf":
            raise InputError(f"frame: unsupported dtype {arr.dtype}; pass integer or float "
                             f"pixels")
        if roi is not None:
            try:
                y0, y1, x0, x1 = (int(v) for v in roi)
            except (TypeError, ValueError) as exc:
                raise InputError(f"roi={roi!r}: expected (y0, y1, x0, x1) integers") from exc
            h, w = arr.shape[:2]
            if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
                raise InputError(f"roi={roi!r}: outside the {h}x{w} frame or empty; need "
                                 f"0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}")
            arr = arr[y0:y1, x0:x1]
        if kind == "b":
            arr = arr.astype(np.uint8)
        elif arr.dtype.newbyteorder("=") not in _KERNEL_DTYPES or not arr.dtype.isnative:
            native = arr.dtype.newbyteorder("=")
            # float16, int8, (u)int32/64: the gather kernel rounds every pixel to float32
            # anyway, so converting to float32 here loses nothing (and half of float64's memory)
            arr = arr.astype(native if native in _KERNEL_DTYPES else np.float32)
        return arr

    def _segment(self, frame, roi, cancel) -> np.ndarray:
        from .normalize import nonfinite_mask, preprocess_for
        from .pipeline import plane_bands
        from .readers import ArrayReader

        arr = self._prepare(frame, roi)
        # statistics first, from the finite pixels only; then NaN/Inf become 0 (a copy: the
        # caller's frame is never modified)
        prep = preprocess_for(ArrayReader(arr), self.info, "frame", nan_policy=self.nan_policy)
        bad = nonfinite_mask(arr) if self.nan_policy == "zero" else None
        if bad is not None and bad.any():
            arr = np.where(bad, arr.dtype.type(0), arr)
        reader = ArrayReader(arr)
        plan = self._plan(reader.height, reader.width)
        batch = max(1, min(self.batch_size, plan.n_tiles))
        with self._state_lock:
            self._calls += 1
        try:
            bands = list(plane_bands(reader, plan, self._run, prep, batch, self.output, None,
                                      cancel))
        except UnetDeployError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a kernel failure: never a raw error
            raise self._fail(exc) from exc
        return np.concatenate(bands, axis=0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

