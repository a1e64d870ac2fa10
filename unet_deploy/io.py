"""Streaming TIFF input and output, memory bounded however big the image.

Input
-----
``open_image(path)`` opens a TIFF with tifffile and describes the chosen image series
(``ImageSource``) from metadata only. ``source.plane(i)`` returns a ``PlaneReader`` for one
2-D plane (H, W, C): ``.array`` is a zero-copy ``np.memmap`` when the plane is stored
contiguous and uncompressed, and ``.read_rows(y0, y1)`` reads and decodes only the strips or
tiles that intersect rows ``[y0, y1)`` (file bytes via the TiffFile's file handle, decoding
via ``TiffPage.decode``, tifffile's per-segment decoder), never the whole page.

``read_image(path)`` is the one whole-image read, for images that fit in memory by design
(training pairs, calibration images, evaluation sets): TIFF, PNG, JPEG or ``.npy``.

Output
------
``check_output`` refuses unusable output paths before any work is done, and
``TiffBandWriter`` writes a tiled, compressed BigTIFF band by band to a temporary file in the
destination folder, which is renamed into place only when every row was written.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import secrets
import threading
from struct import error as struct_error
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, InputNotFoundError, OutputError

__all__ = [
    "ImageSource",
    "PlaneReader",
    "TiffBandWriter",
    "check_output",
    "open_image",
    "read_image",
]

# Series whose name says they are not the main image (whole-slide formats).
_AUX_SERIES_NAMES = {"thumbnail", "label", "macro", "overview", "preview"}
_JPEG_COMPRESSIONS = {6, 7, 34892, 33007}
_PALETTE = 3


def _tifffile():
    import tifffile

    return tifffile


# --------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------


NAN_POLICIES = ("error", "zero")
# not TIFF: small by nature, decoded whole by read_image and served as one plane
WHOLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def open_image(
    path: str | os.PathLike,
    series: int | None = None,
    max_pixels: int | None = None,
    nan_policy: str = "error",
    level: int | None = None,
) -> "ImageSource":
    """Open ``path`` for streaming reads; use as a context manager (closes the file).

    Raises InputNotFoundError for a missing file and InputError for anything that cannot be
    read (not a TIFF, truncated, ambiguous series, unsupported dtype or codec, plane larger
    than ``max_pixels``). Only metadata is read here (plus one strip/tile to check the codec).

    ``nan_policy`` (float images): "error" (default) -- the pipeline counts NaN/Inf pixels
    before inference and refuses the plane; "zero" -- ``read_rows`` returns them as 0.

    ``level``: pyramid level of a whole-slide / pyramidal TIFF (SVS, NDPI, OME SubIFDs) or of
    an OME-Zarr; 0 (full resolution) by default. A ``*.zarr`` path (or a folder with Zarr
    metadata) is opened by ``zarr_io.open_zarr`` (the ``zarr`` extra) and behaves the same.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: input file not found; check the path")
    from .zarr_io import is_zarr_path

    if is_zarr_path(path):
        from .zarr_io import open_zarr

        return open_zarr(path, level=level, series=series, max_pixels=max_pixels,
                         nan_policy=nan_policy)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a TIFF file; pass an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read input file ({exc.strerror}); check permissions") from exc
    if size == 0:
        raise InputError(f"{path}: input file is empty (0 bytes); expected a TIFF image")
    if path.suffix.lower() in WHOLE_IMAGE_SUFFIXES:  # PNG/JPEG/.npy: decoded whole
        from .readers import ArraySource

        return ArraySource(read_image(path, first_plane=True), str(path), nan_policy, max_pixels)
    _check_ifd_chain(path, size)
    tifffile = _tifffile()
    try:
        tif = tifffile.TiffFile(path)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot read input file ({exc.strerror}); check permissions") from exc
    except Exception as exc:  # TiffFileError, struct/ValueError on garbage or truncated headers
        raise InputError(
            f"{path}: not a readable TIFF file ({_one_line(exc)}); convert it to TIFF or check it is not truncated"
        ) from exc
    try:
        return ImageSource(path, tif, series=series, max_pixels=max_pixels, file_size=size,
                           nan_policy=nan_policy, level=level)
    except InputError:
        tif.close()
        raise
    except Exception as exc:  # corrupt tag values tifffile passed through (fuzzing finds them)
        tif.close()
        raise InputError(
            f"{path}: corrupt or unsupported TIFF metadata ({_one_line(exc)}); re-export the image"
        ) from exc
    except BaseException:
        tif.close()
        raise


