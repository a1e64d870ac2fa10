"""The Merger (after MONAI): stitched tile outputs are collected into row bands, and each band
is handed on as soon as every tile that writes to it has been added.

A backend's output for a batch is either probabilities (B, K, h, w) float -- argmaxed here for
``output="labels"`` -- or, from a backend that computed the argmax itself, the class map
(B, h, w) integer, which is pasted as is. Both give the same band. With ``workers`` each band
is stitched as row ranges on several threads; every range sees the tiles in order, so the
result does not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np

from .metadata import label_dtype
from .tiling import TilePlan
from .workers import Workers, split


class BandMerger:
    def __init__(self, plan: TilePlan, n_classes: int, output: str = "labels",
                 first_row: int = 0):
        from .kernels import stitch_classes, stitch_labels, stitch_probabilities

        self.plan = plan
        self.k = n_classes
        self.output = output
        self.stitch = stitch_labels if output == "labels" else stitch_probabilities
        self.paste = stitch_classes
        self.label_dtype = label_dtype(n_classes)
        self.bands: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.next_row = first_row  # bands are handed on from this tile row

    def _band(self, row: int) -> np.ndarray:
        if row not in self.bands:
            y0, y1 = self.plan.band(row)
            shape = (y1 - y0, self.plan.image_w)
            if self.output == "labels":
                self.bands[row] = np.empty(shape, self.label_dtype)
            else:
                self.bands[row] = np.empty(shape + (self.k,), np.float32)
            self.filled[row] = 0
        return self.bands[row]

    def add(self, out: np.ndarray, tile_ids: np.ndarray, workers: Workers | None = None) -> None:
        """Stitch the outputs of tiles ``tile_ids`` (row-major indices into the plan):
        probabilities (B, K, h, w) or, for ``output="labels"``, class maps (B, h, w)."""
        classes = out.ndim == 3
        if classes and self.output != "labels":
            raise ValueError(f"class maps cannot give {self.output} output; the backend must "
                             f"return probabilities")
        workers = workers or Workers(1)
        for row, where, columns in self.plan.by_row(tile_ids):
            part = out[where]  # a view when the row's tiles are consecutive in the batch
            ys, xs = self.plan.out_origins(row)
            ys, xs = ys[columns], xs[columns]
            band = self._band(row)
            row0 = row * self.plan.out_h

            def stitch(span, part=part, ys=ys, xs=xs, band=band, row0=row0):
                a, b = span
                if classes:
                    self.paste(part, ys, xs, band[a:b], row0 + a, self.k)
                else:
                    self.stitch(part, ys, xs, band[a:b], row0 + a)

            workers.run(stitch, split(band.shape[0], workers.threads))
            self.filled[row] += len(columns)

    def pop_complete(self):
        """Yield finished bands in image order."""
        while self.filled.get(self.next_row) == self.plan.cols:  # None: nothing added yet
            del self.filled[self.next_row]
            yield self.bands.pop(self.next_row)
            self.next_row += 1

    def finalize(self, last_row: int | None = None) -> None:
        last = self.plan.rows if last_row is None else last_row
        if self.next_row != last:
            raise RuntimeError(f"merger finished at tile row {self.next_row}, not {last}")
