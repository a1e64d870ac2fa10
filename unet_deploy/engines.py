"""Loading TensorRT engines, fail-closed: the manifest, its checks, the engine cache and
deserialization. An engine ``X.engine`` is only valid for the exact ONNX file, TensorRT version
and GPU it was built with; its sidecar ``X.engine.json`` (the *manifest*) records those facts,
the engine file's own sha256, the precision, the shapes and the build flags. Loading compares the
manifest with the running environment and the engine bytes and **refuses** (``ModelError`` with
a one-line reason and the exact command that rebuilds it) on any mismatch, a missing manifest,
or when TensorRT's ``deserialize_cuda_engine`` returns ``None``; nothing is ever rebuilt
silently. The checks are pure Python (the environment facts are passed in as ``Environment``),
so they are tested without TensorRT or a GPU; only ``current_environment`` and ``deserialize``
touch TensorRT. Building engines is ``engine_build``'s job; this module never reaches it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BackendError, ModelError, ModelNotFoundError
from .model_store import file_sha256

MANIFEST_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


# ------------------------------------------------------------------------------ facts

@dataclass(frozen=True)
class Environment:
    """The facts an engine depends on, of the machine that loads it."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


@dataclass
class Manifest:
    onnx_sha256: str
    engine_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    batch: int  # opt = max batch
    tile: int  # opt = max input side
    min_tile: int  # smallest legal side the profile accepts
    in_channels: int
    input_name: str = "image"
    output_name: str = "probabilities"
    shapes: dict = field(default_factory=dict)  # {"min": [..], "opt": [..], "max": [..]}
    build_flags: list = field(default_factory=list)
    strongly_typed: bool = False
    model_info: str = "{}"  # the ONNX file's unet_deploy metadata JSON
    onnx_path: str = ""  # as given at build time, for the rebuild command
    gate: dict | None = None  # accuracy gate report of reduced-precision builds
    calibration: list = field(default_factory=list)
    built_at: str = ""
    format: int = MANIFEST_FORMAT

    # fields that determine the engine bytes (the cache key); not the gate/time/paths
    KEY_FIELDS = ("onnx_sha256", "tensorrt_version", "gpu_name", "compute_capability",
                  "precision", "batch", "tile", "min_tile", "in_channels", "shapes",
                  "build_flags", "strongly_typed", "format")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("manifest is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("onnx_sha256", "engine_sha256", "tensorrt_version", "gpu_name",
                               "compute_capability", "precision", "batch", "tile")
                   if n not in raw]
        if missing:
            raise ValueError(f"manifest lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in raw.items() if k in names})

    def key(self) -> str:
        return cache_key({k: getattr(self, k) for k in self.KEY_FIELDS})

    def rebuild_command(self, engine_path: str | Path | None = None) -> str:
        return rebuild_command(self.onnx_path or "model.onnx", engine_path or "model.engine",
                               self.precision, self.batch, self.tile, self.calibration)


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def rebuild_command(onnx_path, engine_path, precision: str, batch: int, tile: int,
                    calibration=()) -> str:
    parts = ["unet-deploy", "build-engine", str(onnx_path), "-o", str(engine_path),
             "--precision", precision, "--batch", str(batch), "--tile", str(tile)]
    for c in calibration or ():
        parts += ["--calibration", str(c)]
    return " ".join(shlex.quote(p) for p in parts)


def manifest_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# ------------------------------------------------------------------- fail-closed checks

def read_manifest(engine_path: str | Path) -> Manifest:
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ModelNotFoundError(f"{engine_path}: no such engine file")
    mpath = manifest_path(engine_path)
    if not mpath.is_file():
        raise ModelError(f"{engine_path}: manifest {mpath.name} is missing, so this engine's "
                         f"TensorRT version, GPU and ONNX source cannot be verified; rebuild "
                         f"it: unet-deploy build-engine MODEL.onnx -o {shlex.quote(str(engine_path))}")
    try:
        return Manifest.from_json(mpath.read_text())
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{engine_path}: manifest {mpath.name} is unreadable ({exc}); rebuild "
                         f"it: unet-deploy build-engine MODEL.onnx -o "
                         f"{shlex.quote(str(engine_path))}") from None


