"""The host thread pool: runs one pipeline stage's Numba kernels (gather, stitch) on several
threads at once. The kernels are compiled ``nogil``, so the threads really run in parallel; the
work is cut into pieces whose outputs do not overlap (tiles for gather, row ranges of a band for
stitch), so the result is the same, bit for bit, for any number of threads.

``Workers(1)`` (or ``None`` where a function takes one) runs everything inline in the calling
thread, which is the pipeline without this pool.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence


def host_threads(threads: int = 0) -> int:
    """``threads`` if positive, else every core this process may run on (its CPU affinity,
    which is what a container or ``taskset`` grants, not the machine's core count)."""
    if threads > 0:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``parts`` contiguous, non-empty ranges of near-equal size."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


class Workers:
    """``threads`` kernel threads (0 = all cores). ``run(fn, items)`` calls ``fn(item)`` for
    every item, in parallel, and returns when all are done; the first exception is re-raised.
    The pool's threads start lazily, so an unused pool costs nothing."""

    def __init__(self, threads: int = 1):
        self.threads = host_threads(threads)
        self._pool = (ThreadPoolExecutor(self.threads, thread_name_prefix="unet-host")
                      if self.threads > 1 else None)

    def run(self, fn: Callable, items: Sequence) -> None:
        if self._pool is None or len(items) < 2:
            for item in items:
                fn(item)
            return
        futures = [self._pool.submit(fn, item) for item in items]
        for f in futures:  # wait for all before raising: no job may still write into a buffer
            f.exception()
        for f in futures:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
