"""ONNX Runtime backend (CPU; CUDA/TensorRT execution providers where onnxruntime-gpu is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..model_store import read_onnx
from .base import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None):
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.session = None
        self.info = read_onnx(self.path).info

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types
            raise BackendError(f"{self.path}: ONNX Runtime cannot load the model: "
                               f"{str(exc).splitlines()[0]}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def _deactivate(self) -> None:
        self.session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise BackendError(f"{self}: infer() before activate()")
        return self.session.run(None, {self.input_name: batch})[0]
