"""OME-Zarr (NGFF) input and output, streamed band by band.

Input: ``open_zarr(path, level=..)`` opens a local NGFF multiscale image (0.4 on Zarr v2, or
0.5 on Zarr v3; also a bioformats2raw container, whose images are series) and describes one
resolution level like ``io.ImageSource``: ``plane(i)`` gives a ``readers.Reader`` that reads
only the chunks a band touches. Axes ``t``/``z`` become planes, ``c`` the channels.

Output: ``ZarrWriter`` writes an NGFF 0.4 multiscale image (Zarr v2, ``/`` chunk keys, Blosc
zstd) band by band: level 0 plus 2x2 levels down to <= 1024 px (mode for labels, mean for
probabilities, ``pyramid``), axes with units and physical ``scale`` per level, ``image-label``
metadata for labels and instances, class names as ``omero`` channel labels for probabilities.
Each chunk row is written once, when its rows are complete; everything goes to a temporary
folder ``.NAME.partial-XXXX`` beside the output, renamed only when complete.

NGFF 0.4 because that is what napari (napari-ome-zarr), Fiji (MoBIE / n5-zarr, Bio-Formats)
and QuPath (Bio-Formats OME-Zarr reader) all read today; 0.5 (Zarr v3) readers are not yet
everywhere. ``zarr`` and ``ome-zarr`` are imported only here, only when Zarr is used.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputNotFoundError, MissingExtraError, OutputError
from .physical import UNKNOWN, PhysicalSize, from_ngff
from .pyramid import Cascade, level_shape, n_levels, reduce_mean, reduce_mode

ZARR_SUFFIXES = (".zarr",)
NGFF_VERSION = "0.4"
CHUNK = 256
MAX_CHUNK_BYTES = 256 * 2**20  # an input chunk is decoded whole for every band touching it
_LEAD_AXES = ("t", "z")


def _zarr():
    import importlib.util

    try:
        import zarr

        if importlib.util.find_spec("ome_zarr") is None:  # imported (slowly) only to finish
            raise ImportError("No module named 'ome_zarr'")
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise MissingExtraError(f"OME-Zarr needs the zarr extra ({_one_line(exc)}); install "
                                f"it: pip install \"unet-deploy[zarr]\"") from exc
    return zarr


def is_zarr_path(path: str | os.PathLike) -> bool:
    """A ``*.zarr`` path, or a folder holding Zarr metadata."""
    p = Path(path)
    if p.name.lower().rstrip("/").endswith(ZARR_SUFFIXES):
        return True
    return p.is_dir() and any((p / f).exists() for f in (".zgroup", ".zattrs", "zarr.json"))


# --------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------


def _multiscales(attrs: dict) -> list | None:
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return None


def _ngff_version(attrs: dict, ms: dict) -> str:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("version"):
        return str(ome["version"])
    return str(ms.get("version", "?"))


def _scale_of(transforms: list | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def open_zarr(path: str | os.PathLike, level: int | None = None, series: int | None = None,
              max_pixels: int | None = None, nan_policy: str = "error") -> "ZarrSource":
    """Open a local OME-Zarr image for streaming reads (a context manager). Raises
    InputNotFoundError for a missing path and InputError for anything that is not an NGFF
    multiscale image, a level or series that does not exist, or an unusable array."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: input not found; check the path")
    zarr = _zarr()
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:
        raise InputError(f"{path}: not a Zarr group ({_one_line(exc)}); pass an OME-Zarr "
                         f"(NGFF) image folder such as image.ome.zarr") from exc
    group, where = root, path
    if _multiscales(attrs) is None and "bioformats2raw.layout" in attrs:
        names = sorted((k for k in root.group_keys() if k.isdigit()), key=int)
        idx = 0 if series is None else series
        if not names or not 0 <= idx < len(names):
            raise InputError(f"{path}: series {idx} requested but the container holds "
                             f"{len(names)} image(s); pass --series 0..{max(len(names) - 1, 0)}")
        group, where = root[names[idx]], path / names[idx]
        attrs = dict(group.attrs)
    elif series not in (None, 0):
        raise InputError(f"{path}: holds one image; --series {series} does not exist")
    ms = _multiscales(attrs)
    if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise InputError(f"{path}: Zarr group without NGFF 'multiscales' metadata (not an "
                         f"OME-Zarr image); convert it with bioformats2raw or ome-zarr, or "
                         f"pass the image group inside it")
    return ZarrSource(where, group, ms[0], _ngff_version(attrs, ms[0]), level, max_pixels,
                      nan_policy)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class ZarrSource:
    """One resolution level of an NGFF image, with ``io.ImageSource``'s attributes: path,
    axes, height, width, channels, dtype, lead_shape, n_planes, level, n_levels, physical,
    resolution (TIFF tags for the output), ``plane(i)``; a context manager."""

    def __init__(self, path: Path, group, ms: dict, version: str, level: int | None,
                 max_pixels: int | None, nan_policy: str):
        self.path, self.nan_policy, self.version = path, nan_policy, version
        datasets = ms.get("datasets") or []
        self.n_levels = len(datasets)
        self.level = 0 if level is None else int(level)
        if not 0 <= self.level < self.n_levels:
            raise InputError(f"{path}: level {self.level} requested but the image has "
                             f"{self.n_levels} level(s); pass --level 0..{self.n_levels - 1}")
        ds = datasets[self.level]
        try:
            arr = group[ds["path"]]
        except Exception as exc:
            raise InputError(f"{path}: level {self.level} array {ds.get('path')!r} is missing "
                             f"({_one_line(exc)}); the image is incomplete, re-export it") from exc
        axes = ms.get("axes") or [{"name": n} for n in "tczyx"[5 - arr.ndim:]]
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        self.axes = "".join(n.upper() if len(n) == 1 else "?" for n in names)
        if len(names) != arr.ndim or names[-2:] != ["y", "x"]:
            raise InputError(f"{path}: axes {names} do not fit the {arr.ndim}-D array or do not "
                             f"end in y, x; re-export the image with y, x as the last axes")
        dt = np.dtype(arr.dtype)
        if dt.kind not in "biuf":
            raise InputError(f"{path}: unsupported pixel type {dt}; convert to integer or float")
        chunk_bytes = int(math.prod(arr.chunks)) * dt.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise InputError(f"{path}: level {self.level} is stored in chunks of "
                             f"{'x'.join(map(str, arr.chunks))} ({chunk_bytes / 2**20:.0f} MiB "
                             f"each), too large to read band by band; rechunk it (e.g. "
                             f"1024x1024 chunks) or pick another --level")
        self._arr = arr
        self._c = names.index("c") if "c" in names else None
        self._lead = [i for i, n in enumerate(names[:-2]) if n != "c"]
        self.height, self.width = int(arr.shape[-2]), int(arr.shape[-1])
        if self.height < 1 or self.width < 1:
            raise InputError(f"{path}: empty image ({self.width}x{self.height})")
        if max_pixels is not None and self.height * self.width > max_pixels:
            raise InputError(f"{path}: image plane is {self.width}x{self.height} = "
                             f"{self.height * self.width} pixels, more than the limit of "
                             f"{max_pixels}; raise the pixel limit or pick a --level")
        self.channels = int(arr.shape[self._c]) if self._c is not None else 1
        self.lead_shape: tuple[int, ...] = tuple(int(arr.shape[i]) for i in self._lead)
        self.lead_axes = "".join(names[i] for i in self._lead)
        self.n_planes = int(math.prod(self.lead_shape))
        self.dtype = np.dtype(np.uint8) if dt.kind == "b" else dt.newbyteorder("=")
        if self.dtype == np.float16:
            self.dtype = np.dtype(np.float32)
        scale = _scale_of(ds.get("coordinateTransformations"), arr.ndim)
        glob = _scale_of(ms.get("coordinateTransformations"), arr.ndim)
        self.physical: PhysicalSize = from_ngff(axes, [a * b for a, b in zip(scale, glob)]) \
            if all(isinstance(a, dict) for a in axes) else UNKNOWN
        self.resolution = self.physical.tiff_resolution()

    def plane(self, i: int) -> "ZarrPlaneReader":
        if not 0 <= i < self.n_planes:
            raise IndexError(f"plane {i} out of range 0..{self.n_planes - 1}")
        return ZarrPlaneReader(self, np.unravel_index(i, self.lead_shape) if self.lead_shape else ())

    def close(self) -> None:
        pass

    def __enter__(self) -> "ZarrSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ZarrSource({str(self.path)!r}, NGFF {self.version}, level {self.level} of "
                f"{self.n_levels}, axes={self.axes!r}, {self.height}x{self.width}, "
                f"channels={self.channels}, dtype={self.dtype})")


