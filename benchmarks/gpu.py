"""All GPU checks and timings in one script; writes benchmarks/results/gpu.md.

    python benchmarks/gpu.py                      # on a GPU machine (H100 image: torch CUDA)
    python benchmarks/gpu.py --smoke              # CPU-only dry run of every code path

Models: the paper-size U-Net (depth 4, base 64, random weights: speed does not depend on the
weight values) and the shipped/trained model when one is found. For each GPU backend
(torch-cuda fp32/fp16/bf16 with channels_last + CUDA graphs; onnxruntime-gpu when installed;
TensorRT fp16 when installed, otherwise the row says so):

1. correctness on a crop against the CPU float32 reference (ONNX Runtime CPU): label agreement,
   max/mean probability error, with the same accuracy gate as reduced-precision builds;
2. inference throughput at several batch sizes (tiles/s) and achieved TFLOP/s, from the FLOP
   count of the ONNX graph (2 × Conv/ConvTranspose MACs, ``flops.conv_macs``);
3. end-to-end ``segment_array`` time on an 8192×8192 image (gather, inference, stitch, labels).
   Target for the paper-size model on an H100: <= 0.35 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.35


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """uint16 image with blob-like structure (smooth noise), cheap at 8192²."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 32 + 1, size // 32 + 1)).astype(np.float32)
    img = np.kron(low, np.ones((32, 32), np.float32))[:size, :size]
    img += 0.2 * rng.random((size, size), dtype=np.float32)
    return (img * 3000).astype(np.uint16)


def paper_model(tmp: Path, base: int, depth: int, tile: int) -> Path:
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(tmp / f"paper-b{base}.onnx", depth, base, tile=tile,
                            instance_scheme="none", description="random weights, for timing",
                            bias_range=0.05, parity=False)


def shipped_model(tmp: Path) -> Path | None:
    from unet_deploy.model_store import shipped_models

    models = shipped_models()
    if "nuclei" in models:
        return models["nuclei"]
    if models:
        return next(iter(models.values()))
    ck = ROOT / "runs/nuclei/best.pt"
    if ck.is_file():
        from unet_deploy.export import export_checkpoint
        return export_checkpoint(ck, tmp / "nuclei.onnx").path
    return None


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


def correctness(model: Path, factory, crop: np.ndarray, reference: np.ndarray, tile: int):
    from unet_deploy.gate import DEFAULT_MIN_AGREEMENT, gate_report
    from unet_deploy.pipeline import segment_array

    b = factory()
    with b:
        probs = segment_array(crop, backend=b, tile=tile, batch_size=4, output="probabilities")
    to = lambda a: np.moveaxis(a, -1, 0)[None]  # (H, W, K) -> (1, K, H, W)
    return gate_report(to(reference), to(probs), DEFAULT_MIN_AGREEMENT)


def sync():
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def throughput(factory, model: Path, info, batches, tile: int, reps: int):
    from unet_deploy.flops import conv_macs

    out = []
    b = factory()
    with b:
        for bs in batches:
            x = np.random.default_rng(0).uniform(0, 1, (bs, info.in_channels, tile, tile)) \
                .astype(np.float32)
            b.infer(x)  # warm-up / capture
            sync()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                b.infer(x)
                sync()
                ts.append(time.perf_counter() - t)
            med = float(np.median(ts))
            flops = 2 * conv_macs(model, bs, tile)
            out.append((bs, med, bs / med, flops / med / 1e12))
    return out


