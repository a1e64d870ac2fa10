"""All GPU checks and timings in one call, on a fresh machine:

    python benchmarks/gpu.py --out DIR        # GPU machine: writes DIR/gpu.md, gpu.json, host.md
    python benchmarks/gpu.py --smoke --out DIR   # CPU dry run of every code path (CI runs it)

Runs from a plain checkout -- the package need not be installed (``unet_deploy`` is imported
from this checkout, its ``kernels``/``models`` subpackages from ``kernels/``/``models/``) -- on a
machine with a CUDA build of PyTorch and no TensorRT or onnxruntime-gpu (rows for those say
why they were not measured). It needs numpy, numba, onnx, onnxruntime, scipy, torch; imagecodecs
only for the host-only TIFF rows.

Models: the paper-size U-Net (depth 4, base 64, random weights: speed does not depend on the
weight values) and the shipped nuclei model. For each GPU backend (torch-cuda fp32/fp16/bf16
with channels_last + CUDA graphs; onnxruntime-gpu and TensorRT fp16 when installed):

1. correctness on a crop against the CPU float32 reference (ONNX Runtime CPU): label agreement,
   max/mean probability error, with the same accuracy gate as reduced-precision builds; and the
   backend's own labels (argmax on the device) against the argmax of its probabilities;
2. inference throughput at several batch sizes (tiles/s) and achieved TFLOP/s, from the FLOP
   count of the ONNX graph (2 x Conv/ConvTranspose MACs, ``flops.conv_macs``): one untimed
   call per batch shape (graph capture, cuDNN search), then ``--reps`` timed calls, median;
3. end-to-end ``segment_array`` on a SIZE x SIZE uint16 image (host stages on all cores):
   one untimed full run first (every batch shape captured), then ``--reps`` timed runs,
   median and min -- with labels computed on the device (1 byte per pixel back) and, for
   comparison, with probabilities argmaxed on the host. Target for the paper-size model at
   8192²: <= 0.25 s (issue 14);
4. host-only throughput (``benchmarks/host.py``, zero-cost backend) at 1, 4 and all threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # host.py
TARGET_S = 0.25
MIN_REPS = 3


def import_package() -> str:
    """Import unet_deploy: the installed one, else this checkout's (where it is not installed,
    ``unet_deploy.kernels`` and ``.models`` exist only through ``__path__``). Returns where."""
    try:
        import unet_deploy.kernels  # noqa: F401
        import unet_deploy

        return str(Path(unet_deploy.__file__).parent)
    except ImportError:
        pass
    from host import use_checkout

    use_checkout(ROOT)
    import unet_deploy

    return f"{Path(unet_deploy.__file__).parent} (checkout, not installed)"


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    from host import synthetic_image as make

    return make(size, seed)


def paper_model(tmp: Path, base: int, depth: int, tile: int) -> Path:
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(tmp / f"paper-b{base}.onnx", depth, base, tile=tile,
                            classes=["background", "interior", "border"],
                            instance_scheme="none", description="random weights, for timing",
                            bias_range=0.05, parity=False)


def shipped_model() -> Path | None:
    from unet_deploy.model_store import shipped_models

    models = shipped_models()
    return models.get("nuclei") or (next(iter(models.values())) if models else None)


def gpu_backends(model: Path, smoke: bool, batch: int, tile: int, tmp: Path):
    """[(label, factory or None, skip reason)] for every GPU backend."""
    from unet_deploy import backends as B

    rows = []
    if smoke:
        from unet_deploy.backends.torch_cuda import TorchBackend
        rows.append(("torch-cpu fp32 (smoke stand-in)",
                     lambda: TorchBackend(model, device="cpu", dtype="fp32"), None))
        return rows
    ok, why = B.availability("torch-cuda")
    for dt in ("fp32", "fp16", "bf16"):
        if ok:
            from unet_deploy.backends.torch_cuda import TorchBackend
            rows.append((f"torch-cuda {dt} (channels_last, CUDA graphs)",
                         lambda dt=dt: TorchBackend(model, device="cuda", dtype=dt), None))
        else:
            rows.append((f"torch-cuda {dt}", None, why))
    ok, why = B.availability("onnxruntime-gpu")
    rows.append(("onnxruntime-gpu fp32", (lambda: B.open_backend(model, "onnxruntime-gpu"))
                 if ok else None, None if ok else why))
    ok, why = B.availability("tensorrt")
    if ok:
        def trt_factory():
            from unet_deploy.backends.tensorrt import TensorRTBackend
            from unet_deploy.engine_build import build_engine
            eng = tmp / f"{model.stem}.b{batch}.t{tile}.fp16.engine"
            if not eng.exists():
                res = build_engine(model, eng, precision="fp16", batch=batch, tile=tile,
                                   timing_cache=tmp / "timing.cache")
                print("  built", res.summary(), flush=True)
            return TensorRTBackend(eng)
        rows.append(("tensorrt fp16", trt_factory, None))
    else:
        rows.append(("tensorrt fp16", None, why))
    return rows


def sync():
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def correctness(backend, crop: np.ndarray, reference: np.ndarray, tile: int):
    """(gate report vs the CPU reference, agreement of the device labels with the argmax of
    the same backend's probabilities)."""
    from unet_deploy.gate import DEFAULT_MIN_AGREEMENT, gate_report
    from unet_deploy.pipeline import segment_array

    probs = segment_array(crop, backend=backend, tile=tile, batch_size=4, output="probabilities")
    labels = segment_array(crop, backend=backend, tile=tile, batch_size=4)
    to = lambda a: np.moveaxis(a, -1, 0)[None]  # (H, W, K) -> (1, K, H, W)
    own = float(np.mean(labels == probs.argmax(-1)))
    return gate_report(to(reference), to(probs), DEFAULT_MIN_AGREEMENT), own


def throughput(backend, model: Path, info, batches, tile: int, reps: int):
    from unet_deploy.flops import conv_macs

    out = []
    for bs in batches:
        x = np.random.default_rng(0).uniform(0, 1, (bs, info.in_channels, tile, tile)) \
            .astype(np.float32)
        backend.infer(x)  # untimed: graph capture / cuDNN autotuning for this shape
        sync()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            backend.infer(x)
            sync()
            ts.append(time.perf_counter() - t)
        med = float(np.median(ts))
        out.append((bs, med, bs / med, 2 * conv_macs(model, bs, tile) / med / 1e12))
    return out


def end_to_end(backend, image: np.ndarray, tile: int, batch: int, reps: int,
               device_labels: bool):
    """(median, min) seconds of segment_array(image) -> labels, after one untimed full run
    (the same batch shapes, so nothing is captured or tuned inside the timed runs)."""
    from unet_deploy.pipeline import segment_array

    saved = backend.computes_labels
    backend.computes_labels = saved and device_labels
    try:
        segment_array(image, backend=backend, tile=tile, batch_size=batch)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            segment_array(image, backend=backend, tile=tile, batch_size=batch)
            ts.append(time.perf_counter() - t)
    finally:
        backend.computes_labels = saved
    return float(np.median(ts)), float(min(ts))


def device_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA " \
                   f"{torch.version.cuda})"
        return f"no CUDA GPU (torch {torch.__version__})"
    except ImportError:
        return "no torch"


