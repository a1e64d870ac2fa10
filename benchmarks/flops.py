"""Limit accounting: FLOPs per output pixel counted from an ONNX graph (``unet_deploy.flops``:
2 x the Conv / ConvTranspose MACs at input (1, C, tile, tile), from ONNX shape inference), and
this machine's measured fp32 GEMM ceiling.

FLOPs per output pixel fall with tile size towards an asymptote because the halo is recomputed
less. The GEMM ceiling is the best (and median) GFLOP/s of ``numpy.matmul`` on square float32
matrices (numpy's BLAS, all cores): a practical upper bound for conv-as-GEMM inference on the
same cores.

    python benchmarks/flops.py models/*.onnx --tile 572
    python benchmarks/flops.py --gemm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unet_deploy.bench import gemm_ceiling
from unet_deploy.flops import count_flops


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="FLOPs per output pixel and the GEMM ceiling")
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--tile", type=int, nargs="+", default=None)
    ap.add_argument("--gemm", action="store_true")
    args = ap.parse_args(argv)
    from unet_deploy.model_store import read_onnx

    for m in args.models:
        tiles = args.tile or [read_onnx(m).info.tile]
        for t in tiles:
            print(json.dumps(count_flops(m, t)))
    if args.gemm or not args.models:
        print(json.dumps(gemm_ceiling()))


if __name__ == "__main__":
    main()