class ZarrPlaneReader:
    """One 2-D plane of a ``ZarrSource`` (implements ``readers.Reader``); ``read_rows`` reads
    and decodes only the chunks that rows [y0, y1) touch."""

    array = None

    def __init__(self, source: ZarrSource, lead_index):
        self._src = source
        self.height, self.width = source.height, source.width
        self.channels, self.dtype, self.nan_policy = source.channels, source.dtype, source.nan_policy
        self._index = [int(v) for v in lead_index]

    def read_unzeroed_rows(self, y0: int, y1: int) -> np.ndarray:
        if not 0 <= y0 <= y1 <= self.height:
            raise IndexError(f"rows [{y0}, {y1}) outside 0..{self.height}")
        src = self._src
        sel: list[Any] = [slice(None)] * src._arr.ndim
        for axis, v in zip(src._lead, self._index):
            sel[axis] = v
        sel[-2] = slice(y0, y1)
        try:
            block = np.asarray(src._arr[tuple(sel)])
        except Exception as exc:
            raise InputError(f"{src.path}: cannot read rows {y0}..{y1} ({_one_line(exc)}); a "
                             f"chunk may be missing or corrupt") from exc
        if src._c is not None:  # remaining axes: (c, y, x) -> (y, x, c)
            block = np.moveaxis(block, 0, -1)
        else:
            block = block[..., None]
        return np.ascontiguousarray(block, dtype=self.dtype)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        out = self.read_unzeroed_rows(y0, y1)
        if self.nan_policy == "zero" and out.dtype.kind == "f":
            out = np.where(np.isfinite(out), out, out.dtype.type(0))
        return out


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


