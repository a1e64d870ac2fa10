"""2x2 reductions for resolution pyramids of label maps.

Contract
--------
``mode_2x2(a)`` -- ``a`` is a 2-D integer array ``(2r, W)`` (uint8/uint16/uint32/int32/
int64); returns ``(r, ceil(W / 2))`` of the same dtype: the most frequent value of each 2x2
block, ties going to the first of top-left, top-right, bottom-left, bottom-right (so a block of
four different values keeps its top-left one, as nearest-neighbour sampling would). An odd
width repeats the last column.

``mode_2x2_numpy`` is the vectorised NumPy twin (same result, about 40x slower: sixteen
full-size comparisons and temporaries per level).
"""

import numba
import numpy as np

__all__ = ["mode_2x2", "mode_2x2_numpy"]


@numba.njit(cache=True, nogil=True)
def _mode_2x2(a, out):
    width = a.shape[1]
    for i in range(out.shape[0]):
        top = a[2 * i]
        bottom = a[2 * i + 1]
        dst = out[i]
        for j in range(out.shape[1]):
            c0 = 2 * j
            c1 = min(c0 + 1, width - 1)
            v0, v1, v2, v3 = top[c0], top[c1], bottom[c0], bottom[c1]
            # Count each value at its first position and after it; the first maximum wins. A
            # value that also occurs earlier never wins (its first position has the full count
            # and comes first), so counting only rightwards is enough -- and v3 never wins.
            n0 = 1 + (v0 == v1) + (v0 == v2) + (v0 == v3)
            n1 = 1 + (v1 == v2) + (v1 == v3)
            n2 = 1 + (v2 == v3)
            best, value = n0, v0
            if n1 > best:
                best, value = n1, v1
            if n2 > best:
                value = v2
            dst[j] = value


def _check(a):
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu" or a.shape[0] % 2:
        raise ValueError(f"mode_2x2 takes a 2-D integer array with an even number of rows, "
                         f"got {a.shape} {a.dtype}")
    return a


def mode_2x2(a):
    """2x2 mode of ``a`` (Numba); see the module docstring."""
    a = _check(a)
    out = np.empty((a.shape[0] // 2, -(-a.shape[1] // 2)), a.dtype)
    _mode_2x2(np.ascontiguousarray(a), out)  # empty shapes: the loops run zero times
    return out


def mode_2x2_numpy(a):
    """NumPy twin of :func:`mode_2x2`."""
    a = _check(a)
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    v = [a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]]
    counts = [sum((v[i] == v[j]).astype(np.uint8) for j in range(4)) for i in range(3)]
    out, best = v[0].copy(), counts[0]
    for i in (1, 2):  # v3 never wins (see _mode_2x2)
        better = counts[i] > best
        out[better] = v[i][better]
        best = np.maximum(best, counts[i])
    return out
