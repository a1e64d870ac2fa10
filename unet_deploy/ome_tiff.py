"""Pyramidal OME-TIFF output, streamed: level 0 through ``io.TiffBandWriter``, reduced levels as
SubIFDs of each page, OME-XML with the physical pixel size and, for probabilities, one plane
(page) per class named after it.

Level 0 goes to the writer as bands arrive. What a TIFF must store later -- the reduced levels
(which follow all of level 0 in the file) and, for probabilities, the class planes after the
first (pages are written one after another) -- is kept in an unlinked temporary file in the
output folder, written and read back with positional I/O, so memory stays flat (the page cache
holds it, not the process). Levels: 2x2 mode for labels and instances, 2x2 mean for
probabilities (``pyramid``), halving until the long side is <= 1024 px. libtiff reads every tile
(``tiffinfo``, ``tiffcp``); Fiji/Bio-Formats and QuPath read the OME-XML and the SubIFD pyramid.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import OutputError
from .io import TiffBandWriter
from .physical import UNKNOWN, PhysicalSize
from .pyramid import Cascade, level_shape, n_levels, reduce_mean, reduce_mode

OME_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.btf")
PYRAMID_ABOVE = 2048  # a TIFF output whose long side exceeds this is a pyramidal OME-TIFF


def wants_ome_tiff(path: str | os.PathLike, height: int, width: int) -> bool:
    """``*.ome.tif`` always; any other TIFF output when its long side exceeds 2048 px."""
    name = Path(path).name.lower()
    return name.endswith(OME_SUFFIXES) or max(height, width) > PYRAMID_ABOVE


def ome_axes(lead_axes: str, class_planes: bool) -> str:
    """OME dimension letters for the lead axes (+ C for class planes) + YX."""
    out = ""
    for a in lead_axes.upper():
        a = a if a in "TZC" else "Z"
        if a in out:
            raise OutputError(f"the input's axes {lead_axes!r} + YX cannot be written as "
                              f"OME-TIFF dimensions; write a plain .tif output")
        out += a
    if class_planes:
        if "C" in out:
            raise OutputError("probabilities of an image with a channel axis cannot be written "
                              "as OME-TIFF class planes; write a plain .tif output")
        out += "C"
    return out + "YX"


class _Store:
    """Raw (planes, rows, cols) arrays in an unlinked temporary file; pwrite/pread rows."""

    def __init__(self, folder: Path, shapes: list[tuple[int, int, int]], dtype: np.dtype):
        self.fh = tempfile.TemporaryFile(dir=folder, prefix=".unet-deploy-levels-")
        self.dtype = dtype
        self.shapes, self.offsets, off = shapes, [], 0
        for n, h, w in shapes:
            self.offsets.append(off)
            off += n * h * w * dtype.itemsize

    def _at(self, k: int, plane: int, y: int) -> int:
        _, h, w = self.shapes[k]
        return self.offsets[k] + ((plane * h) + y) * w * self.dtype.itemsize

    def write(self, k: int, plane: int, y: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        pos, off = 0, self._at(k, plane, y)
        while pos < len(data):
            pos += os.pwrite(self.fh.fileno(), data[pos:], off + pos)

    def read(self, k: int, plane: int, y0: int, y1: int) -> np.ndarray:
        _, _, w = self.shapes[k]
        n = (y1 - y0) * w * self.dtype.itemsize
        data = os.pread(self.fh.fileno(), n, self._at(k, plane, y0))
        if len(data) != n:
            raise OSError(f"temporary pyramid file short read ({len(data)} of {n} bytes)")
        return np.frombuffer(data, self.dtype).reshape(y1 - y0, w)

    def close(self) -> None:
        self.fh.close()


class OmeTiffWriter:
    """Write a pyramidal OME-TIFF band by band, atomically (``TiffBandWriter`` renames it into
    place only when complete). Same feeding contract as ``TiffBandWriter``: (rows, W) or
    (rows, W, samples) bands, plane after plane; ``samples > 1`` (probabilities) are written
    as class planes named ``class_names``."""

    def __init__(self, path: str | os.PathLike, lead_shape: tuple[int, ...], height: int,
                 width: int, samples: int, dtype, *, kind: str = "labels", lead_axes: str = "",
                 physical: PhysicalSize = UNKNOWN, class_names: list[str] | None = None,
                 resolution: dict | None = None, overwrite: bool = False, tile: int = 256,
                 compression: str | None = "zlib", name: str = "", **tiff_options):
        self.path = Path(path)
        self.lead_shape = tuple(int(v) for v in lead_shape)
        self.height, self.width, self.samples = int(height), int(width), int(samples)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.kind, self.tile, self.compression = kind, int(tile), compression
        self.n_planes = int(math.prod(self.lead_shape))
        self.levels = n_levels(self.height, self.width)
        lead_axes = (lead_axes or "Z" * len(self.lead_shape))[-len(self.lead_shape):] \
            if self.lead_shape else ""
        self.axes = ome_axes(lead_axes, self.samples > 1)
        res = dict(resolution or {})
        if physical.known:
            res = {k: v for k, v in res.items() if k not in ("xresolution", "yresolution",
                                                             "resolutionunit")}
            res.update(physical.tiff_resolution())
        self.resolution = res
        meta: dict = {"axes": self.axes, **physical.ome()}
        if name:
            meta["Name"] = name
        if self.samples > 1:
            names = list(class_names or [])
            meta["Channel"] = {"Name": [names[i] if i < len(names) else f"class {i}"
                                        for i in range(self.samples)]}
        self.pages = self.n_planes * self.samples  # one page per plane and class
        pages_lead = self.lead_shape + ((self.samples,) if self.samples > 1 else ())
        self._main = TiffBandWriter(self.path, pages_lead, self.height, self.width, 1,
                                    self.dtype, resolution=res, tile=self.tile,
                                    compression=compression, overwrite=overwrite, ome=meta,
                                    subifds=self.levels - 1, after=self._write_levels,
                                    **tiff_options)
        self._store: _Store | None = None
        self._plane = 0
        self._row = 0
        reduce = reduce_mean if kind == "probabilities" else reduce_mode
        self._cascade = Cascade(self.height, self.levels, reduce, self._keep_level)
        self._level_rows = [0] * self.levels

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "OmeTiffWriter":
        self._main.__enter__()
        try:
            shapes = [(self.pages, self.height if self.samples > 1 else 0, self.width)]
            shapes += [(self.pages, *level_shape(self.height, self.width, k))
                       for k in range(1, self.levels)]
            folder = self.path.parent if str(self.path.parent) else Path(".")
            self._store = _Store(folder, shapes, self.dtype)
        except BaseException as exc:
            self._main.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise OutputError(f"{self.path}: cannot create a temporary file beside the "
                                  f"output ({exc.strerror}); choose a writable folder") from exc
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._main.__exit__(exc_type, exc, tb)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    @property
    def rows_written(self) -> int:
        return self._main.rows_written

    # -- feeding ---------------------------------------------------------------------
    def write_band(self, band: np.ndarray) -> None:
        band = np.asarray(band)
        if band.ndim == 2:
            band = band[:, :, None]
        if band.ndim != 3 or band.shape[1] != self.width or band.shape[2] != self.samples:
            raise ValueError(f"band shape {band.shape} does not match output width "
                             f"{self.width} and samples {self.samples}")
        rows = band.shape[0]
        if self._row + rows > self.height:
            raise ValueError(f"band of {rows} rows crosses the end of the plane")
        try:
            # everything for the store first: once the last tile row reaches the writer thread
            # it writes the reduced levels from the store at once
            for c in range(1, self.samples):
                self._store.write(0, self._plane * self.samples + c, self._row, band[..., c])
            self._cascade.push(band if self.samples > 1 else band[..., 0])
            self._main.write_band(band[..., 0])
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise OutputError(f"{self.path}: cannot write output ({what}); free space or "
                              f"choose another folder, nothing was saved") from exc
        self._row += rows
        if self._row == self.height:
            self._cascade.end_plane()
            self._level_rows = [0] * self.levels
            for c in range(1, self.samples):  # the other class planes of this plane, from disk
                page = self._plane * self.samples + c
                for y in range(0, self.height, self.tile):
                    self._main.write_band(self._store.read(0, page, y, min(y + self.tile,
                                                                           self.height)))
            self._plane += 1
            self._row = 0

    def _keep_level(self, level: int, rows: np.ndarray) -> None:
        y = self._level_rows[level]
        rows = rows if rows.ndim == 3 else rows[:, :, None]
        for c in range(self.samples):
            self._store.write(level, self._plane * self.samples + c, y, rows[..., c])
        self._level_rows[level] += rows.shape[0]

    # -- the reduced levels (writer thread, after level 0) ----------------------------
    def _tiles(self, level: int) -> Iterator[np.ndarray]:
        h, w = level_shape(self.height, self.width, level)
        t = self.tile
        for page in range(self.pages):
            for y in range(0, h, t):
                rows = self._store.read(level, page, y, min(y + t, h))
                for x in range(0, w, t):
                    yield rows[:, x : x + t]

    def _write_levels(self, tw) -> None:
        for level in range(1, self.levels):
            h, w = level_shape(self.height, self.width, level)
            kwargs = {}
            if "xresolution" in self.resolution:
                f = 2.0**level
                kwargs["resolution"] = (self.resolution["xresolution"] / f,
                                        self.resolution["yresolution"] / f)
                if self.resolution.get("resolutionunit") is not None:
                    kwargs["resolutionunit"] = int(self.resolution["resolutionunit"])
            tw.write(self._tiles(level), shape=(self.pages, h, w), dtype=self.dtype,
                     tile=(self.tile, self.tile), compression=self.compression,
                     photometric="minisblack", subfiletype=1, metadata=None, **kwargs)
