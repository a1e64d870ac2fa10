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
they overlap, except in ``blend_add``, which accumulates.

* ``stitch_labels(probs, ys, xs, out, row0)`` -- ``out`` 2-D uint8/uint16/
  int32 ``(band_rows, W)`` receives the argmax over K (ties -> lowest index,
  NaN wins like ``np.argmax``).
* ``stitch_probabilities(probs, ys, xs, out, row0)`` -- ``out`` float32
  ``(band_rows, W, K)``; channel-last because the TIFF writer stores K
  samples per pixel.
* ``blend_weights(oh, ow, sigma_scale=0.125)`` -- Gaussian importance map
  (float32, strictly positive, max 1) for 'same'-padded models whose tile
  borders are unreliable.  Valid-convolution U-Nets don't need it.
* ``blend_add(probs, ys, xs, weights, acc, wsum, row0)`` --
  ``acc (band_rows, W, K) += weights * probs`` and
  ``wsum (band_rows, W) += weights`` (float32), cropped as above.
* ``blend_finalize(acc, wsum, out_labels=None, out_probs=None)`` -- divides
  by ``wsum`` (uncovered pixels, ``wsum == 0``, become probability 0 /
  label 0) and writes labels and/or probabilities.

Every kernel has a ``*_numpy`` twin with the same signature.
"""

import numba
import numpy as np

__all__ = [
    "stitch_labels",
    "stitch_labels_numpy",
    "stitch_probabilities",
    "stitch_probabilities_numpy",
    "blend_weights",
    "blend_add",
    "blend_add_numpy",
    "blend_finalize",
    "blend_finalize_numpy",
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
    for b in range(ys.shape[0]):
        y, x = ys[b], xs[b]
        i0, i1, j0, j1 = _crop(y, x, oh, ow, row0, out.shape[0], out.shape[1])
        for i in range(i0, i1):
            r = y + i - row0
            for j in range(j0, j1):
                best = probs[b, 0, i, j]
                arg = 0
                for k in range(1, k_cls):
                    v = probs[b, k, i, j]
                    # Strict '>' keeps the lowest index on ties; the NaN
                    # clause mirrors np.argmax, where the first NaN wins.
                    if v > best or (v != v and best == best):
                        best = v
                        arg = k
                out[r, x + j] = arg


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
def _blend_add(probs, ys, xs, weights, acc, wsum, row0):
    k_cls, oh, ow = probs.shape[1], probs.shape[2], probs.shape[3]
    for b in range(ys.shape[0]):
        y, x = ys[b], xs[b]
        i0, i1, j0, j1 = _crop(y, x, oh, ow, row0, acc.shape[0], acc.shape[1])
        for i in range(i0, i1):
            r = y + i - row0
            for j in range(j0, j1):
                w = weights[i, j]
                wsum[r, x + j] += w
                for k in range(k_cls):
                    acc[r, x + j, k] += w * probs[b, k, i, j]


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


def _check_probs(probs, ys, xs, out, row0):
    ys, xs = _coords(probs, ys, xs)
    if out.dtype != np.float32 or out.ndim != 3 or out.shape[2] != probs.shape[1]:
        raise ValueError("out must be float32 (band_rows, W, K)")
    return probs, ys, xs, out, int(row0)


def _check_blend(probs, ys, xs, weights, acc, wsum, row0):
    ys, xs = _coords(probs, ys, xs)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if weights.shape != probs.shape[2:]:
        raise ValueError("weights must be (oh, ow)")
    if acc.dtype != np.float32 or acc.ndim != 3 or acc.shape[2] != probs.shape[1]:
        raise ValueError("acc must be float32 (band_rows, W, K)")
    if wsum.dtype != np.float32 or wsum.shape != acc.shape[:2]:
        raise ValueError("wsum must be float32 (band_rows, W)")
    return probs, ys, xs, weights, acc, wsum, int(row0)


# ----------------------------------------------------------- public kernels
def stitch_labels(probs, ys, xs, out, row0=0):
    """Write per-pixel argmax of each tile into ``out`` (Numba)."""
    _stitch_labels(*_check_labels(probs, ys, xs, out, row0))
    return out


def stitch_probabilities(probs, ys, xs, out, row0=0):
    """Copy tile probabilities into channel-last ``out`` (Numba)."""
    _stitch_probabilities(*_check_probs(probs, ys, xs, out, row0))
    return out


def blend_add(probs, ys, xs, weights, acc, wsum, row0=0):
    """Accumulate weighted tile probabilities into ``acc``/``wsum`` (Numba)."""
    _blend_add(*_check_blend(probs, ys, xs, weights, acc, wsum, row0))
    return acc, wsum


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


def blend_add_numpy(probs, ys, xs, weights, acc, wsum, row0=0):
    """NumPy twin of :func:`blend_add` (tiles added one after another)."""
    probs, ys, xs, weights, acc, wsum, row0 = _check_blend(
        probs, ys, xs, weights, acc, wsum, row0
    )
    oh, ow = probs.shape[2:]
    for b in range(ys.shape[0]):
        sl = _crop_slices(int(ys[b]), int(xs[b]), oh, ow, row0, *acc.shape[:2])
        if sl is not None:
            ro, co, ti, tj = sl
            w = weights[ti, tj]
            wsum[ro, co] += w
            acc[ro, co] += w[:, :, None] * np.moveaxis(probs[b, :, ti, tj], 0, -1)
    return acc, wsum


# ------------------------------------------------------------ numpy only
def blend_weights(oh, ow, sigma_scale=0.125):
    """Separable Gaussian importance map, float32 ``(oh, ow)``, max 1, > 0.

    sigma = sigma_scale * tile size per axis (nnU-Net's choice), centred on
    the tile centre, so borders of a 'same'-padded model count little but
    never zero (every covered pixel keeps a finite, defined average).
    """
    oh, ow = int(oh), int(ow)
    if oh < 1 or ow < 1 or not sigma_scale > 0:
        raise ValueError("need oh, ow >= 1 and sigma_scale > 0")

    def axis(n):
        d = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        return np.exp(-0.5 * (d / (sigma_scale * n)) ** 2)

    w = np.outer(axis(oh), axis(ow))
    w /= w.max()
    # A small sigma_scale underflows the borders to 0; floor at 1e-8 so wsum
    # never becomes 0 for a covered pixel and w * p stays a normal float32.
    # (The default 0.125 map bottoms out near 1e-7, so the floor is inert.)
    return np.maximum(w, 1e-8).astype(np.float32)


def blend_finalize(acc, wsum, out_labels=None, out_probs=None):
    """Normalise accumulated probabilities; write labels and/or probs.

    Pixels never covered by a tile (``wsum == 0``) get probability 0 and
    label 0.  Returns ``(out_labels, out_probs)``.
    """
    if acc.ndim != 3 or wsum.shape != acc.shape[:2]:
        raise ValueError("acc must be (band_rows, W, K), wsum (band_rows, W)")
    covered = wsum > 0
    denom = np.where(covered, wsum, np.float32(1.0)).astype(np.float32)
    probs = (acc / denom[:, :, None]).astype(np.float32, copy=False)
    probs[~covered] = 0
    if out_labels is not None:
        if out_labels.shape != acc.shape[:2] or out_labels.dtype not in _LABEL_DTYPES:
            raise ValueError("out_labels must be 2-D uint8/uint16/int32 (band_rows, W)")
        if acc.shape[2] - 1 > np.iinfo(out_labels.dtype).max:
            raise ValueError(f"{acc.shape[2]} classes do not fit in {out_labels.dtype}")
        out_labels[...] = np.argmax(probs, axis=2)
    if out_probs is not None:
        if out_probs.shape != acc.shape:
            raise ValueError("out_probs must be (band_rows, W, K)")
        out_probs[...] = probs
    return out_labels, out_probs


# blend_finalize is plain NumPy already; the alias keeps the "every kernel has
# a _numpy twin" naming uniform for callers that switch implementations.
blend_finalize_numpy = blend_finalize
