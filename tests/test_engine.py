"""Engine manifests and fail-closed loading (pure Python; TensorRT facts are injected)."""

import hashlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from unet_deploy import engine_build
from unet_deploy import engines as E
from unet_deploy.cli import build_for_output
from unet_deploy.engine_build import cast_onnx
from unet_deploy.engines import (EngineCache, Environment, Manifest, check_manifest,
                                 manifest_path, read_manifest, rebuild_command)
from unet_deploy.errors import ModelError, ModelNotFoundError, UnetDeployError
from unet_deploy.gate import DEFAULT_MIN_AGREEMENT
from unet_deploy.model_store import file_sha256

H100 = Environment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx", name="tiny",
                            instance_scheme="none", parity=False)


def write_engine(tmp_path, onnx_path, env=H100, name="model.engine", **kw):
    """A real engine file + manifest as build_engine writes them (engine bytes are opaque)."""
    path = tmp_path / name
    data = b"serialized-plan-" + name.encode() + bytes(range(64))
    path.write_bytes(data)
    fields = dict(onnx_sha256=file_sha256(onnx_path), engine_sha256=hashlib.sha256(data).hexdigest(),
                  tensorrt_version=env.tensorrt_version, gpu_name=env.gpu_name,
                  compute_capability=env.compute_capability, precision="fp16", batch=8, tile=92,
                  min_tile=44,
                  in_channels=1, shapes={"min": [1, 1, 44, 44], "opt": [8, 1, 92, 92],
                                          "max": [8, 1, 92, 92]},
                  build_flags=["FP16"], model_info=json.dumps({"depth": 2, "base": 4}),
                  onnx_path=str(onnx_path))
    fields.update(kw)
    m = Manifest(**fields)
    manifest_path(path).write_text(m.to_json())
    return path, m


def test_matching_manifest_loads(tmp_path, tiny_onnx):
    path, m = write_engine(tmp_path, tiny_onnx)
    got = read_manifest(path)
    assert got == m
    check_manifest(got, path, H100, onnx_path=tiny_onnx)  # no exception


@pytest.mark.parametrize("env, reason", [
    (Environment("10.14.1.48", H100.gpu_name, "9.0"), "TensorRT 10.13.0.35"),
    (Environment(H100.tensorrt_version, "NVIDIA A100-SXM4-80GB", "9.0"), "GPU 'NVIDIA H100"),
    (Environment(H100.tensorrt_version, H100.gpu_name, "8.0"), "compute capability 9.0"),
])
def test_environment_mismatch_refuses_with_rebuild_command(tmp_path, tiny_onnx, env, reason):
    path, m = write_engine(tmp_path, tiny_onnx)
    with pytest.raises(ModelError) as e:
        check_manifest(read_manifest(path), path, env)
    msg = str(e.value)
    assert reason in msg and "\n" not in msg
    assert f"Rebuild it: unet-deploy build-engine {tiny_onnx} -o {path} --precision fp16 " \
           f"--batch 8 --tile 92" in msg


def test_tampered_engine_and_other_onnx_refused(tmp_path, tiny_onnx):
    path, m = write_engine(tmp_path, tiny_onnx)
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the manifest"):
        check_manifest(read_manifest(path), path, H100)
    path2, _ = write_engine(tmp_path, tiny_onnx, name="b.engine")
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny_onnx.read_bytes() + b" ")
    with pytest.raises(ModelError, match="different ONNX file") as e:
        check_manifest(read_manifest(path2), path2, H100, onnx_path=other)
    assert f"build-engine {other} -o {path2}" in str(e.value)


def test_missing_or_broken_manifest_refused(tmp_path, tiny_onnx):
    path, _ = write_engine(tmp_path, tiny_onnx)
    mp = manifest_path(path)
    assert mp.name == "model.engine.json"
    mp.write_text("{not json")
    with pytest.raises(ModelError, match="unreadable.*build-engine"):
        read_manifest(path)
    mp.write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(ModelError, match="lacks onnx_sha256"):
        read_manifest(path)
    mp.unlink()
    with pytest.raises(ModelError, match="manifest model.engine.json is missing"):
        read_manifest(path)
    with pytest.raises(ModelNotFoundError):
        read_manifest(tmp_path / "nope.engine")


def fake_tensorrt(version="10.13.0.35", fp16=True, engine=None):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": 0, "BF16": 1, "INT8": 2} if fp16 else
                                               {"TF32": 0}))
    return trt


