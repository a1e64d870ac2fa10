"""Resolution pyramids, streamed: 2x2 reductions of row bands, level by level.

Labels and instance ids are reduced by the 2x2 mode (ties go to the top-left pixel, so a 2x2
block of four different ids keeps its top-left one, as nearest-neighbour sampling would);
probabilities by the 2x2 mean. Odd sizes repeat the last row/column (level k has
ceil(H / 2^k) rows). ``Cascade`` turns level-0 bands into bands of every level with a
bounded carry of at most one row per level.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

MAX_SIDE = 1024  # the coarsest level's long side is at most this


def n_levels(height: int, width: int, max_side: int = MAX_SIDE) -> int:
    """Levels including the full resolution, halving until the long side is <= max_side."""
    n, h, w = 1, height, width
    while max(h, w) > max_side:
        h, w = -(-h // 2), -(-w // 2)
        n += 1
    return n


def level_shape(height: int, width: int, level: int) -> tuple[int, int]:
    return -(-height // 2**level), -(-width // 2**level)


def _pad_even_cols(a: np.ndarray) -> np.ndarray:
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    return a


def reduce_mean(a: np.ndarray) -> np.ndarray:
    """(2r, W[, C]) → (r, ceil(W/2)[, C]) by the mean of each 2x2 block (float32)."""
    a = _pad_even_cols(a)
    a = a.astype(np.float32, copy=False)
    return ((a[0::2, 0::2] + a[0::2, 1::2]) + (a[1::2, 0::2] + a[1::2, 1::2])) * np.float32(0.25)


def reduce_mode(a: np.ndarray) -> np.ndarray:
    """(2r, W) → (r, ceil(W/2)) by the most frequent value of each 2x2 block; ties go to the
    first of top-left, top-right, bottom-left, bottom-right. The Numba kernel
    ``kernels.mode_2x2`` (its NumPy twin is the former implementation here): the vectorised
    form cost more than all other host stages of an 8192² labels run together."""
    from .kernels import mode_2x2

    return mode_2x2(a)


class Cascade:
    """Feed level-0 row bands of one plane; ``sink(level, rows)`` receives the rows of levels
    1..n_levels-1 in order. Call ``end_plane()`` after the plane's last row."""

    def __init__(self, height: int, levels: int, reduce: Callable[[np.ndarray], np.ndarray],
                 sink: Callable[[int, np.ndarray], None]):
        self.height = height
        self.levels = levels
        self.reduce = reduce
        self.sink = sink
        self.carry: list[np.ndarray | None] = [None] * levels
        self.rows = [0] * levels  # rows received per level in this plane

    def push(self, band: np.ndarray, level: int = 0) -> None:
        if level + 1 >= self.levels or band.shape[0] == 0:
            self.rows[level] += band.shape[0]
            return
        self.rows[level] += band.shape[0]
        if self.carry[level] is not None:
            band = np.concatenate([self.carry[level], band])
            self.carry[level] = None
        h = level_shape(self.height, 1, level)[0]
        if self.rows[level] == h and band.shape[0] % 2:  # plane end: repeat the last row
            band = np.concatenate([band, band[-1:]])
        if band.shape[0] % 2:
            self.carry[level] = band[-1:].copy()
            band = band[:-1]
        if band.shape[0]:
            out = self.reduce(band)
            self.sink(level + 1, out)
            self.push(out, level + 1)

    def end_plane(self) -> None:
        for level in range(self.levels):
            want = level_shape(self.height, 1, level)[0]
            if self.rows[level] != want or self.carry[level] is not None:
                raise RuntimeError(f"pyramid level {level}: {self.rows[level]} of {want} rows")
        self.rows = [0] * self.levels
