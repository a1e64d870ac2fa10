"""The backend base class (after Polygraphy's runners): it owns the state checks, input and
output validation and timing of ``infer``; a concrete backend implements only ``_activate``,
``_deactivate`` and the raw call ``_infer``. ``infer`` takes a float32 batch (B, C, h, w) and
returns float32 probabilities (B, K, h_out, w_out); a wrong shape or a non-finite value in the
output is a ``BackendError``, never passed on."""

from __future__ import annotations

import time

import numpy as np

from ..errors import BackendError
from ..metadata import ModelInfo


def check_input(backend, batch: np.ndarray) -> np.ndarray:
    c = backend.info.in_channels
    if batch.ndim != 4 or batch.shape[1] != c:
        raise BackendError(f"{backend}: expected (B, {c}, h, w) input, got {batch.shape}")
    return np.ascontiguousarray(batch, np.float32)


def check_output(out, n: int, k: int) -> np.ndarray:
    """The backend's output as an array, or ``BackendError`` when it is not (n, k, h, w)
    float with finite values."""
    out = np.asarray(out)
    if out.ndim != 4 or out.shape[0] != n or out.shape[1] != k or out.dtype.kind != "f":
        raise BackendError(f"backend returned shape {out.shape} dtype {out.dtype} for a batch "
                           f"of {n} (expected ({n}, {k}, h, w) float)")
    if not np.isfinite(out).all():
        raise BackendError(f"backend returned {int((~np.isfinite(out)).sum())} NaN/Inf values")
    return out


class Backend:
    name = "base"
    # True when one instance may be called from many threads at once (ORT sessions are);
    # otherwise the Segmenter serialises calls with a lock.
    thread_safe = False

    def __init__(self):
        self.info: ModelInfo | None = None
        self.active = False
        self.infer_calls = 0
        self.infer_seconds = 0.0  # total time in the raw call, for benchmarks

    def activate(self) -> "Backend":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.active:
            raise BackendError(f"{self}: infer() before activate()")
        batch = check_input(self, batch)
        t0 = time.perf_counter()
        out = self._infer(batch)
        self.infer_seconds += time.perf_counter() - t0
        self.infer_calls += 1
        return check_output(out, batch.shape[0], self.info.out_channels)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
