"""Mirror ("reflect") coordinate mapping for the overlap-tile strategy.

Contract
--------
``mirror_index(i, n)`` maps ANY integer coordinate ``i`` (far negative or far
beyond ``n - 1``) to the source index ``0 <= k < n`` that
``numpy.pad(a, pad, mode="reflect")`` would read for that position.  This is
the U-Net paper's mirroring: reflection about the edge pixel *without*
repeating it (``... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...``).

Because numpy applies the reflection repeatedly when the pad is larger than
the array, the mapping is periodic with period ``2 * (n - 1)``; a single
modulo therefore handles arbitrarily large offsets.  ``n == 1`` maps every
coordinate to 0 (numpy repeats the single pixel).

``mirror_indices`` is the vectorised NumPy twin used by the reference
implementations and by callers that want whole index vectors at once.
"""

import numba
import numpy as np

__all__ = ["mirror_index", "mirror_indices"]


@numba.njit(cache=True, nogil=True)
def mirror_index(i, n):
    """Source index that ``np.pad(mode="reflect")`` uses for coordinate ``i``."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    # Python/Numba ``%`` with a positive divisor is always >= 0, so negative
    # coordinates need no special branch.
    m = i % period
    if m >= n:
        m = period - m
    return m


def mirror_indices(idx, n):
    """Vectorised twin of :func:`mirror_index`; returns an int64 array."""
    idx = np.asarray(idx, dtype=np.int64)
    n = int(n)
    if n < 1:
        raise ValueError("n must be >= 1")
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)
