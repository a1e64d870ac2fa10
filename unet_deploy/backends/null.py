"""A zero-cost backend for benchmarks and tests: it returns a precomputed batch at once, so a
run measures the host pipeline alone (read, gather, normalize, stitch, write).

It is not a built-in name (a segmentation it returns is fake); register it where it is wanted::

    from unet_deploy.backends import register_backend
    from unet_deploy.backends.null import NullBackend
    register_backend("null", NullBackend)
    segment_file("big.tif", "out.tif", model="nuclei", backend="null")

The output is a fixed nuclei-like pattern (discs with a border class on a jittered grid, in the
proportions of real nuclei labels), the same for every tile: label maps then compress like real
ones, which matters for the TIFF writer's share of the time (a denser pattern compresses 2x
slower, constant labels several times faster). ``computes_labels``: class maps for ``output="labels"``, as a GPU
backend returns them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..metadata import ModelInfo
from .base import Backend


@functools.lru_cache(maxsize=8)
def disc_pattern(h: int, w: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 class map: discs of radius 7-11 px about 38 px apart (class 1), each with a
    1-px rim (class 2 when there are three or more classes), on background 0. The proportions
    (77 % background, 18 % interior, 5 % border) and the zlib ratio (~25) are those of the
    shipped nuclei model's labels of the BBBC039 example. Cached: treat it as read-only."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    if n_classes < 2:
        return labels
    fg, rim = 1, (2 if n_classes > 2 else 1)
    for cy in range(12, h + 24, 38):
        for cx in range(12, w + 24, 38):
            y, x = cy + int(rng.integers(-6, 7)), cx + int(rng.integers(-6, 7))
            r = float(rng.uniform(7, 11))
            y0, y1, x0, x1 = max(0, y - 13), min(h, y + 14), max(0, x - 13), min(w, x + 14)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d2 = (yy - y) ** 2 + (xx - x) ** 2
            box = labels[y0:y1, x0:x1]
            box[d2 <= (r + 1) ** 2] = rim
            box[d2 <= r**2] = fg
    labels.flags.writeable = False
    return labels


@functools.lru_cache(maxsize=8)
def constant_batch(b: int, h: int, w: int, n_classes: int, labels: bool) -> np.ndarray:
    """The null backend's answer for a batch: ``disc_pattern`` class maps (b, h, w), or
    probabilities (b, K, h, w) float32 whose argmax is that pattern (0.8 for the class, the rest
    shared). Contiguous, like a real backend's output (the kernels are compiled for contiguous
    arrays; a broadcast view would take their slow path); cached and read-only."""
    classes = disc_pattern(h, w, n_classes)
    if labels:
        out = np.ascontiguousarray(np.broadcast_to(classes, (b, h, w)))
    else:
        k = n_classes
        probs = np.full((k, h, w), 0.2 / max(1, k - 1), np.float32)
        np.put_along_axis(probs, classes[None].astype(np.intp), 0.8 if k > 1 else 1.0, axis=0)
        out = np.ascontiguousarray(np.broadcast_to(probs, (b, k, h, w)))
    out.flags.writeable = False
    return out


class NullBackend(Backend):
    """Returns a constant batch instantly. ``model``: an ONNX path (its metadata gives the
    geometry and classes) or a ``ModelInfo``; ``threads`` is accepted and ignored (the
    ``register_backend`` factory signature)."""

    name = "null"
    thread_safe = True
    computes_labels = True

    def __init__(self, model: str | Path | ModelInfo, threads: int = 0):
        super().__init__()
        if isinstance(model, ModelInfo):
            self.info = model
        else:
            from ..model_store import read_onnx

            self.info = read_onnx(model).info

    def _activate(self) -> None:
        pass

    def _batch(self, batch: np.ndarray, labels: bool) -> np.ndarray:
        b, _, h, w = batch.shape
        geo = self.info.geometry
        return constant_batch(b, geo.output_size(h), geo.output_size(w),
                              self.info.out_channels, labels)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._batch(batch, labels=False)

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        return self._batch(batch, labels=True), True
