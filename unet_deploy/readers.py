"""The plane-reader contract: what the pipeline needs from any source of one 2-D plane.

``Reader`` is the protocol (height, width, channels, dtype, ``read_rows``, optional zero-copy
``array``, ``nan_policy``); ``ArrayReader`` implements it over an in-memory array and
``io.PlaneReader`` over a (huge) TIFF plane. A new source (Zarr, a slide pyramid level) slots in
beside them by implementing the protocol and passing ``check_reader`` (the shipped contract
check, run by ``tests/test_readers.py`` over every implementation).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InputError


@runtime_checkable
class Reader(Protocol):
    """One 2-D plane, read as (rows, W, C) bands of native-byte-order ``dtype``.

    ``array``: the whole plane (H, W, C) without a copy when the source has one (an in-memory
    array, a memory-mapped uncompressed TIFF) and its pixels need no rewriting; else None, and
    the pipeline reads bands through ``read_rows``.
    ``nan_policy``: "error" (non-finite pixels refuse the plane) or "zero" (the reader already
    returns them as 0). A "zero" reader should also offer ``read_unzeroed_rows(y0, y1)`` (the
    rows before zeroing), so the normalization percentiles can ignore those pixels
    (``normalize.plane_sample``); without it they count as 0."""

    height: int
    width: int
    channels: int
    dtype: np.dtype
    array: np.ndarray | None
    nan_policy: str

    def read_rows(self, y0: int, y1: int) -> np.ndarray: ...


class ArrayReader:
    """``Reader`` over an in-memory (H, W) or (H, W, C) array."""

    nan_policy = "error"

    def __init__(self, image: np.ndarray):
        if image.ndim == 3 and image.shape[0] == 1 and image.shape[2] > 4:
            image = image[0]  # (1, H, W): a stack of one plane, not H columns of W channels
        elif image.ndim == 3 and 1 < image.shape[0] <= 4 < image.shape[2]:
            raise InputError(f"array of shape {image.shape} looks channel-first (C, H, W); pass "
                             f"(H, W, C), e.g. np.moveaxis(image, 0, -1), or one plane")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise InputError(f"expected a 2-D (H, W) or (H, W, C) array, got shape {image.shape}")
        self.array = image
        self.height, self.width, self.channels = image.shape
        self.dtype = image.dtype

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.array[y0:y1]


def release_mapped_rows(array: np.ndarray, y0: int, y1: int) -> None:
    """madvise(MADV_DONTNEED) the whole pages of rows [y0, y1) of a read-only np.memmap, so
    the mapped input's pages don't pile up in RSS (0.8 GB for a 20000x20000 uint16 plane).
    The pages stay in the page cache and are re-read transparently if touched again; a
    read-only shared file mapping loses nothing. No-op for anything else."""
    if not isinstance(array, np.memmap) or getattr(array, "mode", None) != "r" \
            or array.strides[0] <= 0 or not hasattr(os, "sched_getaffinity"):  # Linux only
        return
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        start = array.ctypes.data + y0 * array.strides[0]
        end = array.ctypes.data + min(y1, array.shape[0]) * array.strides[0]
        a, b = -(-start // page) * page, end // page * page
        if b > a:
            libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):
        pass


def check_reader(reader, expected: np.ndarray) -> None:
    """Contract check of a ``Reader`` against the plane it should return, ``expected`` (H, W, C)
    (after any NaN policy). Raises AssertionError naming the broken promise."""
    assert isinstance(reader, Reader), f"{type(reader).__name__} lacks Reader attributes"
    h, w, c = expected.shape
    assert (reader.height, reader.width, reader.channels) == (h, w, c), "wrong plane shape"
    assert np.dtype(reader.dtype) == expected.dtype and np.dtype(reader.dtype).isnative
    assert reader.nan_policy in ("error", "zero")
    for y0, y1 in ((0, h), (0, 1), (h - 1, h), (h // 3, (2 * h) // 3 + 1), (h // 2, h // 2)):
        band = np.asarray(reader.read_rows(y0, y1))
        assert band.shape == (y1 - y0, w, c), f"read_rows({y0}, {y1}) has shape {band.shape}"
        assert band.dtype == expected.dtype, f"read_rows dtype {band.dtype}"
        np.testing.assert_array_equal(band, expected[y0:y1], err_msg=f"read_rows({y0}, {y1})")
    if reader.array is not None:
        assert reader.array.shape == (h, w, c) and reader.array.dtype == expected.dtype
        np.testing.assert_array_equal(reader.array, expected, err_msg="array")


class ArraySource:
    """A whole in-memory image (PNG, JPEG, ``.npy``) seen as a one-plane source, with the
    attributes the pipeline reads from ``io.ImageSource`` (height, width, channels, dtype,
    lead_shape, n_planes, resolution, ``plane(i)``; a context manager)."""

    def __init__(self, image: np.ndarray, where: str = "image", nan_policy: str = "error",
                 max_pixels: int | None = None):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4) and image.shape[0] <= 4:
            raise InputError(f"{where}: shape {image.shape} looks channel-first; save it as "
                             f"(H, W, C)")
        if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
            raise InputError(f"{where}: plane of {image.shape[0]}x{image.shape[1]} pixels "
                             f"exceeds --max-pixels {max_pixels}; raise the limit")
        if nan_policy == "zero" and image.dtype.kind == "f":
            image = np.where(np.isfinite(image), image, image.dtype.type(0))
        self.path, self.nan_policy = where, nan_policy
        self._reader = ArrayReader(image)
        self._reader.nan_policy = nan_policy
        self.height, self.width = self._reader.height, self._reader.width
        self.channels, self.dtype = self._reader.channels, self._reader.dtype
        self.lead_shape: tuple[int, ...] = ()
        self.n_planes = 1
        self.resolution: dict = {}

    def plane(self, i: int) -> ArrayReader:
        if i != 0:
            raise IndexError(f"plane {i} out of range 0..0")
        return self._reader

    def close(self) -> None:
        pass

    def __enter__(self) -> "ArraySource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChannelReader:
    """``Reader`` that passes on only some channels of another reader (``--channel``)."""

    def __init__(self, reader: Reader, channels, where: str = "image"):
        channels = [int(c) for c in channels]
        bad = [c for c in channels if not 0 <= c < reader.channels]
        if bad:
            raise InputError(f"{where}: has channels 0..{reader.channels - 1}, no channel "
                             f"{bad[0]}; pick channels from 0 to {reader.channels - 1}")
        self._reader, self._idx = reader, channels
        self.height, self.width, self.dtype = reader.height, reader.width, reader.dtype
        self.channels = len(channels)
        self.nan_policy = reader.nan_policy
        self.array = None  # bands through read_rows: a channel view would be strided

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self._reader.read_rows(y0, y1))[..., self._idx])
