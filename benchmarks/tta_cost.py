"""What test-time augmentation costs: per-image seconds of ``segment_array`` with ``tta`` none /
flips / d4 on the shipped models' own image sizes (BBBC039 520x696, ISBI 512x512), calls
interleaved, medians. Writes benchmarks/results/tta_cost.md.

    python benchmarks/tta_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def images():
    import tifffile

    nuc = sorted((DATA / "bbbc039" / "images").glob("*.tif"))
    em = DATA / "isbi2012" / "train-volume.tif"
    out = {}
    if nuc:
        out["nuclei"] = tifffile.imread(nuc[0])
    if em.exists():
        out["em-membranes"] = tifffile.imread(em)[-1]
    return out


def main(argv=None) -> int:
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from unet_deploy.backends import open_backend
    from unet_deploy.pipeline import segment_array

    rows = []
    for model, img in images().items():
        with open_backend(model, "onnxruntime", threads=args.threads) as be:
            t = {m: [] for m in ("none", "flips", "d4")}
            segment_array(img, backend=be, tta="none", output="labels")  # warm
            for _ in range(args.repeats):
                for mode in t:
                    t0 = time.perf_counter()
                    segment_array(img, backend=be, tta=mode, output="labels")
                    t[mode].append(time.perf_counter() - t0)
        med = {m: float(np.median(v)) for m, v in t.items()}
        rows.append((model, img.shape, med))
        print(model, med, flush=True)
    lines = ["# Test-time augmentation: cost per image", "",
             f"ONNX Runtime CPU, threads {args.threads or 'all'}, {args.repeats} interleaved "
             f"calls per mode, medians; machine: {machine()}, shared (load average "
             f"{os.getloadavg()[0]:.1f} at the end).", "",
             "| model | image | none s | flips s (x) | d4 s (x) |", "|---|---|---:|---:|---:|"]
    for model, shape, med in rows:
        lines.append(f"| {model} | {shape[0]}x{shape[1]} | {med['none']:.2f} | "
                     f"{med['flips']:.2f} ({med['flips'] / med['none']:.1f}x) | "
                     f"{med['d4']:.2f} ({med['d4'] / med['none']:.1f}x) |")
    publish(lines, "tta_cost.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