def test_deserialize_none_is_refused_never_rebuilt(tmp_path, tiny_onnx, monkeypatch):
    path, _ = write_engine(tmp_path, tiny_onnx)
    before = path.read_bytes()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(engine=None))
    with pytest.raises(ModelError, match=r"could not deserialize.*returned None.*build-engine"):
        E.deserialize(path, env=H100)
    assert path.read_bytes() == before  # not rebuilt, not touched
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(engine="ENGINE"))
    runtime, eng, m = E.deserialize(path, env=H100, onnx_path=tiny_onnx)
    assert eng == "ENGINE" and m.precision == "fp16"
    with pytest.raises(ModelError, match="TensorRT 10.13.0.35, this machine has 10.0.1"):
        E.deserialize(path, env=Environment("10.0.1", H100.gpu_name, "9.0"))


def test_precision_api_detection():
    assert E.has_precision_flags(fake_tensorrt("10.13.0.35", fp16=True))
    assert not E.has_precision_flags(fake_tensorrt("11.4.0", fp16=False))
    assert not E.has_precision_flags(fake_tensorrt("11.0.0", fp16=True))  # major decides too
    assert E.tensorrt_major(fake_tensorrt("8.6.1")) == 8


def test_engine_cache_keyed_on_all_fields(tmp_path, tiny_onnx):
    path, m = write_engine(tmp_path, tiny_onnx)
    cache = EngineCache(tmp_path / "cache")
    stored = cache.store(path)
    assert stored.name == m.key()[:32] + ".engine" and manifest_path(stored).is_file()
    fields = {k: getattr(m, k) for k in Manifest.KEY_FIELDS}
    assert cache.lookup(fields, H100) == stored
    for k, v in [("precision", "bf16"), ("batch", 4), ("tile", 140), ("gpu_name", "other"),
                 ("tensorrt_version", "10.0"), ("onnx_sha256", "0" * 64),
                 ("build_flags", []), ("compute_capability", "8.9")]:
        assert cache.lookup({**fields, k: v}, H100) is None, k
    assert cache.find_for_onnx(tiny_onnx, H100) == stored
    assert cache.find_for_onnx(tiny_onnx, Environment("9.0", "x", "1.0")) is None
    # a cached engine whose bytes changed is refused, not used
    stored.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="does not match"):
        cache.lookup(fields, H100)


