"""``unet-deploy export``: a training checkpoint → one self-describing ONNX file.

On top of ``export.export_onnx``: loads the checkpoint with ``torch.load(weights_only=True)``
(no pickle code runs), takes the model description from the checkpoint (the training module
stores it under ``"info"``; a bare state dict is described by inference from tensor shapes),
exports with a dynamic batch axis at the stated opset, runs ``onnx.checker`` and a float32 parity
check against PyTorch (max abs error ≤ 1e-4; the file is not written when it fails).

Also home of ``conv_macs``, the FLOP count of an exported graph (Conv/ConvTranspose MACs), used by
the benchmarks to turn timings into TFLOP/s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, ModelNotFoundError, OutputError
from .export import OPSET, export_onnx, parity_error
from .metadata import ModelInfo

PARITY_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    path: Path
    opset: int
    parity_max_abs_error: float
    tile: int
    weights_sha256: str
    onnx_sha256: str
    info: ModelInfo

    def summary(self) -> str:
        return (f"{self.path}: opset {self.opset}, tile {self.tile}, dynamic batch, "
                f"parity vs PyTorch {self.parity_max_abs_error:.2e} (limit {PARITY_TOLERANCE:.0e}), "
                f"sha256 {self.onnx_sha256[:16]}…")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["info"] = json.loads(self.info.to_json())
        return d


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def infer_info(state_dict: dict) -> ModelInfo:
    """Describe a bare U-Net state dict (keys as in ``train.unet.UNet``) from tensor shapes."""
    try:
        depth = len({k.split(".")[1] for k in state_dict if k.startswith("down.")})
        first = state_dict["down.0.0.weight"]
        head = state_dict["head.weight"]
    except (KeyError, IndexError):
        raise ModelError("checkpoint has neither 'info' metadata nor U-Net weights "
                         "(expected keys like 'down.0.0.weight', 'head.weight')") from None
    batch_norm = "down.0.1.running_mean" in state_dict
    pad = "valid"  # the trainer only trains valid-padding nets; 'same' needs 'info'
    classes = ["background", "foreground"] if head.shape[0] == 2 else \
        ["background", "interior", "border"] if head.shape[0] == 3 else \
        [f"class{i}" for i in range(head.shape[0])]
    info = ModelInfo(depth=depth, base=int(first.shape[0]), in_channels=int(first.shape[1]),
                     classes=classes, padding=pad, batch_norm=batch_norm)
    info.tile = info.geometry.nearest_legal(572)
    return info


def load_training_checkpoint(checkpoint: str | Path):
    """(UNet in eval mode, ModelInfo) from a checkpoint written by the training module
    (``best.pt``/``last.pt``) or a bare state dict. Never unpickles code."""
    import torch

    from .train.unet import build_unet

    path = Path(checkpoint)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError / EOFError ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{path}: not a loadable weights-only checkpoint ({first})") from None
    if not isinstance(ck, dict):
        raise ModelError(f"{path}: checkpoint is a {type(ck).__name__}, expected a dict")
    state = ck.get("model", ck)
    if "info" in ck:
        try:
            info = ModelInfo.from_json(ck["info"])
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable 'info' in checkpoint ({exc})") from None
    else:
        info = infer_info(state)
    model = build_unet(info)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the described U-Net "
                         f"(depth {info.depth}, base {info.base}): "
                         f"{str(exc).splitlines()[0][:200]}") from None
    return model.eval(), info


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *,
                      tile: int | None = None, overwrite: bool = False,
                      parity: bool = True) -> ExportResult:
    """Export a training checkpoint to ONNX. ``out`` defaults to the checkpoint path with
    ``.onnx``; ``tile`` (a legal input side) overrides the default tile stored in the metadata.
    Raises ModelError when the parity check fails (nothing is written then)."""
    import torch

    from .train.unet import SoftmaxUNet

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")
    if out.resolve() == checkpoint.resolve():
        raise OutputError(f"{out}: output would overwrite the checkpoint")
    model, info = load_training_checkpoint(checkpoint)
    if tile is not None:
        if not info.geometry.is_legal(tile):
            geo = info.geometry
            raise ModelError(f"tile {tile} is not a legal input size for depth {info.depth}; "
                             f"nearest legal: {geo.nearest_legal(tile)}")
        info.tile = int(tile)
    with torch.no_grad():  # scoped: a global switch would leak into the caller's training
        export_onnx(model, info, out, parity=False)
        err = parity_error(SoftmaxUNet(model).eval(), out, info) if parity else float("nan")
    if parity and not err <= PARITY_TOLERANCE:
        out.unlink(missing_ok=True)
        raise ModelError(f"{out}: ONNX output differs from PyTorch by {err:.2e} "
                         f"(> {PARITY_TOLERANCE:.0e}); file not written")
    return ExportResult(out, OPSET, err, info.tile, info.sha256, file_sha256(out), info)


# ---------------------------------------------------------------------------- FLOP count

def conv_macs(onnx_path: str | Path, batch: int, height: int, width: int | None = None) -> int:
    """Multiply-accumulates of all Conv and ConvTranspose nodes for one (batch, C, height,
    width) input, from the graph itself (shapes by ONNX shape inference). FLOPs = 2 × MACs."""
    import onnx
    from onnx import shape_inference

    width = width or height
    proto = onnx.load(str(onnx_path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (batch, None, height, width)):
        if v is not None:
            d.ClearField("dim_param")
            d.dim_value = v
    proto = shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        dd = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dd]
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    total = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = inits.get(node.input[1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            if w is None or out is None or None in out:
                raise ModelError(f"{onnx_path}: cannot infer the shape of {node.name}")
            n, cout, ho, wo = out
            total += n * cout * ho * wo * (w[1] * w[2] * w[3])  # w: (Cout, Cin/g, kh, kw)
        else:
            x = shapes.get(node.input[0])
            if w is None or x is None or None in x:
                raise ModelError(f"{onnx_path}: cannot infer the shape of {node.name}")
            n, cin, hi, wi = x
            total += n * cin * hi * wi * (w[1] * w[2] * w[3])  # w: (Cin, Cout/g, kh, kw)
    return int(total)


def torch_conv_macs(model, x) -> int:
    """Reference MAC count with forward hooks (for tests)."""
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
