"""FLOPs of an exported U-Net, counted from the ONNX graph itself (needs ``onnx``).

The graph's input is fixed to (batch, C, height, width), ``onnx.shape_inference`` gives every
tensor's shape, and every Conv / ConvTranspose node contributes its multiply-accumulates:

* Conv:          MACs = N * C_out * H_out * W_out * (C_in / group) * kH * kW
* ConvTranspose: MACs = N * C_in  * H_in  * W_in  * (C_out / group) * kH * kW

FLOPs = 2 × MACs (bias adds, ReLU, max-pool, concat and softmax are < 1 % and not counted).
The benchmarks turn timings into GFLOP/s with these counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelError

_CONVS = ("Conv", "ConvTranspose")


def _conv_counts(onnx_path: str | Path, batch: int, height: int, width: int):
    """({op: MACs}, {op: node count}, output shape) at input (batch, C, height, width)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    # Older exporters also list initializers as graph inputs; the image is the other one.
    dims = next(i for i in graph.input if i.name not in inits).type.tensor_type.shape.dim
    c_in = dims[1].dim_value or 1
    for d, v in zip(dims, (batch, c_in, height, width)):
        d.ClearField("dim_param")
        d.dim_value = v
    for o in graph.output:  # symbolic output sides would block inference of the real ones
        for d in o.type.tensor_type.shape.dim:
            d.ClearField("dim_param")
            d.ClearField("dim_value")
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                           for d in vi.type.tensor_type.shape.dim]
    macs = dict.fromkeys(_CONVS, 0)
    nodes = dict.fromkeys(_CONVS, 0)
    for node in inferred.graph.node:
        if node.op_type not in _CONVS:
            continue
        w = inits.get(node.input[1])
        if w is None:
            raise ModelError(f"{onnx_path}: weight {node.input[1]} of {node.name} is not an "
                             f"initializer")
        # Conv: the output's N*C_out*H*W, each a dot product of w[1]*kh*kw (w: C_out, C_in/g,
        # kh, kw); ConvTranspose: each input value scattered over w[1]*kh*kw outputs
        # (w: C_in, C_out/g, kh, kw).
        shape = shapes.get(node.output[0] if node.op_type == "Conv" else node.input[0])
        if shape is None or None in shape or 0 in shape:
            raise ModelError(f"{onnx_path}: cannot infer the shape of {node.name}")
        macs[node.op_type] += int(np.prod(shape)) * w[1] * w[2] * w[3]
        nodes[node.op_type] += 1
    return macs, nodes, shapes[inferred.graph.output[0].name]


def conv_macs(onnx_path: str | Path, batch: int, height: int, width: int | None = None) -> int:
    """Multiply-accumulates of all Conv and ConvTranspose nodes for one (batch, C, height,
    width) input. FLOPs = 2 × MACs."""
    macs, _, _ = _conv_counts(onnx_path, batch, height, width or height)
    return int(sum(macs.values()))


def count_flops(model_path: str | Path, tile: int, batch: int = 1) -> dict:
    """FLOPs of one forward pass at input (batch, C, tile, tile) and per output pixel (it falls
    with tile size towards an asymptote, because the halo is recomputed less)."""
    macs, nodes, out_shape = _conv_counts(model_path, batch, tile, tile)
    out_px = out_shape[0] * out_shape[2] * out_shape[3]
    total = 2 * sum(macs.values())
    return {
        "model": Path(model_path).name,
        "tile": tile,
        "batch": batch,
        "output_tile": out_shape[2],
        "gflop_per_pass": total / 1e9,
        "conv_nodes": nodes["Conv"],
        "convtranspose_nodes": nodes["ConvTranspose"],
        "flops_per_output_px": total / out_px,
    }


def torch_conv_macs(model, x) -> int:
    """The same count from a PyTorch module with forward hooks: an independent reference for
    the graph count (tests)."""
    import torch
    from torch import nn

    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.ConvTranspose2d):
            xi = inp[0]
            total += int(np.prod(xi.shape)) * m.out_channels // m.groups * \
                m.kernel_size[0] * m.kernel_size[1]
        else:
            total += int(np.prod(out.shape)) * m.in_channels // m.groups * \
                m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total
