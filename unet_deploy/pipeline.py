"""The data flow, and only the flow: image → plan → tiles → batches → backend → stitch → output.

``segment_plane`` is the whole flow for one 2-D plane; ``plane_bands`` adds the output kinds
(instances need the whole plane) and is the one entry that ``segment_array``, ``segment_file``
and ``Segmenter`` call. Planning and tile extraction live in ``tiling``, preprocessing in
``normalize``, sources in ``readers``/``io``, stitching in ``merger``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import Cancelled
from .merger import BandMerger
from .metadata import ModelInfo, label_dtype
from .normalize import Preprocess, preprocess_for
from .readers import ArrayReader, ChannelReader, Reader
from .tiling import RowSource, TilePlan, gather_batch, plan_for
from .workers import Workers

@dataclass
class StageTimes:
    """Seconds spent per stage, accumulated over calls (benchmarks read these). ``gather`` runs
    in a background thread, overlapped with ``infer``; ``stitch`` includes the argmax;
    ``write`` (``segment_file``) is the time handing bands to the output writer, including any
    wait for its queue (compression behind)."""

    gather: float = 0.0
    infer: float = 0.0
    stitch: float = 0.0
    write: float = 0.0


class _Clock:
    def __init__(self, times: StageTimes | None, stage: str):
        self.times, self.stage = times, stage

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.times is not None:
            setattr(self.times, self.stage,
                    getattr(self.times, self.stage) + time.perf_counter() - self.t0)


@dataclass
class Summary:
    pixels: int
    tiles: int
    seconds: float
    planes: int = 1
    backend: str = ""
    reason: str = ""
    tta: str = "none"  # the mode that ran (a model may default to one: it costs 4-8 passes)

    @property
    def mpx_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (f"{self.pixels / 1e6:.2f} Mpx in {self.planes} plane(s), {self.tiles} tiles, "
                f"{self.seconds:.2f} s, {self.mpx_per_s:.2f} Mpx/s"
                + (f", backend {self.backend}" if self.backend else "")
                + (f", TTA {self.tta}" if self.tta != "none" else ""))


def segment_plane(reader: Reader, plan: TilePlan, backend, prep: Preprocess,
                  batch_size: int = 1, output: str = "labels",
                  on_tiles: Callable[[int], None] | None = None, cancel=None,
                  times: StageTimes | None = None, *, threads: int = 1,
                  rows: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield the output of one plane as row bands, top to bottom.

    A background thread gathers batch k+1 into the spare buffer while the backend runs batch k;
    the caller consumes (writes) band r while later bands are still being computed.
    ``threads``: host threads for the gather and stitch kernels (0 = all cores; the output is
    the same for any number). A backend that ``computes_labels`` returns class maps for
    ``output="labels"`` (1 byte per pixel), which the merger pastes instead of argmaxing.
    ``cancel``: a ``threading.Event`` checked between batches; once set, ``Cancelled`` is raised.
    ``times``: a ``StageTimes`` to accumulate per-stage seconds into.
    ``rows``: only tile rows [r0, r1) of the plan (a block of a distributed run): the same tiles,
    batches cut at the same multiples of ``batch_size``, so the bands are the whole plane's."""
    info = backend.info
    r0, r1 = rows or (0, plan.rows)
    source = RowSource(reader, plan)
    merger = BandMerger(plan, info.out_channels, output, first_row=r0)
    start, stop = r0 * plan.cols, min(r1 * plan.cols, plan.n_tiles)
    edges = sorted({start, stop} | set(range(-(-start // batch_size) * batch_size, stop,
                                              batch_size)))
    batches = [np.arange(a, b, dtype=np.int64) for a, b in zip(edges, edges[1:])]
    shape = (batch_size, info.in_channels, plan.tile_h, plan.tile_w)
    buffers = [np.empty(shape, np.float32), np.empty(shape, np.float32)]
    labels = output == "labels" and getattr(backend, "computes_labels", False)

    def gather(k: int) -> np.ndarray:
        with _Clock(times, "gather"):
            return gather_batch(source, plan, batches[k], prep, buffers[k % 2], workers)

    with Workers(threads) as workers, \
            ThreadPoolExecutor(1, thread_name_prefix="unet-gather") as pool:
        pending = pool.submit(gather, 0)
        for k, batch in enumerate(batches):
            tiles = pending.result()
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {k} of {len(batches)} batches; no result")
            if k + 1 < len(batches):
                pending = pool.submit(gather, k + 1)
            with _Clock(times, "infer"):
                out = backend.infer(tiles, labels=True) if labels else backend.infer(tiles)
            with _Clock(times, "stitch"):
                merger.add(out, batch, workers)
            if on_tiles:
                on_tiles(len(batch))
            yield from merger.pop_complete()
    merger.finalize(r1)


def default_tile(info: ModelInfo, tile: int | None) -> int:
    return int(tile or info.tile)


def segment_array(image: np.ndarray, model=None, *, backend=None, batch_size: int = 1,
                  tile: int | None = None, output: str = "labels",
                  threads: int = 0, times: StageTimes | None = None,
                  tta: str | None = None) -> np.ndarray:
    """Segment an in-memory 2-D image (H, W) or (H, W, C). Returns labels (H, W), instance
    labels (H, W) or probabilities (H, W, K). ``times``: see ``segment_plane``.
    ``backend``: an open ``Backend`` or a backend name (``backends.BACKENDS`` or one added
    with ``backends.register_backend``). ``threads``: CPU threads for the backend and the
    host stages (0 = all cores). ``tile``, ``tta``: see ``segment_file``."""
    from .backends import open_backend
    from .tta import with_tta

    reader = ArrayReader(np.asarray(image))
    own = backend is None or isinstance(backend, str)
    backend = open_backend(model, backend or "auto", threads=threads) if own else backend
    try:
        backend.activate()
        info = backend.info
        plan = plan_for(reader.height, reader.width, info, tile, batch_size, backend)
        prep = preprocess_for(reader, info)
        bands = list(plane_bands(reader, plan, with_tta(backend, tta), prep, batch_size,
                                 output, None,
                                 None, times, threads=threads))
    finally:
        if own:
            backend.deactivate()
    return np.concatenate(bands, axis=0)


OUTPUTS = ("labels", "probabilities", "instances")


def default_output_path(input_path: str | Path, output: str) -> Path:
    p = Path(input_path)
    stem = p.name[: -len("".join(p.suffixes))] if p.suffixes else p.name
    return p.with_name(f"{stem}.{output}.tif")


def plane_bands(reader: Reader, plan: TilePlan, backend, prep: Preprocess,
                batch_size: int = 1, output: str = "labels",
                on_tiles: Callable[[int], None] | None = None, cancel=None,
                times: StageTimes | None = None, *, max_object: int | None = None,
                name: str = "", threads: int = 1) -> Iterator[np.ndarray]:
    """Bands of one plane in the requested output kind. Instances are streamed
    (``stream_instances``): exactly the whole-plane ``to_instances`` up to renumbering, with
    memory bounded by ``max_object`` (rows of context; ``ObjectTooLargeError`` names the fix
    when an object needs more). Band heights then vary; ``name`` prefixes its errors.
    ``threads``: host threads (see ``segment_plane``)."""
    if output != "instances":
        yield from segment_plane(reader, plan, backend, prep, batch_size, output, on_tiles,
                                 cancel, times, threads=threads)
        return
    from .postprocess import (PlaneInstances, instances_from_probabilities, needs_whole_plane,
                              stream_input)
    from .stream_instances import DEFAULT_MAX_OBJECT

    info = backend.info
    if needs_whole_plane(info):  # the EM watershed with seeds: basins are not local, one band
        yield instances_from_probabilities(np.concatenate(list(segment_plane(
            reader, plan, backend, prep, batch_size, "probabilities", on_tiles, cancel, times,
            threads=threads))), info)
        return
    stream = PlaneInstances(info, plan.image_h, plan.image_w, max_object or DEFAULT_MAX_OBJECT,
                            name)
    for band in segment_plane(reader, plan, backend, prep, batch_size, "probabilities",
                              on_tiles, cancel, times, threads=threads):
        yield from stream.push(stream_input(band, info))
    stream.finish()


def output_format(output: str, info: ModelInfo) -> tuple[int, np.dtype]:
    """(samples per pixel, dtype) of the output file."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if output == "probabilities":
        return info.out_channels, np.dtype(np.float32)
    if output == "instances":
        return 1, np.dtype(np.uint32)
    return 1, label_dtype(info.out_channels)


def segment_file(input_path: str | Path, output_path: str | Path | None = None, model=None, *,
                 backend: str = "auto", batch_size: int = 1, tile: int | None = None,
                 output: str = "labels", threads: int = 0, overwrite: bool = False,
                 series: int | None = None, max_pixels: int | None = None,
                 progress: bool = True, nan_policy: str = "error", cancel=None,
                 level: int | None = None, max_object: int | None = None,
                 on_tiles: Callable[[int], None] | None = None,
                 channels: list[int] | None = None, compression: str = "zlib",
                 tta: str | None = None, times: StageTimes | None = None) -> Summary:
    """Segment a (huge) TIFF (or a PNG/JPEG) into a tiled, compressed BigTIFF; returns a Summary.

    Memory stays bounded: the input is memory-mapped or decoded band by band, and output bands
    are written as soon as their tile row is complete (instances: as soon as their objects are,
    ``stream_instances``; ``max_object`` bounds that memory). ``level``: pyramid level of a
    whole-slide TIFF or OME-Zarr input. The output format follows ``output_path``
    (``outputs.open_writer``): ``*.ome.zarr`` OME-Zarr, ``*.ome.tif`` (or long side > 2048 px)
    pyramidal OME-TIFF, else a tiled BigTIFF; each carries the physical pixel size.
    ``nan_policy``: "error" | "zero" for NaN/Inf pixels (see ``preprocess_for``); ``cancel``: a
    ``threading.Event`` checked between batches (``Cancelled``; nothing is written).
    ``backend``: a name, or an already open backend (several files, one model load; it is not
    closed here). ``on_tiles``: progress callback replacing the own progress bar.
    ``channels``: feed only these channels of the input to the model.
    ``threads``: CPU threads for the backend, the host stages and the TIFF compression (0 = all
    cores). ``compression``: "zlib" (default; every TIFF reader), "zstd" (about 3x less CPU,
    files ~25 % larger; Bio-Formats >= 6.11, libtiff >= 4.0.10, tifffile -- not older readers)
    or "none". ``tile``: None = the cost-optimal plan (``tiling.plan_for``). ``tta``: "none" |
    "flips" | "d4" test-time augmentation (``tta.py``); None = the model's default.
    ``times``: a ``StageTimes`` to accumulate per-stage seconds into (benchmarks)."""
    from contextlib import nullcontext

    from tqdm import tqdm

    from .backends import open_backend
    from .io import check_output, open_image
    from .outputs import open_writer
    from .tta import resolve_mode, with_tta

    out = default_output_path(input_path, output) if output_path is None else Path(output_path)
    check_output(out, input_path, overwrite)
    t0 = time.perf_counter()
    with open_image(input_path, series=series, max_pixels=max_pixels,
                    nan_policy=nan_policy, level=level) as src, \
            (open_backend(model, backend, threads=threads) if isinstance(backend, str)
             else nullcontext(backend.activate())) as be:
        info = be.info
        plan = plan_for(src.height, src.width, info, tile, batch_size, be)
        mode = resolve_mode(tta, info)
        run = with_tta(be, mode)
        samples, dtype = output_format(output, info)
        with tqdm(total=plan.n_tiles * src.n_planes, unit="tile",
                  disable=not progress or on_tiles is not None,
                  desc=Path(input_path).name, dynamic_ncols=True) as bar, \
                open_writer(out, src, samples, dtype, output=output, class_names=info.classes,
                            overwrite=overwrite,
                            compression=None if compression == "none" else compression,
                            threads=threads) as writer:
            for i in range(src.n_planes):
                reader = src.plane(i)
                if channels is not None:
                    reader = ChannelReader(reader, channels, str(input_path))
                prep = preprocess_for(reader, info, str(input_path))
                for band in plane_bands(reader, plan, run, prep, batch_size, output,
                                        on_tiles or bar.update, cancel, times,
                                        max_object=max_object, name=str(input_path),
                                        threads=threads):
                    with _Clock(times, "write"):
                        writer.write_band(band)
        name, reason = getattr(be, "choice", (be.name, ""))
        return Summary(src.height * src.width * src.n_planes, plan.n_tiles * src.n_planes,
                       time.perf_counter() - t0, src.n_planes, name, reason, mode)


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
