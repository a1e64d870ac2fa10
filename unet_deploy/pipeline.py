"""Overlap-tile segmentation: image → plan → tiles → batches → backend → stitch → output.

``segment_plane`` is the whole data flow for one 2-D plane; ``segment_array`` and
``segment_file`` wrap it for in-memory arrays and (huge) TIFF files.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import Cancelled, InputError
from .metadata import ModelInfo
from .normalize import offset_scale, sample_rows
from .planner import TilePlan, plan_tiles

LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)
SAMPLE_BAND = 1024  # rows read at a time when sampling a compressed image


@dataclass
class Preprocess:
    """Per-plane input mapping fused into the gather kernel: channel mix, offset, scale."""

    mix: np.ndarray  # float32 (C_model, C_src)
    offset: np.ndarray  # float32 (C_model,)
    scale: np.ndarray  # float32 (C_model,)


@dataclass
class Summary:
    pixels: int
    tiles: int
    seconds: float
    planes: int = 1
    backend: str = ""
    reason: str = ""

    @property
    def mpx_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (f"{self.pixels / 1e6:.2f} Mpx in {self.planes} plane(s), {self.tiles} tiles, "
                f"{self.seconds:.2f} s, {self.mpx_per_s:.2f} Mpx/s"
                + (f", backend {self.backend}" if self.backend else ""))


class ArrayReader:
    """Plane-reader interface over an in-memory (H, W) or (H, W, C) array."""

    def __init__(self, image: np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise InputError(f"expected a 2-D (H, W) or (H, W, C) array, got shape {image.shape}")
        self.array = image
        self.height, self.width, self.channels = image.shape
        self.dtype = image.dtype

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.array[y0:y1]


def channel_mix(c_src: int, c_model: int, where: str = "image") -> np.ndarray:
    if c_src == c_model:
        return np.eye(c_model, dtype=np.float32)
    if c_model == 1 and c_src in (3, 4):  # RGB(A) -> luminance; alpha ignored
        return np.pad(LUMA, ((0, 0), (0, c_src - 3)))
    if c_src == 1:
        return np.ones((c_model, 1), np.float32)
    raise InputError(f"{where}: has {c_src} channels but the model takes {c_model}; "
                     f"convert the image to {c_model} channel(s)")


def plane_sample(reader) -> np.ndarray:
    """A strided sample (h, w, C) of the plane, read band by band when not memory-mapped."""
    sy, sx = sample_rows(reader.height, reader.width)
    array = getattr(reader, "array", None)
    if isinstance(array, np.memmap):
        # Sampling a memmap faults in most of its pages (readahead): copy the sample band by
        # band and drop each band's pages from RSS right away.
        parts = []
        for y0 in range(0, reader.height, SAMPLE_BAND * sy):
            y1 = min(reader.height, y0 + SAMPLE_BAND * sy)
            parts.append(np.array(array[y0:y1:sy, ::sx]))
            release_mapped_rows(array, y0, y1)
        return np.concatenate(parts)
    if array is not None:
        return np.asarray(array[::sy, ::sx])
    parts = []
    for y0 in range(0, reader.height, SAMPLE_BAND * sy):
        band = reader.read_rows(y0, min(reader.height, y0 + SAMPLE_BAND * sy))
        parts.append(np.asarray(band[::sy, ::sx]))
    return np.concatenate(parts)


def count_nonfinite(reader) -> int:
    """NaN/Inf pixels of a float plane (float64 values beyond the float32 range count as
    Inf: the network computes in float32), counted band by band (memory bounded)."""
    if np.dtype(reader.dtype).kind != "f":
        return 0
    src = getattr(reader, "array", None)
    n = 0
    for y0 in range(0, reader.height, SAMPLE_BAND):
        y1 = min(reader.height, y0 + SAMPLE_BAND)
        band = src[y0:y1] if src is not None else reader.read_rows(y0, y1)
        n += int(band.size - np.count_nonzero(np.isfinite(band)))
        if band.dtype.itemsize > 4:  # finite in float64 but inf once cast to float32
            n += int(np.count_nonzero(np.abs(band) > np.finfo(np.float32).max))
        if src is not None:
            release_mapped_rows(src, y0, y1)  # a full scan must not fill RSS with the plane
    return n


def preprocess_for(reader, info: ModelInfo, where: str = "image",
                   nan_policy: str | None = None) -> Preprocess:
    """Channel mix and normalization for one plane. NaN/Inf pixels: with the "error" policy
    (default) the plane is refused, naming the count; with "zero" the reader already returns
    them as 0 (``open_image(..., nan_policy="zero")``, or the caller cleaned the array)."""
    policy = nan_policy or getattr(reader, "nan_policy", "error")
    if policy == "error":
        bad = count_nonfinite(reader)
        if bad:
            raise InputError(f"{where}: {bad} NaN/Inf pixel(s) in a float image; clean the image "
                             f"or pass --nan-policy zero (treats them as 0)")
    mix = channel_mix(reader.channels, info.in_channels, where)
    sample = plane_sample(reader).astype(np.float32)
    mixed = np.einsum("hws,cs->chw", sample, mix)
    pairs = [offset_scale(mixed[c], info.normalization) for c in range(info.in_channels)]
    offset = np.array([p[0] for p in pairs], np.float32)
    scale = np.array([p[1] for p in pairs], np.float32)
    return Preprocess(mix, offset, scale)


def release_mapped_rows(array: np.ndarray, y0: int, y1: int) -> None:
    """madvise(MADV_DONTNEED) the whole pages of rows [y0, y1) of a read-only np.memmap, so
    the mapped input's pages don't pile up in RSS (0.8 GB for a 20000x20000 uint16 plane).
    The pages stay in the page cache and are re-read transparently if touched again; a
    read-only shared file mapping loses nothing. No-op for anything else."""
    if not isinstance(array, np.memmap) or getattr(array, "mode", None) != "r" \
            or array.strides[0] <= 0 or not hasattr(os, "sched_getaffinity"):  # Linux only
        return
    try:
        import ctypes
        import mmap

        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        start = array.ctypes.data + y0 * array.strides[0]
        end = array.ctypes.data + min(y1, array.shape[0]) * array.strides[0]
        a, b = -(-start // page) * page, end // page * page
        if b > a:
            libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):
        pass


class RowSource:
    """Hands the gather kernel the source rows a tile row needs: the memmap itself when the
    plane is contiguous on disk, else a decoded band (only rows that row touches)."""

    def __init__(self, reader, plan: TilePlan):
        self.reader = reader
        self.plan = plan
        self.cached: tuple[int, np.ndarray, int] | None = None
        self.released = 0  # memmap rows [0, released) handed back to the kernel

    def rows_for(self, row: int) -> tuple[np.ndarray, int]:
        array = getattr(self.reader, "array", None)
        if array is not None and array.dtype.isnative:
            # Tile rows come in order and never look above their own window again (only row 0
            # mirrors at the top), so rows above it are done: drop their mapped pages from RSS.
            y0 = row * self.plan.out_h - self.plan.halo_y
            if y0 > self.released:
                release_mapped_rows(array, self.released, y0)
                self.released = y0
            return array, 0
        if self.cached is None or self.cached[0] != row:
            from .kernels import mirror_indices

            y0 = row * self.plan.out_h - self.plan.halo_y
            need = mirror_indices(np.arange(y0, y0 + self.plan.tile_h, dtype=np.int64),
                                  self.plan.image_h)
            lo, hi = int(need.min()), int(need.max()) + 1
            band = np.asarray(self.reader.read_rows(lo, hi))
            band = np.ascontiguousarray(band, dtype=band.dtype.newbyteorder("="))
            self.cached = (row, band, lo)
        return self.cached[1], self.cached[2]


def gather_batch(source: RowSource, plan: TilePlan, ids: np.ndarray, prep: Preprocess,
                 out: np.ndarray) -> np.ndarray:
    from .kernels import gather_tiles

    rows = ids // plan.cols
    for row in np.unique(rows):
        sel = np.flatnonzero(rows == row)
        ys, xs = plan.in_origins(int(row))
        cols = ids[sel] % plan.cols
        src, row0 = source.rows_for(int(row))
        # Tiles of one row are contiguous in ids, so out[sel] is a contiguous slice.
        gather_tiles(src, row0, plan.image_h, ys[cols], xs[cols], prep.mix, prep.offset,
                     prep.scale, out[sel[0] : sel[-1] + 1])
    return out[: len(ids)]


def segment_plane(reader, plan: TilePlan, backend, prep: Preprocess, batch_size: int = 1,
                  output: str = "labels",
                  on_tiles: Callable[[int], None] | None = None,
                  cancel=None) -> Iterator[np.ndarray]:
    """Yield the output of one plane as row bands, top to bottom.

    A background thread gathers batch k+1 into the spare buffer while the backend runs batch k;
    the caller consumes (writes) band r while later bands are still being computed.
    ``cancel``: a ``threading.Event`` checked between batches; once set, ``Cancelled`` is raised."""
    from .merger import BandMerger

    info = backend.info
    source = RowSource(reader, plan)
    merger = BandMerger(plan, info.out_channels, output)
    ids = np.arange(plan.n_tiles, dtype=np.int64)
    batches = [ids[i : i + batch_size] for i in range(0, plan.n_tiles, batch_size)]
    shape = (batch_size, info.in_channels, plan.tile_h, plan.tile_w)
    buffers = [np.empty(shape, np.float32), np.empty(shape, np.float32)]
    with ThreadPoolExecutor(1, thread_name_prefix="unet-gather") as pool:
        pending = pool.submit(gather_batch, source, plan, batches[0], prep, buffers[0])
        for k, batch in enumerate(batches):
            tiles = pending.result()
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {k} of {len(batches)} batches; no result")
            if k + 1 < len(batches):
                pending = pool.submit(gather_batch, source, plan, batches[k + 1], prep,
                                      buffers[(k + 1) % 2])
            merger.add(backend.infer(tiles), batch)
            if on_tiles:
                on_tiles(len(batch))
            yield from merger.pop_complete()
    merger.finalize()


def default_tile(info: ModelInfo, tile: int | None) -> int:
    return int(tile or info.tile)


def segment_array(image: np.ndarray, model=None, *, backend=None, batch_size: int = 1,
                  tile: int | None = None, output: str = "labels",
                  threads: int = 0) -> np.ndarray:
    """Segment an in-memory 2-D image (H, W) or (H, W, C). Returns labels (H, W), instance
    labels (H, W) or probabilities (H, W, K)."""
    from .backends import open_backend

    reader = ArrayReader(np.asarray(image))
    own = backend is None
    backend = backend or open_backend(model, threads=threads)
    try:
        backend.activate()
        info = backend.info
        plan = plan_tiles(reader.height, reader.width, info.geometry,
                          default_tile(info, tile))
        prep = preprocess_for(reader, info)
        bands = list(_plane_bands(reader, plan, backend, prep, batch_size, output, None))
    finally:
        if own:
            backend.deactivate()
    return np.concatenate(bands, axis=0)


OUTPUTS = ("labels", "probabilities", "instances")


def default_output_path(input_path: str | Path, output: str) -> Path:
    p = Path(input_path)
    stem = p.name[: -len("".join(p.suffixes))] if p.suffixes else p.name
    return p.with_name(f"{stem}.{output}.tif")


def _plane_bands(reader, plan, backend, prep, batch_size, output, on_tiles, cancel=None):
    """Bands of one plane in the requested output kind. Instances need the whole plane's class
    map (connected components are not local), so that kind is built in memory, then banded."""
    if output != "instances":
        yield from segment_plane(reader, plan, backend, prep, batch_size, output, on_tiles,
                                 cancel)
        return
    from .postprocess import instance_classes, to_instances

    info = backend.info
    labels = np.concatenate([instance_classes(band, info) for band in segment_plane(
        reader, plan, backend, prep, batch_size, "probabilities", on_tiles, cancel)])
    inst = to_instances(labels, info)
    for y0 in range(0, inst.shape[0], plan.out_h):
        yield inst[y0 : y0 + plan.out_h]


def output_format(output: str, info: ModelInfo) -> tuple[int, np.dtype]:
    """(samples per pixel, dtype) of the output file."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if output == "probabilities":
        return info.out_channels, np.dtype(np.float32)
    if output == "instances":
        return 1, np.dtype(np.uint32)
    return 1, np.dtype(np.uint8 if info.out_channels <= 256 else np.uint16)


