"""Whole-slide scale: peak memory of labels / probabilities / instances by image size, the share
of instance post-processing, OME-Zarr vs TIFF output throughput, and tifffile's ``aszarr`` vs
unet-deploy's own segment decoding for tiled TIFF reads. Writes results/wsi.md.

    python benchmarks/wsi.py                       # sizes 2000 5000 10000, shipped nuclei model
    python benchmarks/wsi.py --sizes 2000 20000    # 20000² takes ~9 min per output on 2 cores

Each segmentation runs in a fresh process (``python benchmarks/wsi.py one ...``) so its peak
RSS is its own: ru_maxrss (the kernel's high-water mark, mapped input pages included) and the
peak RssAnon (heap only, sampled every 50 ms). Inputs are BBBC039 mosaics (``mosaic.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, publish  # noqa: E402
from mosaic import build_mosaic  # noqa: E402


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(inp: str, out: str, output: str, model: str | None, tile: int | None = None) -> dict:
    """One segmentation in this process; peak memory and time as a dict."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    from unet_deploy.pipeline import segment_file

    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon_mb())
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    s = segment_file(inp, out, model, output=output, progress=False, overwrite=True, tile=tile)
    sec = time.perf_counter() - t0
    stop.set()
    th.join()
    return {"seconds": sec, "mpx_s": s.mpx_per_s, "tiles": s.tiles,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_anon_mb": max(peak[0], _rss_anon_mb())}


def run_one(inp: Path, out: Path, output: str, model: str | None, tile: int | None) -> dict:
    cmd = [sys.executable, __file__, "one", str(inp), str(out), output, model or "",
           str(tile or 0)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def post_processing_seconds(probs_tif: Path, model: str | None) -> tuple[float, int]:
    """Time of instance post-processing alone (instance_classes + InstanceStream) over the
    probability bands of a finished run, read back band by band; and the object count."""
    import tifffile

    from unet_deploy.model_store import read_onnx, resolve_model
    from unet_deploy.postprocess import instance_classes
    from unet_deploy.stream_instances import InstanceStream

    info = read_onnx(resolve_model(model or "nuclei")).info
    import zarr  # band reads of the (tiled, possibly pyramidal) probabilities file

    store = tifffile.imread(probs_tif, aszarr=True, level=0)
    arr = zarr.open(store, mode="r")
    class_first = arr.shape[0] == info.out_channels and arr.ndim == 3  # OME-TIFF class planes
    h, w = arr.shape[-2:] if class_first else arr.shape[:2]
    stream = InstanceStream(h, w, info.instance_scheme, info.out_channels,
                            info.min_object_size)
    band, spent = 388, 0.0
    for y in range(0, h, band):
        probs = np.asarray(arr[:, y : y + band] if class_first else arr[y : y + band])
        if class_first:
            probs = np.moveaxis(probs, 0, -1)
        t0 = time.perf_counter()
        for _ in stream.push(instance_classes(probs, info)):
            pass
        spent += time.perf_counter() - t0
    stream.finish()
    store.close()
    return spent, stream.n_objects


def writer_throughput(side: int, folder: Path) -> list[tuple[str, str, float]]:
    """Mpx/s of each output writer alone, fed precomputed bands (labels and probabilities)."""
    from unet_deploy.io import TiffBandWriter
    from unet_deploy.ome_tiff import OmeTiffWriter
    from unet_deploy.physical import PhysicalSize
    from unet_deploy.zarr_io import ZarrWriter

    import ome_zarr.writer  # noqa: F401 - imports (seconds, cold) are not writing time

    from unet_deploy.pyramid import reduce_mean, reduce_mode

    reduce_mode(np.zeros((2, 2), np.uint8)), reduce_mean(np.zeros((2, 2), np.float32))
    rng = np.random.default_rng(0)
    band_rows = 388
    yy = np.arange(band_rows)[:, None]
    lab = ((yy // 9 + np.arange(side)[None] // 11) % 3).astype(np.uint8)
    probs = rng.random((band_rows, side, 3)).astype(np.float32)
    phys = PhysicalSize(0.65, 0.65)
    rows = []
    for kind, band, samples, dtype in (("labels", lab, 1, np.uint8),
                                       ("probabilities", probs, 3, np.float32)):
        for name, make in (
            ("BigTIFF (one level)", lambda p: TiffBandWriter(p, (), side, side, samples, dtype,
                                                            overwrite=True)),
            ("OME-TIFF pyramid", lambda p: OmeTiffWriter(p, (), side, side, samples, dtype,
                                                         kind=kind, physical=phys,
                                                         overwrite=True)),
            ("OME-Zarr pyramid", lambda p: ZarrWriter(p, (), side, side, samples, dtype,
                                                      kind=kind, physical=phys,
                                                      overwrite=True)),
        ):
            suffix = ".ome.zarr" if "Zarr" in name else ".tif"
            path = folder / f"w_{kind}{suffix}"
            t0 = time.perf_counter()
            with make(path) as w:
                for y in range(0, side, band_rows):
                    w.write_band(band[: min(band_rows, side - y)])
            rows.append((kind, name, side * side / 1e6 / (time.perf_counter() - t0)))
    return rows


def aszarr_vs_decoding(folder: Path) -> list[tuple[str, float, float]]:
    """Seconds to read a tiled TIFF in overlapping bands (as the tiler does): unet-deploy's
    PlaneReader (per-segment decode) vs tifffile's zarr store (``aszarr``) through zarr."""
    import tifffile
    import zarr

    from unet_deploy.io import open_image

    rng = np.random.default_rng(0)
    img = np.cumsum((rng.random((6000, 6000)) * 16).astype(np.uint16), axis=1, dtype=np.uint16)
    files = []
    for name, kw in (("6000² uint16, zlib, 256² tiles", dict(tile=(256, 256), compression="zlib")),
                     ("6000² uint16, zstd, 512² tiles", dict(tile=(512, 512), compression="zstd"))):
        p = folder / f"{name.split(',')[1].strip()}.tif"
        tifffile.imwrite(p, img, **kw)
        files.append((name, p))
    svs = Path("/work/shared/data/large/CMU-1-Small-Region.svs")
    if svs.exists():
        files.append(("CMU-1 SVS 2967x2220 RGB, JPEG 240² tiles", svs))
    out = []
    for name, path in files:
        own, az = [], []
        for _ in range(3):
            with open_image(path) as src:
                r, h = src.plane(0), src.height
                t0 = time.perf_counter()
                for y in range(0, h, 236):
                    r.read_rows(max(0, y - 92), min(h, y + 328))
                own.append(time.perf_counter() - t0)
            with tifffile.TiffFile(path) as tif:
                store = tif.series[0].aszarr(level=0)
                z = zarr.open(store, mode="r")
                t0 = time.perf_counter()
                for y in range(0, h, 236):
                    np.asarray(z[max(0, y - 92) : min(h, y + 328)])
                az.append(time.perf_counter() - t0)
        out.append((name, float(np.median(own)), float(np.median(az))))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 10000])
    ap.add_argument("--model", default=None, help="model [default: shipped nuclei]")
    ap.add_argument("--writer-side", type=int, default=8000)
    ap.add_argument("--tile", type=int, default=None, help="input tile [default: the planner's]")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="unet-deploy-wsi-"))
    lines = ["# Whole-slide scale: memory, instance post-processing, output formats", "",
             f"Machine: {machine()}. Model: {args.model or 'shipped nuclei (depth 4, base 16)'}."
             f" Tile: {args.tile or 'the planner'}."
             f" Input: BBBC039 mosaics, uncompressed uint16 TIFF (memory-mapped). Outputs are"
             f" `.tif`: above 2048 px that is the pyramidal OME-TIFF.", "",
             "## Peak memory by output and size (each run a fresh process)", "",
             "| size | output | seconds | Mpx/s | peak RSS (ru_maxrss) MB | peak RssAnon MB |",
             "|---:|---|---:|---:|---:|---:|"]
    post_rows = []
    for size in args.sizes:
        inp = build_mosaic(size)
        for output in ("labels", "probabilities", "instances"):
            out = work / f"m{size}.{output}.tif"
            r = run_one(inp, out, output, args.model, args.tile)
            lines.append(f"| {size}² | {output} | {r['seconds']:.1f} | {r['mpx_s']:.2f} | "
                         f"{r['ru_maxrss_mb']:.0f} | {r['rss_anon_mb']:.0f} |")
            print(lines[-1], flush=True)
            if output == "instances":
                post, n = post_processing_seconds(work / f"m{size}.probabilities.tif",
                                                  args.model)
                post_rows.append((size, post, r["seconds"], n))
            if output != "probabilities":
                out.unlink(missing_ok=True)
        (work / f"m{size}.probabilities.tif").unlink(missing_ok=True)
    lines += ["", "## Instance post-processing share", "",
              "Streaming post-processing alone (`instance_classes` + `InstanceStream`, timed over "
              "the probability bands of the same image) against the whole `--output instances` "
              "run.", "",
              "| size | objects | post-processing s | instances run s | share |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {s}² | {n} | {p:.1f} | {t:.1f} | {100 * p / t:.1f} % |"
              for s, p, t, n in post_rows]
    side = args.writer_side
    lines += ["", f"## Output writers alone ({side}², bands of 388 rows, Mpx/s)", "",
              "| output | writer | Mpx/s |", "|---|---|---:|"]
    lines += [f"| {k} | {n} | {v:.1f} |" for k, n, v in writer_throughput(side, work)]
    lines += ["", "## Tiled TIFF reads: own segment decoding vs tifffile `aszarr`", "",
              "Overlapping bands of 420 rows stepping 236 (the tiler's pattern); median of 3.", "",
              "| file | segment decoding s | aszarr + zarr s | aszarr / own |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {o:.3f} | {a:.3f} | {a / o:.2f} |" for n, o, a in
              aszarr_vs_decoding(work)]
    publish(lines, "wsi.md", write=not args.no_write)
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        a = sys.argv[2:]
        print(json.dumps(one(a[0], a[1], a[2], a[3] or None, int(a[4]) or None)))
    else:
        main()