def check_manifest(manifest: Manifest, engine_path: str | Path, env: Environment,
                   onnx_path: str | Path | None = None,
                   engine_sha256: str | None = None) -> None:
    """Raise ModelError (one line: reason + rebuild command) unless the engine was built for
    ``env``, its bytes are the ones the manifest describes and, when ``onnx_path`` is given,
    from that exact ONNX file."""
    engine_path = Path(engine_path)
    problems = []
    if manifest.format != MANIFEST_FORMAT:
        problems.append(f"manifest format {manifest.format}, this unet-deploy reads "
                        f"{MANIFEST_FORMAT}")
    if manifest.tensorrt_version != env.tensorrt_version:
        problems.append(f"built with TensorRT {manifest.tensorrt_version}, this machine has "
                        f"{env.tensorrt_version}")
    if manifest.gpu_name != env.gpu_name:
        problems.append(f"built for GPU '{manifest.gpu_name}', this machine has "
                        f"'{env.gpu_name}'")
    if str(manifest.compute_capability) != str(env.compute_capability):
        problems.append(f"built for compute capability {manifest.compute_capability}, this GPU "
                        f"is {env.compute_capability}")
    if manifest.precision not in PRECISIONS:
        problems.append(f"unknown precision {manifest.precision!r}")
    actual = engine_sha256 or file_sha256(engine_path)
    if actual != manifest.engine_sha256:
        problems.append(f"engine file sha256 {actual[:12]}… does not match the manifest's "
                        f"{manifest.engine_sha256[:12]}… (modified or truncated)")
    if onnx_path is not None:
        onnx_sha = file_sha256(onnx_path)
        if onnx_sha != manifest.onnx_sha256:
            problems.append(f"built from a different ONNX file (sha256 "
                            f"{manifest.onnx_sha256[:12]}…, {Path(onnx_path).name} is "
                            f"{onnx_sha[:12]}…)")
    if problems:
        cmd = manifest.rebuild_command(engine_path)
        if onnx_path is not None:
            cmd = rebuild_command(onnx_path, engine_path, manifest.precision, manifest.batch,
                                  manifest.tile, manifest.calibration)
        raise ModelError(f"{engine_path}: refusing to run: {'; '.join(problems)}. "
                         f"Rebuild it: {cmd}")


def model_info_of(manifest: Manifest):
    from .metadata import ModelInfo

    info = ModelInfo.from_json(manifest.model_info)
    info.tile = manifest.tile
    return info


# ------------------------------------------------------------------------ engine cache

class EngineCache:
    """Engines in one directory, named by the hash of all manifest key fields, so an engine is
    found again only for the identical ONNX + TensorRT + GPU + precision + shapes + flags."""

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory or os.environ.get("UNET_DEPLOY_ENGINE_CACHE")
                        or Path.home() / ".cache" / "unet-deploy" / "engines")

    def path_for(self, key: str) -> Path:
        return self.dir / f"{key[:32]}.engine"

    def lookup(self, fields: dict, env: Environment | None = None) -> Path | None:
        """The cached engine for key ``fields`` whose manifest (re)checks against ``env``."""
        path = self.path_for(cache_key(fields))
        if not path.is_file() or not manifest_path(path).is_file():
            return None
        m = read_manifest(path)
        if m.key() != cache_key(fields):
            return None
        if env is not None:
            check_manifest(m, path, env)
        return path

    def find_for_onnx(self, onnx_path: str | Path, env: Environment) -> Path | None:
        """Any cached engine built from this ONNX file for this environment (newest first)."""
        if not self.dir.is_dir():
            return None
        sha = file_sha256(onnx_path)
        found = []
        for mp in self.dir.glob("*.engine.json"):
            try:
                m = Manifest.from_json(mp.read_text())
            except (ValueError, TypeError):
                continue
            if (m.onnx_sha256, m.tensorrt_version, m.gpu_name, str(m.compute_capability)) == \
                    (sha, env.tensorrt_version, env.gpu_name, str(env.compute_capability)):
                found.append((mp.stat().st_mtime, mp.with_name(mp.name[:-5])))
        return max(found)[1] if found else None

    def store(self, engine_path: str | Path) -> Path:
        import shutil

        m = read_manifest(engine_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        dest = self.path_for(m.key())
        shutil.copyfile(engine_path, dest.with_suffix(".partial"))
        manifest_path(dest).write_text(m.to_json())
        dest.with_suffix(".partial").replace(dest)
        return dest


# ------------------------------------------------------------------ TensorRT plumbing

def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def has_precision_flags(trt) -> bool:
    """TensorRT 10 builder precision flags exist (weak typing); gone in TensorRT 11."""
    return hasattr(trt.BuilderFlag, "FP16") and tensorrt_major(trt) < 11


def current_environment() -> Environment:
    """Read the facts from TensorRT and the CUDA device (torch.cuda)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed (pip install 'unet-deploy[tensorrt]')") \
            from None
    import torch

    if not torch.cuda.is_available():
        raise BackendError("TensorRT needs a CUDA GPU; none is visible")
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return Environment(trt.__version__, torch.cuda.get_device_name(dev), f"{major}.{minor}")


def trt_logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def deserialize(engine_path: str | Path, env: Environment | None = None,
                onnx_path: str | Path | None = None):
    """(runtime, ICudaEngine, Manifest) after the fail-closed checks. Raises ModelError."""
    import tensorrt as trt

    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    data = engine_path.read_bytes()
    check_manifest(manifest, engine_path, env or current_environment(), onnx_path,
                   engine_sha256=hashlib.sha256(data).hexdigest())
    runtime = trt.Runtime(trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(f"{engine_path}: TensorRT could not deserialize the engine (returned "
                         f"None); rebuild it: {manifest.rebuild_command(engine_path)}")
    return runtime, engine, manifest


def io_names(trt, engine) -> tuple[str, str]:
    """(input, output) tensor names of a single-input, single-output engine."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return ins[0], outs[0]
