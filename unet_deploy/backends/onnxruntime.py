"""ONNX Runtime backend (CPU; CUDA/TensorRT execution providers where onnxruntime-gpu is).

Labels where the probabilities are (``labels_output``): the session is built from the model
with three nodes appended -- ArgMax over the classes, a Cast to uint8 (uint16 above 256
classes) and a ReduceSum of all probabilities -- as extra graph outputs, and ``_infer_labels``
fetches only those: 1 byte per pixel crosses from the GPU instead of 4 per class, and the sum is
finite exactly when every probability is (the never-garbage check, done on the device). The
nodes are appended to the protobuf bytes directly (no ``onnx`` package needed, which a base
install lacks). ArgMax keeps the first maximal index, as ``np.argmax``, so labels are identical
to the host argmax of the same probabilities. On by default with the CUDA provider; on the CPU
the host argmax is as fast, so it is off unless asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from ..model_store import read_onnx
from .base import Backend

LABELS_OUTPUT = "unet_deploy_labels"
TOTAL_OUTPUT = "unet_deploy_probability_sum"


# ------------------------------------------------------------ protobuf appending (no onnx)

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        n |= (data[i] & 0x7F) << shift
        i += 1
        if not data[i - 1] & 0x80:
            return n, i
        shift += 7


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **ints: int) -> bytes:
    """NodeProto: input 1, output 2, name 3, op_type 4, attribute 5 (AttributeProto: name 1,
    i 3, type 20 = INT 2)."""
    body = b"".join(_field(1, x) for x in inputs) + b"".join(_field(2, x) for x in outputs)
    body += _field(3, name) + _field(4, op)
    for key, value in ints.items():
        body += _field(5, _field(1, key) + _field(3, value) + _field(20, 2))
    return _field(1, body)


def _output(name: str, elem_type: int, dims: tuple[str, ...]) -> bytes:
    """GraphProto.output (12): ValueInfoProto name 1, type 2 = TypeProto.tensor_type 1 =
    Tensor (elem_type 1, shape 2 = TensorShapeProto, dim 1 = Dimension, dim_param 2)."""
    shape = b"".join(_field(1, _field(2, d)) for d in dims)
    tensor = _field(1, elem_type) + _field(2, shape)
    return _field(12, _field(1, name) + _field(2, _field(1, tensor)))


def _fields(data: bytes):
    """(field number, wire type, start, payload start, end) of each top-level field."""
    i = 0
    while i < len(data):
        start = i
        key, i = _read_varint(data, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(data, i)
            body = i
        elif wire == 1:
            body, i = i, i + 8
        elif wire == 5:
            body, i = i, i + 4
        elif wire == 2:
            size, body = _read_varint(data, i)
            i = body + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(data):
            raise ValueError("truncated protobuf")
        yield key >> 3, wire, start, body, i


def with_label_outputs(model: bytes, n_classes: int) -> bytes:
    """The ONNX ModelProto ``model`` with the label and probability-sum outputs appended to its
    graph (ModelProto field 7), computed from the graph's first output (the probabilities).
    Repeated protobuf fields may be appended, so the graph's own bytes are kept as they are.
    ValueError when the bytes are not such a model."""
    parts, found = [], False
    for number, wire, start, body, end in _fields(model):
        if number != 7 or wire != 2:
            parts.append(model[start:end])
            continue
        graph = model[body:end]
        outputs = [graph[b:e] for n, w, _, b, e in _fields(graph) if n == 12 and w == 2]
        names = [graph_bytes[b:e].decode() for graph_bytes in outputs[:1]
                 for n, w, _, b, e in _fields(graph_bytes) if n == 1 and w == 2]
        if not names:
            raise ValueError("the graph has no named output")
        probabilities, argmax = names[0], "unet_deploy_argmax"
        wide = 2 if n_classes <= 256 else 4  # TensorProto UINT8 / UINT16
        graph += _node("ArgMax", [probabilities], [argmax], "unet_deploy_argmax", axis=1,
                       keepdims=0)
        graph += _node("Cast", [argmax], [LABELS_OUTPUT], "unet_deploy_cast", to=wide)
        graph += _node("ReduceSum", [probabilities], [TOTAL_OUTPUT], "unet_deploy_sum",
                       keepdims=0)
        graph += _output(LABELS_OUTPUT, wide, ("batch", "height", "width"))
        graph += _output(TOTAL_OUTPUT, 1, ())  # 1 = FLOAT, a scalar
        parts.append(_field(7, graph))
        found = True
    if not found:
        raise ValueError("no graph in the model")
    return b"".join(parts)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None,
                 spinning: bool = False, labels_output: bool | None = None):
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
        # None: on with the CUDA provider (device-to-host traffic), off on the CPU
        self.labels_output = ("CUDAExecutionProvider" in self.providers
                              if labels_output is None else bool(labels_output))
        self.computes_labels = False  # decided at activation

    def _activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spinning else "0")
        source: str | bytes = str(self.path)
        self.computes_labels = False
        if self.labels_output:
            data = self.path.read_bytes()
            # External weights are found relative to the model file, which a session made
            # from bytes has not got: such models keep the host argmax.
            if b"location" not in data:
                try:
                    source = with_label_outputs(data, self.info.out_channels)
                    self.computes_labels = True
                except ValueError:
                    source = str(self.path)
        try:
            session = ort.InferenceSession(source, opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types
            raise BackendError(f"{self.path}: ONNX Runtime cannot load the model: "
                               f"{str(exc).splitlines()[0]}") from exc
        if "CUDAExecutionProvider" in self.providers and \
                "CUDAExecutionProvider" not in session.get_providers():
            # ORT falls back to the CPU silently when the CUDA/cuDNN libraries do not load
            # (it only logs a warning): refuse instead of running on the CPU unnoticed.
            raise BackendError(f"{self.path}: onnxruntime-gpu did not start its CUDA execution "
                               f"provider (the session runs on {', '.join(session.get_providers())}"
                               f"; usually the CUDA/cuDNN libraries it was built for are "
                               f"missing); install them, or use --backend onnxruntime-cpu")
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # only the probabilities: the label outputs, when present, are not computed for it
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _infer_labels(self, batch: np.ndarray) -> tuple[np.ndarray, bool]:
        labels, total = self.session.run([LABELS_OUTPUT, TOTAL_OUTPUT],
                                         {self.input_name: batch})
        return labels, bool(np.isfinite(total))
