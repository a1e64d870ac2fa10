"""PyTorch backend: the U-Net rebuilt from the ONNX file itself (one artifact), by
``train.unet.unet_from_onnx``; a file that is not a unet-deploy U-Net fails at load with a
clear message.

On CUDA: fp16 / bf16 weights and activations (softmax in float32), channels_last memory format,
and CUDA graphs (one captured graph per input shape; replays skip the Python and launch
overhead). Host↔device copies go through a pinned staging buffer. On the CPU the same class runs
in float32 (``device="cpu"``), which is how the weight mapping is tested without a GPU.

Labels on the device (``computes_labels``): each captured graph also computes the argmax over
the classes (uint8) and the sum of all probabilities, so for ``output="labels"`` only 1 byte per
pixel (and one float, finite exactly when every probability is) is copied back.

Threads: CUDA graph capture is process-global (a capture on one thread breaks work launched by
another, also by another backend instance) and a graph replays on fixed input/output buffers,
so every CUDA call of every torch backend runs under one module lock: any number of threads may
share a backend (``thread_safe``), one batch at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..model_store import read_onnx
from .base import Backend

DTYPES = ("fp32", "fp16", "bf16")
CUDA_LOCK = threading.Lock()  # see the module docstring: capture and replay, all instances


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchBackend(Backend):
    """``torch-cuda``: see the module docstring. ``dtype``: fp32 | fp16 | bf16."""

    name = "torch-cuda"
    thread_safe = True  # every CUDA call runs under CUDA_LOCK
    computes_labels = True

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
        from ..train.unet import unet_from_onnx

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

    def _labels(self, y):
        """(class map, sum of all probabilities) of probabilities ``y`` (B, K, h, w) float32;
        argmax keeps the first maximal class, as np.argmax."""
        import torch

        dtype = torch.uint8 if self.info.out_channels <= 256 else torch.int32
        return torch.argmax(y, dim=1).to(dtype), y.sum()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.device.type == "cpu":
                return self._forward(self._prep(torch.from_numpy(batch))).numpy()
            with CUDA_LOCK:
                return self._infer_cuda(batch, labels=False)

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        import torch

        with torch.inference_mode():
            if self.device.type == "cpu":
                labels, total = self._labels(self._forward(self._prep(torch.from_numpy(batch))))
                return labels.numpy(), bool(torch.isfinite(total))
            with CUDA_LOCK:
                return self._infer_cuda(batch, labels=True)

    def _host(self, key, shape, dtype=None):
        import torch

        dtype = dtype or torch.float32
        buf = self.pinned.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, pin_memory=True)
            self.pinned[key] = buf
        return buf

    def _infer_cuda(self, batch: np.ndarray, labels: bool):
        """One batch on the GPU; the caller holds ``CUDA_LOCK``. Probabilities, or
        (class map, all finite) with ``labels``."""
        import torch

        shape = tuple(batch.shape)
        hin = self._host(("in", shape), shape)
        hin.numpy()[...] = batch
        with torch.cuda.stream(self.stream):
            if self.cuda_graphs:
                g = self.graphs.get(shape) or self._capture(shape)
                g["x"].copy_(hin, non_blocking=True)
                g["graph"].replay()
                y, cls, total = g["y"], g["labels"], g["total"]
            else:
                x = torch.empty(shape, dtype=torch.float32, device=self.device)
                x.copy_(hin, non_blocking=True)
                y = self._forward(self._prep(x))
                cls, total = self._labels(y)
            if labels:
                hcls = self._host(("labels", tuple(cls.shape)), tuple(cls.shape), cls.dtype)
                htot = self._host(("total", ()), (), torch.float32)
                hcls.copy_(cls, non_blocking=True)
                htot.copy_(total, non_blocking=True)
            else:
                hout = self._host(("out", tuple(y.shape)), tuple(y.shape))
                hout.copy_(y, non_blocking=True)
        self.stream.synchronize()
        if labels:
            return hcls.numpy().copy(), bool(np.isfinite(htot.numpy()))
        return hout.numpy().copy()

    def _capture(self, shape):
        import torch

        x = torch.zeros(shape, dtype=torch.float32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (cudnn.benchmark picks kernels) before capture
                self._labels(self._forward(self._prep(x)))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = self._forward(self._prep(x))
            cls, total = self._labels(y)
        if len(self.graphs) >= 4:  # bound memory: keep a few shapes (full + last batch)
            self.graphs.pop(next(iter(self.graphs)))
        self.graphs[shape] = {"graph": graph, "x": x, "y": y, "labels": cls, "total": total}
        return self.graphs[shape]
