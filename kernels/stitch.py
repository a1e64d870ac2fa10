"""Write network output tiles back into a full-size (or row-band) result.

Contract
--------
``probs`` is float32 ``(B, K, oh, ow)``: per-tile class probabilities (or
scores).  ``ys``, ``xs`` (int64 ``(B,)``) give the top-left IMAGE coordinate
of each tile's OUTPUT region.  ``out`` may be just a row band of the full
result: ``row0`` is the image row stored in ``out[0]``.  Tile pixels that fall
outside ``[row0, row0 + band_rows)`` or outside ``[0, W)`` are skipped, so
tiles running past the image edge (the last row/column of tiles) or past the
band are cropped, never wrapped.  Later tiles overwrite earlier ones where
they overlap.

* ``stitch_labels(probs, ys, xs, out, row0)`` -- ``out`` 2-D uint8/uint16/
  int32 ``(band_rows, W)`` receives the argmax over K (ties -> lowest index,
  NaN wins like ``np.argmax``).
* ``stitch_probabilities(probs, ys, xs, out, row0)`` -- ``out`` float32
  ``(band_rows, W, K)``; channel-last because the TIFF writer stores K
  samples per pixel.
* ``stitch_classes(classes, ys, xs, out, row0)`` -- ``classes`` is an
  integer ``(B, oh, ow)`` class map per tile (a backend that computed the
  argmax itself, e.g. on the GPU); it is pasted into ``out`` like
  ``stitch_labels`` pastes its argmax, so both give the same band.

Splitting ``out`` into row ranges (``out[a:b]`` with ``row0 + a``) and
stitching each range separately, in any order or in parallel, gives the
same result as one call: every range still sees the tiles in order.

Every kernel has a ``*_numpy`` twin with the same signature.
"""

import numba
import numpy as np

__all__ = [
    "stitch_classes",
    "stitch_classes_numpy",
    "stitch_labels",
    "stitch_labels_numpy",
    "stitch_probabilities",
    "stitch_probabilities_numpy",
]

_LABEL_DTYPES = (np.uint8, np.uint16, np.int32)


@numba.njit(cache=True, nogil=True)
def _crop(y, x, oh, ow, row0, band_rows, width):
    """Tile-local ranges [i0, i1) x [j0, j1) that land inside the band."""
    i0 = max(0, row0 - y)
    i1 = min(oh, row0 + band_rows - y)
    j0 = max(0, -x)
    j1 = min(ow, width - x)
    return i0, i1, j0, j1


@numba.njit(cache=True, nogil=True)
def _stitch_labels(probs, ys, xs, out, row0):
    k_cls, oh, ow = probs.shape[1], probs.shape[2], probs.shape[3]
    # Row-at-a-time argmax over the classes with running best/arg rows: the j loops index
    # from 0 over 1-D views and have no data-dependent branches, so LLVM vectorizes them
    # (the per-pixel loop over k was ~4x slower). Same comparisons as np.argmax: strict '>'
    # keeps the lowest index on ties, and the first NaN wins.
    best = np.empty(ow, dtype=probs.dtype)
    arg = np.empty(ow, dtype=np.int32)
    for b in range(ys.shape[0]):
        y, x = ys[b], xs[b]
        i0, i1, j0, j1 = _crop(y, x, oh, ow, row0, out.shape[0], out.shape[1])
        n = j1 - j0
        if n <= 0:  # wholly right of the image: nothing to write (and j1 may be < 0)
            continue
        for i in range(i0, i1):
            p = probs[b, 0, i, j0:j1]
            for j in range(n):
                best[j] = p[j]
                arg[j] = 0
            for k in range(1, k_cls):
                p = probs[b, k, i, j0:j1]
                for j in range(n):
                    v = p[j]
                    cur = best[j]
                    take = (v > cur) | ((v != v) & (cur == cur))
                    best[j] = v if take else cur
                    arg[j] = k if take else arg[j]
            dst = out[y + i - row0, x + j0 :]  # the row from x + j0 on (n pixels written)
            for j in range(n):
                dst[j] = arg[j]


@numba.njit(cache=True, nogil=True)
def _stitch_probabilities(probs, ys, xs, out, row0):
    k_cls, oh, ow = probs.shape[1], probs.shape[2], probs.shape[3]
    for b in range(ys.shape[0]):
        y, x = ys[b], xs[b]
        i0, i1, j0, j1 = _crop(y, x, oh, ow, row0, out.shape[0], out.shape[1])
        for i in range(i0, i1):
            r = y + i - row0
            for j in range(j0, j1):
                for k in range(k_cls):
                    out[r, x + j, k] = probs[b, k, i, j]


@numba.njit(cache=True, nogil=True)
def _stitch_classes(classes, ys, xs, out, row0):
    oh, ow = classes.shape[1], classes.shape[2]
    for b in range(ys.shape[0]):
        y, x = ys[b], xs[b]
        i0, i1, j0, j1 = _crop(y, x, oh, ow, row0, out.shape[0], out.shape[1])
        if j1 <= j0:  # wholly right of the image: nothing to paste (and j1 may be < 0)
            continue
        for i in range(i0, i1):
            src = classes[b, i, j0:j1]
            dst = out[y + i - row0, x + j0 :]  # the row from x + j0 on (src written)
            for j in range(src.shape[0]):
                dst[j] = src[j]


