"""Cost-optimal tile planning, measured (issue 13, part 1).

    python benchmarks/latency_ratio.py                    # nuclei, 512/1024 latency + 2048/8000 e2e
    python benchmarks/latency_ratio.py --frames 15 --e2e-sizes 2048 --e2e-repeats 3

1. Latency: ``Segmenter("nuclei")`` per-frame median on 512² and 1024² frames, next to one bare
   ONNX Runtime ``session.run`` (the Segmenter's own session) over the smallest covering legal
   mirror-padded input -- the least any tiler could do -- and next to the old fixed plan
   (``tile=572``, the model's default tile, which was the plan before the planner). Calls are
   interleaved (planner, bare, old, planner, ...) so load from other processes hits all alike.
2. Throughput: ``segment_file`` end to end (TIFF in, tiled BigTIFF labels out) on 2048² and
   8000² uint16 images, planner vs ``--tile 572``, alternating, Mpx/s from the median.

Prints a table and writes benchmarks/results/latency_ratio.md (+ .json with the raw rows; a
section whose sizes are given empty, e.g. ``--sizes ""``, is taken from that JSON, so the long
end-to-end runs can be redone alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish, resolve_or_export  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc039" / "images"


def frame(size: int, rng) -> np.ndarray:
    """A real BBBC039 image mirrored/tiled to size x size when the data is there (the network
    does the same work on any content; real content keeps the argmax stitch honest)."""
    files = sorted(DATA.glob("*.tif")) if DATA.exists() else []
    if not files:
        return rng.integers(0, 4096, (size, size), dtype=np.uint16)
    import tifffile

    img = tifffile.imread(files[int(rng.integers(len(files)))])
    reps = (-(-size // img.shape[0]), -(-size // img.shape[1]))
    return np.ascontiguousarray(np.tile(img, reps)[:size, :size])


def _load() -> float:
    import os

    return round(os.getloadavg()[0], 1)


def latency(path: Path, sizes, n: int, threads: int, batch: int, rng) -> list[dict]:
    from unet_deploy import Segmenter
    from unet_deploy.pipeline import segment_whole  # noqa: F401 - same padding rule below

    rows = []
    with Segmenter(path, backend="onnxruntime", threads=threads, batch_size=batch) as new, \
            Segmenter(path, backend="onnxruntime", threads=threads, batch_size=batch,
                      tile=572) as old:
        session = new._backend.session
        name = session.get_inputs()[0].name
        geo = new.info.geometry
        for size in sizes:
            frames = [frame(size, rng) for _ in range(2)]
            pads = geo.whole_image_padding(size, size)
            bare_in = np.pad(np.zeros((size, size), np.float32), pads, mode="reflect")[None, None]
            bare_in = np.ascontiguousarray(bare_in + rng.random(bare_in.shape, np.float32))
            t = {"new": [], "bare": [], "old": []}
            new(frames[0]), old(frames[0]), session.run(None, {name: bare_in})  # warm
            for i in range(n):
                f = frames[i % 2]
                for key in ("new", "bare", "old"):
                    t0 = time.perf_counter()
                    if key == "new":
                        new(f)
                    elif key == "old":
                        old(f)
                    else:
                        session.run(None, {name: bare_in})
                    t[key].append(time.perf_counter() - t0)
            med = {k: float(np.median(v)) for k, v in t.items()}
            pn, po = new._plan(size, size), old._plan(size, size)
            rows.append({"size": size, "frames": n, "bare_side": bare_in.shape[-1],
                         "load_avg": _load(),
                         "new_plan": f"{pn.n_tiles} x {pn.tile_h}x{pn.tile_w}",
                         "old_plan": f"{po.n_tiles} x {po.tile_h}x{po.tile_w}", **med})
            print(f"{size}²: planner {med['new'] * 1e3:.0f} ms, bare {med['bare'] * 1e3:.0f} ms, "
                  f"ratio {med['new'] / med['bare']:.2f}; old {med['old'] * 1e3:.0f} ms "
                  f"({med['old'] / med['bare']:.2f})", flush=True)
    return rows


def throughput(path: Path, sizes, repeats, threads: int, rng) -> list[dict]:
    import tifffile

    from unet_deploy.backends import open_backend
    from unet_deploy.pipeline import segment_file
    from unet_deploy.tiling import plan_for

    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            open_backend(path, "onnxruntime", threads=threads) as be:
        for size, n in zip(sizes, repeats):
            src = Path(tmp) / f"in{size}.tif"
            tifffile.imwrite(src, frame(size, rng), tile=(256, 256) if size > 4096 else None)
            t = {"new": [], "old": []}
            for i in range(n):
                for key in (("new", "old") if i % 2 == 0 else ("old", "new")):
                    s = segment_file(src, Path(tmp) / "out.tif", backend=be, overwrite=True,
                                     progress=False, tile=572 if key == "old" else None,
                                     threads=threads)
                    t[key].append(s.seconds)
            med = {k: float(np.median(v)) for k, v in t.items()}
            pn = plan_for(size, size, be.info, None, 1, be)
            po = plan_for(size, size, be.info, 572, 1, be)
            rows.append({"size": size, "repeats": n, "load_avg": _load(),
                         "new_plan": f"{pn.n_tiles} x "
                         f"{pn.tile_h}x{pn.tile_w}", "old_plan": f"{po.n_tiles} x "
                         f"{po.tile_h}x{po.tile_w}", **med,
                         "new_mpx": size * size / 1e6 / med["new"],
                         "old_mpx": size * size / 1e6 / med["old"]})
            print(f"{size}²: planner {rows[-1]['new_mpx']:.3f} Mpx/s, tile 572 "
                  f"{rows[-1]['old_mpx']:.3f} Mpx/s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--batch-size", type=int, default=4, help="Segmenter default: 4")
    ap.add_argument("--e2e-sizes", default="2048,8000")
    ap.add_argument("--e2e-repeats", default="5,1")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    path, desc = resolve_or_export(args.model, Path(tempfile.gettempdir()) / "unet-bench")
    rng = np.random.default_rng(0)
    raw_path = Path(__file__).resolve().parent / "results" / "latency_ratio.json"
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    lat = latency(path, sizes, args.frames, args.threads, args.batch_size, rng) if sizes \
        else raw.get("latency", [])
    if sizes and not args.no_write:
        raw_path.write_text(json.dumps({**raw, "latency": lat}, indent=1))
    e2e_sizes = [int(s) for s in args.e2e_sizes.split(",") if s]
    reps = [int(r) for r in args.e2e_repeats.split(",")]
    reps += [reps[-1]] * (len(e2e_sizes) - len(reps))
    thr = throughput(path, e2e_sizes, reps, args.threads, rng) if e2e_sizes \
        else raw.get("throughput", [])
    if e2e_sizes and not args.no_write:
        raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
        raw_path.write_text(json.dumps({**raw, "throughput": thr}, indent=1))
    lines = ["# Cost-optimal tile planning: latency ratio and throughput", "",
             f"Model: {desc}; ONNX Runtime CPU, threads {args.threads or 'all'}. "
             f"Machine: {machine()}, shared with other engineers' jobs (load varies; every "
             f"column of a row was measured interleaved in the same run, medians).", "",
             f"## Segmenter per-frame latency vs one bare ONNX Runtime pass "
             f"(batch_size {args.batch_size}, "
             f"{lat[0]['frames'] if lat else args.frames} frames each, target ratio <= 1.3)",
             "",
             "| frame | planner: plan | planner ms | bare ORT (side) ms | **ratio** | "
             "old tile 572: plan | old ms | old ratio |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in lat:
        lines.append(f"| {r['size']}² | {r['new_plan']} | {r['new'] * 1e3:.0f} | "
                     f"{r['bare'] * 1e3:.0f} ({r['bare_side']}²) | "
                     f"**{r['new'] / r['bare']:.2f}** | {r['old_plan']} | "
                     f"{r['old'] * 1e3:.0f} | {r['old'] / r['bare']:.2f} |")
    lines += ["", "## End to end (`segment_file`, uint16 TIFF in, labels BigTIFF out)", "",
              "| image | runs each | planner: plan | planner Mpx/s | before (tile 572): plan "
              "| before Mpx/s | speed-up |", "|---|---:|---|---:|---|---:|---:|"]
    for r in thr:
        lines.append(f"| {r['size']}² | {r['repeats']} | {r['new_plan']} | {r['new_mpx']:.3f} | "
                     f"{r['old_plan']} | {r['old_mpx']:.3f} | {r['old'] / r['new']:.2f}x |")
    lines += ["", "Both latency columns run the same single network pass (one covering tile); the "
              "Segmenter adds normalization, the gather and the stitch/argmax. A ratio below 1 "
              "is noise. The machine's load average was " + ", ".join(
                  f"{r.get('load_avg', '?')} ({r['size']}²)" for r in lat + thr) +
              " during the rows (2 cores; above 2, other jobs competed for them and absolute "
              "times grow with it); compare within a row."]
    if any(r["repeats"] < 3 for r in thr):
        lines += ["", "Sizes with fewer than 3 runs each are single measurements (too long to "
                  "repeat on this shared 2-core machine); treat them as indicative."]
    publish(lines, "latency_ratio.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
