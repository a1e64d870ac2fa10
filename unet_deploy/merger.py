"""The Merger (after MONAI): stitched tile outputs are collected into row bands, and each band
is handed on as soon as every tile that writes to it has been added."""

from __future__ import annotations

import numpy as np

from .tiling import TilePlan


class BandMerger:
    def __init__(self, plan: TilePlan, n_classes: int, output: str = "labels"):
        from .kernels import stitch_labels, stitch_probabilities

        self.plan = plan
        self.k = n_classes
        self.output = output
        self.stitch = stitch_labels if output == "labels" else stitch_probabilities
        self.label_dtype = np.uint8 if n_classes <= 256 else np.uint16
        self.bands: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.next_row = 0

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

    def add(self, probs: np.ndarray, tile_ids: np.ndarray) -> None:
        """Stitch the outputs of tiles ``tile_ids`` (row-major indices into the plan)."""
        rows = tile_ids // self.plan.cols
        for row in np.unique(rows):
            sel = np.flatnonzero(rows == row)
            ys, xs = self.plan.out_origins(int(row))
            cols = tile_ids[sel] % self.plan.cols
            band = self._band(int(row))
            self.stitch(probs[sel], ys[cols], xs[cols], band, int(row) * self.plan.out_h)
            self.filled[int(row)] += len(sel)

    def pop_complete(self):
        """Yield finished bands in image order."""
        while self.filled.get(self.next_row, 0) == self.plan.cols:
            del self.filled[self.next_row]
            yield self.bands.pop(self.next_row)
            self.next_row += 1

    def finalize(self) -> None:
        if self.next_row != self.plan.rows:
            raise RuntimeError(f"merger finished {self.next_row} of {self.plan.rows} tile rows")