# ----------------------------------------------------------------- checks
def _coords(probs, ys, xs):
    if probs.dtype != np.float32 or probs.ndim != 4:
        raise ValueError("probs must be float32 (B, K, oh, ow)")
    ys = np.ascontiguousarray(ys, dtype=np.int64)
    xs = np.ascontiguousarray(xs, dtype=np.int64)
    if ys.ndim != 1 or ys.shape != xs.shape or ys.shape[0] > probs.shape[0]:
        raise ValueError("ys, xs must be 1-D, equal length, <= probs.shape[0]")
    return ys, xs


def _check_labels(probs, ys, xs, out, row0):
    ys, xs = _coords(probs, ys, xs)
    if out.ndim != 2 or out.dtype not in _LABEL_DTYPES:
        raise ValueError("out must be 2-D uint8/uint16/int32")
    if probs.shape[1] - 1 > np.iinfo(out.dtype).max:
        raise ValueError(f"{probs.shape[1]} classes do not fit in {out.dtype}")
    return probs, ys, xs, out, int(row0)


def _check_classes(classes, ys, xs, out, row0, n_classes):
    if classes.ndim != 3 or classes.dtype not in _LABEL_DTYPES:
        raise ValueError("classes must be uint8/uint16/int32 (B, oh, ow)")
    ys = np.ascontiguousarray(ys, dtype=np.int64)
    xs = np.ascontiguousarray(xs, dtype=np.int64)
    if ys.ndim != 1 or ys.shape != xs.shape or ys.shape[0] > classes.shape[0]:
        raise ValueError("ys, xs must be 1-D, equal length, <= classes.shape[0]")
    if out.ndim != 2 or out.dtype not in _LABEL_DTYPES:
        raise ValueError("out must be 2-D uint8/uint16/int32")
    if n_classes - 1 > np.iinfo(out.dtype).max:
        raise ValueError(f"{n_classes} classes do not fit in {out.dtype}")
    return classes, ys, xs, out, int(row0)


def _check_probs(probs, ys, xs, out, row0):
    ys, xs = _coords(probs, ys, xs)
    if out.dtype != np.float32 or out.ndim != 3 or out.shape[2] != probs.shape[1]:
        raise ValueError("out must be float32 (band_rows, W, K)")
    return probs, ys, xs, out, int(row0)


def stitch_labels(probs, ys, xs, out, row0=0):
    """Write per-pixel argmax of each tile into ``out`` (Numba)."""
    _stitch_labels(*_check_labels(probs, ys, xs, out, row0))
    return out


def stitch_classes(classes, ys, xs, out, row0=0, n_classes=256):
    """Paste per-tile class maps into ``out`` (Numba). The caller has checked that every
    value is below ``n_classes`` (``backends.base.check_output``); ``n_classes`` only
    guards the output dtype here."""
    _stitch_classes(*_check_classes(classes, ys, xs, out, row0, n_classes))
    return out


def stitch_probabilities(probs, ys, xs, out, row0=0):
    """Copy tile probabilities into channel-last ``out`` (Numba)."""
    _stitch_probabilities(*_check_probs(probs, ys, xs, out, row0))
    return out


# ------------------------------------------------------------ numpy twins
def _crop_slices(y, x, oh, ow, row0, band_rows, width):
    """(out rows, out cols, tile rows, tile cols) slices, or None if empty."""
    i0, i1 = max(0, row0 - y), min(oh, row0 + band_rows - y)
    j0, j1 = max(0, -x), min(ow, width - x)
    if i0 >= i1 or j0 >= j1:
        return None
    return (
        slice(y + i0 - row0, y + i1 - row0),
        slice(x + j0, x + j1),
        slice(i0, i1),
        slice(j0, j1),
    )


def stitch_labels_numpy(probs, ys, xs, out, row0=0):
    """NumPy twin of :func:`stitch_labels`."""
    probs, ys, xs, out, row0 = _check_labels(probs, ys, xs, out, row0)
    oh, ow = probs.shape[2:]
    for b in range(ys.shape[0]):
        sl = _crop_slices(int(ys[b]), int(xs[b]), oh, ow, row0, *out.shape)
        if sl is not None:
            ro, co, ti, tj = sl
            out[ro, co] = np.argmax(probs[b, :, ti, tj], axis=0)
    return out


def stitch_probabilities_numpy(probs, ys, xs, out, row0=0):
    """NumPy twin of :func:`stitch_probabilities`."""
    probs, ys, xs, out, row0 = _check_probs(probs, ys, xs, out, row0)
    oh, ow = probs.shape[2:]
    for b in range(ys.shape[0]):
        sl = _crop_slices(int(ys[b]), int(xs[b]), oh, ow, row0, *out.shape[:2])
        if sl is not None:
            ro, co, ti, tj = sl
            out[ro, co] = np.moveaxis(probs[b, :, ti, tj], 0, -1)
    return out


def stitch_classes_numpy(classes, ys, xs, out, row0=0, n_classes=256):
    """NumPy twin of :func:`stitch_classes`."""
    classes, ys, xs, out, row0 = _check_classes(classes, ys, xs, out, row0, n_classes)
    oh, ow = classes.shape[1:]
    for b in range(ys.shape[0]):
        sl = _crop_slices(int(ys[b]), int(xs[b]), oh, ow, row0, *out.shape)
        if sl is not None:
            ro, co, ti, tj = sl
            out[ro, co] = classes[b, ti, tj]
    return out
