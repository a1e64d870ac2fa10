"""Limit accounting: FLOPs per output pixel counted from an ONNX graph, and this machine's
measured fp32 GEMM ceiling.

FLOPs are counted, not estimated by hand: the graph's input is fixed to (1, C, tile, tile),
``onnx.shape_inference`` gives every tensor's shape, and every Conv / ConvTranspose node
contributes 2 x MACs:

* Conv:          MACs = N * C_out * H_out * W_out * (C_in / group) * kH * kW
* ConvTranspose: MACs = N * C_in  * H_in  * W_in  * (C_out / group) * kH * kW

(bias adds, ReLU, max-pool, concat and softmax are < 1 % and not counted). Divided by the
output pixels (N * H_out * W_out of the graph output) this is the work per output pixel at that
tile; it falls with tile size towards the asymptote because the halo is recomputed less.

The GEMM ceiling is the best (and median) GFLOP/s of ``numpy.matmul`` on square float32 matrices (numpy's
BLAS, all cores): a practical upper bound for conv-as-GEMM inference on the same cores.

    python benchmarks/flops.py models/*.onnx --tile 572
    python benchmarks/flops.py --gemm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unet_deploy.bench import count_flops, gemm_ceiling  # noqa: E402,F401


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