def _check_ifd_chain(path: Path, size: int, max_ifds: int = 10_000_000) -> None:
    """Walk the IFD chain from the raw bytes before tifffile parses it: every IFD must lie in
    the file, not overlap an earlier one, and the chain must end (no cycle). Corrupt chains
    are refused here (fuzzing found overlapping IFDs that send tifffile into minutes-long
    loops). Only the 2-byte tag counts and 4/8-byte next pointers are read (mmap)."""
    import bisect
    import mmap
    import struct

    if size < 8:
        return  # tifffile reports the short header
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            head = mm[:16]
            if head[:2] not in (b"II", b"MM"):
                return  # not a TIFF: tifffile's message
            bo = "<" if head[:2] == b"II" else ">"
            version = struct.unpack(bo + "H", head[2:4])[0]
            if version == 42:
                cnt_fmt, cnt_size, entry, ptr_fmt, ptr_size = "H", 2, 12, "I", 4
                offset = struct.unpack(bo + "I", head[4:8])[0]
                first = 8
            elif version == 43 and size >= 16:
                cnt_fmt, cnt_size, entry, ptr_fmt, ptr_size = "Q", 8, 20, "Q", 8
                offset = struct.unpack(bo + "Q", head[8:16])[0]
                first = 16
            else:
                return
            starts: list[int] = []  # sorted IFD starts, and their ends
            ends: list[int] = []
            while offset:
                if offset < first or offset + cnt_size > size:
                    raise InputError(
                        f"{path}: corrupt TIFF: IFD offset {offset} is outside the file ({size} bytes); re-export or copy it again"
                    )
                n = struct.unpack(bo + cnt_fmt, mm[offset : offset + cnt_size])[0]
                end = offset + cnt_size + n * entry + ptr_size
                if end > size:
                    raise InputError(
                        f"{path}: corrupt or truncated TIFF: IFD at {offset} with {n} tags runs past the end of the file; re-export or copy it again"
                    )
                i = bisect.bisect_left(starts, offset)
                if (i < len(starts) and starts[i] < end) or (i > 0 and ends[i - 1] > offset):
                    raise InputError(
                        f"{path}: corrupt TIFF: IFD chain loops or overlaps itself (IFD at {offset}); re-export the image"
                    )
                starts.insert(i, offset)
                ends.insert(i, end)
                if len(starts) > max_ifds:
                    raise InputError(f"{path}: more than {max_ifds} IFDs; split the file")
                offset = struct.unpack(bo + ptr_fmt, mm[end - ptr_size : end])[0]
    except (OSError, ValueError) as exc:  # mmap of special files etc.: let tifffile decide
        if isinstance(exc, InputError):
            raise
        return


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_image(path: str | os.PathLike, first_plane: bool = False) -> np.ndarray:
    """The whole image file at ``path`` as one array: TIFF via tifffile (all pages, so a stack
    stays a stack), PNG/JPEG via imagecodecs, ``.npy`` via ``np.load`` (no pickles).

    ``first_plane`` reduces a stack to its first plane: leading axes are dropped until the
    array is (H, W) or (H, W, C) with C in 1, 3, 4. Raises InputNotFoundError for a missing
    file and InputError for one that cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: image file not found; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path)
        elif suffix in (".png", ".jpg", ".jpeg"):
            import imagecodecs

            arr = imagecodecs.imread(str(path))
        else:
            arr = _tifffile().imread(str(path))
    except Exception as exc:  # tifffile/imagecodecs/numpy errors: corrupt, truncated, not an image
        raise InputError(f"{path}: cannot read image ({_one_line(exc)}); expected a TIFF, PNG, "
                         f"JPEG or .npy file, check it is not truncated") from exc
    if arr.size == 0:  # tifffile warns and returns an empty array for a broken first IFD
        raise InputError(f"{path}: cannot read image (no pixel data); check the file is not "
                         f"truncated or corrupt")
    while first_plane and (arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4))):
        arr = arr[0]
    return arr


def _series_plane_pixels(s) -> int:
    kf = s.keyframe
    return int(kf.imagelength) * int(kf.imagewidth)


def _choose_series(tif, series: int | None, path: Path) -> int:
    try:
        all_series = tif.series
    except Exception as exc:
        raise InputError(f"{path}: cannot parse TIFF image series ({_one_line(exc)}); check the file") from exc
    n = len(all_series)
    if n == 0:
        raise InputError(f"{path}: TIFF file contains no image; check the file")
    if series is not None:
        if not 0 <= series < n:
            raise InputError(f"{path}: series {series} requested but the file has {n} series (0..{n - 1}); pass a valid --series")
        return series
    if n == 1:
        return 0
    sizes = [_series_plane_pixels(s) for s in all_series]
    big = max(range(n), key=lambda i: sizes[i])
    if all(
        i == big or (all_series[i].name or "").lower() in _AUX_SERIES_NAMES or sizes[i] * 4 <= sizes[big]
        for i in range(n)
    ):
        return big
    desc = ", ".join(f"{i}: {s.axes} {tuple(s.shape)}" for i, s in enumerate(all_series))
    raise InputError(f"{path}: file holds {n} image series ({desc}); choose one with --series N")


class ImageSource:
    """One image series of an open TIFF file, described from metadata.

    Attributes: path, series_index, axes, dtype (native dtype returned by read_rows), height,
    width, channels, lead_shape, n_planes, resolution (dict), photometric (name),
    palette (bool), colormap ((3, N) array or None), compression (name).
    """

    def __init__(self, path: Path, tif, *, series: int | None, max_pixels: int | None, file_size: int,
                 nan_policy: str = "error", level: int | None = None):
        self.path = path
        self.nan_policy = nan_policy
        self._tif = tif
        self.series_index = _choose_series(tif, series, path)
        s = tif.series[self.series_index]
        base = s
        self.n_levels = len(getattr(s, "levels", None) or [s])
        self.level = 0 if level is None else int(level)
        if not 0 <= self.level < self.n_levels:
            raise InputError(f"{path}: level {self.level} requested but series "
                             f"{self.series_index} has {self.n_levels} level(s); pass --level "
                             f"0..{self.n_levels - 1}")
        if self.level:
            s = s.levels[self.level]
        self._series = s
        kf = s.keyframe
        self._kf = kf
        self.axes: str = s.axes
        self.height = int(kf.imagelength)
        self.width = int(kf.imagewidth)
        if self.height < 1 or self.width < 1 or int(kf.samplesperpixel) < 1:
            raise InputError(
                f"{path}: image declares an empty plane ({self.width}x{self.height}, "
                f"{int(kf.samplesperpixel)} samples); the file is corrupt, re-export it"
            )
        if max_pixels is not None and self.height * self.width > max_pixels:
            raise InputError(
                f"{path}: image plane is {self.width}x{self.height} = {self.height * self.width} pixels, "
                f"more than the limit of {max_pixels}; raise the pixel limit or crop the image"
            )
        if int(getattr(kf, "imagedepth", 1)) > 1:
            raise InputError(f"{path}: volumetric (ImageDepth > 1) TIFF pages are not supported; save the volume as one page per slice")
        if kf.dtype is None:
            raise InputError(
                f"{path}: unsupported sample type (SampleFormat {int(kf.sampleformat)}, "
                f"{kf.bitspersample}-bit); convert the image to 8/16/32-bit integer or float"
            )
        if np.dtype(kf.dtype).kind == "c":
            raise InputError(f"{path}: complex pixel type {np.dtype(kf.dtype)} cannot be segmented; convert to a real dtype")
        if np.dtype(kf.dtype).kind not in "biuf":
            raise InputError(f"{path}: unsupported pixel type {np.dtype(kf.dtype)}; convert to integer or float")

        # lead dims: everything before the page's own dims (Y, X and samples)
        self._samples = int(kf.samplesperpixel)
        page_shape = tuple(int(v) for v in kf.shape)
        series_shape = tuple(int(v) for v in s.shape)
        if len(series_shape) >= len(page_shape) and series_shape[len(series_shape) - len(page_shape) :] == page_shape:
            lead = series_shape[: len(series_shape) - len(page_shape)]
        else:
            lead = tuple(n for n, a in zip(series_shape, s.axes) if a not in "YXS")
            if "Y" not in s.axes or "X" not in s.axes:
                raise InputError(f"{path}: series axes {s.axes!r} lack Y/X; cannot interpret this layout")
            if self._samples > 1 and "S" not in s.axes:
                raise InputError(
                    f"{path}: series shape {series_shape} (axes {s.axes}) does not match its pages {page_shape}; unsupported layout"
                )
        self.lead_shape: tuple[int, ...] = tuple(lead)
        self.n_planes = int(math.prod(self.lead_shape))

        self.photometric = _enum_name(kf.photometric)
        self.compression = _enum_name(kf.compression)
        self.palette = int(kf.photometric) == _PALETTE and self._samples == 1
        self.colormap = None
        if self.palette:
            cmap = kf.colormap
            if cmap is None:
                raise InputError(f"{path}: palette image without a colormap; save it as grayscale or RGB")
            self.colormap = np.ascontiguousarray(np.asarray(cmap).T)  # (N, 3)
        if self.palette:
            self.channels = 3
            self.dtype = np.dtype(self.colormap.dtype).newbyteorder("=")
        else:
            self.channels = self._samples
            dt = np.dtype(kf.dtype)
            self.dtype = np.dtype(np.uint8) if dt.kind == "b" else dt.newbyteorder("=")
            if self.dtype == np.float16:  # the Numba kernels have no float16: widen exactly
                self.dtype = np.dtype(np.float32)
        self._file_dtype = None if np.dtype(kf.dtype).kind == "b" else np.dtype(kf.dtype).newbyteorder(tif.byteorder)

        # map planes to pages
        pages = list(s.pages)
        self._pages = pages
        self._series_mm_offset = None
        if len(pages) != self.n_planes or any(p is None for p in pages):
            if s.dataoffset is not None and self._file_dtype is not None:
                self._series_mm_offset = int(s.dataoffset)
                end = self._series_mm_offset + self.n_planes * self._plane_nbytes()
                if end > file_size:
                    raise InputError(f"{path}: file is truncated ({file_size} bytes, image data needs {end}); re-export or copy it again")
            else:
                raise InputError(
                    f"{path}: series has {len(pages)} pages for {self.n_planes} planes (axes {s.axes}); unsupported layout"
                )
        else:
            for p in pages:
                offs, cnts = p.dataoffsets, p.databytecounts
                if len(offs) == 0:
                    raise InputError(f"{path}: page without image data; check the file")
                end = max(o + c for o, c in zip(offs, cnts))
                if end > file_size:
                    raise InputError(f"{path}: file is truncated ({file_size} bytes, image data needs {end}); re-export or copy it again")
            self._check_codec()

        self.resolution = self._read_resolution()
        self.lead_axes = "".join(a for a in self.axes if a not in "YXS")[-len(self.lead_shape):] \
            if self.lead_shape else ""
        self.physical = self._read_physical(base)
        if self.physical.known and (self.level or "xresolution" not in self.resolution
                                    or self.physical.source in ("OME-XML", "Aperio MPP")):
            # tags missing, of level 0, or overruled (an SVS's MPP beats its 1 px/inch tags)
            self.resolution = {k: v for k, v in self.resolution.items()
                               if k not in ("xresolution", "yresolution", "resolutionunit")}
            self.resolution.update(self.physical.tiff_resolution())

    # -- metadata helpers ------------------------------------------------------------
    def _plane_nbytes(self) -> int:
        return self.height * self.width * self._samples * self._file_dtype.itemsize

    def _check_codec(self) -> None:
        kf = self._kf
        tifffile = _tifffile()
        if int(kf.compression) != 1:
            try:
                tifffile.TIFF.DECOMPRESSORS[int(kf.compression)]
            except (KeyError, ImportError, AttributeError) as exc:
                raise InputError(
                    f"{self.path}: compression {self.compression} needs a codec that is not available "
                    f"({_one_line(exc)}); install/upgrade the 'imagecodecs' package"
                ) from exc
        # decode the first segment so codec/predictor/subsampling problems surface now
        if self._pages:
            reader = self.plane(0)
            if reader.array is None:
                reader._decode_segment(0)

    def _read_resolution(self) -> dict[str, Any]:
        kf = self._kf
        res: dict[str, Any] = {}
        # Copied to the output, so only well-formed values: a corrupt tag must not make the
        # TIFF writer fail after the whole image was segmented.
        try:
            if 282 in kf.tags and 283 in kf.tags:
                x, y = (float(v) for v in kf.resolution)
                unit = int(kf.resolutionunit)
                if all(math.isfinite(v) and v > 0 for v in (x, y)):
                    res["xresolution"], res["yresolution"] = x, y
                    if unit in (1, 2, 3):
                        res["resolutionunit"] = unit
        except Exception:
            pass
        try:
            metas = (self._tif.imagej_metadata, (self._tif.shaped_metadata or [None])[0])
        except Exception:
            metas = ()
        for meta in metas:
            if not isinstance(meta, dict):
                continue
            if "spacing" in meta and "spacing" not in res:
                try:
                    spacing = float(meta["spacing"])
                    if math.isfinite(spacing) and spacing > 0:
                        res["spacing"] = spacing
                except (TypeError, ValueError):
                    pass
            if isinstance(meta.get("unit"), str) and "unit" not in res and meta["unit"].isprintable():
                res["unit"] = meta["unit"][:64]
        return res

    def _read_physical(self, base):
        """Pixel size from OME-XML, Aperio MPP, or resolution tags + ImageJ unit (in that
        order), scaled from level 0 to the chosen level."""
        from .physical import UNKNOWN, from_ome_xml, from_svs_description, from_tiff_tags

        phys = UNKNOWN
        try:
            if self._tif.is_ome and self._tif.ome_metadata:
                phys = from_ome_xml(self._tif.ome_metadata, self.series_index)
            if not phys.known and self._tif.is_svs:
                phys = from_svs_description(self._tif.pages[0].description)
            if not phys.known:
                kf0 = base.keyframe
                res = self.resolution if not self.level else {}
                if self.level and 282 in kf0.tags and 283 in kf0.tags:
                    res = {"xresolution": float(kf0.resolution[0]),
                           "yresolution": float(kf0.resolution[1]),
                           "resolutionunit": int(kf0.resolutionunit)}
                ij = self.resolution
                phys = from_tiff_tags(res.get("xresolution"), res.get("yresolution"),
                                      res.get("resolutionunit"), ij.get("unit"),
                                      ij.get("spacing")) if res else phys
        except Exception:  # metadata is a bonus: never fail the segmentation over it
            phys = UNKNOWN
        if self.level and phys.known:
            h0, w0 = int(base.keyframe.imagelength), int(base.keyframe.imagewidth)
            phys = phys.scaled(h0 / self.height, w0 / self.width)
        return phys

    # -- access ----------------------------------------------------------------------
    def plane(self, i: int) -> "PlaneReader":
        if not 0 <= i < self.n_planes:
            raise IndexError(f"plane {i} out of range 0..{self.n_planes - 1}")
        if self._series_mm_offset is not None:
            return PlaneReader(self, None, plane_offset=self._series_mm_offset + i * self._plane_nbytes())
        return PlaneReader(self, self._pages[i])

    def planes(self) -> Iterator["PlaneReader"]:
        for i in range(self.n_planes):
            yield self.plane(i)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ImageSource({str(self.path)!r}, axes={self.axes!r}, lead_shape={self.lead_shape}, "
            f"height={self.height}, width={self.width}, channels={self.channels}, dtype={self.dtype})"
        )


def _enum_name(value) -> str:
    name = getattr(value, "name", None)
    return name.lower() if isinstance(name, str) else str(value)


class PlaneReader:
    """One 2-D plane (H, W, C) of an ImageSource; implements ``readers.Reader``.

    ``raw``: zero-copy (H, W, C) np.memmap view when the plane is stored contiguous and
    uncompressed (dtype may be non-native, e.g. '>u2', or float16); else None.
    ``array``: ``raw`` when its dtype is exactly ``dtype`` (native byte order, a type the
    kernels take) and no NaN policy rewrites pixels -- the pipeline hands it to the Numba
    kernels as is; else None, and ``read_rows`` converts.
    ``read_rows(y0, y1)``: (y1-y0, W, C) array of ``dtype`` (native byte order), decoding only
    the strips/tiles intersecting those rows.
    """

    def __init__(self, source: ImageSource, page, plane_offset: int | None = None):
        self._src = source
        self._page = page
        self.height = source.height
        self.width = source.width
        self.channels = source.channels
        self.dtype = source.dtype
        self.nan_policy = source.nan_policy
        self.array: np.ndarray | None = None
        self.raw: np.ndarray | None = None
        self._zero_nonfinite = source.nan_policy == "zero" and np.dtype(source.dtype).kind == "f"
        self._cache: dict[int, Any] = {}
        kf = source._kf
        shaped = tuple(int(v) for v in kf.shaped)  # (separate, depth, length, width, contig)
        self._shaped = shaped
        if source.palette or source._file_dtype is None:
            return
        offset = None
        if plane_offset is not None:
            offset = plane_offset
        elif page.is_memmappable:
            offset = int(page.dataoffsets[0])
        if offset is not None:
            mm = np.memmap(source.path, dtype=source._file_dtype, mode="r", offset=offset, shape=shaped)
            if shaped[0] > 1:  # planar configuration separate: (S, 1, H, W, 1) -> (H, W, S)
                self.raw = mm[:, 0, :, :, 0].transpose(1, 2, 0)
            else:
                self.raw = mm[0, 0]
            if self.raw.dtype == self.dtype and self.raw.dtype.isnative and not self._zero_nonfinite:
                self.array = self.raw

    # -- decoding --------------------------------------------------------------------
    def _geometry(self):
        kf = self._src._kf
        if kf.is_tiled:
            seg_h, seg_w = int(kf.tilelength), int(kf.tilewidth)
            nx = math.ceil(self.width / seg_w)
        else:
            seg_h, seg_w = min(int(kf.rowsperstrip), self.height), self.width
            nx = 1
        ny = math.ceil(self.height / seg_h)
        return seg_h, seg_w, nx, ny

    def _decode_segment(self, index: int):
        """Return (segment (h, w, contig) or None, (sample, y, x)) for segment ``index``."""
        src = self._src
        page = self._page
        kf = src._kf
        offset = int(page.dataoffsets[index])
        count = int(page.databytecounts[index])
        data = None
        if count > 0:
            fh = src._tif.filehandle
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
            if len(data) < count:
                raise InputError(f"{src.path}: file is truncated (segment {index} at byte {offset} is incomplete); re-export or copy it again")
        kwargs: dict[str, Any] = {"_fullsize": bool(kf.is_tiled)}
        if int(kf.compression) in _JPEG_COMPRESSIONS:
            kwargs["jpegtables"] = page.jpegtables
            kwargs["jpegheader"] = kf.jpegheader
        try:
            seg, idx, _shape = kf.decode(data, index, **kwargs)
        except InputError:
            raise
        except ImportError as exc:
            raise InputError(
                f"{src.path}: cannot decode {src.compression} data ({_one_line(exc)}); install the 'imagecodecs' package"
            ) from exc
        except Exception as exc:
            hint = "install/upgrade the 'imagecodecs' package" if "imagecodecs" in str(exc).lower() or isinstance(exc, KeyError) else "the file may be corrupt or use an unsupported TIFF feature"
            raise InputError(f"{src.path}: cannot decode {src.compression} segment {index} ({_one_line(exc)}); {hint}") from exc
        if seg is not None:
            seg = seg[0]  # drop depth -> (h, w, contig)
        return seg, (int(idx[0]), int(idx[2]), int(idx[3]))

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows [y0, y1) as a (y1-y0, W, C) array in native byte order (after the NaN policy)."""
        out = self.read_unzeroed_rows(y0, y1)
        if self._zero_nonfinite:
            from .normalize import nonfinite_mask

            bad = nonfinite_mask(out)
            if bad.any():
                out = np.where(bad, out.dtype.type(0), out)
        return out

    def read_unzeroed_rows(self, y0: int, y1: int) -> np.ndarray:
        """``read_rows`` before the NaN policy: non-finite pixels as stored (normalization
        statistics ignore them rather than count them as 0)."""
        if not (0 <= y0 <= y1 <= self.height):
            raise IndexError(f"rows [{y0}, {y1}) outside 0..{self.height}")
        try:
            return self._read_rows(y0, y1)
        except InputError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OSError, struct_error) as exc:
            raise InputError(
                f"{self._src.path}: cannot read rows {y0}..{y1} ({_one_line(exc)}); the file may be corrupt"
            ) from exc

    def _read_rows(self, y0: int, y1: int) -> np.ndarray:
        if self.raw is not None:
            return self._finish(np.ascontiguousarray(self.raw[y0:y1]))
        src = self._src
        kf = src._kf
        n = y1 - y0
        samples = src._samples
        nsep = self._shaped[0]
        contig = self._shaped[4]
        base_dtype = np.dtype(np.uint8) if np.dtype(kf.dtype).kind == "b" else np.dtype(kf.dtype).newbyteorder("=")
        out = np.empty((n, self.width, samples), dtype=base_dtype)
        if n == 0:
            return self._finish(out)
        seg_h, seg_w, nx, ny = self._geometry()
        r0, r1 = y0 // seg_h, (y1 - 1) // seg_h
        per_sample = nx * ny
        nodata = getattr(kf, "nodata", 0) or 0
        cache: dict[int, Any] = {}
        for s in range(nsep):
            for r in range(r0, r1 + 1):
                for c in range(nx):
                    index = s * per_sample + r * nx + c
                    if index in self._cache:
                        item = self._cache[index]
                    else:
                        item = self._decode_segment(index)
                    if r == r1:
                        cache[index] = item
                    seg, (sidx, sy, sx) = item
                    ys, ye = max(sy, y0), min(sy + seg_h, y1, self.height)
                    xe = min(sx + seg_w, self.width)
                    ch = slice(sidx, sidx + 1) if nsep > 1 else slice(0, contig)
                    target = out[ys - y0 : ye - y0, sx:xe, ch]
                    if seg is None:
                        target[...] = nodata
                    else:
                        target[...] = seg[ys - sy : ye - sy, : xe - sx]
        self._cache = cache  # keep the last segment row: the next band usually starts there
        return self._finish(out)

    def _finish(self, out: np.ndarray) -> np.ndarray:
        src = self._src
        if src.palette:
            idx = out[..., 0]
            return np.take(src.colormap, idx, axis=0, mode="clip").astype(self.dtype, copy=False)
        return out.astype(self.dtype, copy=False)  # native byte order; float16 -> float32

    def read(self) -> np.ndarray:
        """The whole plane (H, W, C). Only for planes known to fit in memory."""
        return self.read_rows(0, self.height)


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def check_output(out_path: str | os.PathLike, input_path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse (OutputError) an output path that cannot or must not be written. Returns it."""
    out = Path(out_path)
    inp = Path(input_path)
    if os.path.lexists(out):
        try:
            same = os.path.exists(inp) and os.path.exists(out) and os.path.samefile(out, inp)
        except OSError:
            same = False
        if same or os.path.realpath(out) == os.path.realpath(inp):
            raise OutputError(f"{out}: output is the same file as the input {inp}; choose a different output path")
        if out.is_dir() and not out.name.lower().endswith(".zarr"):
            raise OutputError(f"{out}: output path is a directory; give a file name such as {out / 'result.tif'}")
        if not overwrite:
            raise OutputError(f"{out}: output file already exists; use --overwrite to replace it")
    elif os.path.realpath(out) == os.path.realpath(inp):
        raise OutputError(f"{out}: output is the same path as the input {inp}; choose a different output path")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: output folder {folder} does not exist; create it first")
    probe = folder / f".{out.name}.probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in output folder {folder} ({exc.strerror}); choose a writable folder") from exc
    return out


class _Abort(Exception):
    """Raised inside the tile generator to stop tifffile when the caller aborts."""


_END = object()
COMPRESSIONS = ("zlib", "zstd", None)


class TiffBandWriter:
    """Write a tiled, compressed BigTIFF band by band, atomically.

    Shape of the written series: ``lead_shape + (height, width)`` (+ ``(samples,)`` when
    samples > 1). Feed bands in order with ``write_band(band)``: (rows, W) or (rows, W, samples),
    plane after plane; a band never spans two planes. On a clean exit after all rows the
    temporary file ``.NAME.partial-XXXX`` is fsynced and renamed to ``path``; otherwise it is
    deleted and ``path`` is left untouched.

    ``compression``: "zlib" (Deflate, tag 8: read by every TIFF reader), "zstd" (tag 50000:
    about 3x less CPU, label files ~25 % larger; read by Bio-Formats >= 6.11 -- current Fiji
    importers and QuPath --, libtiff >= 4.0.10 and tifffile, not by older Bio-Formats or
    ImageJ's built-in opener) or None. ``threads``: tiles compressed
    in parallel (tifffile ``maxworkers``; 0 = all cores). Memory stays bounded: at most the
    queue's two tile rows plus the tile row being compressed are held.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        lead_shape: tuple[int, ...],
        height: int,
        width: int,
        samples: int,
        dtype,
        resolution: dict | None = None,
        tile: int = 256,
        compression: str | None = "zlib",
        overwrite: bool = False,
        *,
        axes: str | None = None,
        ome: dict | None = None,
        subifds: int = 0,
        after=None,
        threads: int = 1,
    ):
        self.path = Path(path)
        self.lead_shape = tuple(int(v) for v in lead_shape)
        self.height = int(height)
        self.width = int(width)
        self.samples = int(samples)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.resolution = dict(resolution or {})
        self.tile = int(tile)
        if compression not in COMPRESSIONS:
            from .errors import OptionError

            raise OptionError(f"{self.path}: compression {compression!r} is not supported; use "
                              f"'zlib' (default, every TIFF reader), 'zstd' or none")
        self.compression = compression
        from .workers import host_threads

        self.threads = host_threads(threads)
        self.overwrite = overwrite
        self.axes = axes
        # hooks for ome_tiff.OmeTiffWriter: OME-XML metadata (tifffile's ome=True dict), the
        # number of SubIFD levels per page, and after(tiff_writer), called in the writer thread
        # after the main series to write those levels
        self.ome, self.subifds, self.after = ome, int(subifds), after
        if self.tile <= 0 or self.tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
        if self.height <= 0 or self.width <= 0 or self.samples <= 0:
            raise ValueError(f"invalid output size {self.height}x{self.width}x{self.samples}")
        self.n_planes = int(math.prod(self.lead_shape))
        if self.n_planes <= 0:
            raise ValueError(f"invalid lead_shape {self.lead_shape}")
        self.total_rows = self.height * self.n_planes
        self.rows_written = 0
        self.tmp_path: Path | None = None
        self._file = None
        self._tw = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._abort = threading.Event()
        self._error: BaseException | None = None
        self._buf = np.zeros((self.tile, self.width, self.samples), self.dtype)
        self._buf_rows = 0
        self._plane_row = 0  # rows of the current plane already handed over (incl. buffer)

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "TiffBandWriter":
        if os.path.lexists(self.path) and not self.overwrite:
            raise OutputError(f"{self.path}: output file already exists; use --overwrite to replace it")
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"{self.path}: output folder {folder} does not exist; create it first")
        tmp = folder / f".{self.path.name}.partial-{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create temporary file in {folder} ({exc.strerror}); choose a writable folder") from exc
        self.tmp_path = tmp
        try:
            os.close(fd)  # created exclusively (unique name, umask respected); reopen by name
            self._file = open(tmp, "r+b")  # noqa: SIM115 - closed in _finish/_cleanup
            tifffile = _tifffile()
            self._tw = tifffile.TiffWriter(self._file, bigtiff=True, ome=self.ome is not None)
        except BaseException:
            self._cleanup()
            raise
        self._thread = threading.Thread(target=self._run, name=f"TiffBandWriter({self.path.name})", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._error is None and self.rows_written == self.total_rows:
            self._finish()
            return
        self._abort_and_cleanup()
        if exc_type is None:
            if self._error is not None:
                raise self._as_output_error(self._error)
            raise OutputError(
                f"{self.path}: output incomplete ({self.rows_written} of {self.total_rows} rows written); nothing was saved, rerun the job"
            )
        # an exception is propagating: let it (the temp file is gone, the final path untouched)

    # -- feeding ---------------------------------------------------------------------
    def write_band(self, band: np.ndarray) -> None:
        """Append ``band`` ((rows, W) or (rows, W, samples)) to the current plane."""
        if self._thread is None:
            raise RuntimeError("TiffBandWriter.write_band called outside its 'with' block")
        self._raise_if_failed()
        band = np.asarray(band)
        if band.ndim == 2:
            band = band[:, :, None]
        if band.ndim != 3 or band.shape[1] != self.width or band.shape[2] != self.samples:
            raise ValueError(
                f"band shape {band.shape} does not match output width {self.width} and samples {self.samples}"
            )
        rows = band.shape[0]
        if self._plane_row + rows > self.height:
            raise ValueError(
                f"band of {rows} rows crosses the end of the plane (at row {self._plane_row} of {self.height}); split bands at plane boundaries"
            )
        if self.rows_written + rows > self.total_rows:
            raise ValueError(f"more rows than declared ({self.total_rows})")
        if band.dtype != self.dtype:
            band = self._convert(band)
        pos = 0
        while pos < rows:
            take = min(self.tile - self._buf_rows, rows - pos)
            self._buf[self._buf_rows : self._buf_rows + take] = band[pos : pos + take]
            self._buf_rows += take
            pos += take
            self._plane_row += take
            self.rows_written += take
            if self._buf_rows == self.tile or self._plane_row == self.height:
                self._emit_tile_row()
            if self._plane_row == self.height:
                self._plane_row = 0

    def _convert(self, band: np.ndarray) -> np.ndarray:
        if self.dtype.kind in "iu" and band.dtype.kind in "iub" and band.size:
            info = np.iinfo(self.dtype)
            lo, hi = band.min(), band.max()
            if lo < info.min or hi > info.max:
                raise ValueError(f"band values {lo}..{hi} do not fit output dtype {self.dtype}")
        return band.astype(self.dtype, copy=False)

    def _emit_tile_row(self) -> None:
        n = self._buf_rows
        t = self.tile
        tiles = [self._buf[:n, x : x + t].copy() for x in range(0, self.width, t)]
        self._buf_rows = 0
        self._put(tiles)

    def _put(self, item) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._thread is not None and not self._thread.is_alive():
                    self._raise_if_failed()
                    raise OutputError(f"{self.path}: writer thread stopped unexpectedly; nothing was saved")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._as_output_error(self._error)

    def _as_output_error(self, err: BaseException) -> BaseException:
        if isinstance(err, OutputError):
            return err
        if isinstance(err, OSError):
            what = "disk full" if err.errno == errno.ENOSPC else (err.strerror or _one_line(err))
            e = OutputError(f"{self.path}: cannot write output ({what}); free space or choose another folder, nothing was saved")
        else:
            e = OutputError(f"{self.path}: writing the TIFF failed ({_one_line(err)}); nothing was saved")
        e.__cause__ = err
        return e

    # -- background writer -------------------------------------------------------------
    def _tiles(self) -> Iterator[np.ndarray]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    raise _Abort()
                continue
            if item is _END:
                return
            yield from item

    def _run(self) -> None:
        shape = (*self.lead_shape, self.height, self.width) + ((self.samples,) if self.samples > 1 else ())
        kwargs: dict[str, Any] = {}
        res = self.resolution
        if "xresolution" in res and "yresolution" in res:
            kwargs["resolution"] = (float(res["xresolution"]), float(res["yresolution"]))
            if res.get("resolutionunit") is not None:
                kwargs["resolutionunit"] = int(res["resolutionunit"])
        metadata: dict[str, Any] = {}
        if self.axes:
            metadata["axes"] = self.axes
        for key in ("spacing", "unit"):
            if res.get(key) is not None:
                metadata[key] = res[key]
        tile_row_bytes = self.tile * self.tile * self.samples * self.dtype.itemsize * math.ceil(self.width / self.tile)
        try:
            self._tw.write(
                self._tiles(),
                shape=shape,
                dtype=self.dtype,
                tile=(self.tile, self.tile),
                compression=self.compression,
                photometric="minisblack",
                planarconfig="contig" if self.samples > 1 else None,
                metadata=dict(self.ome) if self.ome is not None else metadata,
                buffersize=tile_row_bytes,
                maxworkers=self.threads,
                subifds=self.subifds or None,
                **kwargs,
            )
            if self.after is not None:
                self.after(self._tw)
        except BaseException as exc:  # noqa: BLE001 - handed to the feeding thread
            self._error = exc

    # -- finishing -------------------------------------------------------------------
    def _finish(self) -> None:
        assert self._thread is not None
        self._put(_END)  # if tifffile wanted more tiles than were declared, it now fails
        self._thread.join()
        if self._error is not None:
            err = self._as_output_error(self._error)
            self._cleanup()
            raise err
        try:
            self._tw.close()
            self._tw = None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            err = self._as_output_error(exc)
            self._cleanup()
            raise err from exc
        except BaseException:
            self._cleanup()
            raise
        self.tmp_path = None
        try:  # persist the rename; best effort
            dfd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def _abort_and_cleanup(self) -> None:
        self._abort.set()
        if self._thread is not None:
            # unblock a consumer waiting for data; it raises _Abort on the next empty get
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=30)
            if isinstance(self._error, _Abort):
                self._error = None  # our own stop signal, not a failure
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tw is not None:
            try:
                self._tw.close()
            except Exception:
                pass
            self._tw = None
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
        if self.tmp_path is not None:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
            except OSError:
                pass
            self.tmp_path = None
