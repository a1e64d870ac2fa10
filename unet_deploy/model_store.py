"""Finding models (a path, or the name of a shipped model) and reading their self-description."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ModelError, ModelNotFoundError
from .metadata import METADATA_KEY, ModelInfo

DEFAULT_MODEL = "nuclei"


def shipped_dir() -> Path:
    return Path(str(resources.files("unet_deploy.models")))


def shipped_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted(shipped_dir().glob("*.onnx"))}


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A path to an existing file, or the name of a shipped model (default: nuclei)."""
    name = str(name_or_path or DEFAULT_MODEL)
    path = Path(name).expanduser()
    if path.exists():
        return path
    shipped = shipped_models()
    if name in shipped:
        return shipped[name]
    if path.suffix or "/" in name:
        raise ModelNotFoundError(f"{name}: no such model file")
    raise ModelNotFoundError(f"{name}: not a file and not a shipped model "
                             f"(shipped: {', '.join(shipped) or 'none'}; see `unet-deploy models`)")


@dataclass(frozen=True)
class ModelFile:
    path: Path
    info: ModelInfo


def read_onnx(path: str | Path) -> ModelFile:
    path = Path(path)
    st = path.stat() if path.exists() else None
    if st is None:
        raise ModelNotFoundError(f"{path}: no such model file")
    return _read_onnx(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _read_onnx(path: str, mtime: int, size: int) -> ModelFile:
    import onnxruntime as ort

    if size == 0:
        raise ModelError(f"{path}: model file is empty; re-export or re-download it")
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({first}); "
                         f"re-export it with `unet-deploy export`") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelError(f"{path}: ONNX file has no '{METADATA_KEY}' metadata (tile geometry, "
                         f"normalization); export it with `unet-deploy export`")
    try:
        info = ModelInfo.from_json(meta[METADATA_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable '{METADATA_KEY}' metadata ({exc})") from None
    _check_io(path, sess, info)
    return ModelFile(Path(path), info)


def _check_io(path: str, sess, info: ModelInfo) -> None:
    """Fail at load, not at tile N, when the tiler cannot feed this model."""
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelError(f"{path}: expected 1 input and >= 1 output, found "
                         f"{len(inputs)} and {len(outputs)}")
    shape, kind = inputs[0].shape, inputs[0].type
    if len(shape) != 4:
        raise ModelError(f"{path}: input must be (batch, channels, height, width), found {shape}")
    if kind != "tensor(float)":
        raise ModelError(f"{path}: input must be float32, found {kind}")
    if isinstance(shape[1], int) and shape[1] != info.in_channels:
        raise ModelError(f"{path}: input has {shape[1]} channels but metadata says "
                         f"{info.in_channels}")
    if not info.geometry.is_legal(info.tile):
        raise ModelError(f"{path}: metadata tile {info.tile} is not a legal input size for "
                         f"depth {info.depth}")


def load_model(name_or_path: str | Path | None = None) -> ModelFile:
    return read_onnx(resolve_model(name_or_path))