def test_rebuild_command_quotes_paths():
    cmd = rebuild_command("my model.onnx", "out.engine", "int8", 4, 572, ["a b.tif", "c.tif"])
    assert cmd == ("unet-deploy build-engine 'my model.onnx' -o out.engine --precision int8 "
                   "--batch 4 --tile 572 --calibration 'a b.tif' --calibration c.tif")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cast_onnx_for_strongly_typed_tensorrt(tiny_onnx, precision):
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(tiny_onnx))
    low = cast_onnx(proto, precision)
    onnx.checker.check_model(low)
    want = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert all(t.data_type != onnx.TensorProto.FLOAT for t in low.graph.initializer)
    assert any(t.data_type == want for t in low.graph.initializer)
    assert low.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert low.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 92, 92)).astype(np.float32)
    ref = ort.InferenceSession(proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    if precision == "bf16":
        pytest.skip("ONNX Runtime CPU has no bf16 Conv kernel; structure checked above")
    got = ort.InferenceSession(low.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-2


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_tensorrt_build_and_load(tmp_path, tiny_onnx):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    res = engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp16",
                                    batch=2, tile=92, timing_cache=tmp_path / "tc.bin",
                                    min_agreement=0.99)
    assert (tmp_path / "tc.bin").stat().st_size > 0
    runtime, eng, m = E.deserialize(res.engine, onnx_path=tiny_onnx)
    assert m.gate["passed"] and m.precision == "fp16"


def test_build_dispatch_onnx_output_is_cpu_int8(tiny_onnx, decisive_model, blob_images,
                                                tmp_path):
    with pytest.raises(UnetDeployError, match="needs --precision int8"):
        build_for_output(tiny_onnx, tmp_path / "m.int8.onnx", precision="fp16")
    res = build_for_output(decisive_model, tmp_path / "m.int8.onnx", precision="int8",
                           calibration=blob_images)  # the default gate, passed by measurement
    assert res.path.is_file() and "gate pass" in res.summary()
    assert DEFAULT_MIN_AGREEMENT <= res.report.label_agreement < 1.0
    if importlib.util.find_spec("tensorrt") is None:
        from unet_deploy.errors import BackendError
        with pytest.raises(BackendError, match="TensorRT is not installed"):
            build_for_output(tiny_onnx, tmp_path / "m.engine", precision="fp16")


# ------------------------------------------- build_engine orchestration on a fake TensorRT

def fake_tensorrt_builder(version="10.13.0.35", timing=None, build_ok=True):
    """``fake_tensorrt`` plus the builder API build_engine drives. ``timing``: how the timing
    cache calls behave ("ok" | "create_none" | "mismatch" | "never"). The fake build calls the
    INT8 calibrator the way TensorRT does -- at the opt batch, reading ``batch`` rows from the
    pointer it is given -- and records what it saw on ``trt.log``."""
    trt = fake_tensorrt(version, fp16=True)
    trt.BuilderFlag = types.SimpleNamespace(FP16=0, BF16=1, INT8=2, TF32=3)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    log = trt.log = {"set": [], "cleared": [], "calib": [], "timing": []}
    timing = timing or "ok"

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"TC:" + bytes(self.data)

    class Config:
        int8_calibrator = None

        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT's default: TF32 on
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, f):
            log["set"].append(f)
            self.flags.add(f)

        def clear_flag(self, f):
            log["cleared"].append(f)
            self.flags.discard(f)

        def add_optimization_profile(self, profile):
            self.profile = profile

        def set_calibration_profile(self, profile):
            pass

        def create_timing_cache(self, data):
            log["timing"].append(("create", bytes(data)))
            if timing == "never" or (timing == "create_none" and data):
                return None
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            ok = not (timing == "mismatch" and cache.data)
            log["timing"].append(("set", bytes(cache.data), ok))
            if ok:
                self.cache = cache
            return ok

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (lo, opt, hi)

    class Network:
        def get_input(self, i):
            return types.SimpleNamespace(name="image")

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log["flags"] = sorted(config.flags)
            cal = config.int8_calibrator
            if cal is not None:
                opt_batch = config.profile.shapes[1][0]
                assert cal.get_batch_size() == opt_batch
                while (ptr := cal.get_batch(["image"])) is not None:
                    # TensorRT reads opt_batch tiles from ptr: the buffer must hold them
                    log["calib"].append((tuple(cal.device.shape), ptr == [cal.device.data_ptr()]))
            return b"PLAN-" + bytes(str(sorted(config.flags)), "ascii") if build_ok else None

    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def fake_build(monkeypatch, tiny_onnx):
    """Run build_engine against a fake TensorRT; the gate's engine run is replaced by ONNX
    Runtime on the same tiles (``state['mangle']`` can spoil it)."""
    from unet_deploy.gate import run_onnx

    state = {"mangle": None}

    def run_serialized(trt, data, tiles, batch):
        got = run_onnx(tiny_onnx, tiles)
        return state["mangle"](got) if state["mangle"] else got

    def install(**kw):
        trt = fake_tensorrt_builder(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    monkeypatch.setattr(engine_build, "_run_serialized", run_serialized)
    monkeypatch.setattr(engine_build, "CALIBRATION_DEVICE", "cpu")
    state["install"] = install
    return state


def test_build_fp16_flags_manifest_and_timing_cache(fake_build, tiny_onnx, tmp_path):
    trt = fake_build["install"]()
    tc = tmp_path / "tc.bin"
    res = engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp16", batch=2,
                                    tile=92, timing_cache=tc, env=H100)
    m = read_manifest(res.engine)
    assert m.build_flags == ["FP16"] and m.gate["passed"] and not m.strongly_typed
    assert trt.log["set"] == [trt.BuilderFlag.FP16] and trt.log["cleared"] == []
    assert res.engine.read_bytes().startswith(b"PLAN-") and tc.read_bytes() == b"TC:"
    check_manifest(m, res.engine, H100, onnx_path=tiny_onnx)  # loadable as built
    # second build reuses the written cache
    engine_build.build_engine(tiny_onnx, tmp_path / "n.engine", precision="fp16", batch=2,
                              tile=92, timing_cache=tc, env=H100)
    assert trt.log["timing"][-1] == ("set", b"TC:", True)


