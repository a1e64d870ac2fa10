"""Size arithmetic of the U-Net (paper section 2), shared by the model, the exporter and the tiler.

Valid 3x3 convolutions remove 2 pixels each, two per level; every 2x2 max-pool needs an even
size; every 2x2 up-convolution doubles the size. No torch here: the deployment path needs it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    depth: int = 4  # number of 2x2 max-pool steps
    padding: str = "valid"  # "valid" (the paper) or "same"

    def __post_init__(self):
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")

    @property
    def conv_loss(self) -> int:
        return 4 if self.padding == "valid" else 0

    def output_size(self, n: int) -> int | None:
        """Output side for input side ``n``, or None when ``n`` is not a legal input size."""
        s = n
        for _ in range(self.depth):
            s -= self.conv_loss
            if s <= 0 or s % 2:
                return None
            s //= 2
        s -= self.conv_loss
        if s <= 0:
            return None
        for _ in range(self.depth):
            s = 2 * s - self.conv_loss
            if s <= 0:
                return None
        return s

    def is_legal(self, n: int) -> bool:
        return self.output_size(n) is not None

    def halo(self, n: int) -> int:
        out = self.output_size(n)
        if out is None:
            raise ValueError(f"{n} is not a legal input size for {self}")
        return (n - out) // 2

    def legal_sizes(self, lo: int = 1, hi: int = 4096) -> list[int]:
        return [n for n in range(lo, hi + 1) if self.is_legal(n)]

    def input_for_output(self, out: int) -> int:
        """Smallest legal input side whose output side is at least ``out``."""
        n = 1
        while True:
            o = self.output_size(n)
            if o is not None and o >= out:
                return n
            n += 1

    def whole_image_padding(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """np.pad widths that grow an h x w image to the smallest legal input whose output
        covers it, with the output aligned to the image's top-left pixel."""
        ny, nx = self.input_for_output(h), self.input_for_output(w)
        hy, hx = self.halo(ny), self.halo(nx)
        return (hy, ny - h - hy), (hx, nx - w - hx)

    def nearest_legal(self, n: int) -> int:
        """Largest legal input side <= n (or the smallest legal side if none is)."""
        for m in range(n, 0, -1):
            if self.is_legal(m):
                return m
        return self.input_for_output(1)