def host_section(args, out_dir: Path) -> list[str]:
    """Host-only throughput with the zero-cost backend (benchmarks/host.py), own processes."""
    import importlib.util

    from host import all_cores, measure, report

    cores = all_cores()
    threads = [1] if args.smoke else sorted({1, min(4, cores), cores})
    modes = ("bigtiff", "memory") if importlib.util.find_spec("imagecodecs") else ("memory",)
    hargs = argparse.Namespace(size=args.host_size, batch=args.e2e_batch, tile=args.host_tile,
                               repeats=args.host_repeats, rounds=1, model=args.host_model)
    rows = measure(hargs, threads, None, modes=modes, forms=("labels",))
    text = report(rows, hargs, None)
    (out_dir / "host.md").write_text(text)
    note = "" if "bigtiff" in modes else " (TIFF rows skipped: imagecodecs is not installed)"
    return ["## Host only (zero-cost backend)" + note, "",
            *[ln for ln in text.splitlines() if ln.startswith("|")], ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description="All GPU checks and timings in one call.")
    ap.add_argument("--out", type=Path, required=True,
                    help="folder for gpu.md, gpu.json and host.md (created)")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--crop", type=int, default=700)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--e2e-batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5, help=f"timed repeats (>= {MIN_REPS})")
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="CPU dry run with a tiny model")
    ap.add_argument("--no-shipped", action="store_true")
    ap.add_argument("--no-host", action="store_true", help="skip the host-only section")
    args = ap.parse_args(argv)
    args.reps = max(MIN_REPS, args.reps)
    args.host_size, args.host_tile, args.host_repeats, args.host_model = \
        args.size, args.tile, 3, "nuclei"
    if args.smoke:
        args.size, args.crop, args.base, args.depth, args.tile = 300, 200, 4, 2, 92
        args.batches, args.reps, args.e2e_batch = "1,2", MIN_REPS, 2
        args.host_size, args.host_tile, args.host_repeats = 1000, 572, 1
    batches = [int(b) for b in args.batches.split(",")]
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    where = import_package()
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.flops import conv_macs
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array

    tmp = Path(tempfile.mkdtemp(prefix="gpubench"))
    models = [("paper-size (random weights)", paper_model(tmp, args.base, args.depth,
                                                          args.tile))]
    if not args.no_shipped and not args.smoke:
        models.append(("shipped nuclei", shipped_model()))
    image = synthetic_image(args.size)
    crop = image[: args.crop, : args.crop]
    lines = ["# GPU checks and timings (benchmarks/gpu.py)", "",
             f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device: {device_name()};"
             f" host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
             f"package: {where}",
             f"- image: synthetic uint16 {args.size}x{args.size}; correctness crop "
             f"{args.crop}x{args.crop} vs ONNX Runtime CPU float32; 'own labels' = the "
             f"backend's labels (argmax where the probabilities are) vs the argmax of its own "
             f"probabilities",
             f"- tile {args.tile} (input side); throughput = backend.infer on random tiles, one "
             f"untimed call per shape, then median of {args.reps}; TFLOP/s = 2 x Conv/"
             f"ConvTranspose MACs of the ONNX graph / time",
             f"- end-to-end = segment_array(image, batch {args.e2e_batch}) -> labels incl. "
             f"gather/normalize/stitch on the host (all cores), one untimed full run, then "
             f"median / min of {args.reps}; 'device labels' = class maps from the backend, "
             f"'host argmax' = probabilities copied back; target <= {TARGET_S} s for the "
             f"paper-size model at 8192²", ""]
    results = {"device": device_name(), "args": {k: str(v) for k, v in vars(args).items()},
               "models": {}}
    for mlabel, model in models:
        lines += [f"## {mlabel}", ""]
        if model is None:
            lines += ["not measured: no shipped model found", ""]
            continue
        info = read_onnx(model).info
        tile = args.tile if info.geometry.is_legal(args.tile) else info.tile
        macs = conv_macs(model, 1, tile)
        lines += [f"- {model.name}: depth {info.depth}, base {info.base}, tile {tile}, "
                  f"{2 * macs / 1e9:.1f} GFLOP per tile", ""]
        print(f"[{mlabel}] reference on CPU ...", flush=True)
        with OnnxRuntimeBackend(model) as ref_b:
            reference = segment_array(crop, backend=ref_b, tile=tile, batch_size=2,
                                      output="probabilities")
        lines += ["| backend | crop label agreement | max / mean prob error | own labels | "
                  "batch | infer s | tiles/s | TFLOP/s | e2e s, device labels (median/min) | "
                  "e2e s, host argmax (median/min) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        mres = results["models"][mlabel] = {}
        for label, factory, skip in gpu_backends(model, args.smoke, max(batches), tile, tmp):
            if factory is None:
                lines.append(f"| {label} | not measured: {skip} | | | | | | | | |")
                mres[label] = {"skipped": skip}
                print(f"  {label}: skipped ({skip})", flush=True)
                continue
            print(f"  {label} ...", flush=True)
            try:
                with factory() as b:
                    gate, own = correctness(b, crop, reference, tile)
                    tp = throughput(b, model, info, batches, tile, args.reps)
                    e2e = end_to_end(b, image, tile, args.e2e_batch, args.reps, True)
                    e2e_host = end_to_end(b, image, tile, args.e2e_batch, args.reps, False) \
                        if b.computes_labels else None
            except Exception as exc:  # one failing backend must not lose the other rows
                traceback.print_exc()
                msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                lines.append(f"| {label} | FAILED: {msg} | | | | | | | | |")
                mres[label] = {"failed": msg}
                continue
            mres[label] = {"gate": gate.to_dict(), "own_labels": own, "throughput": tp,
                           "e2e": e2e, "e2e_host_argmax": e2e_host}
            flag = "" if gate.passed else f" (below {100 * gate.min_agreement:.1f}%)"
            for i, (bs, med, tps, tf) in enumerate(tp):
                first = i == 0
                host_col = (f"{e2e_host[0]:.3f} / {e2e_host[1]:.3f}" if e2e_host else
                            "same (backend returns probabilities)")
                lines.append(
                    f"| {label if first else ''} | "
                    f"{f'{100 * gate.label_agreement:.3f}%{flag}' if first else ''} | "
                    f"{f'{gate.max_abs_error:.2e} / {gate.mean_abs_error:.2e}' if first else ''}"
                    f" | {f'{100 * own:.3f}%' if first else ''} | {bs} | {med:.4f} | "
                    f"{tps:.1f} | {tf:.1f} | "
                    f"{f'{e2e[0]:.3f} / {e2e[1]:.3f}' if first else ''} | "
                    f"{host_col if first else ''} |")
            print(f"    {gate.summary()}; e2e {e2e[0]:.3f} s", flush=True)
        lines.append("")
    if not args.no_host:
        print("[host only] ...", flush=True)
        try:
            lines += host_section(args, out_dir)
        except Exception as exc:  # noqa: BLE001 - the GPU rows above are still written
            traceback.print_exc()
            lines += ["## Host only", "", f"FAILED: {str(exc).splitlines()[0][:200]}", ""]
    (out_dir / "gpu.md").write_text("\n".join(lines) + "\n")
    (out_dir / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
