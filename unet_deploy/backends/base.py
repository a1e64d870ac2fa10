"""The backend base class (after Polygraphy's runners): it owns the state checks, input and
output validation and timing of ``infer``; a concrete backend implements only ``_activate``,
``_deactivate`` and the raw call ``_infer``. ``infer`` takes a float32 batch (B, C, h, w) and
returns float32 probabilities (B, K, h_out, w_out); a wrong shape or a non-finite value in the
output is a ``BackendError``, never passed on.

Labels where the probabilities are: a backend that sets ``computes_labels = True`` implements
``_infer_labels``, and ``infer(batch, labels=True)`` then returns the class map (B, h_out, w_out)
as uint8 (uint16 above 256 classes) -- the argmax over K, ties to the lowest class as
``np.argmax`` -- computed where the probabilities are (on a GPU: 1 byte per pixel crosses to the
host instead of 4 per class). ``_infer_labels`` also reports whether every probability was
finite (the device reduces them to one number), so the never-garbage rule holds without the
probabilities. Other backends ignore ``labels=True`` and return probabilities; the pipeline's
merger takes either form."""

from __future__ import annotations

import time

import numpy as np

from ..errors import BackendError
from ..metadata import ModelInfo, label_dtype


def check_input(backend, batch: np.ndarray) -> np.ndarray:
    c = backend.info.in_channels
    if batch.ndim != 4 or batch.shape[1] != c:
        raise BackendError(f"{backend}: expected (B, {c}, h, w) input, got {batch.shape}")
    return np.ascontiguousarray(batch, np.float32)


def check_output(out, n: int, k: int, labels: bool = False) -> np.ndarray:
    """The backend's output as an array, or ``BackendError`` when it is not (n, k, h, w)
    float with finite values -- or, with ``labels=True`` (class maps were asked for), an
    integer (n, h, w) class map with every value below k (no NaN test: integers have none)."""
    out = np.asarray(out)
    if out.ndim == 3 and out.dtype.kind in "iu":
        if not labels:
            raise BackendError(f"backend returned class labels {out.shape} {out.dtype}, but "
                               f"probabilities ({n}, {k}, h, w) are needed here (output "
                               f"probabilities/instances); return probabilities unless "
                               f"infer(..., labels=True) is called")
        if out.shape[0] != n:
            raise BackendError(f"backend returned class labels of shape {out.shape} for a "
                               f"batch of {n} (expected ({n}, h, w))")
        if out.size and (int(out.max()) >= k or int(out.min()) < 0):
            raise BackendError(f"backend returned class labels {int(out.min())}..."
                               f"{int(out.max())}, outside 0..{k - 1} ({k} classes)")
        if out.dtype not in (np.uint8, np.uint16, np.int32):  # e.g. int64 from an ArgMax
            out = out.astype(label_dtype(k))
        return out
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
    # True when infer(batch, labels=True) returns class maps (see the module docstring).
    computes_labels = False

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

    def infer(self, batch: np.ndarray, labels: bool = False) -> np.ndarray:
        """Probabilities (B, K, h, w); with ``labels=True`` the class map (B, h, w) instead
        when this backend ``computes_labels`` (else still probabilities)."""
        if not self.active:
            raise BackendError(f"{self}: infer() before activate()")
        batch = check_input(self, batch)
        labels = labels and self.computes_labels
        t0 = time.perf_counter()
        if labels:
            out, finite = self._infer_labels(batch)
        else:
            out = self._infer(batch)
        self.infer_seconds += time.perf_counter() - t0
        self.infer_calls += 1
        if labels and not finite:
            raise BackendError(f"{self}: backend computed NaN/Inf probabilities (seen on the "
                               f"device, before the argmax)")
        return check_output(out, batch.shape[0], self.info.out_channels, labels)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        """(class map (B, h, w) uint8/uint16, all probabilities finite); only called when
        ``computes_labels``."""
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