def test_build_fp32_clears_tf32(fake_build, tiny_onnx, tmp_path):
    """TensorRT runs fp32 layers in TF32 by default; an fp32 engine is not gated, so TF32 is
    cleared (and recorded: the cache key differs from a TF32 build)."""
    trt = fake_build["install"]()
    res = engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp32",
                                    batch=2, tile=92, env=H100)
    assert trt.log["cleared"] == [trt.BuilderFlag.TF32]
    assert trt.BuilderFlag.TF32 not in trt.log["flags"]
    assert res.manifest.build_flags == ["NO_TF32"] and res.manifest.gate is None


@pytest.mark.parametrize("mode", ["create_none", "mismatch", "never"])
def test_build_survives_unusable_timing_cache(fake_build, tiny_onnx, tmp_path, mode):
    trt = fake_build["install"](timing=mode)
    tc = tmp_path / "tc.bin"
    tc.write_bytes(b"cache from another GPU")
    with pytest.warns(RuntimeWarning, match="timing cache"):
        res = engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp16",
                                        batch=2, tile=92, timing_cache=tc, env=H100)
    assert res.engine.is_file()
    if mode == "never":  # no cache at all: nothing to write back, the old file stays
        assert tc.read_bytes() == b"cache from another GPU"
    else:  # fell back to an empty cache, rewritten after the build
        assert ("create", b"") in trt.log["timing"] and tc.read_bytes() == b"TC:"


@pytest.mark.parametrize("n_images, batch", [(1, 8), (3, 2)])
def test_int8_calibrator_buffer_holds_a_full_batch(fake_build, tiny_onnx, tmp_path, n_images,
                                                   batch):
    """TensorRT 10 calibrates at the opt shape (batch, ...): with fewer tiles than --batch
    (or a short last batch) the buffer must still hold ``batch`` rows."""
    trt = fake_build["install"]()
    rng = np.random.default_rng(0)
    import tifffile

    imgs = []
    for i in range(n_images):
        imgs.append(tmp_path / f"cal{i}.tif")
        tifffile.imwrite(imgs[-1], rng.integers(0, 3000, (100, 100)).astype(np.uint16))
    res = engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="int8",
                                    batch=batch, tile=92, calibration=imgs, calibration_tiles=5,
                                    env=H100, min_agreement=0.0)
    assert trt.log["calib"], "the calibrator was never asked"
    assert all(shape[0] == batch and same_buffer for shape, same_buffer in trt.log["calib"])
    assert res.manifest.build_flags == ["INT8", "FP16"]
    tiles = np.arange(3)[:, None]
    np.testing.assert_array_equal(engine_build.calibration_batches(tiles, 8)[:, 0],
                                  [0, 1, 2, 0, 1, 2, 0, 1])


def test_gate_rejection_writes_nothing(fake_build, tiny_onnx, tmp_path):
    fake_build["install"]()
    fake_build["mangle"] = lambda p: p[:, ::-1].copy()  # another class wins everywhere
    out = tmp_path / "m.engine"
    with pytest.raises(ModelError, match="rejected by the accuracy gate"):
        engine_build.build_engine(tiny_onnx, out, precision="fp16", batch=2, tile=92, env=H100)
    assert not out.exists() and not manifest_path(out).exists()


def test_build_failure_is_one_line(fake_build, tiny_onnx, tmp_path):
    fake_build["install"](build_ok=False)
    with pytest.raises(ModelError, match="failed to build a fp16 engine"):
        engine_build.build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp16", batch=2,
                                  tile=92, env=H100)


def test_stale_sibling_engine_does_not_hide_a_cached_one(tiny_onnx, tmp_path, monkeypatch):
    """_engine_for tries every candidate: a stale model.engine beside the ONNX file must not
    hide a valid engine in the cache."""
    from unet_deploy import backends as B

    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    stale, _ = write_engine(tmp_path, model, env=Environment("9.0.0", H100.gpu_name, "9.0"))
    cache = EngineCache(tmp_path / "cache")
    good, _ = write_engine(tmp_path, model, name="good.engine")
    cached = cache.store(good)
    monkeypatch.setattr(E, "current_environment", lambda: H100)
    monkeypatch.setenv("UNET_DEPLOY_ENGINE_CACHE", str(cache.dir))
    path, why = B._engine_for(model)
    assert stale == model.with_suffix(".engine")
    assert path == cached and "matches" in why
    cached.unlink()  # only the stale one left: its reason is given
    path, why = B._engine_for(model)
    assert path is None and "not usable" in why and "TensorRT 9.0.0" in why
