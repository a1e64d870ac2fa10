"""TensorRT backend: runs a ``.engine`` built by ``unet-deploy build-engine``.

Loading is fail-closed (``engines.deserialize``: manifest, TensorRT version, GPU, engine sha256;
``None`` from deserialization → ModelError with the rebuild command).

CUDA memory and streams come from ``torch.cuda`` (chosen over cuda-python because the GPU
image and the torch-cuda backend already need PyTorch, and its caching allocator, pinned
memory and streams are enough; no second CUDA binding to version-match).

Execution: one set of *slots* per thread (``threading.local``); a slot is an
``IExecutionContext`` + CUDA stream + device input/output buffers + pinned host buffers. A batch
is cut into two halves that alternate between two slots (double buffering): while slot A's
half computes, slot B's host→device copy is already queued on its own stream, and A's
device→host copy overlaps B's compute. Contexts are never shared between threads, as TensorRT
requires.

Labels on the device (``computes_labels``): for ``output="labels"`` the argmax over the classes
and the sum of all probabilities (the non-finite check) run on the slot's stream with torch
after the engine, and only the uint8 class map and one float are copied back.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BackendError
from .base import Backend


class _Slot:
    def __init__(self, engine, device):
        import torch

        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory?)")
        self.stream = torch.cuda.Stream(device)
        self.done = torch.cuda.Event()
        self.shape = None
        self.x = self.y = self.hin = self.hout = None
        self.pending = None  # (output slice start, rows) waiting for collection


class TensorRTBackend(Backend):
    name = "tensorrt"
    computes_labels = True

    def __init__(self, engine_path: str | Path, onnx_path: str | Path | None = None,
                 env=None):
        super().__init__()
        from .. import engines as E

        self.path = Path(engine_path)
        self.onnx_path = onnx_path
        self.manifest = E.read_manifest(self.path)  # cheap, no TensorRT: info for the planner
        self.info = E.model_info_of(self.manifest)
        self.env = env
        self.engine = None
        self.local = threading.local()

    def _activate(self) -> None:
        import tensorrt as trt
        import torch

        from .. import engines as E

        self.runtime, self.engine, self.manifest = E.deserialize(self.path, self.env,
                                                                 self.onnx_path)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.iname, self.oname = E.io_names(trt, self.engine)
        self.local = threading.local()

    def _deactivate(self) -> None:
        self.local = threading.local()
        self.engine = None
        self.runtime = None

    def _slots(self):
        slots = getattr(self.local, "slots", None)
        if slots is None:
            slots = self.local.slots = [_Slot(self.engine, self.device) for _ in range(2)]
        return slots

    def _check(self, batch: np.ndarray):
        m = self.manifest
        b, c, h, w = batch.shape
        if c != m.in_channels or not (m.min_tile <= h <= m.tile and m.min_tile <= w <= m.tile):
            raise BackendError(f"{self.path}: engine accepts (<= {m.batch}, {m.in_channels}, "
                               f"{m.min_tile}..{m.tile}, {m.min_tile}..{m.tile}) tiles, got "
                               f"{tuple(batch.shape)}; segment with --tile {m.tile} or "
                               f"rebuild: {m.rebuild_command(self.path)}")

    def _prepare(self, slot: _Slot, shape):
        import torch

        if slot.shape == shape:
            return
        slot.context.set_input_shape(self.iname, shape)
        oshape = tuple(slot.context.get_tensor_shape(self.oname))
        slot.x = torch.empty(shape, dtype=torch.float32, device=self.device)
        slot.y = torch.empty(oshape, dtype=torch.float32, device=self.device)
        slot.hin = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        slot.hout = torch.empty(oshape, dtype=torch.float32, pin_memory=True)
        wide = torch.uint8 if self.info.out_channels <= 256 else torch.int32
        slot.hcls = torch.empty((oshape[0],) + oshape[2:], dtype=wide, pin_memory=True)
        slot.htot = torch.empty((), dtype=torch.float32, pin_memory=True)
        slot.context.set_tensor_address(self.iname, int(slot.x.data_ptr()))
        slot.context.set_tensor_address(self.oname, int(slot.y.data_ptr()))
        slot.shape = shape

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, labels=False)

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        return self._run(batch, labels=True)

    def _run(self, batch: np.ndarray, labels: bool):
        """Probabilities, or (class map, all probabilities finite) with ``labels``."""
        import torch

        self._check(batch)
        slots = self._slots()
        n = batch.shape[0]
        chunk = min(max(1, -(-n // 2)), self.manifest.batch)
        starts = list(range(0, n, chunk))
        results: list[np.ndarray | None] = [None] * len(starts)
        finite = [True]

        def collect(slot):
            if slot.pending is not None:
                k, rows = slot.pending
                slot.done.synchronize()
                if labels:
                    results[k] = slot.hcls.numpy()[:rows].copy()
                    finite[0] = finite[0] and bool(np.isfinite(slot.htot.numpy()))
                else:
                    results[k] = slot.hout.numpy()[:rows].copy()
                slot.pending = None

        for k, s0 in enumerate(starts):
            slot = slots[k % 2]
            collect(slot)  # its previous chunk (two chunks ago) must be out of its buffers
            part = batch[s0 : s0 + chunk]
            self._prepare(slot, tuple(part.shape))
            slot.hin.numpy()[...] = part
            with torch.cuda.stream(slot.stream):
                slot.x.copy_(slot.hin, non_blocking=True)
                if not slot.context.execute_async_v3(slot.stream.cuda_stream):
                    raise BackendError(f"{self.path}: TensorRT execute_async_v3 failed")
                if labels:  # temporaries live on this stream: reused only after these copies
                    slot.hcls.copy_(torch.argmax(slot.y, dim=1).to(slot.hcls.dtype),
                                    non_blocking=True)
                    slot.htot.copy_(slot.y.sum(), non_blocking=True)
                else:
                    slot.hout.copy_(slot.y, non_blocking=True)
                slot.done.record(slot.stream)
            slot.pending = (k, part.shape[0])
        for slot in slots:
            collect(slot)
        out = np.concatenate(results)
        return (out, finite[0]) if labels else out
