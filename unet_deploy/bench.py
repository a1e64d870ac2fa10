"""Benchmark helpers and ``run_benchmark`` (behind ``unet-deploy benchmark``).

The full suite lives in ``benchmarks/suite.py`` (peers, scaling, plots); this module holds what
both it and the CLI need: a random-weight benchmark model, the bare-ORT and naive baselines,
a per-stage profile of the pipeline, machine facts, and the quick benchmark with its
self-checked output format.

Nothing here is imported by the segment path; torch is only needed to export a benchmark model
when no shipped model is used.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(os.environ.get("UNET_DEPLOY_BENCH_DIR", "/tmp/unet-deploy-bench"))


# --------------------------------------------------------------------------- models
def bench_model(base: int = 16, depth: int = 4, classes: int = 2, tile: int = 572,
                folder: Path | None = None, seed: int = 0) -> Path:
    """A random-weight paper U-Net (valid convolutions) exported to ONNX by
    ``testing.random_unet_onnx`` (the tests' factory), cached by shape."""
    folder = Path(folder or BENCH_DIR / "models")
    path = folder / f"unet-b{base}-d{depth}-c{classes}-s{seed}.onnx"
    if path.exists():
        return path
    from .testing import random_unet_onnx

    folder.mkdir(parents=True, exist_ok=True)
    return random_unet_onnx(path, depth, base, classes, tile, seed=seed, instance_scheme="none",
                            description="random weights, for benchmarks only", parity=False)


def bare_session(model: str | Path, threads: int = 0):
    """An ORT session set up exactly like ``OnnxRuntimeBackend``."""
    from .backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, threads=threads).activate().session


# --------------------------------------------------------------------------- limits
# FLOPs are counted from the ONNX graph (``flops.count_flops``); this is the GEMM ceiling.

def gemm_ceiling(n: int = 2048, repeats: int = 7, threads: int | None = None) -> dict:
    """Median fp32 GFLOP/s of numpy matmul (n x n) @ (n x n)."""
    ctx = None
    if threads:
        try:
            from threadpoolctl import threadpool_limits

            ctx = threadpool_limits(threads)
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, b, out=c)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    if ctx is not None:
        ctx.unregister()
    flop = 2.0 * n**3
    return {"n": n, "repeats": repeats, "gflops_median": flop / np.median(times) / 1e9,
            "gflops_best": flop / min(times) / 1e9}


# --------------------------------------------------------------------------- machine
def machine_info() -> dict:
    import numba
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [0, 0, 0],
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# --------------------------------------------------------------------------- baselines
def _prep(image: np.ndarray, info):
    from .normalize import preprocess_for
    from .readers import ArrayReader

    return preprocess_for(ArrayReader(image), info)


def normalized(image: np.ndarray, info) -> np.ndarray:
    """(C, H, W) float32: the same channel mix + normalisation the gather kernel applies."""
    prep = _prep(image, info)
    img = image[:, :, None] if image.ndim == 2 else image
    x = np.einsum("hws,cs->chw", img.astype(np.float32), prep.mix)
    return (x - prep.offset[:, None, None]) * prep.scale[:, None, None]


