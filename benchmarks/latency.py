"""Per-frame latency of ``Segmenter`` for 512², 1024² and 2048² frames (median and p99).

    python benchmarks/latency.py                       # model: nuclei if present, else a
                                                       # random depth-4 base-16 U-Net
    python benchmarks/latency.py --model m.onnx --repeats 30,15,6 --batch-size 4

Prints a table and writes benchmarks/results/latency.md. The first call after construction is
reported separately (it shows that warm-up compiled the kernels beforehand).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish, resolve_or_export  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--repeats", default="30,12,5", help="frames per size (comma list)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from unet_deploy import Segmenter

    path, desc = resolve_or_export(args.model, Path(tempfile.gettempdir()) / "unet-bench")
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = [int(r) for r in args.repeats.split(",")]
    repeats += [repeats[-1]] * (len(sizes) - len(repeats))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    seg = Segmenter(path, backend=args.backend, batch_size=args.batch_size, threads=args.threads)
    open_s = time.perf_counter() - t0
    rows = []
    with seg:
        for size, n in zip(sizes, repeats):
            frames = [rng.integers(0, 4096, (size, size), dtype=np.uint16) for _ in range(2)]
            times = []
            for i in range(n + 1):
                t = time.perf_counter()
                seg(frames[i % 2])
                times.append(time.perf_counter() - t)
            first, rest = times[0], np.array(times[1:])
            plan = seg._plan(size, size)
            rows.append((size, n, plan.n_tiles, first, float(np.median(rest)),
                         float(np.percentile(rest, 99)), size * size / 1e6 / float(np.median(rest))))
            print(f"{size}²: median {rows[-1][4] * 1e3:.0f} ms, p99 {rows[-1][5] * 1e3:.0f} ms", flush=True)
        health = seg.health()
    lines = ["# Segmenter per-frame latency", "",
             f"Model: {desc}; backend {health['backend']}, batch size {args.batch_size}, tile "
             f"{seg.tile}, threads {args.threads or 'all'}.",
             f"Machine: {machine()}; shared with background training jobs, so absolute numbers "
             f"are pessimistic.",
             f"Segmenter construction (load + warm-up): {open_s:.2f} s.", "",
             "| frame | frames | tiles/frame | first call ms | median ms | p99 ms | Mpx/s (median) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for size, n, tiles, first, med, p99, mpx in rows:
        lines.append(f"| {size}² | {n} | {tiles} | {first * 1e3:.0f} | {med * 1e3:.0f} | "
                     f"{p99 * 1e3:.0f} | {mpx:.2f} |")
    lines += ["", "p99 over few frames is close to the maximum; rerun with more --repeats for a "
              "tighter tail."]
    publish(lines, "latency.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