def end_to_end(factory, image: np.ndarray, tile: int, batch: int, reps: int):
    from unet_deploy.pipeline import segment_array

    b = factory()
    with b:
        segment_array(image[: 2 * tile, : 2 * tile], backend=b, tile=tile, batch_size=batch)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            segment_array(image, backend=b, tile=tile, batch_size=batch)
            ts.append(time.perf_counter() - t)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--crop", type=int, default=700)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--e2e-batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="CPU dry run with a tiny model")
    ap.add_argument("--no-shipped", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu.md"))
    args = ap.parse_args()
    if args.smoke:
        args.size, args.crop, args.base, args.depth, args.tile = 600, 200, 4, 2, 92
        args.batches, args.reps, args.e2e_batch = "1,2", 2, 2
    batches = [int(b) for b in args.batches.split(",")]

    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.flops import conv_macs
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array

    tmp = Path(tempfile.mkdtemp(prefix="gpubench"))
    models = [("paper-size (random weights)", paper_model(tmp, args.base, args.depth,
                                                          args.tile))]
    if not args.no_shipped and not args.smoke:
        sm = shipped_model(tmp)
        models.append(("shipped nuclei", sm) if sm else ("shipped nuclei", None))
    image = synthetic_image(args.size)
    crop = image[: args.crop, : args.crop]
    lines = ["# GPU checks and timings (benchmarks/gpu.py)", "",
             f"- device: {device_name()}; host: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs",
             f"- image: synthetic uint16 {args.size}x{args.size}; correctness crop "
             f"{args.crop}x{args.crop} vs ONNX Runtime CPU float32",
             f"- tile {args.tile} (input side); throughput = backend.infer on random tiles, "
             f"median of {args.reps}; TFLOP/s = 2 x Conv/ConvTranspose MACs of the ONNX graph "
             f"/ time",
             f"- end-to-end = segment_array(image, batch {args.e2e_batch}) -> labels, incl. "
             f"gather/normalize/stitch on the host; target <= {TARGET_S} s for the paper-size "
             f"model on an H100", ""]
    for mlabel, model in models:
        lines += [f"## {mlabel}", ""]
        if model is None:
            lines += ["not measured: no shipped model or trained checkpoint found", ""]
            continue
        info = read_onnx(model).info
        # tile must be legal for this model
        tile = args.tile if info.geometry.is_legal(args.tile) else info.tile
        macs = conv_macs(model, 1, tile)
        lines += [f"- {model.name}: depth {info.depth}, base {info.base}, tile {tile}, "
                  f"{2 * macs / 1e9:.1f} GFLOP per tile", ""]
        print(f"[{mlabel}] reference on CPU ...", flush=True)
        with OnnxRuntimeBackend(model) as ref_b:
            reference = segment_array(crop, backend=ref_b, tile=tile, batch_size=2,
                                      output="probabilities")
        lines += ["| backend | crop label agreement | max / mean prob error | batch | "
                  "infer s | tiles/s | TFLOP/s | end-to-end s (median/min) |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, factory, skip in gpu_backends(model, args.smoke, max(batches), tile, tmp):
            if factory is None:
                lines.append(f"| {label} | not measured: {skip} | | | | | | |")
                print(f"  {label}: skipped ({skip})", flush=True)
                continue
            print(f"  {label} ...", flush=True)
            try:
                gate = correctness(model, factory, crop, reference, tile)
                tp = throughput(factory, model, info, batches, tile, args.reps)
                e2e = end_to_end(factory, image, tile, args.e2e_batch, max(1, args.reps // 2))
            except Exception as exc:  # one failing backend must not lose the other rows
                traceback.print_exc()
                msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                lines.append(f"| {label} | FAILED: {msg} | | | | | | |")
                continue
            flag = "" if gate.passed else f" (below {100 * gate.min_agreement:.1f}%)"
            for i, (bs, med, tps, tf) in enumerate(tp):
                first = i == 0
                lines.append(
                    f"| {label if first else ''} | "
                    f"{f'{100 * gate.label_agreement:.3f}%{flag}' if first else ''} | "
                    f"{f'{gate.max_abs_error:.2e} / {gate.mean_abs_error:.2e}' if first else ''}"
                    f" | {bs} | {med:.4f} | {tps:.1f} | {tf:.1f} | "
                    f"{f'{e2e[0]:.3f} / {e2e[1]:.3f}' if first else ''} |")
            print(f"    {gate.summary()}; e2e {e2e[0]:.3f} s", flush=True)
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
