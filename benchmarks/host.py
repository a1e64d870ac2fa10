"""Host-only throughput: the whole pipeline with the zero-cost backend (``backends.null``,
selected by name through ``register_backend``), so only the host stages are timed -- reading,
normalization statistics, gather, checks, stitch, and writing.

    python benchmarks/host.py                         # -> benchmarks/results/host.md + host.json
    python benchmarks/host.py --baseline /tmp/old     # also an older checkout, side by side
    python benchmarks/host.py --size 2048 --repeats 1 --out /tmp/h.md   # quick

Input: a synthetic uint16 SIZE x SIZE image with blob structure. Outputs: "bigtiff" reads an
uncompressed TIFF (memory-mapped) and writes labels to a tiled BigTIFF (``TiffBandWriter``,
zlib or zstd) -- what ``segment_file`` wrote when issue 14 measured 54 Mpx/s; "ometiff" is
``segment_file``'s default writer today, a pyramidal OME-TIFF for outputs over 2048 px (2x2
mode levels down to 1024 px, one third more pixels to compress); "memory" is
``segment_array`` on the array. The null backend returns either class maps
(``computes_labels``: what a GPU backend now returns for labels, 1 byte per pixel) or
probabilities (float32 per class, argmaxed on the host, as before). Tile 572 (the paper's),
batch 16 (the GPU end-to-end setting).

Every measurement runs in a fresh process (a warm-up call, then ``--repeats`` timed calls); the
configurations -- and, with ``--baseline DIR``, the same configurations on an older checkout
(``git worktree add DIR <commit>``), whose backends return probabilities only -- are run
interleaved, round after round, and reported as medians with ratios: this machine's two cores
are shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TARGET_MPX_S = 150.0  # issue 14, labels TIFF at 8192², this 2-core machine


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """uint16 image with blob-like structure (coarse noise + fine noise), cheap at 8192²."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 32 + 1, size // 32 + 1), dtype=np.float32)
    img = np.repeat(np.repeat(low, 32, axis=0), 32, axis=1)[:size, :size]
    img += 0.2 * rng.random((size, size), dtype=np.float32)
    return (img * 3000).astype(np.uint16)


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def use_checkout(root: Path):
    """Import ``unet_deploy`` from the checkout ``root``, installed or not: the package from
    ``root/unet_deploy``, its ``kernels`` and ``models`` subpackages from ``root/kernels`` and
    ``root/models`` (where an install maps them)."""
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "unet_deploy" or m.startswith("unet_deploy.")]:
        del sys.modules[name]
    import unet_deploy

    unet_deploy.__path__.append(str(root))
    import unet_deploy.kernels as kernels

    if not Path(kernels.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"unet_deploy.kernels came from {kernels.__file__}, not {root}")
    return unet_deploy


# --------------------------------------------------------------------------- one child run

