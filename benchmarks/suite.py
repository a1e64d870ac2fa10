"""The benchmark suite (issue 6): unet-deploy against its peers and against the machine's limit.

    python benchmarks/suite.py run     [--size 1740] [--repeats 3] [--tile T] [--batch B]
    python benchmarks/suite.py sweep   [--tiles 572 764 1052 1244] [--batches 1 2]
    python benchmarks/suite.py plots   # PNGs + results/README.md from the JSON files
    python benchmarks/suite.py child   ...   # one measured run in a fresh process

``run``: limit accounting (FLOPs per output pixel counted from the ONNX graphs of models/*.onnx,
the benchmark base-16 net and the paper-size base-64 net; the numpy fp32 GEMM ceiling), then the
peers on the same model and image, every (method, repeat) in a fresh process so each has its own
peak RSS, interleaved (the method order rotates every repeat), medians reported:

* unet-deploy  -- ``segment_array`` (Numba gather, ORT, Numba stitch), labels out;
* monai+ort    -- MONAI ``sliding_window_inference`` (overlap 0.25, gaussian blending) with our
  ORT session as predictor, argmax to labels;
* monai+torch  -- the same with the network in PyTorch (weights copied from the ONNX file);
* naive        -- ``np.pad`` of the whole normalised image, one tile at a time;
* whole        -- one forward pass over the whole (mirror-padded) image.

MONAI needs a same-size predictor; a valid U-Net's output is 2*halo smaller than its input, so
``unet_deploy.bench.HaloPredictor`` mirror-pads ("reflect") each window by the halo and returns
the same-size output. The MONAI ROI is the network's output tile for the chosen input tile, so
every method feeds the network the same input tile shape.

Seam error = max |p - p_whole| over pixels and classes of the probabilities, with the
whole-image output as the reference; label mismatch = share of pixels whose argmax differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from mosaic import DEFAULT_DIR, build_mosaic  # noqa: E402

from unet_deploy import bench as B  # noqa: E402
from unet_deploy.flops import count_flops  # noqa: E402

MODELS = HERE.parent / "models"


def _chosen_tile(default=(764, 1)) -> tuple[int, int]:
    f = RESULTS / "core_ratio.json"
    if f.exists():
        r = json.loads(f.read_text())
        return r["tile"], r["batch"]
    return default


# --------------------------------------------------------------------------- child
def child(args) -> None:
    import resource
    import tifffile

    def rss():
        """Peak RSS of this process (VmHWM, MB). Not ru_maxrss: a forked child inherits the
        parent's RSS as its starting high-water mark, and this suite's parent is big."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    image = tifffile.imread(args.image)
    peers = B.Peers(args.model, args.tile, args.batch, args.threads)
    if args.method == "monai+torch":
        peers.torch_net()
    warm = image[: min(600, image.shape[0]), : min(600, image.shape[1])]
    peers.run(args.method, warm, "labels")  # JIT caches, ORT arena, oneDNN primitives
    res = {"method": args.method, "tile": args.tile, "batch": args.batch,
           "rss_before_mb": rss()}
    t = time.perf_counter()
    peers.run(args.method, image, "labels")
    res["seconds"] = time.perf_counter() - t
    res["peak_rss_mb"] = rss()
    if peers.torch_threads:
        res["torch_threads"] = peers.torch_threads
    if args.probs_out:
        np.save(args.probs_out, peers.run(args.method, image, "probabilities"))
    print(json.dumps(res), flush=True)


