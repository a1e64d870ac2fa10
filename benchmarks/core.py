"""Issue 2 measures: end-to-end vs bare ONNX Runtime, gather+stitch share, peak RSS vs image size,
and the naive np.pad loop for comparison.

Every timing is taken side by side in one process, interleaved (A, B, A, B, ...), and reported
as medians and ratios: the machine this was written on had background jobs running.

    python benchmarks/core.py ratio  [--tiles 572 764 1052 1244] [--batches 1 2] [--repeats 5]
    python benchmarks/core.py rss    [--sizes 2000 5000 10000 20000] [--naive-tiles 2]
    python benchmarks/core.py report        # -> benchmarks/results/core.md + core.json
    python benchmarks/core.py child ...     # one measured run in a fresh process (used by rss)

The model is a random-weight base-16, depth-4 paper U-Net (valid convolutions, 2 classes),
exported once to /tmp/unet-deploy-bench/models (``unet_deploy.bench.bench_model``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"

from mosaic import DEFAULT_DIR, build_mosaic, mosaic_array  # noqa: E402

from unet_deploy.bench import (  # noqa: E402
    bare_session,
    bench_model,
    machine_info,
    naive_segment,
    pregather,
    stage_profile,
)


# --------------------------------------------------------------------------- memory probe
class MemProbe:
    """Peak VmRSS / RssAnon / RssFile of this process, polled from /proc every 50 ms, plus
    ru_maxrss at the end (kernel's own high-water mark, includes mapped file pages)."""

    KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak = {k: 0 for k in self.KEYS}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        with open("/proc/self/status") as f:
            for line in f:
                k = line.split(":")[0]
                if k in self.peak:
                    self.peak[k] = max(self.peak[k], int(line.split()[1]))

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()

    def result(self) -> dict:
        mb = {f"peak_{k}_mb": v / 1024 for k, v in self.peak.items()}
        mb["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return mb


class _Stop(Exception):
    pass


def _stop_after(max_tiles: int):
    """Stop ``segment_file`` after ``max_tiles`` tiles (0: never), through its progress bar's
    update hook: the run is the real code path, cut short (its writer cleans up)."""
    import tqdm

    class Bar(tqdm.tqdm):
        count = 0

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            Bar.total = k.get("total")

        def update(self, n=1):
            Bar.count += n
            if max_tiles and Bar.count >= max_tiles:
                raise _Stop
            return super().update(n)

    tqdm.tqdm = Bar
    return Bar


def child(args) -> dict:
    """One run in this (fresh) process; prints a JSON line."""
    from unet_deploy.pipeline import segment_file

    path = Path(args.image)
    res = {"mode": args.mode, "size": args.size, "tile": args.tile, "batch": args.batch,
           "threads": args.threads}
    with MemProbe() as probe:
        t0 = time.perf_counter()
        if args.mode == "unet-deploy":
            out = Path(args.out_dir) / f"{path.stem}.core.labels.tif"
            stop = _stop_after(args.max_tiles)
            try:
                s = segment_file(path, out, args.model, batch_size=args.batch, tile=args.tile,
                                 threads=args.threads, overwrite=True, progress=False)
                res.update(tiles=s.tiles, pixels=s.pixels)
                out.unlink()
            except _Stop:
                res.update(tiles=stop.count, tiles_total=stop.total, complete=False,
                           pixels=0)
        else:
            import tifffile

            image = tifffile.imread(path)
            r = naive_segment(image, args.model, args.tile, threads=args.threads,
                              max_tiles=args.max_tiles or None)
            res.update(tiles=r["tiles_run"], tiles_total=r["tiles_total"],
                       pixels=image.size, complete=r["complete"])
        res["seconds"] = time.perf_counter() - t0
    res.update(probe.result())
    if res.get("complete", True):
        res["mpx_per_s"] = res["pixels"] / 1e6 / res["seconds"]
    print(json.dumps(res), flush=True)
    return res


def run_child(**kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child"]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- ratio
def ratio(args) -> dict:
    """Tile scan by bare ORT Mpx/s, then end-to-end vs bare on the same tiles, interleaved."""
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array

    model = bench_model(16, 4)
    sess = bare_session(model, args.threads)
    configs = [(t, b) for t in args.tiles for b in args.batches]
    xs = {c: np.random.default_rng(0).standard_normal((c[1], 1, c[0], c[0]), dtype=np.float32)
          for c in configs}
    times = {c: [] for c in configs}
    for c in configs:  # warm (arena growth, kernel selection)
        sess.run(None, {"image": xs[c]})
    for r in range(args.scan_repeats):  # interleaved: every config once per round
        for c in (configs if r % 2 == 0 else configs[::-1]):
            t = time.perf_counter()
            sess.run(None, {"image": xs[c]})
            times[c].append(time.perf_counter() - t)
    scan = []
    for (tile, b) in configs:
        o = int(read_onnx(model).info.geometry.output_size(tile))
        med = float(np.median(times[(tile, b)]))
        scan.append({"tile": tile, "batch": b, "out_tile": o,
                     "bare_mpx_per_s": b * o * o / 1e6 / med, "seconds_median": med,
                     "seconds": times[(tile, b)]})
        print(json.dumps(scan[-1]), flush=True)
    best = max(scan, key=lambda r: r["bare_mpx_per_s"])
    tile, batch = args.tile or best["tile"], args.batch or best["batch"]

    image = mosaic_array(args.size, args.size)
    be = OnnxRuntimeBackend(model, threads=args.threads).activate()
    tiles, n_batches = pregather(image, be.info, tile, batch)
    ee, bare = [], []
    segment_array(image, backend=be, batch_size=batch, tile=tile)  # warm (Numba, ORT)
    for r in range(args.repeats):
        order = ("e2e", "bare") if r % 2 == 0 else ("bare", "e2e")
        for what in order:
            t = time.perf_counter()
            if what == "e2e":
                segment_array(image, backend=be, batch_size=batch, tile=tile)
                ee.append(time.perf_counter() - t)
            else:
                for k in range(n_batches):
                    be.session.run(None, {"image": tiles[k]})
                bare.append(time.perf_counter() - t)
        print(f"repeat {r}: e2e {ee[-1]:.2f}s bare {bare[-1]:.2f}s", flush=True)
    prof = stage_profile(image, be, tile, batch, repeats=args.profile_repeats)
    px = image.size / 1e6
    res = {
        "image": f"{args.size}x{args.size} BBBC039 mosaic (uint16, in memory)",
        "threads": args.threads,
        "tile_scan": scan,
        "tile": tile,
        "batch": batch,
        "tiles": int(sum(t.shape[0] for t in tiles)),
        "repeats": args.repeats,
        "e2e_seconds": ee,
        "bare_seconds": bare,
        "e2e_mpx_per_s_median": px / float(np.median(ee)),
        "bare_mpx_per_s_median": px / float(np.median(bare)),
        "ratio_of_medians": float(np.median(bare) / np.median(ee)),
        "ratio_per_pair_median": float(np.median(np.array(bare) / np.array(ee))),
        "stage_profile": prof,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_ratio.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("tile_scan",)}, indent=1))
    return res


# --------------------------------------------------------------------------- spinning A/B
def spin(args) -> dict:
    """ORT intra-op spinning on vs off, end to end and bare, interleaved (profile-driven
    change candidate: on 2 cores the spinning ORT workers compete with the gather thread)."""
    from unet_deploy.bench import ort_backend
    from unet_deploy.pipeline import segment_array

    model = bench_model(16, 4)
    image = mosaic_array(args.size, args.size)
    bes = {"spin_on": ort_backend(model, args.threads, True),
           "spin_off": ort_backend(model, args.threads, False)}
    tiles, n = pregather(image, bes["spin_on"].info, args.tile, args.batch)
    t = {f"{k}_{w}": [] for k in bes for w in ("e2e", "bare")}
    for k, be in bes.items():  # warm
        segment_array(image[:600, :600], backend=be, batch_size=args.batch, tile=args.tile)
    for r in range(args.repeats):
        keys = list(bes) if r % 2 == 0 else list(bes)[::-1]
        for k in keys:
            be = bes[k]
            s = time.perf_counter()
            segment_array(image, backend=be, batch_size=args.batch, tile=args.tile)
            t[f"{k}_e2e"].append(time.perf_counter() - s)
            s = time.perf_counter()
            for b in tiles:
                be.session.run(None, {"image": b})
            t[f"{k}_bare"].append(time.perf_counter() - s)
        print(r, {k: round(v[-1], 2) for k, v in t.items()}, flush=True)
    med = {k: float(np.median(v)) for k, v in t.items()}
    res = {"size": args.size, "tile": args.tile, "batch": args.batch, "threads": args.threads,
           "repeats": args.repeats, "seconds": t, "median": med,
           "ratio_spin_on": med["spin_on_bare"] / med["spin_on_e2e"],
           "ratio_spin_off": med["spin_off_bare"] / med["spin_off_e2e"],
           "e2e_speedup_off_vs_on": med["spin_on_e2e"] / med["spin_off_e2e"]}
    (RESULTS / "core_spin.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


# --------------------------------------------------------------------------- rss
def rss(args) -> list[dict]:
    model = bench_model(16, 4)
    out_file = RESULTS / "core_rss.json"
    RESULTS.mkdir(exist_ok=True)
    rows = json.loads(out_file.read_text())["rows"] if args.append and out_file.exists() else []
    for size in args.sizes:
        img = build_mosaic(size)
        common = dict(model=model, image=img, size=size, tile=args.tile, batch=args.batch,
                      threads=args.threads, out_dir=DEFAULT_DIR)
        naive_full = size <= args.naive_full_max
        rows.append(run_child(mode="naive", max_tiles=0 if naive_full else args.naive_tiles,
                              **common))
        print(json.dumps(rows[-1]), flush=True)
        full = size <= args.full_max
        ud_tiles = 0 if full else args.tile_rows * -(-size // tile_step(model, args.tile, size))
        rows.append(run_child(mode="unet-deploy", max_tiles=ud_tiles, **common))
        print(json.dumps(rows[-1]), flush=True)
        out_file.write_text(json.dumps({"rows": rows, "machine": machine_info()}, indent=1))
    if args.tall:  # full run of a tall strip: memory must not grow with the image height
        img = build_mosaic((args.tall, args.tall_width))
        r = run_child(mode="unet-deploy", max_tiles=0, model=model, image=img, size=0,
                      tile=args.tile, batch=args.batch, threads=args.threads,
                      out_dir=DEFAULT_DIR)
        r["size"] = f"{args.tall}x{args.tall_width}"
        rows.append(r)
        print(json.dumps(r), flush=True)
        out_file.write_text(json.dumps({"rows": rows, "machine": machine_info()}, indent=1))
    return rows


def _label(size) -> str:
    return f"{size}²" if isinstance(size, int) else f"{size}"


def out_tile(model, tile: int) -> int:
    """The network's output side for one input tile (not the grid step, see tile_step)."""
    from unet_deploy.model_store import read_onnx

    return read_onnx(model).info.geometry.output_size(tile)


def tile_step(model, tile: int, size: int) -> int:
    """The planner's grid step on a size x size image: the output cell each tile owns (a
    multiple of 2**depth, e.g. 576 for tile 764 of a depth-4 net whose output is 580)."""
    from unet_deploy.model_store import read_onnx
    from unet_deploy.tiling import plan_tiles

    return plan_tiles(size, size, read_onnx(model).info.geometry, tile).out_h


# --------------------------------------------------------------------------- report
def report(args) -> None:
    ratio_r = json.loads((RESULTS / "core_ratio.json").read_text())
    rss_r = json.loads((RESULTS / "core_rss.json").read_text())
    m = machine_info()
    m_rss = rss_r.get("machine", m)
    p = ratio_r["stage_profile"]
    lines = [
        "# Inference core measures (issue 2)",
        "",
        f"Machine: **{m['cpu']}**, {m['cores']} cores, {m['ram_gb']:.0f} GB RAM; "
        f"load average during the runs {m_rss['loadavg'][0]:.1f} / {m['loadavg'][0]:.1f} "
        "(two single-thread training jobs were running in the background, so absolute numbers "
        "are noisy; every comparison below is measured side by side, interleaved, as medians).",
        f"Software: onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, numba {m['numba']}, "
        f"Python {m['python']}.",
        "",
        "Model: random-weight paper U-Net, base 16, depth 4, valid convolutions, 2 classes "
        "(softmax output), fp32, ONNX Runtime CPU, "
        f"{ratio_r['threads']} intra-op threads.",
        "",
        "## Tile size scan (bare ONNX Runtime, output Mpx/s, median)",
        "",
        "| input tile | output tile | batch | bare Mpx/s |",
        "|---:|---:|---:|---:|",
    ]
    for s in ratio_r["tile_scan"]:
        mark = " **(chosen)**" if (s["tile"], s["batch"]) == (ratio_r["tile"],
                                                              ratio_r["batch"]) else ""
        lines.append(f"| {s['tile']} | {s['out_tile']} | {s['batch']} | "
                     f"{s['bare_mpx_per_s']:.3f}{mark} |")
    lines += [
        "",
        f"## End to end vs bare ONNX Runtime ({ratio_r['image']}, tile {ratio_r['tile']}, "
        f"batch {ratio_r['batch']}, {ratio_r['repeats']} interleaved repeats)",
        "",
        "End to end = `segment_array` (plan, Numba gather with fused normalisation on a "
        "background thread, ORT, Numba stitch/argmax). Bare = `session.run` on the same "
        "number of pre-gathered tiles of the same shape, nothing else.",
        "",
        "| | median s | Mpx/s (image pixels) |",
        "|---|---:|---:|",
        f"| end to end | {np.median(ratio_r['e2e_seconds']):.2f} | "
        f"{ratio_r['e2e_mpx_per_s_median']:.3f} |",
        f"| bare ORT | {np.median(ratio_r['bare_seconds']):.2f} | "
        f"{ratio_r['bare_mpx_per_s_median']:.3f} |",
        "",
        f"**Ratio end-to-end / bare: {ratio_r['ratio_of_medians']:.3f}** (ratio of medians; "
        f"median of per-pair ratios {ratio_r['ratio_per_pair_median']:.3f}). Target ≥ 0.92: "
        f"**{'met' if ratio_r['ratio_of_medians'] >= 0.92 else 'missed'}**.",
        "",
    ]
    runs_f = RESULTS / "core_ratio_runs.json"
    if runs_f.exists():
        prev = json.loads(runs_f.read_text())
        lines += ["All runs of this measurement in this session (same script; the machine's "
                  "background load changed between them):", "",
                  "| run | tile | batch | repeats | ratio of medians | median of per-pair ratios |",
                  "|---|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(prev, 1):
            lines.append(f"| {i} | {r['tile']} | {r['batch']} | {r['repeats']} | "
                         f"{r['ratio_of_medians']:.3f} | {r['ratio_per_pair_median']:.3f} |")
        lines += [""]
    lines += [
        "## Where the time goes (one instrumented run, median of "
        f"{p['repeats']})",
        "",
        "| stage | seconds | share of wall |",
        "|---|---:|---:|",
    ]
    for k in ("gather", "infer", "stitch", "other"):
        lines.append(f"| {k} | {p[k + '_s']:.3f} | {100 * p[k + '_share']:.1f} % |")
    lines += [
        f"| **wall** | {p['wall_s']:.3f} | 100 % |",
        "",
        f"Gather + stitch = **{100 * p['gather_stitch_share']:.1f} %** of wall time. Gather runs on "
        "a background thread overlapped with ORT, so only part of it is on the critical path; "
        "it does, however, take a core's time from ORT's two threads on this 2-core machine.",
        "",
        "## Peak memory vs image size (uint16 mosaics of BBBC039, uncompressed TIFF, each run "
        "in a fresh process)",
        "",
        f"Tile {rss_r['rows'][0]['tile']}, batch {rss_r['rows'][0]['batch']}, "
        f"{rss_r['rows'][0]['threads']} threads. `segment_file` writes a zlib-tiled BigTIFF of "
        "labels. RssAnon = the process's own (heap) memory; ru_maxrss also counts the pages "
        "of the memory-mapped input that were resident at once. Runs ≥ 2000² ran before the "
        "ORT spinning change (their seconds are not comparable with the 512²/1024² rows).",
        "",
        "| image | method | tiles run | seconds | Mpx/s | peak RssAnon MB | peak RSS (ru_maxrss) MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    # output area per tile of the partial runs: the committed core_rss.json rows ran before the
    # planner fix, when tiles stepped by the full network output; re-runs own tile_step() cells
    # (576 for 580 at tile 764), 1.4 % less area per tile, so use tile_step for new series
    o = out_tile(bench_model(16, 4), rss_r["rows"][0]["tile"])
    rss_r["rows"].sort(key=lambda r: (not isinstance(r["size"], int),
                                      r["size"] if isinstance(r["size"], int) else 0,
                                      r["mode"]))
    for r in rss_r["rows"]:
        tiles = f"{r['tiles']}" + (f" of {r['tiles_total']}" if not r.get("complete", True)
                                   else "")
        if "mpx_per_s" in r:
            r["mpx_per_s_tiles"] = r["mpx_per_s"]
            mpx = f"{r['mpx_per_s']:.3f}"
        elif r["mode"] == "unet-deploy":  # partial run: output area of the tiles run
            r["mpx_per_s_tiles"] = r["tiles"] * o * o / 1e6 / r["seconds"]
            mpx = f"{r['mpx_per_s_tiles']:.3f}*"
        else:
            mpx = "–"
        lines.append(f"| {_label(r['size'])} | {r['mode']} | {tiles} | {r['seconds']:.1f} | {mpx} | "
                     f"{r['peak_RssAnon_mb']:.0f} | {r['ru_maxrss_mb']:.0f} |")
    ud = [r for r in rss_r["rows"] if r["mode"] == "unet-deploy" and isinstance(r["size"], int)]
    big = max(ud, key=lambda r: r["size"])
    small = next((r for r in ud if r["size"] == 2000), min(ud, key=lambda r: r["size"]))
    lines += [
        "",
        f"unet-deploy at {big['size']}²: peak RSS **{big['ru_maxrss_mb']:.0f} MB** "
        f"(RssAnon {big['peak_RssAnon_mb']:.0f} MB) vs {small['ru_maxrss_mb']:.0f} MB at "
        f"{small['size']}². Target ≤ 1 GB and flat: "
        f"**{'met' if big['ru_maxrss_mb'] <= 1024 and big['ru_maxrss_mb'] <= 1.5 * small['ru_maxrss_mb'] + 100 else 'see notes'}**.",
        "",
        "\\* partial run (the first tile rows only, the image is too big to finish in this "
        "session's time budget at this machine's speed): output Mpx/s over the tiles run, "
        "start-up (normalisation sample, session) included. Peak memory of the streaming "
        "pipeline is reached within the first tile row and then stays flat (the input is "
        "memory-mapped and the pages of finished rows are released; output bands are written "
        "as soon as they are complete), so the partial runs measure the same peak as a full run.",
        "",
        "Naive loop = `tifffile.imread` of the whole image, float32 normalisation, `np.pad` "
        "(mode \"reflect\") of the whole image, then one tile at a time through the same ORT "
        "session, argmax into a full-size label array. Where 'tiles run' is less than the "
        "total, the naive run was stopped after that many tiles (its memory is already at its "
        "peak then: every whole-image array exists before the first tile) and only its RSS is "
        "meaningful.",
        "",
    ]
    spin_f = RESULTS / "core_spin.json"
    if spin_f.exists():
        sp = json.loads(spin_f.read_text())
        md = sp["median"]
        lines += [
            f"## ORT intra-op spinning on vs off ({sp['size']}² mosaic, tile {sp['tile']}, "
            f"batch {sp['batch']}, {sp['repeats']} interleaved repeats)",
            "",
            "| | spinning on (ORT default) | spinning off (now the backend default) |",
            "|---|---:|---:|",
            f"| end to end, median s | {md['spin_on_e2e']:.2f} | {md['spin_off_e2e']:.2f} |",
            f"| bare ORT, median s | {md['spin_on_bare']:.2f} | {md['spin_off_bare']:.2f} |",
            f"| end to end ÷ bare | {sp['ratio_spin_on']:.3f} | {sp['ratio_spin_off']:.3f} |",
            "",
            f"Switching spinning off made end to end {sp['e2e_speedup_off_vs_on']:.2f}x faster "
            "on this (busy) 2-core machine.",
            "",
        ]
    (RESULTS / "core.md").write_text("\n".join(lines))
    (RESULTS / "core.json").write_text(json.dumps({"machine": m, "machine_rss_run": m_rss,
                                                   "ratio": ratio_r, "rss": rss_r["rows"]},
                                                  indent=1))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ratio")
    a.add_argument("--tiles", type=int, nargs="+", default=[572, 764, 1052, 1244])
    a.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    a.add_argument("--scan-repeats", type=int, default=3)
    a.add_argument("--tile", type=int, default=0, help="skip the choice: use this tile")
    a.add_argument("--batch", type=int, default=0)
    a.add_argument("--size", type=int, default=2000)
    a.add_argument("--repeats", type=int, default=5)
    a.add_argument("--profile-repeats", type=int, default=1)
    a.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("rss")
    r.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 10000, 20000])
    r.add_argument("--tile", type=int, default=764)
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--naive-tiles", type=int, default=2)
    r.add_argument("--naive-full-max", type=int, default=5000)
    r.add_argument("--full-max", type=int, default=5000,
                   help="larger images: unet-deploy runs the first --tile-rows tile rows only")
    r.add_argument("--tile-rows", type=int, default=3)
    r.add_argument("--tall", type=int, default=0, help="also a full run of a TALL x 2000 strip")
    r.add_argument("--tall-width", type=int, default=2000)
    r.add_argument("--append", action="store_true", help="keep rows already in core_rss.json")
    sp = sub.add_parser("spin")
    sp.add_argument("--size", type=int, default=2000)
    sp.add_argument("--tile", type=int, default=764)
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--threads", type=int, default=2)
    sub.add_parser("report")
    c = sub.add_parser("child")
    for k in ("mode", "model", "image", "out-dir"):
        c.add_argument(f"--{k}")
    for k in ("size", "tile", "batch", "threads", "max-tiles"):
        c.add_argument(f"--{k}", type=int, default=0)
    args = ap.parse_args(argv)
    {"ratio": ratio, "rss": rss, "spin": spin, "report": report,
     "child": child}[args.cmd](args)


if __name__ == "__main__":
    main()