def naive_segment(image: np.ndarray, model, tile: int, threads: int = 0,
                  max_tiles: int | None = None, output: str = "labels",
                  session=None) -> dict:
    """The naive loop: normalise the whole image, ``np.pad`` (mode "reflect") the whole image,
    then run one tile at a time and write each tile's argmax (or probabilities) into a
    full-size result. Stops after ``max_tiles`` tiles when given (for memory measurements)."""
    from .model_store import read_onnx
    from .tiling import plan_tiles

    info = read_onnx(model).info
    sess = session or bare_session(model, threads)
    h, w = image.shape[:2]
    plan = plan_tiles(h, w, info.geometry, tile)
    x = normalized(image, info)
    # plan.out_h is the tile step; the last tile's input window ends tile_h past its origin
    pad_y = (plan.halo_y, (plan.rows - 1) * plan.out_h + plan.tile_h - plan.halo_y - h)
    pad_x = (plan.halo_x, (plan.cols - 1) * plan.out_w + plan.tile_w - plan.halo_x - w)
    padded = np.pad(x, ((0, 0), pad_y, pad_x), mode="reflect")
    del x
    if output == "labels":
        result = np.empty((h, w), np.uint8)
    else:
        result = np.empty((h, w, info.out_channels), np.float32)
    n = 0
    done = True
    for r in range(plan.rows):
        for c in range(plan.cols):
            if max_tiles and n >= max_tiles:
                done = False
                break
            y, xo = r * plan.out_h, c * plan.out_w
            inp = np.ascontiguousarray(padded[None, :, y : y + plan.tile_h, xo : xo + plan.tile_w])
            probs = sess.run(None, {sess.get_inputs()[0].name: inp})[0][0]
            hh, ww = min(plan.out_h, h - y), min(plan.out_w, w - xo)
            if output == "labels":
                result[y : y + hh, xo : xo + ww] = probs[:, :hh, :ww].argmax(0)
            else:
                result[y : y + hh, xo : xo + ww] = probs[:, :hh, :ww].transpose(1, 2, 0)
            n += 1
        if not done:
            break
    return {"result": result, "tiles_run": n, "tiles_total": plan.n_tiles, "complete": done}


def pregather(image: np.ndarray, info, tile: int, batch: int) -> tuple[list, int]:
    """All input batches of the pipeline's plan, gathered up front (for the bare-ORT run):
    the same count and shapes ``segment_plane`` feeds the backend."""
    from .readers import ArrayReader
    from .tiling import RowSource, gather_batch, plan_tiles

    reader = ArrayReader(image)
    plan = plan_tiles(reader.height, reader.width, info.geometry, tile)
    prep = _prep(image, info)
    ids = np.arange(plan.n_tiles, dtype=np.int64)
    out = []
    for i in range(0, plan.n_tiles, batch):
        sel = ids[i : i + batch]
        buf = np.empty((batch, info.in_channels, plan.tile_h, plan.tile_w), np.float32)
        out.append(gather_batch(RowSource(reader, plan), plan, sel, prep, buf).copy())
    return out, len(out)


def stage_profile(image: np.ndarray, backend, tile: int, batch: int, repeats: int = 1,
                  output: str = "labels") -> dict:
    """Per-stage seconds of ``segment_array`` (read from ``pipeline.StageTimes``): gather
    (background-thread time), infer, stitch (merger.add, incl. argmax), other = wall - infer -
    stitch (planning, normalisation sampling, waiting for gather, Python). Medians over
    ``repeats`` runs."""
    from .pipeline import StageTimes, segment_array

    runs = []
    for _ in range(repeats):
        times = StageTimes()
        t = time.perf_counter()
        segment_array(image, backend=backend, batch_size=batch, tile=tile, output=output,
                      times=times)
        wall = time.perf_counter() - t
        runs.append({"wall_s": wall, "gather_s": times.gather, "infer_s": times.infer,
                     "stitch_s": times.stitch,
                     "other_s": max(0.0, wall - times.infer - times.stitch)})
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    for k in ("gather", "infer", "stitch", "other"):
        med[k + "_share"] = med[k + "_s"] / med["wall_s"]
    med["gather_stitch_share"] = (med["gather_s"] + med["stitch_s"]) / med["wall_s"]
    med["repeats"] = repeats
    return med


# --------------------------------------------------------------------------- peers
METHODS = ("unet-deploy", "monai+ort", "monai+torch", "naive", "whole")
SCHEMA = "unet-deploy-benchmark/1"


