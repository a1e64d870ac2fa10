"""TensorRT engines: build (``unet-deploy build-engine``), manifest, fail-closed loading, cache.

An engine is only valid for the exact ONNX file, TensorRT version and GPU it was built with.
Every engine ``X.engine`` has a sidecar ``X.engine.json`` (the *manifest*) recording those facts,
the engine file's own sha256, the precision, the shapes and the build flags. Loading compares the
manifest with the running environment and the engine bytes and **refuses** (``ModelError`` with
a one-line reason and the exact command that rebuilds it) on any mismatch, a missing manifest,
or when TensorRT's ``deserialize_cuda_engine`` returns ``None``. Nothing is ever rebuilt silently.

The manifest logic is pure Python: the environment facts are passed in (``Environment``), so it
is tested on machines without TensorRT or a GPU. Only ``current_environment``, ``build_engine``
and ``deserialize`` touch TensorRT.

Precision: TensorRT 10 (weakly typed) uses ``BuilderFlag.FP16/BF16/INT8`` (INT8 with an
``IInt8EntropyCalibrator2`` fed the user's own images). TensorRT >= 11 has no precision flags and
always builds strongly typed networks; there the ONNX graph itself is cast to fp16/bf16
(``cast_onnx``) and INT8 uses the explicit Q/DQ graph from ``quantize.quantize_qdq`` (same
calibration tiles). Which path runs is decided from ``trt.__version__`` and
``hasattr(trt.BuilderFlag, "FP16")``, not guessed. CUDA memory for the calibrator comes from
``torch.cuda`` (the one CUDA library the GPU image already has; see backends/tensorrt.py).

Every reduced-precision build is checked against the float32 ONNX model (ONNX Runtime CPU) on
the calibration tiles (``quantize.GateReport``); below ``min_agreement`` the engine is deleted and
the build fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BackendError, ModelError, ModelNotFoundError
from .model_store import file_sha256

MANIFEST_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_MIN_AGREEMENT = 0.995


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


def _logger(trt):
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
    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(f"{engine_path}: TensorRT could not deserialize the engine (returned "
                         f"None); rebuild it: {manifest.rebuild_command(engine_path)}")
    return runtime, engine, manifest


# ----------------------------------------------------------------- ONNX precision cast

def cast_onnx(proto, precision: str):
    """A copy of the float32 ONNX graph computing in fp16/bf16 (for TensorRT >= 11's strongly
    typed networks): float initializers and Constant tensors are converted, the input is cast
    down after entry, and Softmax runs in float32 so the output stays float32 probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if precision not in ("fp16", "bf16"):
        raise ValueError(f"cast_onnx: precision must be fp16 or bf16, got {precision}")
    low = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.BFLOAT16
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    g = proto.graph

    def convert(t):
        arr = numpy_helper.to_array(t)
        if precision == "fp16":
            new = numpy_helper.from_array(arr.astype(np.float16), t.name)
        else:
            bits = (arr.astype(np.float32).view(np.uint32) + 0x7FFF +
                    ((arr.astype(np.float32).view(np.uint32) >> 16) & 1)) >> 16
            new = helper.make_tensor(t.name, TensorProto.BFLOAT16, arr.shape,
                                     bits.astype(np.uint16).tobytes(), raw=True)
        return new

    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(convert(t))
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(convert(a.t))
    inp = g.input[0].name
    low_in = inp + "_low"
    for node in g.node:
        node.input[:] = [low_in if x == inp else x for x in node.input]
    nodes = [helper.make_node("Cast", [inp], [low_in], to=low, name="unet_deploy_cast_in")]
    for node in g.node:
        if node.op_type == "Softmax":
            x32 = node.input[0] + "_f32"
            nodes.append(helper.make_node("Cast", [node.input[0]], [x32],
                                          to=TensorProto.FLOAT, name=node.name + "_cast_f32"))
            node.input[0] = x32
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return proto


# ------------------------------------------------------------------------ the builder

@dataclass
class BuildResult:
    engine: Path
    manifest: Manifest
    seconds: float
    cached: bool = False

    def summary(self) -> str:
        gate = self.manifest.gate
        g = f", gate: {gate['summary']}" if gate else ""
        return (f"{self.engine}: TensorRT {self.manifest.tensorrt_version}, "
                f"{self.manifest.precision}, batch {self.manifest.batch}, tile "
                f"{self.manifest.tile}, {self.manifest.gpu_name} "
                f"(sm {self.manifest.compute_capability}), {self.seconds:.1f} s{g}")


