"""Scale-out on Dask: one image segmented by a cluster, with exactly the single-process result.

``segment_distributed`` (the CLI's ``--workers N`` / ``--scheduler ADDRESS``) cuts the GLOBAL tile
plan (``tiling.plan_for``, the plan ``pipeline.segment_file`` runs) into blocks of consecutive,
full-width tile rows. A worker runs exactly the plan's tiles of its block -- same origins, same
mirroring (only at the true image border: a block reads its halo rows from the input itself),
same ``Preprocess`` (computed once for the whole plane on the client and shipped with every
block), and batches cut at the same multiples of ``batch_size`` as the single-process run where
a block allows -- so every output pixel is computed from the same numbers, bit for bit. The halo
costs no network work (the tiles are the plan's own); it only makes each block read
``tile - step`` input rows beyond its own (``BlockPlan.halo_share``).

- Block sizes (``plan_blocks``): whole waves of blocks on the cluster's threads, about
  ``TARGET_BLOCK_ROWS`` rows, at least ``MIN_BLOCKS_PER_THREAD`` per thread.
- The model is loaded once per worker process (a per-process cache keyed by the model's file,
  hash, backend and threads; ``loads()`` counts them) and checked against the client's file hash.
  The backend is the one the first worker chose (``auto``), pinned for all workers.
- Workers open the input themselves (TIFF via ``io.open_image``, OME-Zarr via ``zarr_io``): the
  input must be a path every worker can read (a shared file system).
- Zarr output (labels, probabilities): workers write their block straight into the output's
  temporary folder, in regions aligned with its 256-row chunks (blocks are cut at chunk
  boundaries; a tile row that straddles one is computed by both neighbours and cropped), then
  the pyramid levels are reduced level by level as region tasks (the same 2x2 mode/mean as the
  streamed writer, so every level is identical); the client only writes the metadata and renames.
- TIFF output: workers return their block, the client writes blocks in image order through the
  usual writer. At most ``2 x threads + 1`` blocks are submitted and not yet written; a finished
  block stays on its worker until it is next in line, so the client holds one block at a time.
- Instances: workers return the block's class map (1 byte per pixel); the client pushes it,
  cut at the plan's tile-row bands, through the same ``stream_instances.InstanceStream`` as the
  single-process run, so the instance ids come out identical (not only up to renumbering).
- Faults: a worker that dies has its blocks re-run elsewhere by the scheduler (results are
  recomputed from the input, so still exact; a partly written Zarr region is rewritten whole).
  An unreachable scheduler is ``ClusterError`` (exit code 8) before any output exists. Errors,
  ``cancel`` and Ctrl-C cancel the outstanding blocks, wait (bounded) for running Zarr writers to
  stop, and remove the temporary output.

Dask (``dask.distributed``) is imported only here, only when this path runs (the ``dask`` extra).
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import Cancelled, ClusterError, MissingExtraError, ModelError, OutputError
from .pipeline import Summary, default_output_path, output_format, segment_plane
from .tiling import TilePlan
from .zarr_io import region

TARGET_BLOCK_ROWS = 2048  # output rows a block aims at (halo share ~ (tile - step) / 2048)
MIN_BLOCKS_PER_THREAD = 3  # ... and at least this many blocks per worker thread, for balance
MAKESPAN_SLACK = 1.05  # a block size this close to the fastest is as good (bigger is cheaper)
MAX_BLOCK_BYTES = 256 << 20  # output bytes of one block (wide images get fewer rows per block)
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler
WORKER_TIMEOUT = 60.0  # seconds to wait for the first worker (external schedulers)
STOP_TIMEOUT = 30.0  # seconds to wait for running Zarr writers after a cancel


def _dask():
    try:
        import distributed
    except ImportError as exc:
        raise MissingExtraError(f"--workers/--scheduler need Dask ({exc}); install it: "
                                f"pip install \"unet-deploy[dask]\"") from exc
    return distributed


# --------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Output rows [y0, y1) of plane ``plane``, computed from the plan's tile rows [r0, r1)."""

    index: int
    plane: int
    y0: int
    y1: int
    r0: int
    r1: int


