"""Intensity normalization shared by training and inference, so both see the same numbers."""

from __future__ import annotations

import numpy as np

from .metadata import Normalization

MAX_SAMPLE = 4_000_000  # pixels; percentiles of a strided sample are stable and cheap


def sample_rows(height: int, width: int) -> tuple[int, int]:
    """Row and column strides that keep a sample of the image under MAX_SAMPLE pixels."""
    stride = 1
    while (height // stride + 1) * (width // stride + 1) > MAX_SAMPLE:
        stride += 1
    return stride, stride


def offset_scale(sample: np.ndarray, norm: Normalization) -> tuple[float, float]:
    """(offset, scale) with normalized = (x - offset) * scale."""
    if norm.mode == "fixed":
        return float(norm.offset), float(norm.scale)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [norm.low, norm.high])
    span = float(hi - lo)
    return float(lo), (1.0 / span if span > 0 else 1.0)


def image_offset_scale(image: np.ndarray, norm: Normalization) -> tuple[float, float]:
    """offset/scale of a whole (H, W[, C]) array, from the same strided sample inference uses."""
    sy, sx = sample_rows(image.shape[0], image.shape[1])
    return offset_scale(np.asarray(image[::sy, ::sx]), norm)