def run_child(**kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child"]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- run
def limits(tile: int, gemm_n: int = 2048) -> dict:
    rows = []
    shipped = sorted(MODELS.glob("*.onnx"))
    from unet_deploy.model_store import read_onnx

    for m in shipped:
        info = read_onnx(m).info
        rows.append({"kind": "shipped", "base": info.base, "depth": info.depth,
                     **count_flops(m, info.tile)})
    for base, kind in ((16, "benchmark (issue 2 net)"), (64, "paper size")):
        m = B.bench_model(base, 4)
        for t in sorted({572, tile}):
            rows.append({"kind": kind, "base": base, "depth": 4, **count_flops(m, t)})
    gemm = B.gemm_ceiling(gemm_n, 7)
    return {"flops": rows, "gemm": gemm, "gemm_gflops": gemm["gflops_best"],
            "theoretical_note": "2 Zen 4 cores, AVX-512 as 2x256-bit FMA: about "
                                "2 x 2.6 GHz x 32 FLOP/cycle = 166 GFLOP/s nominal peak"}


def run(args) -> dict:
    tile, batch = (args.tile, args.batch) if args.tile else _chosen_tile()
    model = B.bench_model(16, 4)
    image_path = build_mosaic(args.size)
    lim = limits(tile)
    flops_px = count_flops(model, tile)["flops_per_output_px"]
    methods = args.methods
    seconds = {m: [] for m in methods}
    rows = {m: {"method": m, "seconds": []} for m in methods}
    probs_dir = DEFAULT_DIR / "probs"
    probs_dir.mkdir(parents=True, exist_ok=True)
    for r in range(args.repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            p_out = probs_dir / f"{m}.npy" if r == 0 else None
            res = run_child(method=m, model=model, image=image_path, tile=tile, batch=batch,
                            threads=args.threads, probs_out=p_out)
            seconds[m].append(res["seconds"])
            rows[m]["seconds"].append(res["seconds"])
            rows[m].setdefault("peak_rss_runs_mb", []).append(res["peak_rss_mb"])
            rows[m].setdefault("rss_before_runs_mb", []).append(res["rss_before_mb"])
            if "torch_threads" in res:
                rows[m].setdefault("torch_threads", []).append(res["torch_threads"])
            print(f"repeat {r} {m}: {res['seconds']:.2f}s rss {res['peak_rss_mb']:.0f} MB",
                  flush=True)
    ref = np.load(probs_dir / "whole.npy")
    for m in methods:
        rows[m].update(B.seam_error(np.load(probs_dir / f"{m}.npy"), ref))
        rows[m]["peak_rss_mb"] = float(np.median(rows[m]["peak_rss_runs_mb"]))
        rows[m]["rss_before_mb"] = float(np.median(rows[m]["rss_before_runs_mb"]))
    hw = int(args.size) ** 2
    out_rows = B.summarize([rows[m] for m in methods], hw, flops_px, lim["gemm_gflops"])
    rat = B.ratios(out_rows)
    from unet_deploy.model_store import read_onnx

    info = read_onnx(model).info
    res = {
        "schema": B.SCHEMA, "quick": False, "machine": B.machine_info(),
        "model": {"path": str(model), "name": info.name, "base": 16, "depth": 4, "tile": tile,
                  "batch": batch, "threads": args.threads},
        "image": {"desc": f"{args.size}x{args.size} uint16 mosaic of BBBC039 images "
                          f"(loaded into memory; load time not counted)",
                  "shape": [args.size, args.size]},
        "limits": {**lim, "flops_per_output_px": flops_px},
        "runs": out_rows, "ratios": rat, "goals": B.goals(out_rows, rat),
    }
    B.check_result(res)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "suite.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "suite.md").write_text(B.markdown(res))
    _seam_maps(probs_dir, ref)
    print(B.markdown(res))
    return res


def _seam_maps(probs_dir: Path, ref: np.ndarray) -> None:
    """Store |p - p_whole| (class 1) of the blending peer and of unet-deploy, 8x8 max-pooled,
    float16 (small enough to commit; the heat map is drawn from it)."""
    maps = {}
    for m in ("monai+ort", "unet-deploy"):
        f = probs_dir / f"{m}.npy"
        if f.exists():
            d = np.abs(np.load(f)[..., 1] - ref[..., 1])
            h, w = d.shape[0] // 8 * 8, d.shape[1] // 8 * 8
            maps[m] = d[:h, :w].reshape(h // 8, 8, w // 8, 8).max((1, 3)).astype(np.float16)
    np.savez_compressed(RESULTS / "seam_maps.npz", **maps)


# --------------------------------------------------------------------------- sweep
def sweep(args) -> list[dict]:
    """End-to-end time and peak RSS vs tile size and batch size (fresh process each)."""
    model = B.bench_model(16, 4)
    image_path = build_mosaic(args.size)
    rows = []
    configs = [(t, b) for t in args.tiles for b in args.batches]
    for r in range(args.repeats):
        for t, b in (configs if r % 2 == 0 else configs[::-1]):
            res = run_child(method="unet-deploy", model=model, image=image_path, tile=t,
                            batch=b, threads=args.threads)
            res["repeat"] = r
            rows.append(res)
            print(json.dumps(res), flush=True)
    out = []
    for t, b in configs:
        sel = [x for x in rows if x["tile"] == t and x["batch"] == b]
        sec = float(np.median([x["seconds"] for x in sel]))
        out.append({"tile": t, "batch": b, "seconds_median": sec,
                    "mpx_per_s": args.size**2 / 1e6 / sec,
                    "peak_rss_mb": float(np.median([x["peak_rss_mb"] for x in sel])),
                    "repeats": len(sel)})
    (RESULTS / "sweep.json").write_text(json.dumps({"size": args.size, "threads": args.threads,
                                                    "rows": out, "raw": rows}, indent=1))
    return out


# --------------------------------------------------------------------------- plots + README
def plots(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    core = json.loads((RESULTS / "core.json").read_text()) if (RESULTS / "core.json").exists() \
        else None
    suite = json.loads((RESULTS / "suite.json").read_text())
    sweep_r = json.loads((RESULTS / "sweep.json").read_text()) if (RESULTS / "sweep.json").exists() \
        else None

    # throughput and memory vs image size (issue 2 RSS runs, fresh process per point)
    if core:
        rs = core["rss"]
        for key, fname, ylabel in (("tput", "throughput_vs_size.png", "output Mpx/s"),
                                   ("mem", "memory_vs_size.png", "peak RSS (MB)")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for mode, style in (("unet-deploy", "o-"), ("naive", "s--")):
                pts = sorted((r for r in rs if r["mode"] == mode and isinstance(r["size"], int)),
                             key=lambda r: r["size"])
                xs = [r["size"] for r in pts]
                if key == "tput":
                    ys = [r.get("mpx_per_s_tiles", r.get("mpx_per_s", np.nan)) for r in pts]
                else:
                    ys = [r["ru_maxrss_mb"] for r in pts]
                ax.plot(xs, ys, style, label=mode)
            ax.set_xscale("log")
            ax.set_xlabel("image side (px), square uint16 mosaic")
            ax.set_ylabel(ylabel)
            if key == "mem":
                ax.axhline(1024, color="grey", lw=0.8, ls=":", label="1 GB target")
                ax.set_yscale("log")
            ax.legend()
            ax.set_title(ylabel + " vs image size\n(≤ 2000²: full runs; larger: first 2 tile "
                         "rows; busy machine)", fontsize=10)
            fig.tight_layout()
            fig.savefig(RESULTS / fname, dpi=110)
            plt.close(fig)
        # per-stage breakdown
        p = core["ratio"]["stage_profile"]
        fig, ax = plt.subplots(figsize=(6, 2.6))
        left = 0.0
        for k, c in (("infer", "tab:blue"), ("stitch", "tab:orange"), ("other", "tab:grey")):
            ax.barh(["critical path"], [p[k + "_s"]], left=left, color=c, label=k)
            left += p[k + "_s"]
        ax.barh(["gather thread"], [p["gather_s"]], color="tab:green", label="gather")
        ax.set_xlabel("seconds")
        ax.set_title(f"unet-deploy stages ({core['ratio']['image'].split(' ')[0]}, tile "
                     f"{core['ratio']['tile']}, batch {core['ratio']['batch']})")
        ax.legend(fontsize=8, ncol=4, loc="lower right")
        fig.tight_layout()
        fig.savefig(RESULTS / "stage_breakdown.png", dpi=110)
        plt.close(fig)

    # seam-error heat maps
    f = RESULTS / "seam_maps.npz"
    if f.exists():
        maps = np.load(f)
        names = [n for n in ("monai+ort", "unet-deploy") if n in maps]
        vmax = max(float(maps[n].max()) for n in names) or 1.0
        # the maps hold 8x8 maxima; titles give the exact maxima from suite.json
        exact = {r["method"]: r["seam_error"] for r in suite["runs"]}
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.6))
        for ax, n in zip(np.atleast_1d(axes), names):
            im = ax.imshow(maps[n].astype(np.float32), cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{n}: max |p - p_whole| = {exact.get(n, float(maps[n].max())):.2g}")
            ax.axis("off")
        fig.colorbar(im, ax=axes, shrink=0.8, label="|p - p_whole| (class 1, 8x8 max)")
        fig.savefig(RESULTS / "seam_heatmap.png", dpi=110)
        plt.close(fig)

    # peers bar chart
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["method"] for r in suite["runs"]]
    ax.barh(names, [r["mpx_per_s"] for r in suite["runs"]], color="tab:blue")
    ax.set_xlabel("output Mpx/s (median)")
    ax.set_title("peers, same model and image")
    fig.tight_layout()
    fig.savefig(RESULTS / "peers.png", dpi=110)
    plt.close(fig)

    if sweep_r:
        fig, ax = plt.subplots(figsize=(6, 4))
        for b in sorted({r["batch"] for r in sweep_r["rows"]}):
            pts = [r for r in sweep_r["rows"] if r["batch"] == b]
            ax.plot([r["tile"] for r in pts], [r["mpx_per_s"] for r in pts], "o-",
                    label=f"batch {b}")
        ax.set_xlabel("input tile side")
        ax.set_ylabel("end-to-end Mpx/s")
        ax.set_title(f"tile and batch size ({sweep_r['size']}² image)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "tile_batch.png", dpi=110)
        plt.close(fig)
    readme(core, suite, sweep_r)


def readme(core, suite, sweep_r) -> None:
    m = suite["machine"]
    L = [
        "# Benchmark results",
        "",
        f"Measured on **{m['cpu']}, {m['cores']} cores, {m['ram_gb']:.0f} GB RAM** "
        f"({m['time_utc']}), onnxruntime {m['onnxruntime']}, fp32, CPU. Two single-thread "
        "model-training jobs were running in the background during every run, so absolute "
        "numbers are noisy and low; all comparisons are side by side, interleaved, medians. "
        "Reproduce: see [../README.md](../README.md).",
        "",
        "Model: random-weight paper U-Net, base 16, depth 4, valid convolutions, 2 classes "
        f"(tile {suite['model']['tile']}, batch {suite['model']['batch']}, "
        f"{suite['model']['threads']} threads).",
        "",
        "## Peers (same model, same image)",
        "",
        f"Image: {suite['image']['desc']}. Each (method, repeat) ran in a fresh process; "
        f"{len(suite['runs'][0]['seconds'])} interleaved repeats.",
        "",
    ]
    L += B.markdown(suite).split("\n", 6)[6].splitlines()
    L += ["", "![peers](peers.png)", ""]
    lim = suite["limits"]
    L += ["## Limit accounting", "",
          f"fp32 GEMM ceiling (numpy matmul 2048², best of 7): **{lim['gemm_gflops']:.0f} "
          f"GFLOP/s** (median {lim['gemm']['gflops_median']:.0f}); {lim['theoretical_note']}.",
          "", "| model | kind | tile | output tile | GFLOP per tile | kFLOP per output px |",
          "|---|---|---:|---:|---:|---:|"]
    for r in lim["flops"]:
        L.append(f"| {r['model']} | {r['kind']} | {r['tile']} | {r['output_tile']} | "
                 f"{r['gflop_per_pass']:.1f} | {r['flops_per_output_px'] / 1e3:.1f} |")
    if core:
        c = core["ratio"]
        L += ["", "## Inference core (issue 2)", "",
              f"End to end ÷ bare ONNX Runtime on the same tiles: **{c['ratio_of_medians']:.3f}** "
              f"(target ≥ 0.92; {c['image']}, tile {c['tile']}, batch {c['batch']}). Gather + "
              f"stitch: {100 * c['stage_profile']['gather_stitch_share']:.1f} % of wall time. "
              "Details, memory table and tile scan: [core.md](core.md).", "",
              "![throughput](throughput_vs_size.png) ![memory](memory_vs_size.png)", "",
              "![stages](stage_breakdown.png)", ""]
    if sweep_r:
        L += ["## Tile and batch size (end to end, fresh process each)", "",
              "| tile | batch | median s | Mpx/s | peak RSS MB |", "|---:|---:|---:|---:|---:|"]
        for r in sweep_r["rows"]:
            L.append(f"| {r['tile']} | {r['batch']} | {r['seconds_median']:.1f} | "
                     f"{r['mpx_per_s']:.3f} | {r['peak_rss_mb']:.0f} |")
        L += ["", "![tile and batch](tile_batch.png)", ""]
    L += ["## Seams", "", "![seam error](seam_heatmap.png)", ""]
    notes = RESULTS / "NOTES.md"
    if notes.exists():
        L += [notes.read_text()]
    (RESULTS / "README.md").write_text("\n".join(L) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--size", type=int, default=1740)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--tile", type=int, default=0)
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--methods", nargs="+", default=list(B.METHODS))
    s = sub.add_parser("sweep")
    s.add_argument("--size", type=int, default=1740)
    s.add_argument("--tiles", type=int, nargs="+", default=[572, 764, 1052, 1244])
    s.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--threads", type=int, default=2)
    sub.add_parser("plots")
    c = sub.add_parser("child")
    for k in ("method", "model", "image", "probs-out"):
        c.add_argument(f"--{k}")
    for k in ("tile", "batch", "threads"):
        c.add_argument(f"--{k}", type=int, default=0)
    args = ap.parse_args(argv)
    {"run": run, "sweep": sweep, "plots": plots, "child": child}[args.cmd](args)


if __name__ == "__main__":
    main()
