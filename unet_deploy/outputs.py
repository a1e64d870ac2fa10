"""Which writer an output path gets: OME-Zarr, pyramidal OME-TIFF or plain tiled BigTIFF.

- ``*.zarr`` (e.g. ``OUT.ome.zarr``): ``zarr_io.ZarrWriter``, NGFF 0.4 multiscales;
- ``*.ome.tif``/``*.ome.tiff``, or any TIFF output whose long side exceeds 2048 px:
  ``ome_tiff.OmeTiffWriter``, SubIFD pyramid + OME-XML;
- any other TIFF: ``io.TiffBandWriter`` (one tiled level, resolution tags).

Every writer takes the same bands and writes atomically; all carry the source's physical pixel
size (``physical``) and lead axes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import OutputError
from .ome_tiff import OME_SUFFIXES, ome_axes
from .physical import UNKNOWN


def output_layout(path: str | os.PathLike, height: int, width: int) -> str:
    """"zarr" | "ome-tiff" | "tiff" for an output at ``path`` of ``height`` x ``width``."""
    from .ome_tiff import wants_ome_tiff
    from .zarr_io import ZARR_SUFFIXES

    if Path(path).name.lower().rstrip("/").endswith(ZARR_SUFFIXES):
        return "zarr"
    return "ome-tiff" if wants_ome_tiff(path, height, width) else "tiff"


def open_writer(path: str | os.PathLike, src, samples: int, dtype, *, output: str,
                class_names: list[str] | None = None, overwrite: bool = False,
                **tiff_options):
    """The writer (a context manager with ``write_band``) for ``src``'s planes at ``path``.
    ``src``: anything with height, width, lead_shape and optionally lead_axes, resolution,
    physical (``io.ImageSource``, ``zarr_io.ZarrSource``, ``readers.ArraySource``).
    ``tiff_options`` (e.g. compression, threads) go to the TIFF writers."""
    layout = output_layout(path, src.height, src.width)
    physical = getattr(src, "physical", UNKNOWN)
    lead_axes = getattr(src, "lead_axes", "")
    common = dict(kind=output, lead_axes=lead_axes, physical=physical,
                  class_names=class_names, overwrite=overwrite, name=Path(path).name)
    if layout == "zarr":
        from .zarr_io import ZarrWriter

        return ZarrWriter(path, src.lead_shape, src.height, src.width, samples, dtype, **common)
    if layout == "ome-tiff" and not Path(path).name.lower().endswith(OME_SUFFIXES):
        try:  # the default pyramid for big TIFFs: fall back to one level where OME cannot
            n = len(src.lead_shape)
            ome_axes((lead_axes or "Z" * n)[-n:] if n else "", samples > 1)
        except OutputError:
            layout = "tiff"
    if layout == "ome-tiff":
        from .ome_tiff import OmeTiffWriter

        return OmeTiffWriter(path, src.lead_shape, src.height, src.width, samples, dtype,
                             resolution=getattr(src, "resolution", None), **common,
                             **tiff_options)
    from .io import TiffBandWriter

    resolution = dict(getattr(src, "resolution", None) or {})
    if physical.known:  # resolution tags in pixels per cm, whatever unit the input used
        resolution = {k: v for k, v in resolution.items()
                      if k not in ("xresolution", "yresolution", "resolutionunit")}
        resolution.update(physical.tiff_resolution())
    return TiffBandWriter(path, src.lead_shape, src.height, src.width, samples,
                          np.dtype(dtype), resolution=resolution, overwrite=overwrite,
                          **tiff_options)
