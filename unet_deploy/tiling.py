"""Tiling (the Splitter): where the tiles of an image are, and cutting them out.

``plan_tiles`` computes the grid; ``RowSource`` + ``gather_batch`` fill a caller-allocated batch
buffer with mirror-padded, normalized tiles straight from a ``readers.Reader``.

Tiles step by a multiple of 2**depth: a valid U-Net's output only shifts with its input for such
shifts (every 2x2 pool halves the grid), so only then does each tile compute exactly what a
whole-image pass would. Each tile owns a ``step``-sized output cell of a grid that covers the
image exactly once; the network's output is up to 2**depth - 1 pixels larger than the cell, and
those extra pixels (identical to the neighbour's) and everything past the image are cropped when
stitched. Each tile's input window is its output grown by the halo on every side; where it leaves
the image the gather kernel mirrors ("reflect").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OptionError
from .geometry import Geometry
from .metadata import ModelInfo
from .readers import Reader, release_mapped_rows


@dataclass(frozen=True)
class TilePlan:
    image_h: int
    image_w: int
    tile_h: int  # input tile (what the network sees)
    tile_w: int
    out_h: int  # output cell each tile owns (the grid step)
    out_w: int
    halo_y: int
    halo_x: int
    net_h: int  # the network's output for one tile (>= out_h)
    net_w: int

    @property
    def rows(self) -> int:
        return -(-self.image_h // self.out_h)

    @property
    def cols(self) -> int:
        return -(-self.image_w // self.out_w)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    def out_origins(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left image coordinates of the output tiles of one tile row."""
        xs = np.arange(self.cols, dtype=np.int64) * self.out_w
        ys = np.full(self.cols, row * self.out_h, dtype=np.int64)
        return ys, xs

    def in_origins(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = self.out_origins(row)
        return ys - self.halo_y, xs - self.halo_x

    def by_row(self, ids: np.ndarray):
        """For each tile row that tiles ``ids`` (row-major indices) touch, in order: the row,
        where its tiles sit in ``ids`` (a slice when they are consecutive, as in a batch of
        consecutive tiles, so arrays indexed with it are views; else an index array), and
        their columns."""
        rows, columns = np.divmod(ids, self.cols)
        for row in np.unique(rows):
            sel = np.flatnonzero(rows == row)
            where = slice(sel[0], sel[-1] + 1) if sel[-1] - sel[0] + 1 == len(sel) else sel
            yield int(row), where, columns[sel]

    def band(self, row: int) -> tuple[int, int]:
        """Image rows [y0, y1) that tile row ``row`` writes."""
        y0 = row * self.out_h
        return y0, min(self.image_h, y0 + self.out_h)

    def __repr__(self) -> str:
        return (f"TilePlan(image={self.image_h}x{self.image_w}, tile={self.tile_h}x{self.tile_w}"
                f" -> out {self.net_h}x{self.net_w}, step {self.out_h}x{self.out_w}, "
                f"halo={self.halo_y}/{self.halo_x}, "
                f"grid={self.rows}x{self.cols} = {self.n_tiles} tiles)")


def _side(geo: Geometry, tile: int, image_side: int) -> int:
    """Input tile side: the requested legal size, shrunk to the smallest legal size that still
    covers the image in one tile, so small images don't pay for a big tile."""
    if not geo.is_legal(tile):
        raise OptionError(f"tile {tile} is not a legal input size for a depth-{geo.depth} "
                         f"{geo.padding} U-Net; nearest legal sizes: "
                         f"{geo.nearest_legal(tile)} or {geo.input_for_output(geo.output_size(geo.nearest_legal(tile)) + 1)}")
    return min(tile, geo.input_for_output(image_side))


def _step(geo: Geometry, net_out: int, image_side: int, tile: int) -> int:
    if net_out >= image_side:  # one tile covers the image: nothing to align
        return net_out
    quantum = 2**geo.depth
    step = net_out - net_out % quantum
    if step == 0:
        raise OptionError(f"tile {tile} gives a {net_out}-pixel output, less than the 2**depth = "
                         f"{quantum} needed to tile seamlessly; use a tile of at least "
                         f"{geo.input_for_output(quantum)}")
    return step


def plan_tiles(image_h: int, image_w: int, geo: Geometry, tile: int | tuple[int, int],
               shrink: bool = True) -> TilePlan:
    if image_h < 1 or image_w < 1:
        raise ValueError(f"image must be at least 1x1, got {image_h}x{image_w}")
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if shrink:
        th, tw = _side(geo, th, image_h), _side(geo, tw, image_w)
    elif not (geo.is_legal(th) and geo.is_legal(tw)):
        raise ValueError(f"tile {th}x{tw} is not legal for {geo}")
    oh, ow = geo.output_size(th), geo.output_size(tw)
    return TilePlan(image_h, image_w, th, tw, _step(geo, oh, image_h, th),
                    _step(geo, ow, image_w, tw), (th - oh) // 2, (tw - ow) // 2, oh, ow)


# ----------------------------------------------------------------- cost-optimal planning
#
# Without ``--tile`` the planner picks the tile (per axis) and grid with the least total
# network work for this image: every tile recomputes its halo, so a 512² frame is cheapest as
# one 700² tile (not 2x2 tiles of 572), and big images get big tiles, as far as the memory
# cap allows. The cost of a tile is its exact multiply-accumulate count (``tile_macs``,
# computed from the architecture in the metadata, equal to ``flops.conv_macs`` of the graph),
# so non-square tiles and the pooling levels are priced right. Tiles still step by 2**depth.

# Estimated activation memory of one tile during a forward pass, per input pixel and per
# first-level channel (ONNX Runtime CPU, nuclei model, base 16: 360 B/px at 572², 447 at
# 1052², 607 at 1532² peak RSS over the loaded model; 10 floats per base channel covers it).
ACTIVATION_BYTES_PER_PX_PER_BASE = 40
DEFAULT_MEMORY = 1 << 30  # bytes: tiles of one batch + two output row bands
MEMORY_ENV = "UNET_DEPLOY_PLAN_MEMORY_MB"  # overrides DEFAULT_MEMORY (MiB), e.g. 512


def default_memory() -> int:
    """The planner's memory cap in bytes: ``$UNET_DEPLOY_PLAN_MEMORY_MB`` MiB when set, else
    ``DEFAULT_MEMORY``."""
    import os

    value = os.environ.get(MEMORY_ENV, "").strip()
    if not value:
        return DEFAULT_MEMORY
    try:
        mb = float(value)
    except ValueError:
        raise OptionError(f"{MEMORY_ENV}={value!r} is not a number of MiB; set e.g. "
                          f"{MEMORY_ENV}=512") from None
    if mb <= 0:
        raise OptionError(f"{MEMORY_ENV}={value!r} must be positive; set e.g. {MEMORY_ENV}=512")
    return int(mb * 2**20)


def _sides(geo: Geometry, n: np.ndarray) -> list[np.ndarray]:
    """Spatial side after every convolution of the U-Net (forward order, as ``_channels``),
    for input sides ``n`` (int64 array, all legal)."""
    loss = 2 if geo.padding == "valid" else 0
    s = n.astype(np.int64)
    out = []
    for _ in range(geo.depth):
        out += [s - loss, s - 2 * loss]
        s = (s - 2 * loss) // 2
    out += [s - loss, s - 2 * loss]
    s = s - 2 * loss
    for _ in range(geo.depth):
        out.append(s)  # up-convolution: priced at its input side (C_in * H_in * W_in * ...)
        s = 2 * s
        out += [s - loss, s - 2 * loss]
        s = s - 2 * loss
    out.append(s)  # 1x1 head
    return out


def _channels(info: ModelInfo) -> list[int]:
    """MACs per output position of every convolution, in ``_sides`` order."""
    widths = [info.base * 2**i for i in range(info.depth + 1)]
    coef, cin = [], info.in_channels
    for w in widths[:-1]:
        coef += [9 * cin * w, 9 * w * w]
        cin = w
    coef += [9 * (widths[-2] if info.depth else info.in_channels) * widths[-1],
             9 * widths[-1] * widths[-1]]
    for w in reversed(widths[:-1]):
        coef += [4 * 2 * w * w, 9 * 2 * w * w, 9 * w * w]
    coef.append(widths[0] * info.out_channels)
    return coef


def tile_macs(info: ModelInfo, tile_h, tile_w):
    """Multiply-accumulates of one forward pass over a (tile_h, tile_w) tile (Conv and
    ConvTranspose, as ``flops.conv_macs`` counts them); arrays broadcast (an outer product
    for a column of heights and a row of widths)."""
    geo = info.geometry
    th, tw = np.asarray(tile_h, np.int64), np.asarray(tile_w, np.int64)
    total = np.zeros(np.broadcast(th, tw).shape, np.float64)
    for c, sy, sx in zip(_channels(info), _sides(geo, th), _sides(geo, tw)):
        total = total + float(c) * sy * sx
    return total


def _axis_candidates(geo: Geometry, image_side: int, max_side: int | None):
    """Per axis, the cheapest legal input side for every tile count: (sides, steps, counts).
    For a given count a larger side only costs more, so one side per count is enough."""
    cover = geo.input_for_output(image_side)
    smallest = geo.input_for_output(2**geo.depth)
    sides = [cover] if cover <= smallest else geo.legal_sizes(smallest, cover)
    if max_side is not None:
        sides = [s for s in sides if s <= max_side] or [min(sides)]
    best: dict[int, tuple[int, int]] = {}
    for t in sides:
        net = geo.output_size(t)
        step = net if net >= image_side else net - net % 2**geo.depth
        n = -(-image_side // step)
        if n not in best:  # sides ascend: the first side with this count is the cheapest
            best[n] = (t, step)
    counts = np.array(sorted(best), np.int64)
    return (np.array([best[n][0] for n in counts], np.int64),
            np.array([best[n][1] for n in counts], np.int64), counts)


def plan_memory(info: ModelInfo, plan: TilePlan, batch: int = 1) -> int:
    """Estimated bytes a plan needs: the activations of one batch of tiles (at most
    ``n_tiles`` of them) and two float32 output row bands."""
    tiles = min(max(1, batch), plan.n_tiles)
    act = ACTIVATION_BYTES_PER_PX_PER_BASE * info.base * plan.tile_h * plan.tile_w * tiles
    return int(act + 2 * plan.out_h * plan.image_w * info.out_channels * 4)


def plan_cost(info: ModelInfo, plan: TilePlan) -> float:
    """Total network work of a plan in multiply-accumulates (tiles x MACs per tile)."""
    return float(plan.n_tiles * tile_macs(info, plan.tile_h, plan.tile_w))


def choose_plan(image_h: int, image_w: int, info: ModelInfo, batch: int = 1, *,
                max_side: int | None = None, memory: int = DEFAULT_MEMORY) -> TilePlan:
    """The legal plan with the least total MACs whose estimated memory (``plan_memory``)
    fits ``memory`` bytes (the plan with the least memory if none does); input sides are at
    most ``max_side`` (a TensorRT engine's profile). Ties go to the smaller tile."""
    if image_h < 1 or image_w < 1:
        raise ValueError(f"image must be at least 1x1, got {image_h}x{image_w}")
    geo = info.geometry
    ty, sy, ny = _axis_candidates(geo, image_h, max_side)
    tx, sx, nx = _axis_candidates(geo, image_w, max_side)
    tiles = ny[:, None] * nx[None, :]
    cost = tiles * tile_macs(info, ty[:, None], tx[None, :])
    eff = np.minimum(max(1, batch), tiles)
    mem = (ACTIVATION_BYTES_PER_PX_PER_BASE * info.base * (ty[:, None] * tx[None, :]) * eff
           + 2 * sy[:, None] * image_w * info.out_channels * 4)
    area = ty[:, None] * tx[None, :]
    fits = mem <= memory
    if fits.any():
        key = np.where(fits, cost, np.inf)
        i, j = np.unravel_index(np.lexsort((area.ravel(), key.ravel()))[0], key.shape)
    else:
        i, j = np.unravel_index(np.argmin(mem), mem.shape)
    return plan_tiles(image_h, image_w, geo, (int(ty[i]), int(tx[j])))  # sides <= cover


def max_tile_of(backend) -> int | None:
    """Largest input side a backend accepts: a TensorRT engine's optimisation profile (its
    manifest's ``tile``), a ``max_tile`` attribute, or None (any size)."""
    if backend is None:
        return None
    manifest = getattr(backend, "manifest", None)
    if manifest is not None and getattr(manifest, "tile", None):
        return int(manifest.tile)
    limit = getattr(backend, "max_tile", None)
    return int(limit) if limit else None


def plan_for(image_h: int, image_w: int, info: ModelInfo, tile: int | None = None,
             batch: int = 1, backend=None, memory: int | None = None) -> TilePlan:
    """The plan the pipeline runs: ``tile`` given (``--tile``) → exactly that tile (shrunk to
    cover a small image); else the cost-optimal plan (``choose_plan``) within ``memory`` bytes
    (default ``default_memory()``) and the backend's largest accepted tile."""
    if tile:
        return plan_tiles(image_h, image_w, info.geometry, int(tile))
    return choose_plan(image_h, image_w, info, batch, max_side=max_tile_of(backend),
                       memory=memory or default_memory())


class RowSource:
    """Hands the gather kernel the source rows a tile row needs: the reader's array itself
    when it has one (zero copy), else a decoded band (only rows that tile row touches)."""

    def __init__(self, reader: Reader, plan: TilePlan):
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


def gather_batch(source: RowSource, plan: TilePlan, ids: np.ndarray, prep,
                 out: np.ndarray, workers=None) -> np.ndarray:
    """Fill ``out[:len(ids)]`` with tiles ``ids`` (row-major plan indices), each mirror-padded
    and mapped by ``prep`` (a ``normalize.Preprocess``: channel mix, offset, scale).
    ``workers``: a ``workers.Workers`` that cuts each tile row's tiles into chunks gathered on
    several threads (source rows are still fetched here, in order, one tile row at a time)."""
    from .kernels import gather_tiles
    from .workers import Workers, split

    workers = workers or Workers(1)
    for row, where, columns in plan.by_row(ids):
        ys, xs = plan.in_origins(row)
        ys, xs = ys[columns], xs[columns]
        src, row0 = source.rows_for(row)
        in_place = isinstance(where, slice)  # else tile rows interleave in ids: a scratch buffer
        dest = out[where] if in_place else np.empty((len(columns),) + out.shape[1:], out.dtype)

        def gather(span, src=src, row0=row0, ys=ys, xs=xs, dest=dest):
            a, b = span
            gather_tiles(src, row0, plan.image_h, ys[a:b], xs[a:b], prep.mix, prep.offset,
                         prep.scale, dest[a:b])

        workers.run(gather, split(len(columns), workers.threads))
        if not in_place:
            out[where] = dest
    return out[: len(ids)]
