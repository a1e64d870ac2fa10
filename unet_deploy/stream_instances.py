"""Instance labels band by band, with bounded memory and exactly the whole-plane result.

``InstanceStream`` takes the class map of a plane as row bands (top to bottom, any heights) and
gives back uint32 instance bands that equal ``postprocess.to_instances`` on the whole plane up
to a renumbering of the ids; ids are unique over the plane and sequential (1..N in the order
objects are finished).

How (block-wise components, each object owned once)
---------------------------------------------------
Every object lies inside one connected foreground region (8-connected for the three-class
scheme, 4-connected for binary unless 8 is asked for), so regions are the unit of work. The
stream keeps the rows not yet emitted ("pending") plus ``max_object`` rows of context above
them. After each band it
labels the unfinished foreground of the pending rows; a region that does not touch the newest
row is complete. Complete regions are finished in small windows (grouped by column strips):

- binary: the region is the object (size filter, new id);
- three-class: the whole-plane steps (seeds, nearest seed, geodesic growth, seedless regions)
  run on a window around the region. Everything but the nearest-seed choice is local to the
  region; that choice (scipy's EDT: nearest in Euclidean distance, ties to the smallest
  column, then row) is a function of the seed pixels within that distance only.

**Exactness rule.** A region is finished only when, for each of its pixels, the nearest seed
found in the window is strictly closer than anything outside the window (the distance to every
window edge that is not the image edge). Then the window holds every seed the whole plane
could choose, so the pixel gets the same object; this is checked for every pixel at run time,
not assumed. A window that is too small grows (sideways at once, downwards by waiting for the
next band). It cannot grow upwards past the ``max_object`` rows of context kept, and pending
rows may not exceed ``2 * max_object`` plus one band: any region whose bounding-box diagonal is
at most ``max_object`` pixels is always handled (its nearest-seed distances are shorter than
that diagonal), larger ones whenever the check passes; otherwise ``ObjectTooLargeError`` (exit
code 3) names the rows and the ``--max-object`` value to rerun with. Nothing is approximated.

Memory: ``(3 * max_object + band) * width`` bytes of classes at most, plus 9 bytes per pending
pixel and the windows (about 40 bytes per window pixel; windows hug the regions).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from scipy import ndimage

from .errors import ObjectTooLargeError
from .instances import CROSS, SQUARE, three_class_objects

DEFAULT_MAX_OBJECT = 512
STRIP = 1024  # regions are grouped into windows by the column strip of their left edge
MARGIN = 16  # first guess of the context a window needs around its regions


class InstanceStream:
    """Streaming ``to_instances`` for one plane of ``height`` x ``width``.

    ``scheme``: "three_class" (classes 0 background, 1 interior, 2 border) or anything else
    (binary: foreground is class ``n_classes - 1``, 4-connected, or 8-connected with
    ``connectivity=2``). ``push(band)`` takes the next
    class-map rows and yields finished instance rows (possibly none); after the last row every
    row has been yielded. ``name`` prefixes error messages (the input file)."""

    def __init__(self, height: int, width: int, scheme: str, n_classes: int, min_size: int,
                 max_object: int = DEFAULT_MAX_OBJECT, name: str = "", connectivity: int = 1):
        if max_object < 1:
            raise ValueError(f"max_object must be >= 1, got {max_object}")
        self.height, self.width = int(height), int(width)
        self.three = scheme == "three_class"
        self.structure = SQUARE if self.three or connectivity == 2 else CROSS
        self.fg_class = n_classes - 1
        self.min_size = int(min_size)
        self.max_object = int(max_object)
        self.name = f"{name}: " if name else ""
        self.lo = 0  # classes held for rows [lo, hi)
        self.hi = 0
        self.emit0 = 0  # rows [0, emit0) were yielded; ids/done hold rows [emit0, hi)
        self.classes = np.empty((0, self.width), np.uint8)
        self.ids = np.empty((0, self.width), np.uint32)
        self.done = np.empty((0, self.width), bool)
        self.next_id = 1
        self.band_max = 0
        self.peak_rows = 0  # most rows held at once (classes), for tests and benchmarks

    @property
    def n_objects(self) -> int:
        return self.next_id - 1

    # -- feeding ---------------------------------------------------------------------
    def push(self, band: np.ndarray) -> Iterator[np.ndarray]:
        band = np.asarray(band)
        if band.ndim != 2 or band.shape[1] != self.width:
            raise ValueError(f"class band of shape {band.shape} does not fit width {self.width}")
        rows = band.shape[0]
        if self.hi + rows > self.height:
            raise ValueError(f"{self.hi + rows} rows pushed into a plane of {self.height}")
        if rows == 0:
            return
        self.band_max = max(self.band_max, rows)
        self.classes = np.concatenate([self.classes, band.astype(np.uint8, copy=False)])
        self.ids = np.concatenate([self.ids, np.zeros((rows, self.width), np.uint32)])
        self.done = np.concatenate([self.done, np.zeros((rows, self.width), bool)])
        self.hi += rows
        self.peak_rows = max(self.peak_rows, self.hi - self.lo)
        self._finish_complete()
        yield from self._emit()
        pending = self.hi - self.emit0
        if self.hi < self.height and pending > 2 * self.max_object + self.band_max:
            raise ObjectTooLargeError(
                f"{self.name}a foreground region (with the context its nearest seeds need) spans "
                f"more than {pending - self.band_max} rows from row {self.emit0}, more than "
                f"--max-object {self.max_object} allows for streaming instances; rerun with "
                f"--max-object {2 * self.max_object} (more memory) or use --output labels")

    def finish(self) -> None:
        """Check that the whole plane was pushed and yielded."""
        if self.hi != self.height or self.emit0 != self.height:
            raise RuntimeError(f"instance stream ended at row {self.emit0} of {self.height} "
                               f"({self.hi} pushed)")

    # -- internals -------------------------------------------------------------------
    def _foreground(self, classes: np.ndarray) -> np.ndarray:
        return (classes == 1) | (classes == 2) if self.three else classes == self.fg_class

    def _finish_complete(self) -> None:
        pend = self.classes[self.emit0 - self.lo:]
        todo = self._foreground(pend) & ~self.done
        comps, n = ndimage.label(todo, structure=self.structure)
        if n == 0:
            return
        complete = np.ones(n + 1, bool)
        complete[0] = False
        if self.hi < self.height:
            complete[np.unique(comps[-1])] = False
        if not complete.any():
            return
        if not self.three:
            self._finish_binary(comps, complete)
            return
        boxes = ndimage.find_objects(comps)
        strips: dict[int, list[int]] = {}
        for lab in np.flatnonzero(complete):
            strips.setdefault(boxes[lab - 1][1].start // STRIP, []).append(int(lab))
        for labels in strips.values():
            queue = [(labels, MARGIN)]
            while queue:
                group, margin = queue.pop()
                queue += self._finish_window(comps, boxes, group, margin)

    def _finish_binary(self, comps: np.ndarray, complete: np.ndarray) -> None:
        sizes = np.bincount(comps.ravel(), minlength=complete.size)
        keep = complete & (sizes >= self.min_size)
        lut = np.zeros(complete.size, np.uint32)
        lut[keep] = self._new_ids(int(keep.sum()))
        sel = complete[comps]
        self.ids[sel] = lut[comps[sel]]
        self.done |= sel

    def _new_ids(self, n: int) -> np.ndarray:
        if self.next_id + n > np.iinfo(np.uint32).max:
            raise ObjectTooLargeError(f"{self.name}more than {np.iinfo(np.uint32).max} objects; "
                                      f"the uint32 instance output cannot hold them")
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.uint32)
        self.next_id += n
        return ids

    def _finish_window(self, comps: np.ndarray, boxes, group: list[int],
                       margin: int) -> list[tuple[list[int], int]]:
        """Finish the regions ``group`` (labels of ``comps``, the pending rows) in one window
        grown by ``margin``; return the regions that need a bigger window, with its margin."""
        e0 = self.emit0
        y0 = min(boxes[g - 1][0].start for g in group) + e0
        y1 = max(boxes[g - 1][0].stop for g in group) + e0
        x0 = min(boxes[g - 1][1].start for g in group)
        x1 = max(boxes[g - 1][1].stop for g in group)
        wy0, wy1 = max(self.lo, y0 - margin), min(self.hi, y1 + margin)
        wx0, wx1 = max(0, x0 - margin), min(self.width, x1 + margin)
        res = three_class_objects(self.classes[wy0 - self.lo : wy1 - self.lo, wx0:wx1])
        in_group = np.zeros(len(boxes) + 1, bool)
        in_group[group] = True
        # the group's pixels, in window coordinates (the group lies in the pending rows)
        sub = comps[y0 - e0 : y1 - e0, x0:x1]
        mask = np.zeros(res.objects.shape, bool)
        mask[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = in_group[sub]
        py, px = np.nonzero(mask)
        failed = np.zeros(py.size, bool)  # needs a bigger window
        waiting = np.zeros(py.size, bool)  # needs rows below that have not arrived
        need = 0
        if res.nearest is not None:
            # only regions with a seed use the nearest-seed choice
            seeded_comp = np.zeros(int(res.comps.max()) + 1, bool)
            window = self.classes[wy0 - self.lo : wy1 - self.lo, wx0:wx1]
            seeded_comp[res.comps[window == 1]] = True
            seeded = seeded_comp[res.comps[py, px]]
            iy, ix = res.nearest[0][py, px], res.nearest[1][py, px]
            d2 = (iy.astype(np.int64) - py) ** 2 + (ix.astype(np.int64) - px) ** 2
            ay, ax = py + wy0, px + wx0  # absolute coordinates
            # distance to the nearest pixel beyond each window edge that is not the image edge
            gaps = [ay - wy0 + 1 if wy0 > 0 else None, wy1 - ay if wy1 < self.height else None,
                    ax - wx0 + 1 if wx0 > 0 else None, wx1 - ax if wx1 < self.width else None]
            for side, gap in enumerate(gaps):
                if gap is None:
                    continue
                short = seeded & (d2 >= gap.astype(np.int64) ** 2)
                if side == 0 and wy0 == self.lo and short.any():
                    bad = np.flatnonzero(short)
                    dist = int(math.isqrt(int(d2[bad].max()))) + 1
                    raise ObjectTooLargeError(
                        f"{self.name}an object at rows {int(ay[bad].min())}..{int(ay[bad].max())}"
                        f" needs nearest-seed context {dist} px above it, more than the "
                        f"{e0 - self.lo} rows that --max-object {self.max_object} keeps for "
                        f"streaming instances; rerun with --max-object "
                        f"{max(2 * self.max_object, 2 * dist)} or use --output labels")
                if side == 1 and wy1 == self.hi:
                    waiting |= short  # growing the window cannot help until more rows come
                else:
                    failed |= short
            if failed.any():
                need = int(math.isqrt(int(d2[failed].max()))) + 2
        comp_of = comps[py + wy0 - e0, px + wx0]
        blocked = np.zeros(len(boxes) + 1, bool)
        blocked[comp_of[failed | waiting]] = True
        ok = ~blocked[comp_of]
        if ok.any():
            oy, ox = py[ok], px[ok]
            keys, inv, counts = np.unique(res.objects[oy, ox], return_inverse=True,
                                          return_counts=True)
            keep = counts >= self.min_size
            lut = np.zeros(keys.size, np.uint32)
            lut[keep] = self._new_ids(int(keep.sum()))
            self.ids[oy + wy0 - e0, ox + wx0] = lut[inv.ravel()]
            self.done[oy + wy0 - e0, ox + wx0] = True
        later = np.zeros(len(boxes) + 1, bool)
        later[comp_of[waiting]] = True  # finished by a later push, with more rows below
        retry = [int(g) for g in np.flatnonzero(blocked & ~later)]
        if not retry:
            return []
        return [(retry, max(need, margin + 1))]

    def _emit(self) -> Iterator[np.ndarray]:
        pend = self.classes[self.emit0 - self.lo:]
        undone = self._foreground(pend) & ~self.done
        rows = np.flatnonzero(undone.any(axis=1))
        k = int(rows[0]) if rows.size else self.hi - self.emit0
        if k == 0:
            return
        out = self.ids[:k]
        self.ids, self.done = self.ids[k:].copy(), self.done[k:].copy()
        self.emit0 += k
        new_lo = max(0, self.emit0 - self.max_object)
        if new_lo > self.lo:
            self.classes = self.classes[new_lo - self.lo:].copy()
            self.lo = new_lo
        yield out
