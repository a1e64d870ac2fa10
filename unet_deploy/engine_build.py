"""Building TensorRT engines (``unet-deploy build-engine -o X.engine``): one optimization
profile, the precision chosen from the installed TensorRT's API (TensorRT 10 builder flags with an
``IInt8EntropyCalibrator2`` fed the user's own tiles; TensorRT >= 11, strongly typed, gets an ONNX
graph cast to fp16/bf16 by ``cast_onnx`` or the Q/DQ graph of ``quantize.quantize_qdq``), the
timing cache, the accuracy gate against the float32 ONNX model (``gate``), and the manifest and
engine cache entry that ``engines`` later loads. CUDA memory for the calibrator and the gate run
comes from ``torch.cuda`` (the one CUDA library the GPU image already has; see
backends/tensorrt.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engines import (PRECISIONS, EngineCache, Environment, Manifest, current_environment,
                      has_precision_flags, io_names, manifest_path, read_manifest,
                      tensorrt_major, trt_logger)
from .errors import BackendError, ModelError
from .gate import DEFAULT_MIN_AGREEMENT, gate_report, run_onnx



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


CALIBRATION_DEVICE = "cuda"  # where the calibrator's buffer lives (tests use "cpu")


def calibration_batches(tiles: np.ndarray, batch: int) -> np.ndarray:
    """``tiles`` cycled to a whole number of full batches: TensorRT calibrates at the profile's
    opt shape and reads ``batch`` tiles from the buffer on every call, so a short last batch
    (or fewer tiles than ``batch``) would make it read past the data. Repeating tiles only
    re-weights the histogram; dropping them would lose data."""
    if len(tiles) == 0:
        raise ModelError("INT8 calibration found no tiles in the --calibration images")
    n = -(-len(tiles) // batch) * batch
    return tiles if n == len(tiles) else np.take(tiles, np.arange(n) % len(tiles), axis=0)


def _make_calibrator(trt, tiles: np.ndarray, batch: int, cache_file: Path | None):
    """IInt8EntropyCalibrator2 over the user's own (normalized) tiles; device memory from
    torch.cuda. The buffer holds ``batch`` tiles -- the opt shape calibration runs at --
    whatever the number of tiles (``calibration_batches``)."""
    import torch

    tiles = calibration_batches(tiles, batch)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.tiles = tiles
            self.batch = batch
            self.pos = 0
            self.device = torch.empty((self.batch,) + tiles.shape[1:], dtype=torch.float32,
                                      device=CALIBRATION_DEVICE)

        def get_batch_size(self):
            return self.batch

        def get_batch(self, names):
            if self.pos + self.batch > len(self.tiles):
                return None
            chunk = torch.from_numpy(self.tiles[self.pos : self.pos + self.batch])
            self.device.copy_(chunk)
            if self.device.is_cuda:
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
    from .quantize import calibration_tiles as gather_tiles

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
    # TensorRT allows TF32 (10-bit mantissa) for fp32 layers by default, so an "fp32" engine
    # would be reduced precision without passing the accuracy gate: clear it (as Polygraphy
    # does without --tf32). Recorded in the manifest, so old TF32 "fp32" engines are not reused.
    no_tf32 = precision == "fp32" and hasattr(trt.BuilderFlag, "TF32")
    if no_tf32:
        flags.append("NO_TF32")
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
    logger = trt_logger(trt)
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
        if f != "NO_TF32":
            config.set_flag(getattr(trt.BuilderFlag, f))
    if no_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if precision == "int8" and not strongly_typed:
        config.int8_calibrator = _make_calibrator(trt, tiles, batch, None)
        config.set_calibration_profile(profile)
    tc_path = Path(timing_cache) if timing_cache else None
    tc_bytes = tc_path.read_bytes() if tc_path and tc_path.is_file() else b""
    _use_timing_cache(config, tc_bytes, tc_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{onnx_path}: TensorRT failed to build a {precision} engine (see "
                         f"the TensorRT log above)")
    tc = config.get_timing_cache() if tc_path is not None else None
    if tc is not None:  # None when no cache could be attached
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tc_path.write_bytes(bytes(tc.serialize()))
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


def _use_timing_cache(config, data: bytes, path: Path | None) -> None:
    """Attach a timing cache built from ``data`` (the file's bytes; b"" = empty). TensorRT's
    ``create_timing_cache`` returns None on bytes it cannot parse, and ``set_timing_cache``
    returns False for a cache from another device or TensorRT (ignore_mismatch=False, so a
    stale cache never steers tactics): both fall back to an empty cache, and a build without
    any cache when even that fails. The file is rewritten after the build."""
    import warnings

    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if data:
        warnings.warn(f"timing cache {path} is unreadable or from another GPU/TensorRT; "
                      f"starting an empty one (it is rewritten after this build)",
                      RuntimeWarning, stacklevel=3)
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, False):
            return
    warnings.warn("TensorRT could not create a timing cache; building without one",
                  RuntimeWarning, stacklevel=3)


def _synthetic_tiles(info, tile: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-0.2, 1.2, (n, info.in_channels, tile, tile)).astype(np.float32)


def _run_serialized(trt, data: bytes, tiles: np.ndarray, batch: int) -> np.ndarray:
    """Run a freshly built engine over ``tiles`` (for the accuracy gate)."""
    import torch

    runtime = trt.Runtime(trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError("TensorRT could not deserialize the engine it just built")
    outs = [_execute(engine, engine.create_execution_context(), tiles[i : i + batch])
            for i in range(0, len(tiles), batch)]
    torch.cuda.synchronize()
    return np.concatenate(outs)


def _execute(engine, context, x: np.ndarray) -> np.ndarray:
    """Synchronous single run (used by the gate; the backend has the pipelined path)."""
    import tensorrt as trt
    import torch

    iname, oname = io_names(trt, engine)
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

