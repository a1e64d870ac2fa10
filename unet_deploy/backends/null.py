"""A zero-cost backend for benchmarks and tests: it returns a precomputed batch at once, so a
run measures the host pipeline alone (read, gather, normalize, stitch, write).

It is not a built-in name (a segmentation it returns is fake); register it where it is wanted::

    from unet_deploy.backends import register_backend
    from unet_deploy.backends.null import NullBackend
    register_backend("null", NullBackend)
    segment_file("big.tif", "out.tif", model="nuclei", backend="null")

The output is a fixed nuclei-like pattern (discs with a border class on a jittered grid),
the same for every tile: label maps then compress like real ones, which matters for the TIFF
writer's share of the time (random labels compress several times slower, constant ones
several times faster). ``computes_labels``: class maps for ``output="labels"``, as a GPU
backend returns them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metadata import ModelInfo
from .base import Backend


def disc_pattern(h: int, w: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 class map: discs of radius ~9 px about 24 px apart (class 1), each with a
    2-px rim (class 2 when there are three or more classes), on background 0."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    fg, rim = 1, (2 if n_classes > 2 else 1)
    for cy in range(8, h + 16, 24):
        for cx in range(8, w + 16, 24):
            y, x = cy + rng.integers(-5, 6), cx + rng.integers(-5, 6)
            r = rng.uniform(6, 11)
            d2 = (yy - y) ** 2 + (xx - x) ** 2
            labels[d2 <= (r + 2) ** 2] = rim
            labels[d2 <= r**2] = fg
    return labels if n_classes > 1 else np.zeros_like(labels)


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
        self._cache: dict[tuple, np.ndarray] = {}

    def _activate(self) -> None:
        pass

    def _batch(self, batch: np.ndarray, labels: bool) -> np.ndarray:
        b, _, h, w = batch.shape
        geo = self.info.geometry
        key = (b, geo.output_size(h), geo.output_size(w), labels)
        out = self._cache.get(key)
        if out is None:
            k = self.info.out_channels
            classes = disc_pattern(key[1], key[2], k)
            # contiguous copies, like a real backend's output (the kernels are compiled for
            # contiguous arrays; a broadcast view would take their slow path)
            if labels:
                out = np.ascontiguousarray(np.broadcast_to(classes, (b,) + classes.shape))
            else:  # 0.8 for the class, the rest shared: argmax gives ``classes``
                probs = np.full((k,) + classes.shape, 0.2 / max(1, k - 1), np.float32)
                np.put_along_axis(probs, classes[None].astype(np.intp), 0.8 if k > 1 else 1.0,
                                  axis=0)
                out = np.ascontiguousarray(np.broadcast_to(probs, (b,) + probs.shape))
            self._cache[key] = out
        return out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._batch(batch, labels=False)

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        return self._batch(batch, labels=True), True
