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

The GEMM ceiling is the median GFLOP/s of ``numpy.matmul`` on square float32 matrices (numpy's
BLAS, all cores): a practical upper bound for conv-as-GEMM inference on the same cores.

    python benchmarks/flops.py models/*.onnx --tile 572
    python benchmarks/flops.py --gemm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def count_flops(model_path: str | Path, tile: int, batch: int = 1) -> dict:
    """FLOPs of one forward pass at input (batch, C, tile, tile) and per output pixel."""
    import onnx

    proto = onnx.load(str(model_path))
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dims = inputs[0].type.tensor_type.shape.dim
    c_in = dims[1].dim_value or 1
    for d, v in zip(dims, (batch, c_in, tile, tile)):
        d.ClearField("dim_param")
        d.dim_value = v
    for o in graph.output:  # let inference fill the output shape
        for d in o.type.tensor_type.shape.dim:
            d.ClearField("dim_param")
            d.ClearField("dim_value")
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        shapes[vi.name] = _dims(vi)
    weights = {t.name: list(t.dims) for t in graph.initializer}
    macs = {"Conv": 0, "ConvTranspose": 0}
    n_nodes = {"Conv": 0, "ConvTranspose": 0}
    for node in inferred.graph.node:
        if node.op_type not in macs:
            continue
        w = weights.get(node.input[1])
        group = _attr(node, "group", 1)
        if w is None:
            raise ValueError(f"{node.name}: weight {node.input[1]} is not an initializer")
        if node.op_type == "Conv":
            out = shapes[node.output[0]]  # N, C_out, H, W
            c_out, cin_g, kh, kw = w
            m = out[0] * out[1] * out[2] * out[3] * cin_g * kh * kw
        else:
            inp = shapes[node.input[0]]  # N, C_in, H, W
            c_in_w, cout_g, kh, kw = w
            m = inp[0] * inp[1] * inp[2] * inp[3] * cout_g * kh * kw
        if m <= 0:
            raise ValueError(f"{node.name}: shape inference left unknown dimensions")
        macs[node.op_type] += m
        n_nodes[node.op_type] += 1
    out_shape = shapes[inferred.graph.output[0].name]
    out_px = out_shape[0] * out_shape[2] * out_shape[3]
    total = 2 * (macs["Conv"] + macs["ConvTranspose"])
    return {
        "model": Path(model_path).name,
        "tile": tile,
        "batch": batch,
        "output_tile": out_shape[2],
        "gflop_per_pass": total / 1e9,
        "conv_nodes": n_nodes["Conv"],
        "convtranspose_nodes": n_nodes["ConvTranspose"],
        "flops_per_output_px": total / out_px,
    }


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
