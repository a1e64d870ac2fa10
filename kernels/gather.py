"""Gather mirrored input tiles straight from the (possibly memory-mapped) image.

Contract
--------
``gather_tiles(src, src_row0, image_h, ys, xs, mix, offset, scale, out)``

* ``src`` -- 3-D array ``(rows, W, C_src)`` of uint8/uint16/int16/float32/
  float64.  It may be the whole image, a ``np.memmap`` or a row band of it;
  ``src_row0`` is the image row held in ``src[0]`` and ``image_h`` the full
  image height.
* ``ys``, ``xs`` -- int64 ``(B,)``: top-left IMAGE coordinate of each tile's
  input window.  They may lie far outside the image.
* Mirroring ("reflect", see :mod:`.mirror`) is done in image coordinates
  (height ``image_h``, width ``src.shape[1]``); the mirrored row is then
  shifted by ``src_row0``.  The caller guarantees the band holds every row
  a tile needs; the wrappers check this and raise ``IndexError`` otherwise.
* ``mix`` float32 ``(C_model, C_src)``, ``offset``/``scale`` float32
  ``(C_model,)``: each output value is
  ``(sum_s mix[c, s] * x[s] - offset[c]) * scale[c]`` evaluated in float32,
  i.e. dtype conversion, channel mixing and normalisation are fused.
* ``out`` float32 ``(B_cap, C_model, th, tw)`` with ``B_cap >= B``; only
  ``out[:B]`` is written.  Tile size is taken from ``out.shape[2:]``.

No padded copy of the image is ever built: each tile maps its own row and
column coordinates through the mirror function.

``gather_tiles_numpy`` is the vectorised NumPy twin (same signature, same
float32 summation order) used as a reference in the tests.
"""

import numba
import numpy as np

from .mirror import mirror_index, mirror_indices

__all__ = ["gather_tiles", "gather_tiles_numpy"]


@numba.njit(cache=True, nogil=True)
def _gather_tiles(src, src_row0, image_h, ys, xs, mix, offset, scale, out):
    width = src.shape[1]
    c_model, c_src = mix.shape
    th, tw = out.shape[2], out.shape[3]
    cols = np.empty(tw, dtype=np.int64)
    # Each source row is first converted into ``row`` (channel-major), then each model channel
    # is computed over a contiguous run of j. Loops that index from 0 over 1-D views let LLVM
    # prove the indices non-negative and vectorize them (2-3x over a per-pixel loop). The
    # float32 operations and their order are those of the contract -- acc = 0;
    # acc += mix[c, s] * x[s] for s in order; (acc - off) * scl -- so results are
    # bit-identical to the per-pixel form and to the NumPy twin.
    row = np.empty((c_src, tw), dtype=np.float32)
    acc = np.empty(tw, dtype=np.float32)
    zero = np.float32(0.0)
    for b in range(ys.shape[0]):
        x0 = xs[b]
        # Column mapping is identical for every row of the tile: compute once. Columns
        # [ja, jb) lie inside the image and need no mirroring (a contiguous run).
        for j in range(tw):
            cols[j] = mirror_index(x0 + j, width)
        ja = min(tw, max(0, -x0))
        jb = max(ja, min(tw, width - x0))
        for i in range(th):
            r = mirror_index(ys[b] + i, image_h) - src_row0
            for s in range(c_src):
                line = src[r, :, s]
                dst = row[s]
                for j in range(ja):
                    dst[j] = np.float32(line[cols[j]])
                if jb > ja:  # else x0 + ja may be < 0, and a slice would wrap around
                    inner_dst = dst[ja:jb]
                    inner_src = line[x0 + ja : x0 + jb]
                    for j in range(inner_dst.shape[0]):
                        inner_dst[j] = np.float32(inner_src[j])
                for j in range(jb, tw):
                    dst[j] = np.float32(line[cols[j]])
            for c in range(c_model):
                off = offset[c]
                scl = scale[c]
                o = out[b, c, i]
                if c_src == 1:
                    m = mix[c, 0]
                    x = row[0]
                    for j in range(tw):
                        o[j] = (zero + m * x[j] - off) * scl
                    continue
                for j in range(tw):
                    acc[j] = zero
                for s in range(c_src):
                    m = mix[c, s]
                    x = row[s]
                    for j in range(tw):
                        acc[j] += m * x[j]
                for j in range(tw):
                    o[j] = (acc[j] - off) * scl