def segment_file(input_path: str | Path, output_path: str | Path | None = None, model=None, *,
                 backend: str = "auto", batch_size: int = 1, tile: int | None = None,
                 output: str = "labels", threads: int = 0, overwrite: bool = False,
                 series: int | None = None, max_pixels: int | None = None,
                 progress: bool = True, nan_policy: str = "error", cancel=None) -> Summary:
    """Segment a (huge) TIFF into a tiled, compressed BigTIFF; returns a Summary.

    Memory stays bounded: the input is memory-mapped or decoded band by band, and output bands
    are written as soon as their tile row is complete (except ``output="instances"``).
    ``nan_policy``: "error" | "zero" for NaN/Inf pixels (see ``preprocess_for``); ``cancel``: a
    ``threading.Event`` checked between batches (``Cancelled``; nothing is written)."""
    from tqdm import tqdm

    from .backends import open_backend
    from .io import TiffBandWriter, check_output, open_image

    out = default_output_path(input_path, output) if output_path is None else Path(output_path)
    check_output(out, input_path, overwrite)
    t0 = time.perf_counter()
    with open_image(input_path, series=series, max_pixels=max_pixels,
                    nan_policy=nan_policy) as src, \
            open_backend(model, backend, threads=threads) as be:
        info = be.info
        plan = plan_tiles(src.height, src.width, info.geometry, default_tile(info, tile))
        samples, dtype = output_format(output, info)
        with tqdm(total=plan.n_tiles * src.n_planes, unit="tile", disable=not progress,
                  desc=Path(input_path).name, dynamic_ncols=True) as bar, \
                TiffBandWriter(out, src.lead_shape, src.height, src.width, samples, dtype,
                               resolution=src.resolution, overwrite=overwrite) as writer:
            for i in range(src.n_planes):
                reader = src.plane(i)
                prep = preprocess_for(reader, info, str(input_path))
                for band in _plane_bands(reader, plan, be, prep, batch_size, output,
                                         bar.update, cancel):
                    writer.write_band(band)
        name, reason = getattr(be, "choice", (be.name, ""))
        return Summary(src.height * src.width * src.n_planes, plan.n_tiles * src.n_planes,
                       time.perf_counter() - t0, src.n_planes, name, reason)


def segment_whole(image: np.ndarray, backend, output: str = "labels") -> np.ndarray:
    """Reference: one forward pass over the whole image, mirror-padded ("reflect") with
    np.pad to a legal size. Memory grows with the image; for tests and benchmarks."""
    reader = ArrayReader(np.asarray(image))
    info = backend.info
    h, w = reader.height, reader.width
    prep = preprocess_for(reader, info)
    x = np.einsum("hws,cs->chw", reader.array.astype(np.float32), prep.mix)
    x = (x - prep.offset[:, None, None]) * prep.scale[:, None, None]
    x = np.pad(x, ((0, 0),) + info.geometry.whole_image_padding(h, w), mode="reflect")
    probs = backend.infer(np.ascontiguousarray(x[None], dtype=np.float32))[0, :, :h, :w]
    return probs.argmax(0).astype(np.uint8) if output == "labels" else probs.transpose(1, 2, 0)
