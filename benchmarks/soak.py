"""Soak: many Segmenter calls on mixed frame sizes keep host memory flat; open/close cycles
return memory.

    python benchmarks/soak.py                      # 10,000 calls + 200 open/close cycles
    python benchmarks/soak.py --calls 2000 --cycles 50 --model m.onnx

Calls mix sizes (16..--max-side px, both orientations), dtypes (uint8/uint16/float32), direct
calls, ``submit()`` (every 4th call) and ROI calls (every 7th). RSS is printed every
``--every`` calls; flatness = RSS growth between the end of warm-up (10 % of the calls) and
the end, and the slope of a straight-line fit over the second half. Writes
benchmarks/results/soak.md. Default model: a tiny random U-Net (depth 2, base 4), so the
soak exercises the host-side code paths many times; pass --model for a real one.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish, rss_mb  # noqa: E402


def tiny_model(folder: Path) -> Path:
    from unet_deploy.testing import random_unet_onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "soak_tiny.onnx"
    if not path.exists():
        random_unet_onnx(path)
    return path


def soak_calls(model: Path, calls: int, every: int, max_side: int, batch_size: int):
    from unet_deploy import Segmenter

    rng = np.random.default_rng(0)
    dtypes = [np.uint8, np.uint16, np.float32]
    samples = []  # (call, rss)
    t0 = time.perf_counter()
    with Segmenter(model, batch_size=batch_size) as seg:
        samples.append((0, rss_mb()))
        print(f"{'calls':>7} {'RSS MB':>8} {'s':>7}", flush=True)
        pending = None
        for i in range(1, calls + 1):
            h, w = (int(v) for v in rng.integers(16, max_side + 1, 2))
            frame = rng.integers(0, 200, (h, w)).astype(dtypes[i % 3])
            if i % 4 == 0:
                if pending is not None:
                    pending.result()
                pending = seg.submit(frame)
            elif i % 7 == 0:
                seg(frame, roi=(0, max(1, h // 2), w // 3, w))
            else:
                seg(frame)
            if i % every == 0 or i == calls:
                if pending is not None:
                    pending.result()
                    pending = None
                samples.append((i, rss_mb()))
                print(f"{i:>7} {samples[-1][1]:>8.1f} {time.perf_counter() - t0:>7.1f}", flush=True)
        health = seg.health()
    return samples, time.perf_counter() - t0, health


def open_close(model: Path, cycles: int):
    from unet_deploy import Segmenter

    frame = np.random.default_rng(1).integers(0, 255, (100, 120), dtype=np.uint8)
    marks = []
    t0 = time.perf_counter()
    for i in range(1, cycles + 1):
        with Segmenter(model, batch_size=4) as seg:
            seg(frame)
        if i % max(1, cycles // 10) == 0 or i == 1:
            gc.collect()
            marks.append((i, rss_mb()))
            print(f"open/close {i:>4}: RSS {marks[-1][1]:.1f} MB", flush=True)
    return marks, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    model = args.model or tiny_model(Path(tempfile.gettempdir()) / "unet-bench")
    start_rss = rss_mb()
    samples, secs, health = soak_calls(model, args.calls, args.every, args.max_side, args.batch_size)
    calls = np.array([c for c, _ in samples], float)
    rss = np.array([r for _, r in samples])
    warm_i = int(np.searchsorted(calls, 0.1 * args.calls))
    after_warm = rss[warm_i]
    half = calls >= calls[-1] / 2
    slope = float(np.polyfit(calls[half], rss[half], 1)[0]) * 1000 if half.sum() >= 2 else 0.0
    marks, oc_secs = open_close(model, args.cycles) if args.cycles else ([], 0.0)
    lines = ["# Segmenter soak", "",
             f"Model: {model.name if args.model else 'tiny random U-Net (depth 2, base 4, tile 92)'}; "
             f"batch size {args.batch_size}; frames {16}..{args.max_side} px per side, uint8/uint16/"
             f"float32, every 4th call via submit(), every 7th with an ROI.",
             f"Machine: {machine()}; shared with background training jobs.", "",
             f"## {args.calls} calls on mixed frame sizes ({secs:.0f} s, "
             f"{secs / args.calls * 1e3:.1f} ms/call)", "",
             "| calls | RSS MB |", "|---:|---:|"]
    lines += [f"| {c} | {r:.1f} |" for c, r in samples]
    lines += ["",
              f"Process RSS before the Segmenter: {start_rss:.1f} MB. After warm-up "
              f"({int(calls[warm_i])} calls): {after_warm:.1f} MB; at the end: {rss[-1]:.1f} MB; "
              f"growth after warm-up {rss[-1] - after_warm:+.1f} MB; slope over the second half "
              f"{slope:+.3f} MB per 1000 calls. Health at the end: {health['status']}, "
              f"{health['calls']} calls, {health['failures']} failures."]
    if marks:
        lines += ["", f"## {args.cycles} open/close cycles ({oc_secs:.0f} s; each: load, warm-up, "
                  f"one frame, close)", "", "| cycle | RSS MB |", "|---:|---:|"]
        lines += [f"| {c} | {r:.1f} |" for c, r in marks]
        base = marks[min(1, len(marks) - 1)][1]
        lines += ["", f"Growth from cycle {marks[min(1, len(marks) - 1)][0]} to {marks[-1][0]}: "
                  f"{marks[-1][1] - base:+.1f} MB "
                  f"({(marks[-1][1] - base) / max(1, marks[-1][0] - marks[min(1, len(marks) - 1)][0]) * 1000:+.1f} kB/cycle)."]
    publish(lines, "soak.md", write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