def _check(src, src_row0, image_h, ys, xs, mix, offset, scale, out):
    src = np.asarray(src)  # drops the np.memmap subclass without copying
    if src.ndim != 3:
        raise ValueError("src must be 3-D (rows, W, C_src)")
    if not src.dtype.isnative:
        # Numba would read the bytes as native order and return garbage silently.
        raise ValueError(f"src has non-native byte order {src.dtype.str}; convert it first")
    ys = np.ascontiguousarray(ys, dtype=np.int64)
    xs = np.ascontiguousarray(xs, dtype=np.int64)
    if ys.shape != xs.shape or ys.ndim != 1:
        raise ValueError("ys and xs must be 1-D arrays of equal length")
    mix = np.ascontiguousarray(mix, dtype=np.float32)
    offset = np.ascontiguousarray(offset, dtype=np.float32)
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if out.dtype != np.float32 or out.ndim != 4:
        raise ValueError("out must be float32 (B_cap, C_model, th, tw)")
    if out.shape[0] < ys.shape[0]:
        raise ValueError("out has fewer slots than tiles")
    if mix.shape != (out.shape[1], src.shape[2]):
        raise ValueError("mix must be (C_model, C_src)")
    if offset.shape != (mix.shape[0],) or scale.shape != (mix.shape[0],):
        raise ValueError("offset and scale must be (C_model,)")
    image_h, src_row0 = int(image_h), int(src_row0)
    if image_h < 1 or src.shape[1] < 1:
        raise ValueError("image must be non-empty")
    if ys.size:
        # The kernel does not bounds-check (speed), so check the band here:
        # only the row range actually touched by the tiles matters.
        rows = mirror_indices(np.unique(ys)[:, None] + np.arange(out.shape[2]), image_h)
        lo, hi = int(rows.min()), int(rows.max())
        if lo < src_row0 or hi >= src_row0 + src.shape[0]:
            raise IndexError(
                f"tiles need image rows {lo}..{hi} but src holds "
                f"{src_row0}..{src_row0 + src.shape[0] - 1}"
            )
    return src, src_row0, image_h, ys, xs, mix, offset, scale, out


def gather_tiles(src, src_row0, image_h, ys, xs, mix, offset, scale, out):
    """Fill ``out[:B]`` with mirrored, mixed, normalised tiles (Numba)."""
    _gather_tiles(*_check(src, src_row0, image_h, ys, xs, mix, offset, scale, out))
    return out


def gather_tiles_numpy(src, src_row0, image_h, ys, xs, mix, offset, scale, out):
    """NumPy twin of :func:`gather_tiles` (np.ix_ indexing, no padded copy)."""
    src, src_row0, image_h, ys, xs, mix, offset, scale, out = _check(
        src, src_row0, image_h, ys, xs, mix, offset, scale, out
    )
    th, tw = out.shape[2:]
    width = src.shape[1]
    for b in range(ys.shape[0]):
        rows = mirror_indices(np.arange(ys[b], ys[b] + th), image_h) - src_row0
        cols = mirror_indices(np.arange(xs[b], xs[b] + tw), width)
        patch = src[np.ix_(rows, cols)].astype(np.float32)  # (th, tw, C_src)
        # Accumulate channel by channel in the same order as the kernel so
        # both agree to float32 rounding.
        acc = np.zeros((mix.shape[0], th, tw), dtype=np.float32)
        for s in range(mix.shape[1]):
            acc += mix[:, s, None, None] * patch[None, :, :, s]
        out[b] = (acc - offset[:, None, None]) * scale[:, None, None]
    return out
