"""PyTorch backend: the U-Net rebuilt from the ONNX file itself (one artifact).

The architecture comes from the file's ``unet_deploy`` metadata (depth, base, channels, classes,
padding); the weights from its initializers. Conv/ConvTranspose nodes are taken in graph order,
which is the forward order of ``train.unet.UNet`` (down blocks, bottom, then per level
up-convolution + two convolutions, head); every tensor's shape is checked against the module it
is mapped onto, so a file that is not this U-Net fails at load with a clear message. Batch norm
was folded into the convolutions by the exporter, so the net is rebuilt without batch norm and
with conv biases.

On CUDA: fp16 / bf16 weights and activations (softmax in float32), channels_last memory format,
and CUDA graphs (one captured graph per input shape; replays skip the Python and launch
overhead). Host↔device copies go through a pinned staging buffer. On the CPU the same class runs
in float32 (``device="cpu"``), which is how the weight mapping is tested without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError, ModelError
from ..model_store import read_onnx
from .base import Backend

DTYPES = ("fp32", "fp16", "bf16")


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
    """(UNet in eval mode, ModelInfo) with the weights of the ONNX file at ``path``."""
    import dataclasses

    import onnx
    import torch
    from torch import nn

    from ..train.unet import build_unet

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
    from torch import nn

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


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchBackend(Backend):
    """``torch-cuda``: see the module docstring. ``dtype``: fp32 | fp16 | bf16."""

    name = "torch-cuda"

    def __init__(self, path: str | Path, device: str = "cuda", dtype: str = "fp16",
                 channels_last: bool = True, cuda_graphs: bool = True, threads: int = 0):
        super().__init__()
        if dtype not in DTYPES:
            raise BackendError(f"torch backend dtype must be one of {DTYPES}, got {dtype!r}")
        self.path = Path(path)
        self.device_name = device
        self.dtype_name = dtype
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs and device.startswith("cuda")
        self.threads = threads
        self.info = read_onnx(self.path).info
        self.model = None
        self.graphs: dict = {}
        if device == "cpu":
            self.name = "torch-cpu"

    def _activate(self) -> None:
        import torch

        if self.device_name.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch-cuda: PyTorch sees no CUDA GPU "
                               f"(torch {torch.__version__}, built for CUDA "
                               f"{torch.version.cuda or 'none'})")
        if self.device_name == "cpu" and self.threads:
            torch.set_num_threads(self.threads)
        self.device = torch.device(self.device_name)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16,
                      "bf16": torch.bfloat16}[self.dtype_name]
        if self.device.type == "cpu" and self.dtype != torch.float32:
            raise BackendError("torch backend: fp16/bf16 are for CUDA; use dtype='fp32' on CPU")
        model, _ = unet_from_onnx(self.path)
        model = model.to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
            torch.backends.cudnn.allow_tf32 = False
            self.stream = torch.cuda.Stream(self.device)
        self.graphs = {}
        self.pinned = {}

    def _deactivate(self) -> None:
        self.model = None
        self.graphs = {}
        self.pinned = {}

    def _forward(self, x):
        import torch

        logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)

    def _prep(self, t):
        import torch

        t = t.to(self.dtype)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.device.type == "cpu":
                return self._forward(self._prep(torch.from_numpy(batch))).numpy()
            return self._infer_cuda(batch)

    def _host(self, key, shape):
        import torch

        buf = self.pinned.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self.pinned[key] = buf
        return buf

    def _infer_cuda(self, batch: np.ndarray) -> np.ndarray:
        import torch

        shape = tuple(batch.shape)
        hin = self._host(("in", shape), shape)
        hin.numpy()[...] = batch
        with torch.cuda.stream(self.stream):
            if self.cuda_graphs:
                g = self.graphs.get(shape) or self._capture(shape)
                g["x"].copy_(hin, non_blocking=True)
                g["graph"].replay()
                y = g["y"]
            else:
                x = torch.empty(shape, dtype=torch.float32, device=self.device)
                x.copy_(hin, non_blocking=True)
                y = self._forward(self._prep(x))
            hout = self._host(("out", tuple(y.shape)), tuple(y.shape))
            hout.copy_(y, non_blocking=True)
        self.stream.synchronize()
        return hout.numpy().copy()

    def _capture(self, shape):
        import torch

        x = torch.zeros(shape, dtype=torch.float32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (cudnn.benchmark picks kernels) before capture
                self._forward(self._prep(x))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = self._forward(self._prep(x))
        if len(self.graphs) >= 4:  # bound memory: keep a few shapes (full + last batch)
            self.graphs.pop(next(iter(self.graphs)))
        self.graphs[shape] = {"graph": graph, "x": x, "y": y}
        return self.graphs[shape]