class HaloPredictor:
    """Adapts a valid-convolution U-Net to MONAI's same-size predictor contract.

    MONAI's ``sliding_window_inference`` cuts windows of ``roi`` pixels and expects a
    same-size output. A valid U-Net shrinks its input by 2*halo, so each window
    (B, C, roi, roi) is mirror-padded ("reflect", torch.nn.functional.pad) by the halo on every
    side to the legal input tile roi + 2*halo and the network's (B, K, roi, roi) output is
    returned. The padding mirrors the *window*, not the image: inside the image it invents
    context the real neighbours would have provided, which is what MONAI's overlap + gaussian
    blending has to hide (and what the seam error measures)."""

    def __init__(self, run, halo: int):
        self.run, self.halo = run, halo

    def __call__(self, x):
        import torch

        h = self.halo
        return self.run(torch.nn.functional.pad(x, (h, h, h, h), mode="reflect"))


def ort_runner(session):
    import torch

    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run


def torch_runner(net):
    import torch

    def run(x):
        with torch.inference_mode():
            return torch.softmax(net(x), dim=1)

    return run


def monai_segment(image: np.ndarray, info, run, tile: int, batch: int,
                  overlap: float = 0.25, mode: str = "gaussian") -> np.ndarray:
    """Probabilities (H, W, K) from MONAI sliding_window_inference with a halo predictor."""
    import torch
    from monai.inferers import sliding_window_inference

    geo = info.geometry
    roi = geo.output_size(tile)
    x = torch.from_numpy(np.ascontiguousarray(normalized(image, info)[None]))
    with torch.inference_mode():
        y = sliding_window_inference(x, (roi, roi), batch, HaloPredictor(run, geo.halo(tile)),
                                     overlap=overlap, mode=mode)
    return y[0].numpy().transpose(1, 2, 0)


class Peers:
    """The methods compared, on one model and one in-memory image, engines opened once."""

    def __init__(self, model: str | Path, tile: int, batch: int, threads: int):
        from .backends.onnxruntime import OnnxRuntimeBackend

        self.model, self.tile, self.batch, self.threads = Path(model), tile, batch, threads
        self.backend = OnnxRuntimeBackend(model, threads=threads).activate()
        self.info = self.backend.info
        self._torch = None
        self.torch_threads = None

    def available(self) -> list[str]:
        out = ["unet-deploy", "naive", "whole"]
        try:
            import monai  # noqa: F401

            out.insert(1, "monai+ort")
            import torch  # noqa: F401

            out.insert(2, "monai+torch")
        except ImportError:
            pass
        return out

    def torch_net(self):
        """The PyTorch net, with torch's thread count chosen by a probe: on a busy 2-core
        machine torch's OpenMP workers can run one window 30x slower with 2 threads than with
        1 (busy-waiting for a preempted worker), so MONAI + torch gets the faster of 1 and
        ``threads`` (recorded in ``torch_threads``)."""
        if self._torch is None:
            import torch

            from .train.unet import unet_from_onnx

            self._torch, _ = unet_from_onnx(self.model)
            x = torch.zeros(1, self.info.in_channels, self.tile, self.tile)
            best = None
            for n in sorted({1, self.threads or os.cpu_count() or 1}):
                torch.set_num_threads(n)
                with torch.inference_mode():
                    self._torch(x)  # warm
                    t = time.perf_counter()
                    self._torch(x)
                    dt = time.perf_counter() - t
                if best is None or dt < best[1]:
                    best = (n, dt)
            torch.set_num_threads(best[0])
            self.torch_threads = best[0]
        return self._torch

    def run(self, method: str, image: np.ndarray, output: str = "labels") -> np.ndarray:
        """Labels (H, W) uint8 or probabilities (H, W, K) float32."""
        from .pipeline import segment_array, segment_whole

        if method == "unet-deploy":
            return segment_array(image, backend=self.backend, batch_size=self.batch,
                                 tile=self.tile, output=output)
        if method == "naive":
            return naive_segment(image, self.model, self.tile, output=output,
                                 session=self.backend.session)["result"]
        if method == "whole":
            return segment_whole(image, self.backend, output)
        if method in ("monai+ort", "monai+torch"):
            run = ort_runner(self.backend.session) if method == "monai+ort" \
                else torch_runner(self.torch_net())
            probs = monai_segment(image, self.info, run, self.tile, self.batch)
            return probs.argmax(-1).astype(np.uint8) if output == "labels" else probs
        raise ValueError(f"unknown method {method!r}")


