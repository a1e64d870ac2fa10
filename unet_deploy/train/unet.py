"""The U-Net of Ronneberger, Fischer & Brox (2015), in PyTorch.

Per level: two 3x3 convolutions + ReLU (unpadded by default), then a 2x2 max-pool with stride 2
and twice the channels. Expanding path: 2x2 up-convolution halving the channels, centre-crop of
the skip connection, concatenation, two 3x3 convolutions. A final 1x1 convolution maps to classes.

``unet_from_onnx`` rebuilds this module from an exported file (the torch backend and the
benchmarks' PyTorch peer run it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..metadata import ModelInfo
from ..model_store import read_onnx


def _double_conv(cin: int, cout: int, pad: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy = (x.shape[-2] - h) // 2
    dx = (x.shape[-1] - w) // 2
    return x[..., dy : dy + h, dx : dx + w]


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 4,
        base: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        pad = 1 if padding == "same" else 0
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(cin, w, pad, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = _double_conv(widths[-2] if depth else in_channels, widths[-1], pad, batch_norm)
        # Dropout at the end of the contracting path, as in the paper (section 3.1).
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * w, w, 2, stride=2))
            self.up_conv.append(_double_conv(2 * w, w, pad, batch_norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self._he_init()

    def _he_init(self):
        # Paper: Gaussian with std sqrt(2/N), N = incoming nodes of one neuron (k*k*C_in).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                k = m.kernel_size[0] * m.kernel_size[1]
                fan_in = k * (m.in_channels if isinstance(m, nn.Conv2d) else m.out_channels)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (N, classes, h_out, w_out)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = up(x)
            x = conv(torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1))
        return self.head(x)


class SoftmaxUNet(nn.Module):
    """The deployed graph: U-Net followed by a softmax over classes (probabilities out)."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unet(x), dim=1)


def build_unet(info: ModelInfo) -> UNet:
    return UNet(
        in_channels=info.in_channels,
        out_channels=info.out_channels,
        depth=info.depth,
        base=info.base,
        padding=info.padding,
        batch_norm=info.batch_norm,
        dropout=info.dropout,
    )


def _initializers(proto) -> dict:
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    # TorchScript export may route shared parameters through Identity nodes
    alias = {n.output[0]: n.input[0] for n in proto.graph.node
             if n.op_type == "Identity" and n.input[0] in inits}

    def get(name):
        name = alias.get(name, name)
        return numpy_helper.to_array(inits[name]) if name in inits else None

    return get


def unet_from_onnx(path: str | Path):
    """(UNet in eval mode, ModelInfo) with the weights of the ONNX file at ``path``.

    The architecture comes from the file's ``unet_deploy`` metadata (depth, base, channels,
    classes, padding); the weights from its initializers. Conv/ConvTranspose nodes are taken in
    graph order, which is the forward order of ``UNet`` (down blocks, bottom, then per level
    up-convolution + two convolutions, head); every tensor's shape is checked against the module
    it is mapped onto, so a file that is not this U-Net fails with a clear message. Batch norm
    was folded into the convolutions by the exporter, so the net is rebuilt without batch norm
    and with conv biases."""
    import onnx

    path = Path(path)
    info = read_onnx(path).info
    if info.format_version != 1:
        raise ModelError(f"{path}: metadata format {info.format_version} not supported")
    proto = onnx.load(str(path))
    get = _initializers(proto)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    model = build_unet(dataclasses.replace(info, batch_norm=False, dropout=0.0))
    modules = [m for m in _forward_order(model)]
    if len(convs) != len(modules):
        raise ModelError(f"{path}: graph has {len(convs)} convolutions, a depth-{info.depth} "
                         f"U-Net has {len(modules)}; the torch backend can only rebuild "
                         f"unet-deploy U-Nets (use --backend onnxruntime)")
    state = {}
    for node, (name, mod) in zip(convs, modules):
        kind = "ConvTranspose" if isinstance(mod, nn.ConvTranspose2d) else "Conv"
        if node.op_type != kind:
            raise ModelError(f"{path}: node {node.name} is {node.op_type}, expected {kind} for "
                             f"{name}")
        w = get(node.input[1])
        b = get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None:
            raise ModelError(f"{path}: weights of {node.name} are not constant initializers")
        if tuple(w.shape) != tuple(mod.weight.shape):
            raise ModelError(f"{path}: {node.name} weight {tuple(w.shape)} does not fit {name} "
                             f"{tuple(mod.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(np.array(w, np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(b, np.float32)) if b is not None \
            else torch.zeros(mod.weight.shape[1 if kind == "ConvTranspose" else 0])
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ModelError(f"{path}: no weights for {sorted(missing)[:3]}")
    model.load_state_dict(state)
    return model.eval(), info


def _forward_order(model):
    """(state-dict prefix, module) of every conv in the order forward() runs them."""
    out = []

    def convs(prefix, seq):
        for i, m in enumerate(seq):
            if isinstance(m, nn.Conv2d):
                out.append((f"{prefix}.{i}", m))

    for i, block in enumerate(model.down):
        convs(f"down.{i}", block)
    convs("bottom", model.bottom)
    for i, (up, conv) in enumerate(zip(model.up, model.up_conv)):
        out.append((f"up.{i}", up))
        convs(f"up_conv.{i}", conv)
    out.append(("head", model.head))
    return out
