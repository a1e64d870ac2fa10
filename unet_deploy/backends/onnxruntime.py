"""ONNX Runtime backend (CPU; CUDA/TensorRT execution providers where onnxruntime-gpu is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..model_store import read_onnx
from .base import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None,
                 spinning: bool = False):
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        # ORT's intra-op workers busy-wait between ops by default. Here they would compete
        # with our gather/writer threads (and anything else on the cores); a forward pass is
        # seconds long, so waking them costs nothing measurable. Off: 1.29x end to end on 2
        # cores (benchmarks/results/core_spin.json).
        self.spinning = spinning
        self.providers = providers or ["CPUExecutionProvider"]
        self.session = None
        self.info = read_onnx(self.path).info

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spinning else "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types
            raise BackendError(f"{self.path}: ONNX Runtime cannot load the model: "
                               f"{str(exc).splitlines()[0]}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