def child(args) -> dict:
    root = Path(args.root).resolve()
    new = (root / "unet_deploy" / "workers.py").is_file()
    if not new:  # an older checkout: the same zero-cost output, through its own Backend base
        use_checkout(ROOT)
        from unet_deploy.backends.null import NullBackend
        from unet_deploy.model_store import resolve_model

        reference = NullBackend(resolve_model(args.model)).activate()
    use_checkout(root)
    from unet_deploy.backends.base import Backend
    from unet_deploy.model_store import read_onnx, resolve_model

    model = resolve_model(args.model)
    info = read_onnx(model).info
    kw = {"threads": args.threads} if new else {}
    times_cls = None
    if new:
        from unet_deploy.backends import register_backend
        from unet_deploy.backends.null import NullBackend
        from unet_deploy.pipeline import StageTimes

        times_cls = StageTimes

        def factory(path, threads):
            b = NullBackend(path, threads)
            b.computes_labels = args.form == "labels"
            return b

        register_backend("null", factory, replace=True)
        backend = "null"
    else:  # its backends return probabilities only
        class Baseline(Backend):
            name = "null"
            thread_safe = True

            def _activate(self):
                pass

            def _infer(self, batch):
                return reference._infer(batch)

        backend = Baseline()
        backend.info = info
    runs, stages = [], []
    if args.mode == "memory":
        from unet_deploy.pipeline import segment_array

        image = synthetic_image(args.size)

        def once():
            times = times_cls() if times_cls else None
            t0 = time.perf_counter()
            be = backend
            if not new:
                be.activate()
            segment_array(image, model, backend=be, batch_size=args.batch, tile=args.tile,
                          times=times, **kw)
            return time.perf_counter() - t0, times
    else:
        from unet_deploy import pipeline

        out = Path(args.workdir) / f"out-{os.getpid()}.tif"
        if not new:
            import unet_deploy.backends as B

            B.open_backend = lambda *a, **k: backend  # the old segment_file takes names only

        def once():
            times = times_cls() if times_cls else None
            t0 = time.perf_counter()
            if args.mode == "bigtiff" and new:
                write_bigtiff(args, model, out, times)
            else:  # the old segment_file wrote exactly this BigTIFF
                extra = dict(kw, compression=args.compression, times=times) if new else {}
                pipeline.segment_file(args.input, out, model,
                                      backend="null" if new else "auto", batch_size=args.batch,
                                      tile=args.tile, overwrite=True, progress=False, **extra)
            return time.perf_counter() - t0, times

    once()  # warm-up: Numba caches loaded, pages of the input in the page cache
    for _ in range(args.repeats):
        seconds, times = once()
        runs.append(seconds)
        if times is not None:
            stages.append({k: getattr(times, k) for k in ("gather", "infer", "stitch", "write")})
    prep = None
    if new:  # the serial normalization statistics, timed alone
        from unet_deploy.normalize import preprocess_for
        from unet_deploy.readers import ArrayReader

        reader = ArrayReader(synthetic_image(args.size))
        t0 = time.perf_counter()
        preprocess_for(reader, info)
        prep = time.perf_counter() - t0
    return {"seconds": runs, "stages": stages, "preprocess": prep,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def write_bigtiff(args, model, out: Path, times) -> None:
    """``segment_file`` as it was when the issue measured it: the plane's label bands straight
    into a tiled BigTIFF (today's ``segment_file`` picks a pyramidal OME-TIFF at this size)."""
    import numpy as np

    from unet_deploy.backends import open_backend
    from unet_deploy.io import TiffBandWriter, open_image
    from unet_deploy.normalize import preprocess_for
    from unet_deploy.pipeline import _Clock, plane_bands
    from unet_deploy.tiling import plan_tiles

    with open_image(args.input) as src, open_backend(model, "null", threads=args.threads) as be:
        info = be.info
        plan = plan_tiles(src.height, src.width, info.geometry, args.tile)
        reader = src.plane(0)
        prep = preprocess_for(reader, info, str(args.input))
        with TiffBandWriter(out, src.lead_shape, src.height, src.width, 1, np.uint8,
                            resolution=src.resolution, overwrite=True,
                            compression=args.compression, threads=args.threads) as writer:
            for band in plane_bands(reader, plan, be, prep, args.batch, "labels", None, None,
                                    times, threads=args.threads):
                with _Clock(times, "write"):
                    writer.write_band(band)


# --------------------------------------------------------------------------- the parent

MODES = ("bigtiff", "ometiff", "memory")


def configs(threads: list[int], baseline: bool, modes=MODES,
            forms=("labels", "probabilities"), zstd: bool = True) -> list[dict]:
    out = []
    for t in threads:
        for mode in modes:
            comp = "" if mode == "memory" else "zlib"
            for form in forms if mode != "ometiff" else ("labels",):
                out.append(dict(variant="new", mode=mode, compression=comp, form=form,
                                threads=t))
            if baseline and mode != "ometiff":  # the old segment_file wrote a plain BigTIFF
                out.append(dict(variant="baseline", mode=mode, compression=comp,
                                form="probabilities", threads=t))
        if zstd and "bigtiff" in modes:
            out.append(dict(variant="new", mode="bigtiff", compression="zstd", form="labels",
                            threads=t))
    return out


def run_child(cfg: dict, args, root: Path, workdir: Path, input_path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--root", str(root),
           "--mode", cfg["mode"], "--form", cfg["form"], "--threads", str(cfg["threads"]),
           "--compression", cfg["compression"] or "zlib", "--size", str(args.size),
           "--batch", str(args.batch), "--tile", str(args.tile), "--repeats",
           str(args.repeats), "--model", args.model, "--input", str(input_path),
           "--workdir", str(workdir)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def where(mode: str, compression: str) -> str:
    return {"bigtiff": f"BigTIFF {compression}", "ometiff": f"OME-TIFF pyramid {compression}",
            "memory": "in memory"}[mode]


def label(cfg: dict) -> str:
    form = "class maps" if cfg["form"] == "labels" else "probabilities"
    return f"{cfg['variant']} | {where(cfg['mode'], cfg['compression'])} | {form}"


def measure(args, threads: list[int], baseline: Path | None = None,
            modes=MODES, forms=("labels", "probabilities")) -> list[dict]:
    """Run every configuration ``args.rounds`` times, interleaved; returns rows with medians."""
    workdir = Path(tempfile.mkdtemp(prefix="hostbench"))
    input_path = workdir / "input.tif"
    import tifffile

    tifffile.imwrite(input_path, synthetic_image(args.size))  # uncompressed: memory-mapped
    cfgs = configs(threads, baseline is not None, modes, forms, zstd=len(forms) > 1)
    samples = {i: [] for i in range(len(cfgs))}
    for rnd in range(args.rounds):
        for i, cfg in enumerate(cfgs):
            root = baseline if cfg["variant"] == "baseline" else ROOT
            res = run_child(cfg, args, root, workdir, input_path)
            samples[i].append(res)
            print(f"round {rnd + 1}: {label(cfg)} | {cfg['threads']} threads: "
                  f"{np.median(res['seconds']):.3f} s", flush=True)
    rows = []
    px = args.size * args.size
    for i, cfg in enumerate(cfgs):
        secs = [s for r in samples[i] for s in r["seconds"]]
        stages = [st for r in samples[i] for st in r["stages"]]
        med = float(np.median(secs))
        rows.append(dict(cfg, seconds=secs, median_s=med, mpx_s=px / 1e6 / med,
                         stages={k: float(np.median([st[k] for st in stages]))
                                 for k in (stages[0] if stages else {})},
                         preprocess=float(np.median([r["preprocess"] for r in samples[i]
                                                     if r["preprocess"] is not None]
                                                    or [np.nan])),
                         maxrss_mb=max(r["maxrss_mb"] for r in samples[i])))
    return rows


def report(rows: list[dict], args, baseline: Path | None) -> str:
    import onnxruntime

    cores = all_cores()
    lines = [
        "# Host-only throughput (zero-cost backend)", "",
        f"`python benchmarks/host.py{' --baseline ' + str(baseline) if baseline else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
        f"{cores} cores available, Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__} (not used: the null "
        f"backend does no inference). Other jobs shared the cores; each figure is the median "
        f"of {args.rounds} fresh processes x {args.repeats} timed calls, run interleaved.", "",
        f"Image {args.size}x{args.size} uint16 (synthetic blobs), model `{args.model}` geometry "
        f"(depth 4, 3 classes), tile {args.tile}, batch {args.batch}. TIFF outputs read an "
        f"uncompressed input (memory-mapped). Target: >= {TARGET_MPX_S:.0f} Mpx/s for labels "
        f"to TIFF on this 2-core machine.", "",
        "| variant | output | backend returns | threads | median s | Mpx/s | gather s | check s | "
        "stitch s | write s | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        st = r["stages"]
        f = (lambda k: f"{st[k]:.3f}" if k in st else "")
        t = f"{r['threads']}{' (all)' if r['threads'] == cores else ''}"
        lines.append(f"| {label(r)} | {t} | {r['median_s']:.3f} | "
                     f"{r['mpx_s']:.0f} | {f('gather')} | {f('infer')} | {f('stitch')} | "
                     f"{f('write')} | {r['maxrss_mb']:.0f} |")
    lines += ["", "Stage columns (new variant, medians): gather runs in a background thread, "
              "overlapped with the rest; check = the backend call (zero cost) and its output "
              "check; stitch includes the argmax for probabilities; write = the main thread "
              "handing bands to the TIFF writer, including waits while compression is behind.",
              ""]
    by = {(r["variant"], r["mode"], r["compression"], r["form"], r["threads"]): r for r in rows}
    ratios = []
    for t in sorted({r["threads"] for r in rows}):
        for mode in ("bigtiff", "memory"):
            comp = "" if mode == "memory" else "zlib"
            new = by.get(("new", mode, comp, "labels", t))
            probs = by.get(("new", mode, comp, "probabilities", t))
            old = by.get(("baseline", mode, comp, "probabilities", t))
            w = where(mode, comp)
            if new and old:
                ratios.append(f"| {w}, {t} threads: class maps vs baseline | "
                              f"{old['median_s'] / new['median_s']:.2f}x |")
            if probs and old:
                ratios.append(f"| {w}, {t} threads: probabilities vs baseline | "
                              f"{old['median_s'] / probs['median_s']:.2f}x |")
            if new and probs:
                ratios.append(f"| {w}, {t} threads: class maps vs probabilities | "
                              f"{probs['median_s'] / new['median_s']:.2f}x |")
        z = by.get(("new", "bigtiff", "zstd", "labels", t))
        zl = by.get(("new", "bigtiff", "zlib", "labels", t))
        ome = by.get(("new", "ometiff", "zlib", "labels", t))
        if z and zl:
            ratios.append(f"| BigTIFF, {t} threads: zstd vs zlib | "
                          f"{zl['median_s'] / z['median_s']:.2f}x |")
        if ome and zl:
            ratios.append(f"| {t} threads: OME-TIFF pyramid vs plain BigTIFF (time ratio) | "
                          f"{ome['median_s'] / zl['median_s']:.2f} |")
    if ratios:
        lines += ["| speed-up (ratio of medians, same rounds) | value |", "|---|---:|", *ratios,
                  ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("child")
    for a, d in (("--root", str(ROOT)), ("--mode", "bigtiff"), ("--form", "labels"),
                 ("--compression", "zlib"), ("--model", "nuclei"), ("--input", ""),
                 ("--workdir", "/tmp")):
        c.add_argument(a, default=d)
    for a, d in (("--threads", 0), ("--size", 8192), ("--batch", 16), ("--tile", 572),
                 ("--repeats", 3)):
        c.add_argument(a, type=int, default=d)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--threads", default="1,2,0", help="comma-separated; 0 = all cores")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per configuration")
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--baseline", type=Path, help="an older checkout to measure side by side")
    ap.add_argument("--out", type=Path, default=RESULTS / "host.md")
    args = ap.parse_args(argv)
    if args.cmd == "child":
        print(json.dumps(child(args)))
        return
    threads = sorted({int(t) or all_cores() for t in args.threads.split(",")})
    rows = measure(args, threads, args.baseline)
    text = report(rows, args, args.baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
