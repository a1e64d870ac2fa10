"""Export a U-Net to a self-describing ONNX file (needs the ``train`` extra)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import ModelError
from .metadata import METADATA_KEY, ModelInfo

OPSET = 17  # widely supported by ONNX Runtime >= 1.14 and TensorRT 8.6+


def weights_sha256(state_dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(unet, info: ModelInfo, path: str | Path, parity: bool = True) -> Path:
    """Write ``unet`` (a ``UNet``) as ONNX with softmax output, a dynamic batch axis and dynamic
    spatial axes (any legal tile), and ``info`` in the metadata. Checks the graph with
    ``onnx.checker`` and, when ``parity`` is set, compares ONNX Runtime against PyTorch."""
    import onnx
    import torch

    from .train.unet import SoftmaxUNet

    path = Path(path)
    model = SoftmaxUNet(unet).eval().cpu()
    info.sha256 = weights_sha256(unet.state_dict())
    n = info.tile
    example = torch.zeros(1, info.in_channels, n, n)
    tmp = path.with_name(path.name + ".partial")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                      "probabilities": {0: "batch", 2: "out_height", 3: "out_width"}},
        opset_version=OPSET,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    materialize_shared_initializers(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "unet-deploy"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    if parity:
        err = parity_error(model, tmp, info)
        if err > 1e-4:
            tmp.unlink()
            raise ModelError(f"{path}: ONNX output differs from PyTorch by {err:.2e} (> 1e-4)")
    tmp.replace(path)
    return path


def materialize_shared_initializers(proto) -> int:
    """The TorchScript exporter deduplicates equal parameters (e.g. freshly initialised zero
    biases) into ``Identity`` nodes over one initializer. Give each parameter its own
    initializer again, so every Conv has constant weight and bias inputs (quantizers, TensorRT
    and the torch-from-ONNX loader then see the ordinary pattern). Returns the count."""
    inits = {t.name: t for t in proto.graph.initializer}
    keep, n = [], 0
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = type(inits[node.input[0]])()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            proto.graph.initializer.append(t)
            n += 1
        else:
            keep.append(node)
    if n:
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
    return n


def parity_error(model, onnx_path, info: ModelInfo, seed: int = 0) -> float:
    """Max abs difference of probabilities between PyTorch and ONNX Runtime on a random tile."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(seed)
    geo = info.geometry
    n = geo.input_for_output(min(64, geo.output_size(info.tile) or 64))
    x = rng.standard_normal((2, info.in_channels, n, n)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    return float(np.abs(got - ref).max())


def update_metadata(path: str | Path, **changes) -> ModelInfo:
    """Rewrite fields of the ``unet_deploy`` metadata in place (e.g. post-processing settings
    tuned after training); the weights are untouched."""
    import onnx

    from .model_store import read_onnx

    info = read_onnx(path).info
    for key, value in changes.items():
        if key not in ModelInfo.__dataclass_fields__:
            raise ModelError(f"{path}: unknown metadata field {key!r}")
        setattr(info, key, value)
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = info.to_json()
    tmp = Path(str(path) + ".partial")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return info
