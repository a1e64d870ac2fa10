"""A trained U-Net → one self-describing ONNX file (needs the ``train`` extra).

``export_onnx`` writes a ``UNet`` with softmax output, dynamic batch and spatial axes at
``OPSET``, the ``unet_deploy`` metadata, ``onnx.checker`` and a float32 parity check against
PyTorch (max abs error ≤ ``PARITY_TOLERANCE``; nothing is written when it fails).
``load_checkpoint`` is the one way a training checkpoint is read: ``torch.load(weights_only=True)``,
so no pickle code ever runs, and every failure is a ``ModelError`` naming the file and the fix.
``export_checkpoint`` (``unet-deploy export``) joins the two: the model description comes from
the checkpoint's ``"info"`` (a bare state dict is described from its tensor shapes).
``update_metadata`` edits the metadata of an exported file in place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, ModelNotFoundError, OutputError
from .metadata import METADATA_KEY, ModelInfo
from .model_store import file_sha256, read_onnx

OPSET = 17  # widely supported by ONNX Runtime >= 1.14 and TensorRT 8.6+
PARITY_TOLERANCE = 1e-4  # max abs probability error, ONNX Runtime vs PyTorch, float32


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


# ---------------------------------------------------------------------------- export

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
    return _export(unet, info, path, parity)[0]


def _export(unet, info: ModelInfo, path: str | Path, parity: bool) -> tuple[Path, float]:
    """``export_onnx`` that also returns the parity error (NaN when not checked)."""
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
    err = float("nan")
    if parity:
        err = parity_error(model, tmp, info)
        if not err <= PARITY_TOLERANCE:  # NaN fails too
            tmp.unlink()
            raise ModelError(f"{path}: ONNX output differs from PyTorch by {err:.2e} "
                             f"(> {PARITY_TOLERANCE:.0e}); file not written")
    tmp.replace(path)
    return path, err


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


# ---------------------------------------------------------------------------- checkpoints

def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint's dict of tensors and plain values. ``weights_only=True`` refuses
    a pickle payload before any of it executes."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such checkpoint; check the path")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{path}: refused: not a weights-only checkpoint ({first}); only "
                         f"tensors and plain values are loaded, re-save it with "
                         f"torch.save(model.state_dict()) from a trusted source") from None
    if not isinstance(ck, dict):
        raise ModelError(f"{path}: checkpoint holds a {type(ck).__name__}, expected a dict; "
                         f"save a state dict")
    return ck


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


def unet_from_checkpoint(ck: dict, path: str | Path):
    """(UNet in eval mode, ModelInfo) from a loaded checkpoint: the training module's
    ``{"model": state, "info": json, ...}`` or a bare state dict (``path`` names it in errors)."""
    from .train.unet import build_unet

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


def load_training_checkpoint(checkpoint: str | Path):
    """(UNet in eval mode, ModelInfo) from ``best.pt``/``last.pt`` or a bare state dict."""
    return unet_from_checkpoint(load_checkpoint(checkpoint), checkpoint)


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *,
                      tile: int | None = None, overwrite: bool = False,
                      parity: bool = True) -> ExportResult:
    """Export a training checkpoint to ONNX. ``out`` defaults to the checkpoint path with
    ``.onnx``; ``tile`` (a legal input side) overrides the default tile stored in the metadata.
    Raises ModelError when the parity check fails (nothing is written then)."""
    import torch

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
        _, err = _export(model, info, out, parity)
    return ExportResult(out, OPSET, err, info.tile, info.sha256, file_sha256(out), info)