def seam_error(probs: np.ndarray, reference: np.ndarray) -> dict:
    d = np.abs(probs - reference)
    return {"seam_error": float(d.max()),
            "label_mismatch": float(np.mean(probs.argmax(-1) != reference.argmax(-1)))}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_peers(peers: Peers, image: np.ndarray, repeats: int, methods=None,
                  log=print) -> tuple[list[dict], dict]:
    """Seam errors (probabilities vs whole-image) once, then ``repeats`` interleaved timed runs
    of every method producing labels (rotating the order each repeat). In-process: peak RSS
    is the process high-water mark after that method's first run (cumulative; the suite
    measures each method in a fresh process instead)."""
    methods = list(methods or peers.available())
    ref = peers.run("whole", image, "probabilities")
    probs = {"whole": ref}
    rows = {m: {"method": m, "seconds": []} for m in methods}
    for m in methods:
        p = ref if m == "whole" else peers.run(m, image, "probabilities")
        rows[m].update(seam_error(p, ref))
        if m in ("unet-deploy", "monai+ort", "naive"):
            probs[m] = p
        rows[m]["peak_rss_mb_cumulative"] = peak_rss_mb()
        if m == "monai+torch":
            rows[m]["torch_threads"] = peers.torch_threads
    for r in range(repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            t = time.perf_counter()
            peers.run(m, image, "labels")
            rows[m]["seconds"].append(time.perf_counter() - t)
        log(f"repeat {r}: " + ", ".join(f"{m} {rows[m]['seconds'][-1]:.2f}s" for m in methods))
    return [rows[m] for m in methods], probs


def summarize(rows: list[dict], pixels: int, flops_px: float, gemm_gflops: float) -> list[dict]:
    for r in rows:
        med = float(np.median(r["seconds"]))
        r["seconds_median"] = med
        r["mpx_per_s"] = pixels / 1e6 / med
        r["gflops_achieved"] = flops_px * pixels / med / 1e9 if flops_px else None
        r["share_of_gemm_ceiling"] = (r["gflops_achieved"] / gemm_gflops
                                      if flops_px and gemm_gflops else None)
    return rows


def ratios(rows: list[dict]) -> dict:
    t = {r["method"]: r["seconds_median"] for r in rows}
    ours = t["unet-deploy"]
    out = {f"speedup_vs_{m}": t[m] / ours for m in t if m != "unet-deploy"}
    return out


def goals(rows: list[dict], rat: dict) -> dict:
    ours = next(r for r in rows if r["method"] == "unet-deploy")
    g = {"zero_seam_error": {"target": "<= 1e-5 and no label change",
                             "value": ours["seam_error"],
                             "met": ours["seam_error"] <= 1e-5 and ours["label_mismatch"] == 0}}
    if "speedup_vs_monai+torch" in rat:
        g["vs_monai_torch"] = {"target": ">= 3x", "value": rat["speedup_vs_monai+torch"],
                               "met": rat["speedup_vs_monai+torch"] >= 3}
    if "speedup_vs_monai+ort" in rat:
        g["vs_monai_ort"] = {"target": ">= 1.2x", "value": rat["speedup_vs_monai+ort"],
                             "met": rat["speedup_vs_monai+ort"] >= 1.2}
    return g


# --------------------------------------------------------------------------- format check
_RUN_KEYS = {"method": str, "seconds": list, "seconds_median": float, "mpx_per_s": float,
             "seam_error": float, "label_mismatch": float}


def check_result(res: dict) -> dict:
    """Raise ValueError unless ``res`` has the benchmark output format; returns it."""
    def need(cond, what):
        if not cond:
            raise ValueError(f"benchmark output format: {what}")

    need(res.get("schema") == SCHEMA, f"schema must be {SCHEMA!r}")
    for key in ("machine", "model", "image", "limits", "runs", "ratios", "goals"):
        need(key in res, f"missing key {key!r}")
    lim = res["limits"]
    need(lim.get("gemm_gflops", 0) > 0, "limits.gemm_gflops must be > 0")
    need(lim.get("flops_per_output_px", 0) > 0, "limits.flops_per_output_px must be > 0")
    need(isinstance(res["runs"], list) and res["runs"], "runs must be a non-empty list")
    methods = [r.get("method") for r in res["runs"]]
    need("unet-deploy" in methods and "whole" in methods, "runs need unet-deploy and whole")
    for r in res["runs"]:
        for k, typ in _RUN_KEYS.items():
            need(isinstance(r.get(k), typ), f"run {r.get('method')}: {k} must be {typ.__name__}")
        need(r["seconds"] and all(s > 0 for s in r["seconds"]), "run seconds must be > 0")
        need(r["mpx_per_s"] > 0 and r["seam_error"] >= 0, "run values out of range")
        need(0 < r["share_of_gemm_ceiling"], "share_of_gemm_ceiling must be > 0")
    for k, v in res["ratios"].items():
        need(k.startswith("speedup_vs_") and v > 0, f"ratio {k}")
    for k, v in res["goals"].items():
        need({"target", "value", "met"} <= set(v), f"goal {k} needs target/value/met")
    return res


def markdown(res: dict) -> str:
    m, img, lim = res["machine"], res["image"], res["limits"]
    lines = [
        f"# unet-deploy benchmark{' (quick)' if res.get('quick') else ''}",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gb']:.0f} GB RAM, load {m['loadavg'][0]:.1f}, "
        f"{m['time_utc']}; onnxruntime {m['onnxruntime']}.",
        f"Model {res['model']['name']} (base {res['model']['base']}, depth "
        f"{res['model']['depth']}), tile {res['model']['tile']}, batch {res['model']['batch']}, "
        f"{res['model']['threads']} threads. Image {img['desc']}.",
        f"{lim['flops_per_output_px'] / 1e3:.1f} kFLOP per output pixel at tile "
        f"{res['model']['tile']}; fp32 GEMM ceiling {lim['gemm_gflops']:.0f} GFLOP/s "
        "(numpy matmul, best of repeats).",
        "",
        "| method | median s | Mpx/s | GFLOP/s | share of GEMM ceiling | seam error | "
        "label mismatch | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        rss = r.get("peak_rss_mb", r.get("peak_rss_mb_cumulative"))
        lines.append(f"| {r['method']} | {r['seconds_median']:.3f} | {r['mpx_per_s']:.3f} | "
                     f"{r['gflops_achieved']:.1f} | {100 * r['share_of_gemm_ceiling']:.1f} % | "
                     f"{r['seam_error']:.2e} | {100 * r['label_mismatch']:.3f} % | "
                     f"{rss:.0f} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    lines += ["", "| goal | target | value | met |", "|---|---|---:|---|"]
    lines += [f"| {k} | {g['target']} | {g['value']:.3g} | {'yes' if g['met'] else 'no'} |"
              for k, g in res["goals"].items()]
    return "\n".join(lines) + "\n"


def run_benchmark(quick: bool = True, out_dir: Path | str = "benchmark-results",
                  model: str | Path | None = None, image: np.ndarray | None = None,
                  tile: int | None = None, batch: int = 1, threads: int = 0,
                  repeats: int | None = None, log=print) -> dict:
    """Peers on one model and image, limit accounting, self-checked JSON + markdown.

    quick: a small random U-Net (base 8, depth 3; or ``model``) on a 512x512 crop of the real
    BBBC039 mosaic (a synthetic image when the data is absent), 3 repeats — under 2 minutes on
    2 cores. Full: the base-16 depth-4 paper U-Net at tile 764 on a 2000x2000 mosaic, 5 repeats.
    Writes ``benchmark.json`` and ``benchmark.md`` to ``out_dir`` and returns the dict."""
    from .flops import count_flops
    from .model_store import read_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = bench_model(8, 3, tile=188) if quick else bench_model(16, 4)
    info = read_onnx(model).info
    tile = tile or (188 if quick and info.depth <= 3 else info.tile if quick else 764)
    repeats = repeats or (3 if quick else 5)
    size = 512 if quick else 2000
    if image is None:
        image, desc = _bench_image(size)
    else:
        desc = f"{image.shape[0]}x{image.shape[1]} {image.dtype} (given)"
    t0 = time.perf_counter()
    gemm = gemm_ceiling(1024 if quick else 2048, 3 if quick else 7)
    flops = count_flops(model, tile)
    shipped = []
    from .model_store import shipped_models

    for name, path in shipped_models().items():  # whatever models/ holds
        try:
            shipped.append(count_flops(path, read_onnx(path).info.tile))
        except Exception as exc:  # noqa: BLE001 - accounting must not sink the benchmark
            shipped.append({"model": name, "error": str(exc)[:200]})
    peers = Peers(model, tile, batch, threads)
    rows, _ = compare_peers(peers, image, repeats, log=log)
    rows = summarize(rows, image.shape[0] * image.shape[1], flops["flops_per_output_px"],
                     gemm["gflops_best"])
    rat = ratios(rows)
    res = {
        "schema": SCHEMA,
        "quick": quick,
        "machine": machine_info(),
        "model": {"path": str(model), "name": info.name, "base": info.base,
                  "depth": info.depth, "tile": tile, "batch": batch, "threads": threads},
        "image": {"desc": desc, "shape": list(image.shape)},
        "limits": {"gemm": gemm, "gemm_gflops": gemm["gflops_best"], "flops": flops,
                   "shipped_models": shipped,
                   "flops_per_output_px": flops["flops_per_output_px"]},
        "runs": rows,
        "ratios": rat,
        "goals": goals(rows, rat),
        "seconds_total": time.perf_counter() - t0,
    }
    check_result(res)
    (out_dir / "benchmark.json").write_text(json.dumps(res, indent=1))
    (out_dir / "benchmark.md").write_text(markdown(res))
    return res


def _bench_image(size: int) -> tuple[np.ndarray, str]:
    data = Path(os.environ.get("UNET_DEPLOY_DATA", "/work/shared/data")) / "bbbc039" / "images"
    files = sorted(data.glob("*.tif"))
    if files:
        import tifffile

        imgs = [tifffile.imread(f) for f in files[: 4 + (size // 500) ** 2]]
        ih, iw = imgs[0].shape
        out = np.empty((size, size), np.uint16)
        k = 0
        for y in range(0, size, ih):
            for x in range(0, size, iw):
                h, w = min(ih, size - y), min(iw, size - x)
                out[y : y + h, x : x + w] = imgs[k % len(imgs)][:h, :w]
                k += 1
        return out, f"{size}x{size} uint16 mosaic of BBBC039 images"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = 1000 + 800 * np.sin(yy / 17.0) * np.cos(xx / 23.0) + rng.normal(0, 50, (size, size))
    return img.clip(0, 4095).astype(np.uint16), f"{size}x{size} uint16 synthetic (no BBBC039)"


def ort_backend(model, threads: int = 0, spinning: bool | None = None):
    """An activated ``OnnxRuntimeBackend``; ``spinning`` set: its session is rebuilt with
    ``session.intra_op.allow_spinning`` forced on/off (for A/B measurements)."""
    import onnxruntime as ort

    from .backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(model, threads=threads).activate()
    if spinning is not None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if spinning else "0")
        be.session = ort.InferenceSession(str(be.path), opts, providers=be.providers)
    return be
