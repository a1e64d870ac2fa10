"""CPU INT8 (ONNX Runtime static Q/DQ) vs float32: speed-up and accuracy gate on this machine.

    python benchmarks/int8_cpu.py [--checkpoint runs/nuclei/best.pt] [--reps 7] [--threads 0]

Uses the trained nuclei checkpoint when present (exported on the fly), else a random-weight
U-Net of the same size (depth 4, base 16). Calibration and evaluation tiles come from
BBBC039 images (disjoint halves). fp32 and int8 runs are interleaved and medians reported,
because this machine may be shared with other jobs. Writes benchmarks/results/int8_cpu.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = "/work/shared/data/bbbc039/images/*.tif"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "runs/nuclei/best.pt"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--calib-tiles", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_cpu.md"))
    args = ap.parse_args()

    import onnxruntime as ort

    from unet_deploy.model_store import read_onnx
    from unet_deploy.gate import DEFAULT_MIN_AGREEMENT, gate_report, run_onnx
    from unet_deploy.quantize import calibration_tiles, quantize_int8

    tmp = Path(tempfile.mkdtemp(prefix="int8bench"))
    fp32 = tmp / "model.onnx"
    if Path(args.checkpoint).is_file():
        from unet_deploy.export import export_checkpoint
        export_checkpoint(args.checkpoint, fp32)
        source = f"trained checkpoint {args.checkpoint}"
    else:
        from unet_deploy.testing import random_unet_onnx
        random_unet_onnx(fp32, 4, 16, tile=572, name="random-b16", instance_scheme="none")
        source = "random weights (no checkpoint found)"
    info = read_onnx(fp32).info
    images = sorted(glob.glob(DATA))
    calib, held_out = images[0::2], images[1::2]
    t0 = time.perf_counter()
    res = quantize_int8(fp32, tmp / "model.int8.onnx", calibration=calib[:16],
                        n_tiles=args.calib_tiles, min_agreement=0.0)
    build_s = time.perf_counter() - t0
    # gate on held-out images too (the build's own gate uses the calibration tiles)
    ev = calibration_tiles(held_out[:8], info, info.tile, 8, seed=1)
    held = gate_report(run_onnx(fp32, ev), run_onnx(res.path, ev), DEFAULT_MIN_AGREEMENT)

    def session(p):
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        return ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(fp32), "int8": session(res.path)}
    x = ev[: args.batch]
    for s in sessions.values():  # warm-up
        s.run(None, {"image": x})
    times = {k: [] for k in sessions}
    for _ in range(args.reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"image": x})
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    speedup = med["fp32"] / med["int8"]
    load = os.getloadavg()
    lines = [
        "# CPU INT8 (ONNX Runtime static Q/DQ) vs float32",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"CPUs, load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} (shared with "
        f"other jobs: numbers are medians of interleaved runs)",
        f"- onnxruntime {ort.__version__}, intra-op threads {args.threads or 'default'}",
        f"- model: {source}; depth {info.depth}, base {info.base}, tile {info.tile}, "
        f"{info.out_channels} classes",
        f"- int8 build: {build_s:.1f} s, {args.calib_tiles} calibration tiles from "
        f"{min(16, len(calib))} BBBC039 images",
        f"- accuracy gate (calibration tiles): {res.report.summary()}",
        f"- accuracy on held-out BBBC039 tiles: {held.summary()}",
        "",
        f"| precision | median s / batch of {args.batch} tiles {info.tile}² | min s | "
        f"runs |",
        "|---|---|---|---|",
    ]
    for k in sessions:
        lines.append(f"| {k} | {med[k]:.3f} | {min(times[k]):.3f} | {len(times[k])} |")
    lines += ["", f"**Speed-up int8 over fp32: {speedup:.2f}x** (target >= 1.8x: "
              f"{'met' if speedup >= 1.8 else 'NOT met'})", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
