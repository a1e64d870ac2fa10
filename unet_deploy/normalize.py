"""All input preprocessing: channel mixing, intensity normalization (shared by training and
inference, so both see the same numbers), sampling a plane for its statistics, and counting
non-finite pixels. ``preprocess_for`` turns a ``readers.Reader`` into the ``Preprocess`` the
gather kernel applies while cutting tiles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .metadata import ModelInfo, Normalization
from .readers import Reader, release_mapped_rows

MAX_SAMPLE = 4_000_000  # pixels; percentiles of a strided sample are stable and cheap
LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)
SAMPLE_BAND = 1024  # rows read at a time when sampling a compressed image


@dataclass
class Preprocess:
    """Per-plane input mapping fused into the gather kernel: channel mix, offset, scale."""

    mix: np.ndarray  # float32 (C_model, C_src)
    offset: np.ndarray  # float32 (C_model,)
    scale: np.ndarray  # float32 (C_model,)


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


def channel_mix(c_src: int, c_model: int, where: str = "image") -> np.ndarray:
    if c_src == c_model:
        return np.eye(c_model, dtype=np.float32)
    if c_model == 1 and c_src in (3, 4):  # RGB(A) -> luminance; alpha ignored
        return np.pad(LUMA, ((0, 0), (0, c_src - 3)))
    if c_src == 1:
        return np.ones((c_model, 1), np.float32)
    raise InputError(f"{where}: has {c_src} channels but the model takes {c_model}; "
                     f"convert the image to {c_model} channel(s)")


def _bands(reader: Reader, step: int, unzeroed: bool = False):
    """(y0, y1, rows) bands of the plane, ``step`` rows each; mapped pages are released after
    each band, so a full scan never fills RSS with the plane. ``unzeroed``: read through the
    reader's ``read_unzeroed_rows`` when it has one (rows before its NaN policy zeroed them)."""
    array = getattr(reader, "array", None)
    read = getattr(reader, "read_unzeroed_rows", None) if unzeroed else None
    read = read or reader.read_rows
    for y0 in range(0, reader.height, step):
        y1 = min(reader.height, y0 + step)
        yield y0, y1, (array[y0:y1] if array is not None else read(y0, y1))
        if array is not None:
            release_mapped_rows(array, y0, y1)


def plane_sample(reader: Reader) -> np.ndarray:
    """A strided sample (h, w, C) of the plane, read band by band unless in memory. Non-finite
    pixels stay in the sample (also for a "zero"-policy reader, through its
    ``read_unzeroed_rows``), so the statistics can ignore them."""
    sy, sx = sample_rows(reader.height, reader.width)
    array = getattr(reader, "array", None)
    if array is not None and not isinstance(array, np.memmap):
        return np.asarray(array[::sy, ::sx])
    # Sampling a memmap faults in most of its pages (readahead): copy the sample band by band
    # and drop each band's pages from RSS right away.
    return np.concatenate([np.array(band[::sy, ::sx])
                           for _, _, band in _bands(reader, SAMPLE_BAND * sy, unzeroed=True)])


def nonfinite_mask(values: np.ndarray) -> np.ndarray:
    """True where a pixel is NaN/Inf for the network: non-finite, or (float64) beyond the
    float32 range, which the float32 network would see as Inf. All False for integers."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return np.zeros(values.shape, bool)
    with np.errstate(over="ignore"):  # the overflow is what we are looking for
        return ~np.isfinite(values.astype(np.float32, copy=False))


def count_nonfinite(reader: Reader) -> int:
    """NaN/Inf pixels of a float plane (float64 values beyond the float32 range count as
    Inf: the network computes in float32), counted band by band (memory bounded)."""
    if np.dtype(reader.dtype).kind != "f":
        return 0
    return sum(int(np.count_nonzero(nonfinite_mask(band)))
               for _, _, band in _bands(reader, SAMPLE_BAND))


def sample_statistics_input(sample: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """The sample (h, w, C_src) mixed into the model's channels (C_model, h, w) as float32, NaN
    wherever a source channel that feeds that model channel is non-finite: ``offset_scale``
    then ignores those pixels (the "zero" NaN policy feeds them to the network as 0, but they
    must not pull the percentiles towards 0)."""
    bad = nonfinite_mask(sample)
    values = np.where(bad, 0, sample).astype(np.float32)
    mixed = np.einsum("hws,cs->chw", values, mix)
    if bad.any():
        feeds = (mix != 0).astype(np.float32)  # (C_model, C_src)
        mixed[np.einsum("hws,cs->chw", bad.astype(np.float32), feeds) > 0] = np.nan
    return mixed


def preprocess_for(reader: Reader, info: ModelInfo, where: str = "image",
                   nan_policy: str | None = None) -> Preprocess:
    """Channel mix and normalization for one plane. NaN/Inf pixels: with the "error" policy
    (default) the plane is refused, naming the count; with "zero" the reader already returns
    them as 0 (``open_image(..., nan_policy="zero")``, or the caller zeroes the array after this
    call) and the normalization percentiles ignore them: they are computed from the finite
    pixels only (read through ``read_unzeroed_rows`` where the reader zeroes them itself)."""
    policy = nan_policy or getattr(reader, "nan_policy", "error")
    if policy == "error":
        bad = count_nonfinite(reader)
        if bad:
            raise InputError(f"{where}: {bad} NaN/Inf pixel(s) in a float image; clean the image "
                             f"or set the NaN policy to 'zero' (treats them as 0)")
    mix = channel_mix(reader.channels, info.in_channels, where)
    mixed = sample_statistics_input(plane_sample(reader), mix)
    pairs = [offset_scale(mixed[c], info.normalization) for c in range(info.in_channels)]
    offset = np.array([p[0] for p in pairs], np.float32)
    scale = np.array([p[1] for p in pairs], np.float32)
    return Preprocess(mix, offset, scale)