def class_axis_at(lead_axes: str) -> int:
    """Where the class axis stands among the lead axes: after time, before space (NGFF 0.4
    orders axes time, channel, space)."""
    return sum(1 for a in lead_axes.lower() if a == "t")


def region(lead_shape: tuple[int, ...], plane: int, y0: int, y1: int,
           class_at: int | None = None) -> tuple:
    """Index of rows [y0, y1) of plane ``plane`` (row-major over ``lead_shape``) in an array laid
    out as the lead axes with the class axis (whole) at ``class_at`` (None: no class axis)."""
    idx = tuple(int(v) for v in np.unravel_index(plane, lead_shape)) if lead_shape else ()
    if class_at is not None:
        idx = idx[:class_at] + (slice(None),) + idx[class_at:]
    return idx + (slice(y0, y1), slice(None))


def ngff_axes(lead_axes: str, samples: int, physical: PhysicalSize) -> list[dict]:
    """NGFF axes for lead axes (letters from the input, e.g. "TZ" or "I") + class channel."""
    unit = {"unit": "micrometer"} if physical.known else {}
    out: list[dict] = []
    for a in lead_axes.lower():
        name = a if a in _LEAD_AXES else ("z" if "z" not in lead_axes.lower() else None)
        if name is None or any(o["name"] == name for o in out):
            raise OutputError(f"the input's axes {lead_axes!r} + YX cannot be written as NGFF "
                              f"axes (one t, then one c, then z; classes take the c axis); write "
                              f"a .tif output instead")
        ax = {"name": name, "type": "time" if name == "t" else "space"}
        if name == "z" and physical.z is not None:
            ax["unit"] = "micrometer"
        out.append(ax)
    if samples > 1:
        out.insert(class_axis_at(lead_axes), {"name": "c", "type": "channel"})
    out += [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    return out


class ZarrWriter:
    """Write one NGFF 0.4 multiscale image band by band, atomically (see the module doc).

    Same feeding contract as ``io.TiffBandWriter``: ``write_band`` takes (rows, W) or
    (rows, W, samples) bands, plane after plane (planes = product of ``lead_shape``).
    ``kind``: "labels" | "instances" (mode pyramid, ``image-label``) or "probabilities"
    (mean pyramid, channel names ``class_names``)."""

    def __init__(self, path: str | os.PathLike, lead_shape: tuple[int, ...], height: int,
                 width: int, samples: int, dtype, *, kind: str = "labels",
                 lead_axes: str = "", physical: PhysicalSize = UNKNOWN,
                 class_names: list[str] | None = None, overwrite: bool = False,
                 chunk: int = CHUNK, name: str = ""):
        self.path = Path(path)
        self.lead_shape = tuple(int(v) for v in lead_shape)
        self.height, self.width, self.samples = int(height), int(width), int(samples)
        self.dtype = np.dtype(dtype)
        self.kind, self.physical, self.overwrite = kind, physical, overwrite
        self.class_names = list(class_names or [])
        self.chunk, self.name = int(chunk), name or self.path.name
        self.lead_axes = (lead_axes or "Z" * len(self.lead_shape))[-len(self.lead_shape):] \
            if self.lead_shape else ""
        self.axes = ngff_axes(self.lead_axes, self.samples, physical)
        self.class_at = class_axis_at(self.lead_axes) if self.samples > 1 else None
        self.n_planes = int(math.prod(self.lead_shape))
        self.levels = n_levels(self.height, self.width)
        self.total_rows = self.height * self.n_planes
        self.rows_written = 0
        self.tmp_path: Path | None = None
        self._arrays: list = []
        self._buf: list[np.ndarray] = []
        self._buf_rows = [0] * self.levels
        self._done_rows = [0] * self.levels  # rows of the current plane flushed per level
        self._plane = 0
        reduce = reduce_mean if kind == "probabilities" else reduce_mode
        self._cascade = Cascade(self.height, self.levels, reduce, self._add)

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "ZarrWriter":
        if os.path.lexists(self.path) and not self.overwrite:
            raise OutputError(f"{self.path}: output already exists; use --overwrite to replace it")
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"{self.path}: output folder {folder} does not exist; create it first")
        tmp = folder / f".{self.path.name}.partial-{secrets.token_hex(6)}"
        try:
            os.mkdir(tmp)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create a temporary folder in {folder} "
                              f"({exc.strerror}); choose a writable folder") from exc
        self.tmp_path = tmp
        try:
            self._create(tmp)
        except BaseException as exc:
            self._cleanup()
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise self._as_output_error(exc) from exc
            raise
        return self

    def _create(self, tmp: Path) -> None:
        import numcodecs

        zarr = _zarr()
        self._group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        lead = self.lead_shape
        if self.class_at is not None:
            lead = lead[: self.class_at] + (self.samples,) + lead[self.class_at :]
        for level in range(self.levels):
            h, w = level_shape(self.height, self.width, level)
            self._arrays.append(self._group.create_array(
                name=str(level), shape=lead + (h, w), chunks=(1,) * len(lead) + (self.chunk,) * 2,
                dtype=self.dtype, fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"},
                compressors=numcodecs.Blosc(cname="zstd", clevel=3,
                                            shuffle=numcodecs.Blosc.SHUFFLE)))
            self._buf.append(np.zeros((self.chunk, w, self.samples), self.dtype))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.rows_written == self.total_rows:
            try:
                self._finish()
            except BaseException as err:
                self._cleanup()
                if isinstance(err, OSError) and not isinstance(err, OutputError):
                    raise self._as_output_error(err) from err
                raise
            return
        self._cleanup()
        if exc_type is None:
            raise OutputError(f"{self.path}: output incomplete ({self.rows_written} of "
                              f"{self.total_rows} rows written); nothing was saved, rerun the job")
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise self._as_output_error(exc) from exc

    def _as_output_error(self, err: OSError) -> OutputError:
        what = "disk full" if err.errno == errno.ENOSPC else (err.strerror or _one_line(err))
        return OutputError(f"{self.path}: cannot write output ({what}); free space or choose "
                           f"another folder, nothing was saved")

    # -- feeding ---------------------------------------------------------------------
    def write_band(self, band: np.ndarray) -> None:
        if self.tmp_path is None:
            raise RuntimeError("ZarrWriter.write_band called outside its 'with' block")
        band = np.asarray(band)
        if band.ndim == 2:
            band = band[:, :, None]
        if band.ndim != 3 or band.shape[1] != self.width or band.shape[2] != self.samples:
            raise ValueError(f"band shape {band.shape} does not match output width "
                             f"{self.width} and samples {self.samples}")
        rows = band.shape[0]
        if self._done_rows[0] + self._buf_rows[0] + rows > self.height:
            raise ValueError(f"band of {rows} rows crosses the end of the plane")
        if self.dtype.kind in "iu" and band.dtype != self.dtype and band.size:
            info = np.iinfo(self.dtype)
            if band.min() < info.min or band.max() > info.max:
                raise ValueError(f"band values do not fit output dtype {self.dtype}")
        band = band.astype(self.dtype, copy=False)
        try:
            self._add(0, band)
            self._cascade.push(band[..., 0] if self.samples == 1 else band)
            self.rows_written += rows
            if self._done_rows[0] + self._buf_rows[0] == self.height:
                self._cascade.end_plane()
                for level in range(self.levels):
                    self._flush(level)
                self._plane += 1
                self._done_rows = [0] * self.levels
        except OSError as exc:
            raise self._as_output_error(exc) from exc

    def _add(self, level: int, rows: np.ndarray) -> None:
        if rows.ndim == 2:
            rows = rows[:, :, None]
        buf, pos = self._buf[level], 0
        while pos < rows.shape[0]:
            take = min(self.chunk - self._buf_rows[level], rows.shape[0] - pos)
            buf[self._buf_rows[level] : self._buf_rows[level] + take] = rows[pos : pos + take]
            self._buf_rows[level] += take
            pos += take
            if self._buf_rows[level] == self.chunk:
                self._flush(level)

    def _flush(self, level: int) -> None:
        n = self._buf_rows[level]
        if n == 0:
            return
        y0 = self._done_rows[level]
        block = self._buf[level][:n]
        block = block[..., 0] if self.samples == 1 else np.moveaxis(block, -1, 0)
        self._arrays[level][region(self.lead_shape, self._plane, y0, y0 + n,
                                   self.class_at)] = block
        self._done_rows[level] += n
        self._buf_rows[level] = 0

    # -- finishing -------------------------------------------------------------------
    def _finish(self) -> None:
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_multiscales_metadata

        ndim = len(self.axes)
        datasets = []
        for level in range(self.levels):
            scale = [1.0] * ndim
            f = float(2**level)
            sy = self.physical.y if self.physical.known else 1.0
            sx = self.physical.x if self.physical.known else 1.0
            scale[-2], scale[-1] = sy * f, sx * f
            for i, ax in enumerate(self.axes[:-2]):
                if ax["name"] == "z" and self.physical.z is not None:
                    scale[i] = self.physical.z
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": scale}]})
        extra: dict[str, Any] = {}
        write_multiscales_metadata(self._group, datasets, fmt=FormatV04(), axes=self.axes,
                                   name=self.name,
                                   metadata={"method": "2x2 mean" if self.kind == "probabilities"
                                             else "2x2 mode (ties: top-left)"}, **extra)
        attrs: dict[str, Any] = {"unet_deploy": {"output": self.kind, "classes": self.class_names}}
        if self.kind in ("labels", "instances"):
            attrs["image-label"] = {"version": NGFF_VERSION}
        elif self.samples > 1:
            names = self.class_names or [f"class {i}" for i in range(self.samples)]
            attrs["omero"] = {"version": NGFF_VERSION, "channels": [
                {"label": names[i] if i < len(names) else f"class {i}", "active": True,
                 "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0},
                 "color": ["FF0000", "00FF00", "0000FF", "FFFF00", "FF00FF", "00FFFF"][i % 6]}
                for i in range(self.samples)]}
        self._group.attrs.update(attrs)
        _fsync_tree(self.tmp_path)
        old = None
        if os.path.lexists(self.path):
            old = self.path.parent / f".{self.path.name}.old-{secrets.token_hex(6)}"
            os.replace(self.path, old)
        try:
            os.replace(self.tmp_path, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)
            raise
        self.tmp_path = None
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

    def _cleanup(self) -> None:
        if self.tmp_path is not None:
            _drain_zarr()  # a failed write leaves sibling chunk writes running: let them end
            shutil.rmtree(self.tmp_path, ignore_errors=True)
            self.tmp_path = None


def _drain_zarr(timeout: float = 30.0) -> None:
    """Wait until zarr's event loop has no task left (after a failed write its other chunk
    writes go on, and would recreate files in a folder being deleted)."""
    import asyncio

    try:
        from zarr.core.sync import _get_loop

        loop = _get_loop()
    except Exception:
        return

    async def idle() -> None:
        me = asyncio.current_task()
        for _ in range(100):
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                return
            await asyncio.wait(tasks, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(idle(), loop).result(timeout + 5)
    except Exception:
        pass


def _fsync_tree(root: Path) -> None:
    """Flush everything under ``root`` to disk before the rename publishes it (best effort):
    one syncfs(2) of its file system on Linux (an fsync per chunk file costs ~5 ms each),
    else an fsync per file and folder."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(root, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    for folder, _dirs, files in os.walk(root):
        for name in files + ["."]:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