def _make_calibrator(trt, tiles: np.ndarray, batch: int, cache_file: Path | None):
    """IInt8EntropyCalibrator2 over the user's own (normalized) tiles; device memory from
    torch.cuda."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.tiles = tiles
            self.batch = min(batch, len(tiles))
            self.pos = 0
            self.device = torch.empty((self.batch,) + tiles.shape[1:], dtype=torch.float32,
                                      device="cuda")

        def get_batch_size(self):
            return self.batch

        def get_batch(self, names):
            if self.pos + self.batch > len(self.tiles):
                return None
            chunk = torch.from_numpy(self.tiles[self.pos : self.pos + self.batch])
            self.device.copy_(chunk)
            torch.cuda.synchronize()
            self.pos += self.batch
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            if cache_file is not None and cache_file.is_file():
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            if cache_file is not None:
                cache_file.write_bytes(bytes(cache))

    return Calibrator()


def build_engine(onnx_path: str | Path, out: str | Path, *, precision: str = "fp16",
                 batch: int = 8, tile: int | None = None,
                 calibration: list[str | Path] | None = None, calibration_tiles: int = 32,
                 timing_cache: str | Path | None = None,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT,
                 workspace_gib: float | None = None, cache_dir: str | Path | None = None,
                 overwrite: bool = False, env: Environment | None = None) -> BuildResult:
    """Build ``out`` (+ ``out.json`` manifest) from ``onnx_path`` with TensorRT.

    One optimization profile: min (1, C, min_tile, min_tile), opt = max (batch, C, tile, tile),
    where ``tile`` defaults to the model's metadata tile. ``calibration``: image files (INT8
    needs them; the accuracy gate of fp16/bf16 uses them when given, else synthetic tiles drawn
    from the model's input range). ``timing_cache`` is loaded when it exists and written back.
    With ``cache_dir``, an identical earlier build is reused from the engine cache."""
    import onnx

    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed (pip install 'unet-deploy[tensorrt]' on a "
                           "machine with an NVIDIA GPU); for a CPU INT8 model use -o "
                           "MODEL.int8.onnx --precision int8") from None

    from .model_store import read_onnx
    from .quantize import calibration_tiles as gather_tiles, gate_report, run_onnx

    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if out.exists() and not overwrite:
        from .errors import OutputError
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")
    info = read_onnx(onnx_path).info
    tile = int(tile or info.tile)
    geo = info.geometry
    if not geo.is_legal(tile):
        raise ModelError(f"tile {tile} is not a legal input size for depth {info.depth}; "
                         f"nearest legal: {geo.nearest_legal(tile)}")
    if batch < 1:
        raise ModelError(f"batch must be >= 1, got {batch}")
    if precision == "int8" and not calibration:
        raise ModelError("INT8 needs calibration images from your own data: pass "
                         "--calibration IMAGE [--calibration IMAGE ...]")
    env = env or current_environment()
    min_tile = geo.input_for_output(1)
    c = info.in_channels
    shapes = {"min": [1, c, min_tile, min_tile], "opt": [batch, c, tile, tile],
              "max": [batch, c, tile, tile]}
    strongly_typed = not has_precision_flags(trt)
    flags = [] if precision == "fp32" or strongly_typed else [precision.upper()]
    if precision == "int8" and not strongly_typed:
        flags.append("FP16")  # layers without INT8 kernels may fall back to fp16, not fp32
    calib_paths = [str(p) for p in (calibration or [])]
    onnx_bytes = onnx_path.read_bytes()
    manifest = Manifest(
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(), engine_sha256="",
        tensorrt_version=env.tensorrt_version, gpu_name=env.gpu_name,
        compute_capability=env.compute_capability, precision=precision, batch=batch,
        tile=tile, min_tile=min_tile, in_channels=c, shapes=shapes, build_flags=flags,
        strongly_typed=strongly_typed, model_info=info.to_json(), onnx_path=str(onnx_path),
        calibration=calib_paths, built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    key_fields = {k: getattr(manifest, k) for k in Manifest.KEY_FIELDS}
    cache = EngineCache(cache_dir) if cache_dir else None
    if cache is not None:
        hit = cache.lookup(key_fields, env)
        if hit is not None:
            import shutil
            shutil.copyfile(hit, out)
            manifest_path(out).write_text(manifest_path(hit).read_text())
            return BuildResult(out, read_manifest(out), time.perf_counter() - t0, cached=True)

    tiles = None
    if precision != "fp32":
        tiles = gather_tiles(calib_paths, info, tile, calibration_tiles) if calib_paths else \
            _synthetic_tiles(info, tile, min(calibration_tiles, 8))

    # --- the network (precision decided by the installed TensorRT's API)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    if tensorrt_major(trt) < 10:
        net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    else:
        net_flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    source = onnx_bytes
    if strongly_typed and precision in ("fp16", "bf16"):
        source = cast_onnx(onnx.load_from_string(onnx_bytes), precision).SerializeToString()
    elif strongly_typed and precision == "int8":
        from .quantize import quantize_qdq
        source = quantize_qdq(onnx.load_from_string(onnx_bytes), tiles).SerializeToString()
    if not parser.parse(source):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT's ONNX parser rejected the model: {errs}")
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    for f in flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if precision == "int8" and not strongly_typed:
        config.int8_calibrator = _make_calibrator(trt, tiles, batch, None)
        config.set_calibration_profile(profile)
    tc_path = Path(timing_cache) if timing_cache else None
    tc_bytes = tc_path.read_bytes() if tc_path and tc_path.is_file() else b""
    tcache = config.create_timing_cache(tc_bytes)
    config.set_timing_cache(tcache, False)  # ignore_mismatch=False: stale caches are not used
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{onnx_path}: TensorRT failed to build a {precision} engine (see "
                         f"the TensorRT log above)")
    if tc_path is not None:
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    data = bytes(plan)
    manifest.engine_sha256 = hashlib.sha256(data).hexdigest()

    # --- accuracy gate (reduced precision only): engine vs float32 ONNX on the tiles
    if tiles is not None:
        ref = run_onnx(onnx_path, tiles)
        got = _run_serialized(trt, data, tiles, batch)
        report = gate_report(ref, got, min_agreement)
        manifest.gate = report.to_dict()
        if not report.passed:
            raise ModelError(f"{onnx_path}: {precision} engine rejected by the accuracy gate: "
                             f"{report.summary()}; use a higher precision or more "
                             f"representative --calibration images")
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    manifest_path(out).write_text(manifest.to_json())
    partial.replace(out)
    if cache is not None:
        cache.store(out)
    return BuildResult(out, manifest, time.perf_counter() - t0)


def _synthetic_tiles(info, tile: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-0.2, 1.2, (n, info.in_channels, tile, tile)).astype(np.float32)


def _run_serialized(trt, data: bytes, tiles: np.ndarray, batch: int) -> np.ndarray:
    """Run a freshly built engine over ``tiles`` (for the accuracy gate)."""
    import torch

    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError("TensorRT could not deserialize the engine it just built")
    outs = [_execute(engine, engine.create_execution_context(), tiles[i : i + batch])
            for i in range(0, len(tiles), batch)]
    torch.cuda.synchronize()
    return np.concatenate(outs)


def _io_names(trt, engine) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return ins[0], outs[0]


def _execute(engine, context, x: np.ndarray) -> np.ndarray:
    """Synchronous single run (used by the gate; the backend has the pipelined path)."""
    import tensorrt as trt
    import torch

    iname, oname = _io_names(trt, engine)
    context.set_input_shape(iname, tuple(x.shape))
    oshape = tuple(context.get_tensor_shape(oname))
    xin = torch.from_numpy(np.ascontiguousarray(x)).cuda()
    yout = torch.empty(oshape, dtype=torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    context.set_tensor_address(iname, int(xin.data_ptr()))
    context.set_tensor_address(oname, int(yout.data_ptr()))
    torch.cuda.current_stream().synchronize()
    if not context.execute_async_v3(stream.cuda_stream):
        raise BackendError("TensorRT execute_async_v3 failed")
    stream.synchronize()
    return yout.cpu().numpy()


# ------------------------------------------------------------- one entry for the CLI

def build(onnx_path: str | Path, out: str | Path, *, precision: str = "fp16", batch: int = 8,
          tile: int | None = None, calibration: list[str | Path] | None = None,
          timing_cache: str | Path | None = None,
          min_agreement: float = DEFAULT_MIN_AGREEMENT, overwrite: bool = False):
    """``unet-deploy build-engine``: ``-o X.onnx`` with ``--precision int8`` builds the CPU INT8
    model (ONNX Runtime Q/DQ, returns ``quantize.QuantizeResult``); any other output is a
    TensorRT engine (returns ``BuildResult``). Both are accuracy-gated; both ``.summary()``."""
    out = Path(out)
    if out.suffix == ".onnx":
        if precision != "int8":
            raise ModelError(f"{out}: an .onnx output is the CPU INT8 model and needs "
                             f"--precision int8 (got {precision}); use -o MODEL.engine for a "
                             f"TensorRT engine")
        from .quantize import quantize_int8
        return quantize_int8(onnx_path, out, calibration=calibration or (), tile=tile,
                             min_agreement=min_agreement, overwrite=overwrite)
    return build_engine(onnx_path, out, precision=precision, batch=batch, tile=tile,
                        calibration=calibration, timing_cache=timing_cache,
                        min_agreement=min_agreement, overwrite=overwrite)