@dataclass
class BlockPlan:
    """The blocks of every plane, and what they cost beyond the single-process run."""

    blocks: list[Block]
    block_rows: int  # output rows per block (the last one of a plane may be shorter)
    tiles: int  # tiles the blocks run
    plan_tiles: int  # tiles of the plan (single-process run), all planes
    rows_read: int  # input rows the blocks read (their tile rows' windows, clipped)
    image_rows: int  # input rows of all planes

    @property
    def halo_share(self) -> float:
        """Share of the input rows read that are a neighbour's (the blocks' halos)."""
        return 1.0 - self.image_rows / self.rows_read if self.rows_read else 0.0

    @property
    def extra_tiles(self) -> float:
        """Network work beyond the single-process run (tile rows computed twice where Zarr
        chunk boundaries cut a tile row), as a share of the plan's tiles."""
        return self.tiles / self.plan_tiles - 1.0 if self.plan_tiles else 0.0


def plan_blocks(plan: TilePlan, planes: int = 1, *, block_rows: int | None = None,
                chunk: int | None = None, threads: int = 1,
                bytes_per_pixel: int = 4) -> BlockPlan:
    """Cut ``planes`` planes of ``plan`` into blocks of whole, consecutive tile rows.

    ``block_rows``: output rows per block (rounded to whole tile rows). None: the number of
    tile rows per block ``k`` that finishes soonest on ``threads`` equal workers -- the least
    ``ceil(blocks / threads) * k`` (tile rows per thread, waves included) -- among blocks of at
    most ``TARGET_BLOCK_ROWS`` rows, ``MAX_BLOCK_BYTES`` of output (``bytes_per_pixel``) and
    at least ``MIN_BLOCKS_PER_THREAD`` blocks per thread where the image has the rows; the
    largest ``k`` within ``MAKESPAN_SLACK`` of the least wins (less halo, fewer tasks).
    ``chunk``: block edges must be multiples of it (Zarr output written by the workers); the
    tile rows a chunk edge cuts are then run by both blocks and cropped (``extra_tiles``)."""
    step, rows = plan.out_h, plan.rows
    if block_rows:
        k = max(1, round(block_rows / step))
    else:
        threads = max(1, threads)
        cap = min(math.ceil(TARGET_BLOCK_ROWS / step),
                  math.ceil(planes * rows / (MIN_BLOCKS_PER_THREAD * threads)),
                  MAX_BLOCK_BYTES // max(1, step * plan.image_w * bytes_per_pixel))
        span = {k: -(-planes * -(-rows // k) // threads) * k for k in range(1, max(1, cap) + 1)}
        k = max(k for k, v in span.items() if v <= MAKESPAN_SLACK * min(span.values()))
    height = k * step
    if chunk:
        lcm = step * chunk // math.gcd(step, chunk)
        height = lcm if lcm <= 2 * max(height, chunk) else max(chunk, round(height / chunk) * chunk)
    blocks, tiles, read = [], 0, 0
    for p in range(planes):
        for y0 in range(0, plan.image_h, height):
            y1 = min(plan.image_h, y0 + height)
            r0, r1 = y0 // step, -(-y1 // step)
            blocks.append(Block(len(blocks), p, y0, y1, r0, r1))
            tiles += (r1 - r0) * plan.cols
            top = max(0, r0 * step - plan.halo_y)
            bottom = min(plan.image_h, (r1 - 1) * step - plan.halo_y + plan.tile_h)
            read += bottom - top
    return BlockPlan(blocks, height, tiles, plan.n_tiles * planes, read, plan.image_h * planes)


# --------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model: a path it can read, the file's hash (checked),
    the backend (a concrete name once probed), CPU threads (0 = all its cores), TTA mode."""

    path: str
    sha256: str
    backend: str = "auto"
    threads: int = 0
    tta: str | None = None


@dataclass(frozen=True)
class InputSpec:
    path: str
    series: int | None = None
    level: int | None = None
    max_pixels: int | None = None
    nan_policy: str = "error"
    channels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Job:
    """Everything a block task needs besides its block and the plane's ``Preprocess``."""

    model: ModelSpec
    input: InputSpec
    plan: TilePlan
    output: str  # labels | probabilities | instances
    batch_size: int = 1
    host_threads: int = 1
    zarr: str | None = None  # temporary output folder the workers write into (Zarr output)
    lead_shape: tuple[int, ...] = ()
    class_at: int | None = None  # where the Zarr output's class axis stands (zarr_io.region)


_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()
_loads = 0


def loads() -> int:
    """How many times this process loaded a model for block tasks (one per worker and model)."""
    return _loads


def worker_backend(spec: ModelSpec):
    """(backend, lock or None) for ``spec``, loaded once per process and kept; the lock
    serialises calls into a backend that is not thread-safe (workers with several threads)."""
    global _loads
    key = (spec.path, spec.sha256, spec.backend, spec.threads, spec.tta)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            from .backends import open_backend
            from .model_store import file_sha256
            from .tta import with_tta

            if not Path(spec.path).is_file():
                raise ModelError(f"{spec.path}: model file not found on worker {_where()}; put "
                                 f"the model on a file system every worker can read")
            if file_sha256(spec.path) != spec.sha256:
                raise ModelError(f"{spec.path}: the model file on worker {_where()} differs from "
                                 f"the client's; install the same model on every machine")
            be = open_backend(spec.path, spec.backend, threads=spec.threads).activate()
            entry = (with_tta(be, spec.tta), None if be.thread_safe else threading.Lock(), be)
            _cache[key] = entry
            # the blocks ask for the backend by the name "auto" chose: the same one
            chosen = getattr(be, "choice", (spec.backend, ""))[0]
            _cache.setdefault((spec.path, spec.sha256, chosen, spec.threads, spec.tta), entry)
            _loads += 1
    return entry[0], entry[1]


def _where() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Probe:
    info: object  # metadata.ModelInfo
    backend: str
    reason: str
    max_tile: int | None


def probe(spec: ModelSpec) -> Probe:
    """Worker task: load the model (into this worker's cache) and describe it."""
    from .tiling import max_tile_of

    run, _ = worker_backend(spec)
    be = _cache[(spec.path, spec.sha256, spec.backend, spec.threads, spec.tta)][2]
    name, reason = getattr(be, "choice", (be.name, ""))
    return Probe(run.info, name, reason, max_tile_of(be))


class _Serialized:
    """The worker's backend behind its lock, for backends that are not thread-safe."""

    def __init__(self, backend, lock):
        self.backend, self.lock, self.info = backend, lock, backend.info
        self.computes_labels = getattr(backend, "computes_labels", False)

    def infer(self, *args, **kwargs):
        with self.lock:
            return self.backend.infer(*args, **kwargs)


class _StopFlag:
    """``stop()`` as the ``cancel`` event ``segment_plane`` checks between batches."""

    def __init__(self, stop: Callable[[], bool]):
        self.is_set = stop


def block_bands(reader, plan: TilePlan, backend, prep, rows: tuple[int, int],
                batch_size: int = 1, output: str = "labels", threads: int = 1,
                lock=None, stop: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
    """The row bands of tile rows [r0, r1) of ``plan``: ``pipeline.segment_plane`` over those
    rows (same tiles, same ``prep``, same batch cuts), so they are exactly the single-process
    bands. ``output``: "labels" | "probabilities". ``stop()`` is asked between batches
    (raises ``Cancelled``)."""
    if lock is not None:
        backend = _Serialized(backend, lock)
    cancel = _StopFlag(stop) if stop is not None else None
    yield from segment_plane(reader, plan, backend, prep, batch_size, output, cancel=cancel,
                             threads=threads, rows=rows)


def _open_input(spec: InputSpec):
    from .io import open_image

    return open_image(spec.path, series=spec.series, max_pixels=spec.max_pixels,
                      nan_policy=spec.nan_policy, level=spec.level)


def _plane_reader(src, spec: InputSpec, plane: int):
    reader = src.plane(plane)
    if spec.channels is not None:
        from .readers import ChannelReader

        reader = ChannelReader(reader, list(spec.channels), spec.path)
    return reader


def run_block(job: Job, prep, block: Block):
    """Worker task: segment one block. Returns the block's output rows [y0, y1) (labels,
    probabilities, or the class map for instances); with Zarr output, writes them into the
    output's temporary folder instead and returns None."""
    run, lock = worker_backend(job.model)
    compute = "probabilities" if job.output == "instances" else job.output
    zarr_dir = Path(job.zarr) if job.zarr else None
    busy = None
    if zarr_dir is not None:
        busy = zarr_dir / f".busy-{secrets.token_hex(6)}"
        try:
            busy.touch(exist_ok=False)  # the client waits for these after a cancel
        except FileNotFoundError:
            raise Cancelled("output folder removed: the run was cancelled") from None
    try:
        stop = (lambda: (zarr_dir / ".cancel").exists()) if zarr_dir is not None else None
        if stop is not None and stop():
            raise Cancelled("block cancelled")
        with _open_input(job.input) as src:
            reader = _plane_reader(src, job.input, block.plane)
            bands = list(block_bands(reader, job.plan, run, prep, (block.r0, block.r1),
                                     job.batch_size, compute, job.host_threads, lock, stop))
        data = np.concatenate(bands, axis=0)
        off = block.y0 - block.r0 * job.plan.out_h
        data = data[off : off + block.y1 - block.y0]
        if job.output == "instances":
            from .postprocess import stream_input

            return stream_input(data, run.info)
        if zarr_dir is None:
            return data
        if stop():
            raise Cancelled("block cancelled")
        _write_region(zarr_dir, 0, job.lead_shape, block.plane, block.y0, data, job.class_at)
        return None
    finally:
        if busy is not None:
            busy.unlink(missing_ok=True)


def _write_region(folder: Path, level: int, lead_shape, plane: int, y0: int,
                  rows: np.ndarray, class_at: int | None = None) -> None:
    """Write (rows, W[, C]) at rows y0.. of level ``level`` of the ``zarr_io.ZarrWriter`` layout
    (one array per level named by its number; (lead..., [C,] y, x))."""
    import zarr

    block = np.moveaxis(rows, -1, 0) if rows.ndim == 3 else rows
    try:
        arr = zarr.open_array(str(folder / str(level)), mode="r+")
        arr[region(lead_shape, plane, y0, y0 + rows.shape[0], class_at)] = block
    except OSError as exc:
        raise OutputError(f"{folder}: worker {_where()} cannot write rows {y0}.. of level "
                          f"{level} ({exc.strerror or _one_line(exc)}); free space or check "
                          f"that every worker can write the output folder") from exc


def _read_region(folder: Path, level: int, lead_shape, plane: int, y0: int,
                 y1: int, class_at: int | None = None) -> np.ndarray:
    import zarr

    arr = zarr.open_array(str(folder / str(level)), mode="r")
    data = np.asarray(arr[region(lead_shape, plane, y0, y1, class_at)])
    return np.moveaxis(data, 0, -1) if data.ndim == 3 else data


def reduce_region(folder: str, level: int, lead_shape: tuple[int, ...], plane: int,
                  y0: int, y1: int, height: int, kind: str,
                  class_at: int | None = None) -> None:
    """Worker task: rows [y0, y1) of pyramid level ``level`` (of a plane ``height`` rows high
    at level 0) from level ``level - 1``, by the 2x2 reduction ``pyramid.Cascade`` applies
    (mode for labels, mean for probabilities; an odd last row is repeated)."""
    from .pyramid import level_shape, reduce_mean, reduce_mode

    folder_p = Path(folder)
    if (folder_p / ".cancel").exists():
        raise Cancelled("pyramid cancelled")
    below = level_shape(height, 1, level - 1)[0]
    src = _read_region(folder_p, level - 1, lead_shape, plane, 2 * y0, min(2 * y1, below),
                       class_at)
    if src.shape[0] % 2:
        src = np.concatenate([src, src[-1:]])
    reduce = reduce_mean if kind == "probabilities" else reduce_mode
    _write_region(folder_p, level, lead_shape, plane, y0, reduce(src), class_at)


# --------------------------------------------------------------------------------------
# client side
# --------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The connection the client runs on: ``client`` (a ``distributed.Client``), a label for
    the summary, worker and thread counts."""

    client: object
    label: str

    @property
    def workers(self) -> int:
        return len(self.client.nthreads())

    @property
    def threads(self) -> int:
        return sum(self.client.nthreads().values())

    def describe(self) -> str:
        w, t = self.workers, self.threads
        return (f"{w} worker{'s' * (w != 1)} x {t // max(w, 1)} thread{'s' * (t // max(w, 1) != 1)}"
                f" ({self.label})")


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, *,
            threads_per_worker: int = 1,
            connect_timeout: float | None = None) -> Iterator[Cluster]:
    """A cluster to run on: ``scheduler`` (an address such as ``tcp://head:8786``: an existing
    cluster, e.g. ``dask scheduler`` + ``dask worker`` or dask-jobqueue) or a ``LocalCluster``
    of ``workers`` worker processes on this machine (loopback only). Raises ``ClusterError``
    (exit code 8) when the scheduler cannot be reached or no worker joins."""
    if (workers is None) == (scheduler is None):
        raise ValueError("pass exactly one of workers (a local cluster) or scheduler (an address)")
    distributed = _dask()
    import logging

    timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} "
                               f"({_one_line(exc)}); start it (dask scheduler) or check the "
                               f"address, port and firewall") from None
        try:
            try:
                client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                raise ClusterError(f"no Dask worker joined the scheduler at {scheduler} within "
                                   f"{WORKER_TIMEOUT:.0f} s; start workers: dask worker "
                                   f"{scheduler}") from exc
            yield Cluster(client, f"scheduler {scheduler}")
        finally:
            client.close()
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _sigint_ignored():  # the worker processes inherit it: Ctrl-C is the client's to handle
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker,
            processes=True, host="127.0.0.1", dashboard_address=None,
            silence_logs=logging.ERROR,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})  # HTTP endpoint: loopback
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield Cluster(client, f"LocalCluster {cluster.scheduler_address}")
        finally:
            client.close()
    finally:
        cluster.close()


@contextmanager
def _sigint_ignored():
    """SIGINT ignored while local worker processes start (they inherit it), so a Ctrl-C in the
    terminal reaches only the client, which cancels the run and closes the cluster cleanly
    (instead of every worker printing a traceback). Main thread only; elsewhere a no-op."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@dataclass
class DistributedSummary(Summary):
    cluster: str = ""
    blocks: int = 0
    block_rows: int = 0
    halo_share: float = 0.0
    extra_tiles: float = 0.0

    def __str__(self) -> str:
        extra = f", {self.extra_tiles:.1%} tiles run twice" if self.extra_tiles > 0 else ""
        return (super().__str__() + f"; cluster {self.cluster}, {self.blocks} blocks of "
                f"{self.block_rows} rows, halo {self.halo_share:.1%} of rows read{extra}")


class _Limit:
    """What ``tiling.max_tile_of`` reads: the largest tile the workers' backend takes."""

    def __init__(self, max_tile: int | None):
        self.max_tile = max_tile


def segment_distributed(input_path: str | Path, output_path: str | Path | None = None,
                        model=None, *, workers: int | None = None,
                        scheduler: str | None = None, cluster: Cluster | None = None,
                        backend: str = "auto", batch_size: int = 1, tile: int | None = None,
                        output: str = "labels", threads: int | None = None,
                        overwrite: bool = False, series: int | None = None,
                        max_pixels: int | None = None, nan_policy: str = "error",
                        level: int | None = None, max_object: int | None = None,
                        channels: list[int] | None = None, compression: str = "zlib",
                        tta: str | None = None, block_rows: int | None = None,
                        progress: bool = True, cancel=None,
                        on_blocks: Callable[[int, int], None] | None = None,
                        connect_timeout: float | None = None) -> DistributedSummary:
    """Segment one image on a Dask cluster; the output equals ``pipeline.segment_file``'s with
    the same options (labels and probabilities bit for bit; instances too, ids included).

    The cluster: ``workers`` (a ``LocalCluster`` of that many processes, one thread each),
    ``scheduler`` (an address) or ``cluster`` (from ``connect``, reused across files).
    ``threads``: CPU threads per worker for the backend (None: this machine's cores shared
    among local workers; 0 = all of the worker's cores). ``block_rows``: output rows per block
    (None: see ``plan_blocks``). ``on_blocks(done, total)``: progress callback (replaces the
    progress bar). ``cancel``: a ``threading.Event``; once set, ``Cancelled`` is raised and
    nothing is written. Every other option as in ``segment_file``; the input (and the model)
    must be paths every worker can read."""
    from .io import check_output

    out = default_output_path(input_path, output) if output_path is None else Path(output_path)
    check_output(out, input_path, overwrite)
    if cluster is None:
        from .workers import host_threads

        if threads is None and workers:
            threads = max(1, host_threads(0) // workers)
        with connect(workers, scheduler, connect_timeout=connect_timeout) as cl:
            return segment_distributed(
                input_path, out, model, cluster=cl, backend=backend, batch_size=batch_size,
                tile=tile, output=output, threads=threads, overwrite=overwrite, series=series,
                max_pixels=max_pixels, nan_policy=nan_policy, level=level,
                max_object=max_object, channels=channels, compression=compression, tta=tta,
                block_rows=block_rows, progress=progress, cancel=cancel, on_blocks=on_blocks)
    return _Run(cluster, Path(input_path), out, model, backend=backend, batch_size=batch_size,
                tile=tile, output=output, threads=0 if threads is None else threads,
                overwrite=overwrite, series=series, max_pixels=max_pixels,
                nan_policy=nan_policy, level=level, max_object=max_object, channels=channels,
                compression=compression, tta=tta, block_rows=block_rows, progress=progress,
                cancel=cancel, on_blocks=on_blocks).run()


def _check_streamable(path: Path, info, output: str) -> None:
    from .errors import OptionError
    from .postprocess import needs_whole_plane

    if output == "instances" and needs_whole_plane(info):
        raise OptionError(f"{path}: the model's EM watershed has seeds (watershed_h > 0 or "
                          f"watershed_min_distance > 1), which need each plane whole, and "
                          f"--workers/--scheduler work in blocks; run without them, or use "
                          f"--output probabilities")


def _stream_input_bytes(info) -> int:
    """Bytes per pixel a worker returns for instances (``postprocess.stream_input``)."""
    from .postprocess import stream_input

    return stream_input(np.zeros((1, 1, info.out_channels), np.float32), info).itemsize


class _Run:
    """One image on one cluster (``segment_distributed`` with a connected cluster)."""

    def __init__(self, cluster: Cluster, input_path: Path, out: Path, model, **opts):
        self.cluster, self.input_path, self.out, self.model = cluster, input_path, out, model
        self.o = opts
        self.client = cluster.client

    # -- the whole run -------------------------------------------------------------
    def run(self) -> DistributedSummary:
        from tqdm import tqdm

        from .io import open_image
        from .outputs import open_writer, output_layout
        from .tta import resolve_mode

        o = self.o
        t0 = time.perf_counter()
        spec, found = probe_cluster(self.cluster, self.model, o["backend"], o["threads"],
                                    o["tta"])
        info = found.info
        _check_streamable(self.input_path, info, o["output"])
        inp = InputSpec(str(self.input_path.resolve()), o["series"], o["level"],
                        o["max_pixels"], o["nan_policy"],
                        tuple(o["channels"]) if o["channels"] is not None else None)
        from .tiling import plan_for

        with open_image(self.input_path, series=o["series"], max_pixels=o["max_pixels"],
                        nan_policy=o["nan_policy"], level=o["level"]) as src:
            plan = plan_for(src.height, src.width, info, o["tile"], o["batch_size"],
                            _Limit(found.max_tile))
            samples, dtype = output_format(o["output"], info)
            pixel_bytes = samples * np.dtype(dtype).itemsize if o["output"] != "instances" \
                else _stream_input_bytes(info)
            direct = (output_layout(self.out, src.height, src.width) == "zarr"
                      and o["output"] != "instances")
            from .zarr_io import CHUNK

            blocks = plan_blocks(plan, src.n_planes, block_rows=o["block_rows"],
                                 chunk=CHUNK if direct else None,
                                 threads=self.cluster.threads,
                                 bytes_per_pixel=pixel_bytes)
            total = len(blocks.blocks)
            with tqdm(total=total, unit="block", desc=self.input_path.name,
                      disable=not o["progress"] or o["on_blocks"] is not None,
                      dynamic_ncols=True) as bar, \
                    open_writer(self.out, src, samples, dtype, output=o["output"],
                                class_names=info.classes, overwrite=o["overwrite"],
                                compression=None if o["compression"] == "none"
                                else o["compression"], threads=0) as writer:
                job = Job(spec, inp, plan, o["output"], o["batch_size"], 1,
                          str(writer.tmp_path) if direct else None, tuple(src.lead_shape),
                          getattr(writer, "class_at", None))

                def tick(done: int) -> None:
                    bar.update(1)
                    if o["on_blocks"] is not None:
                        o["on_blocks"](done, total)

                try:
                    self._blocks(job, src, info, blocks, writer, tick)
                    if direct:
                        self._pyramid(job, writer, src)
                        for stale in Path(writer.tmp_path).glob(".busy-*"):
                            stale.unlink(missing_ok=True)  # left by workers that died
                        writer.rows_written = writer.total_rows  # every region is written
                except BaseException:
                    if direct:
                        self._stop_writers(Path(writer.tmp_path))
                    raise
        return DistributedSummary(src.height * src.width * src.n_planes,
                                  plan.n_tiles * src.n_planes, time.perf_counter() - t0,
                                  src.n_planes, found.backend, found.reason,
                                  resolve_mode(o["tta"], info),
                                  cluster=self.cluster.describe(), blocks=total,
                                  block_rows=blocks.block_rows, halo_share=blocks.halo_share,
                                  extra_tiles=blocks.extra_tiles)

    # -- level 0 ---------------------------------------------------------------------
    def _blocks(self, job: Job, src, info, blocks: BlockPlan, writer, tick) -> None:
        """Submit the blocks, at most ``2 x threads + 1`` not yet written at a time, and hand
        them to the writer in image order. A finished block's result stays on its worker
        until it is next in line, so the client holds one block at a time; a result lost
        with its worker is recomputed by the scheduler (the client still holds its future)."""
        distributed = _dask()
        o = self.o
        todo = deque(blocks.blocks)
        preps: dict[int, object] = {}
        window = 2 * max(1, self.cluster.threads) + 1
        line: deque = deque()  # (block, future) submitted and not yet written, in image order
        finished: set = set()
        stream = None
        done = 0
        ac = distributed.as_completed(loop=self.client.loop)

        def prep_for(plane: int):
            if plane not in preps:
                from .normalize import preprocess_for

                preps.clear()  # one plane at a time: blocks are submitted in plane order
                reader = _plane_reader(src, job.input, plane)
                # shipped inside each task (a few floats): a dead worker loses nothing
                preps[plane] = preprocess_for(reader, info, str(self.input_path))
            return preps[plane]

        def submit() -> None:
            while todo and len(line) < window:
                b = todo.popleft()
                fut = self.client.submit(run_block, job, prep_for(b.plane), b, pure=False,
                                         key=f"unet-block-{secrets.token_hex(4)}-{b.index}")
                line.append((b, fut))
                ac.add(fut)

        try:
            submit()
            for fut in ac:
                if fut.status == "error":
                    _result(fut)  # raises the block's error now, not when it is next in line
                finished.add(fut.key)
                done += 1
                tick(done)
                while line and line[0][1].key in finished:
                    blk, head = line.popleft()
                    finished.discard(head.key)
                    data = _result(head, blk)
                    head.release()
                    if job.output == "instances":
                        if blk.y0 == 0:
                            if stream is not None:
                                stream.finish()
                            stream = self._stream(job.plan, info)
                        for band in self._tile_row_bands(job.plan, blk, data):
                            for rows in stream.push(band):
                                writer.write_band(rows)
                    elif data is not None:
                        writer.write_band(data)
                if o["cancel"] is not None and o["cancel"].is_set():
                    raise Cancelled(f"cancelled after {done} of {len(blocks.blocks)} blocks; "
                                    f"nothing was written")
                submit()
            if line or todo:
                raise RuntimeError(f"{len(line) + len(todo)} blocks were never finished")
            if stream is not None:
                stream.finish()
        except BaseException:
            self.client.cancel([f for _, f in line])
            raise

    def _stream(self, plan: TilePlan, info):
        from .postprocess import PlaneInstances
        from .stream_instances import DEFAULT_MAX_OBJECT

        return PlaneInstances(info, plan.image_h, plan.image_w,
                              self.o["max_object"] or DEFAULT_MAX_OBJECT, str(self.input_path))

    @staticmethod
    def _tile_row_bands(plan: TilePlan, blk: Block, data: np.ndarray) -> Iterator[np.ndarray]:
        """The block's rows cut where the single-process run's bands end (tile rows), so the
        instance stream sees the very same bands (and numbers objects the same way)."""
        for r in range(blk.r0, blk.r1):
            y0, y1 = plan.band(r)
            a, b = max(y0, blk.y0) - blk.y0, min(y1, blk.y1) - blk.y0
            if b > a:
                yield data[a:b]

    # -- pyramid (Zarr output written by the workers) -------------------------------
    def _pyramid(self, job: Job, writer, src) -> None:
        from .pyramid import level_shape

        px_bytes = writer.samples * np.dtype(writer.dtype).itemsize
        for level in range(1, writer.levels):
            h, w = level_shape(src.height, src.width, level)
            # a task reads 2 x step rows of the level below (2 x w wide): MAX_BLOCK_BYTES
            rows = min(TARGET_BLOCK_ROWS, MAX_BLOCK_BYTES // max(1, 4 * w * px_bytes))
            step = max(1, rows // writer.chunk) * writer.chunk
            futs = [self.client.submit(reduce_region, job.zarr, level, job.lead_shape, p, y0,
                                       min(h, y0 + step), src.height, job.output,
                                       job.class_at, pure=False)
                    for p in range(src.n_planes) for y0 in range(0, h, step)]
            try:
                for fut in futs:
                    _result(fut)
            except BaseException:
                self.client.cancel(futs)
                raise
            if self.o["cancel"] is not None and self.o["cancel"].is_set():
                raise Cancelled("cancelled while writing the pyramid; nothing was written")

    def _stop_writers(self, folder: Path) -> None:
        """After a cancel or error: tell running block tasks to stop (``.cancel``) and wait,
        bounded, until none is still writing into ``folder`` (then the writer removes it)."""
        try:
            (folder / ".cancel").touch()
        except OSError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(folder.glob(".busy-*")):
            time.sleep(0.05)


def _result(fut, block: Block | None = None):
    """A task's result; the cluster's own failures become ``ClusterError``."""
    distributed = _dask()
    from concurrent.futures import CancelledError

    from distributed.comm import CommClosedError

    try:
        return fut.result()
    except distributed.KilledWorker as exc:
        where = f"block {block.index} (rows {block.y0}..{block.y1})" if block else "a task"
        raise ClusterError(f"{where} killed its workers repeatedly ({_one_line(exc)}); "
                           f"check the worker logs (out of memory? give workers more "
                           f"memory or use smaller blocks)") from None
    except (CommClosedError, CancelledError, distributed.client.ClosedClientError) as exc:
        raise ClusterError(f"lost the Dask cluster ({type(exc).__name__}: "
                           f"{_one_line(exc)}); check the scheduler and rerun") from None


def probe_cluster(cluster: Cluster, model=None, backend: str = "auto", threads: int = 0,
                  tta: str | None = None) -> tuple[ModelSpec, Probe]:
    """Load the model on one worker (it stays cached there) and pin the backend it chose, so
    every worker runs the same one: (the ``ModelSpec`` for block tasks, the ``Probe``)."""
    from .model_store import file_sha256, resolve_model

    path = resolve_model(model).resolve()
    spec = ModelSpec(str(path), file_sha256(path), backend, threads, tta)
    found = _result(cluster.client.submit(probe, spec, pure=False))
    return ModelSpec(spec.path, spec.sha256, found.backend, threads, tta), found


def segment_files_distributed(inputs, model=None, *, workers: int | None = None,
                              scheduler: str | None = None, output_path=None,
                              output: str | None = None, threads: int | None = None,
                              preview: bool = False, on_file=None,
                              warn: Callable[[str], None] | None = None,
                              on_backend: Callable[[str, str], None] | None = None,
                              connect_timeout: float | None = None, **options) -> list:
    """``batch.segment_files`` on a cluster (the CLI's ``--workers``/``--scheduler``): inputs
    expanded the same way, every output checked before the cluster starts, one cluster for
    all files, a ``batch.FileResult`` per file (``on_file``) whose summary names the cluster,
    the same fit warnings (``warn``). ``options``: as ``segment_distributed`` (backend,
    batch_size, tile, overwrite, ...)."""
    from .batch import FileResult, expand_inputs, output_paths
    from .errors import OptionError
    from .io import check_output
    from .pipeline import OUTPUTS
    from .workers import host_threads

    if (workers is None) == (scheduler is None):
        raise OptionError("pass one of --workers N (a local cluster) or --scheduler ADDRESS "
                          "(an existing one), not both")
    paths = expand_inputs(inputs)
    if output is not None and output not in OUTPUTS:
        raise OptionError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")
    if output is not None:  # a known kind: check every output before starting a cluster
        for src_path, out in zip(paths, output_paths(paths, output_path, output)):
            check_output(out, src_path, options.get("overwrite", False))
    if threads is None and workers:
        threads = max(1, host_threads(0) // workers)
    results = []
    with connect(workers, scheduler, connect_timeout=connect_timeout) as cl:
        _, found = probe_cluster(cl, model, options.get("backend", "auto"),
                                 0 if threads is None else threads, options.get("tta"))
        if on_backend is not None:
            on_backend(found.backend, found.reason)
        kind = output or found.info.default_output_kind
        outs = output_paths(paths, output_path, kind)
        if len(paths) > 1 and output_path is not None:
            Path(output_path).mkdir(parents=True, exist_ok=True)
        for src_path, out in zip(paths, outs):
            check_output(out, src_path, options.get("overwrite", False))
        for src_path in paths if warn is not None else ():
            _fit_warnings(src_path, found.info, options, warn)
        for src_path, out in zip(paths, outs):
            summary = segment_distributed(src_path, out, model, cluster=cl, output=kind,
                                          threads=threads, **options)
            result = FileResult(src_path, out, summary)
            if preview:
                from .preview import preview_path, write_preview

                result.preview = write_preview(out, preview_path(out), image=src_path,
                                               overwrite=True)
            results.append(result)
            if on_file is not None:
                on_file(result)
    return results


def _fit_warnings(path, info, options: dict, warn: Callable[[str], None]) -> None:
    """``fit.fit_warnings`` for one input, as ``batch.segment_files`` gives them."""
    from .fit import fit_warnings
    from .io import open_image

    with open_image(path, series=options.get("series"), max_pixels=options.get("max_pixels"),
                    nan_policy=options.get("nan_policy", "error"),
                    level=options.get("level")) as src:
        spec = InputSpec(str(path), channels=tuple(options["channels"])
                         if options.get("channels") is not None else None)
        for line in fit_warnings(_plane_reader(src, spec, 0), info, str(path)):
            warn(line)
