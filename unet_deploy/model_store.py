"""Finding models (a path, or the name of a shipped model) and reading their self-description."""

from __future__ import annotations

import functools
import hashlib
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


def _external_locations(path: str) -> list[str] | None:
    """The ``location`` of every tensor stored as external data, read without loading any of
    it. A key ``location`` must appear literally in the protobuf, so a file without that byte
    string has no external data (the common case: ``onnx`` is not even imported, keeping the
    segment path light). Otherwise: with ``onnx`` installed, an exact parse
    (``onnx.load(..., load_external_data=False)``, subgraphs included); without it (a base
    install), a scan for serialized ``StringStringEntryProto(key="location", value=...)``
    entries, where any other occurrence of the word counts as an unknown location (refused:
    the fallback only ever over-reports). None when onnx cannot parse the file (ORT reports)."""
    data = Path(path).read_bytes()
    if b"location" not in data:
        return []
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            proto = onnx.load_model_from_string(data)
        except Exception:  # noqa: BLE001 - not a protobuf: let ORT give its message
            return None
        locs = []
        for t in _get_all_tensors(proto):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                entries = {e.key: e.value for e in t.external_data}
                locs.append(entries.get("location", ""))
        return locs
    locs, key = [], b"\x0a\x08location\x12"
    start = data.find(key)
    while start >= 0:
        i = start + len(key)
        n, shift = 0, 0
        while i < len(data) and shift < 35:  # varint length
            n |= (data[i] & 0x7F) << shift
            i += 1
            if not data[i - 1] & 0x80:
                break
            shift += 7
        locs.append(data[i : i + n].decode("utf-8", "replace"))
        start = data.find(key, i)
    if data.count(b"location") > len(locs):
        locs.append("")  # an entry the scan cannot read: refuse rather than guess
    return locs


def check_external_data(path: str | Path) -> None:
    """Refuse (ModelError) an ONNX file whose external-data tensors point outside its folder
    (``../``, absolute paths, symlinks leading out, missing files) -- before ONNX Runtime
    opens anything."""
    path = Path(path)
    folder = path.resolve().parent
    for loc in _external_locations(str(path)) or []:
        target = (folder / loc).resolve() if loc else folder
        p = Path(loc)
        if not loc:
            raise ModelError(f"{path}: external weight data with an unreadable location; "
                             f"refused for safety, install the 'onnx' package to check it "
                             f"exactly, or re-export the model")
        if p.is_absolute() or ".." in p.parts or not target.is_relative_to(folder):
            raise ModelError(f"{path}: external weight data {loc!r} points outside the model's "
                             f"folder; refused for safety, keep the data file next to the model")
        if not target.is_file():
            raise ModelError(f"{path}: external weight data {loc!r} is missing; copy it next "
                             f"to the model")


@functools.lru_cache(maxsize=16)
def _read_onnx(path: str, mtime: int, size: int) -> ModelFile:
    import onnxruntime as ort

    if size == 0:
        raise ModelError(f"{path}: model file is empty; re-export or re-download it")
    check_external_data(path)
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({first}); "
                         f"re-export it with `unet-deploy export`") from None
    try:
        meta = sess.get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001 - e.g. UnicodeDecodeError on corrupt metadata
        raise ModelError(f"{path}: unreadable ONNX metadata ({type(exc).__name__}); the file "
                         f"is corrupt, re-export or re-download it") from None
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
    (inp,) = inputs
    shape, kind = inp.shape, inp.type
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


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (model and engine identity in manifests and reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_shipped() -> list[str]:
    """The lines of ``unet-deploy models``: each shipped model's size, classes (index =
    class), default output, geometry, what inputs it expects, and its card."""
    found = shipped_models()
    if not found:
        return ["no shipped models installed"]
    lines = []
    for name, path in found.items():
        info = read_onnx(path).info
        default = " (default)" if name == DEFAULT_MODEL else ""
        classes = ", ".join(f"{i} {c}" for i, c in enumerate(info.classes))
        lines.append(f"{name}{default}: {path.stat().st_size / 1e6:.1f} MB, classes {classes}; "
                     f"writes {info.default_output_kind} by default; depth {info.depth}, "
                     f"base {info.base}, tile {info.tile}")
        lines.append(f"    {info.description}")
        if info.expects:
            lines.append("    expects: " + ", ".join(f"{k} {v}" for k, v in info.expects.items()
                                                     if v))
        card = path.with_suffix(".md")
        if card.exists():
            lines.append(f"    card: {card}")
    return lines
