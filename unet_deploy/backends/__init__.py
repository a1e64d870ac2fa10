"""Inference backends behind one protocol (see ``base.Backend``), and their selection.

``--backend auto`` tries, in order, tensorrt > onnxruntime-gpu > torch-cuda > onnxruntime-cpu
and says which it chose and why (``choose_backend``). Availability checks are cheap: module
specs and a ``libcuda`` device count through ctypes; nothing heavy is imported until a backend
is really opened. TensorRT is only chosen for an ONNX model when a matching engine already
exists (``<model>.engine`` beside it or in the engine cache); engines are never built
implicitly. A model path ending in ``.engine`` always means TensorRT.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
from pathlib import Path

from ..errors import BackendError, ModelError
from .base import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime-gpu", "torch-cuda", "onnxruntime-cpu",
            "onnxruntime", "onnxruntime-int8", "torch-cpu")
AUTO_ORDER = ("tensorrt", "onnxruntime-gpu", "torch-cuda", "onnxruntime-cpu")


# ------------------------------------------------------------------ cheap probes

@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible to the driver (0 without a driver); no CUDA library imported."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            n = ctypes.c_int(0)
            return n.value if lib.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0
        except AttributeError:
            return 0
    return 0


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def torch_cuda_build() -> str | None:
    """CUDA version torch was built for, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch") if _has("torch") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    version = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", version.read_text(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


@functools.lru_cache(maxsize=1)
def ort_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def _engine_for(model: Path) -> tuple[Path | None, str]:
    """A ready engine for an ONNX model (sibling .engine or engine cache), or a reason."""
    from .. import engines as E

    try:
        env = E.current_environment()
    except BackendError as exc:
        return None, str(exc)
    candidates = [model.with_suffix(".engine")]
    cached = E.EngineCache().find_for_onnx(model, env)
    if cached:
        candidates.append(cached)
    for cand in candidates:
        if cand.is_file():
            try:
                E.check_manifest(E.read_manifest(cand), cand, env, onnx_path=model)
                return cand, f"engine {cand} matches this GPU and TensorRT"
            except ModelError as exc:
                return None, f"engine {cand} not usable: {exc}"
    return None, (f"no engine built for {model.name} (build one: unet-deploy build-engine "
                  f"{model} -o {model.with_suffix('.engine')})")


def availability(name: str, model: Path | None = None) -> tuple[bool, str]:
    """(available, reason) for one concrete backend name."""
    gpus = cuda_device_count()
    if name == "tensorrt":
        if not _has("tensorrt"):
            return False, "TensorRT is not installed"
        if not gpus:
            return False, "no CUDA GPU visible"
        if model is not None and model.suffix != ".engine":
            eng, why = _engine_for(model)
            return eng is not None, why
        return True, f"TensorRT installed, {gpus} CUDA GPU(s)"
    if name == "onnxruntime-gpu":
        if "CUDAExecutionProvider" not in ort_providers():
            return False, "onnxruntime has no CUDA execution provider (onnxruntime-gpu not " \
                          "installed)"
        if not gpus:
            return False, "no CUDA GPU visible"
        return True, f"onnxruntime CUDA execution provider, {gpus} CUDA GPU(s)"
    if name == "torch-cuda":
        if not _has("torch"):
            return False, "PyTorch is not installed"
        if torch_cuda_build() is None:
            return False, "PyTorch is a CPU-only build"
        if not gpus:
            return False, "no CUDA GPU visible"
        return True, f"PyTorch built for CUDA {torch_cuda_build()}, {gpus} CUDA GPU(s)"
    if name in ("onnxruntime-cpu", "onnxruntime", "onnxruntime-int8"):
        return True, "ONNX Runtime CPU is always available"
    if name == "torch-cpu":
        return (_has("torch"), "PyTorch CPU" if _has("torch") else "PyTorch is not installed")
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def choose_backend(model=None, backend: str = "auto") -> tuple[str, str]:
    """(backend name, one-line reason) for ``model`` (path or shipped name)."""
    from ..model_store import resolve_model

    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = resolve_model(model)
    if path.suffix == ".engine":
        if backend not in ("auto", "tensorrt"):
            raise BackendError(f"{path}: a TensorRT engine runs only on --backend tensorrt "
                               f"(or auto), not {backend}; pass the ONNX model for {backend}")
        ok, why = availability("tensorrt", path)
        if not ok:
            raise BackendError(f"{path}: cannot run a TensorRT engine here: {why}; use the "
                               f"ONNX model with --backend onnxruntime instead")
        return "tensorrt", f"model is a TensorRT engine ({why})"
    if backend != "auto":
        ok, why = availability(backend, path)
        if not ok:
            raise BackendError(f"backend {backend} is not available: {why}")
        return ("onnxruntime-cpu" if backend == "onnxruntime" else backend), why
    skipped = []
    for name in AUTO_ORDER:
        ok, why = availability(name, path)
        if ok:
            reason = why if not skipped else f"{why} (skipped: {'; '.join(skipped)})"
            return name, reason
        skipped.append(f"{name}: {why}")
    raise BackendError("no backend available")  # unreachable: onnxruntime-cpu always is


def open_backend(model=None, backend: str = "auto", threads: int = 0, *,
                 precision: str = "fp16") -> Backend:
    """A backend for ``model`` (path or shipped name); not yet activated. ``precision`` is the
    torch-cuda compute type (fp32 | fp16 | bf16). The choice and its reason are on
    ``backend.choice`` as (name, reason)."""
    from ..model_store import resolve_model

    name, reason = choose_backend(model, backend)
    path = resolve_model(model)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        if path.suffix != ".engine":
            path, _ = _engine_for(path)
        b = TensorRTBackend(path)
    elif name == "torch-cuda":
        from .torch_cuda import TorchBackend

        b = TorchBackend(path, device="cuda", dtype=precision)
    elif name == "torch-cpu":
        from .torch_cuda import TorchBackend

        b = TorchBackend(path, device="cpu", dtype="fp32", threads=threads)
    else:
        from .onnxruntime import OnnxRuntimeBackend

        if name == "onnxruntime-int8":
            path = int8_model_for(path)
        providers = None
        if name == "onnxruntime-gpu":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        b = OnnxRuntimeBackend(path, threads=threads, providers=providers)
        b.name = name
    b.choice = (name, reason)
    return b


def int8_model_for(path: Path) -> Path:
    """The INT8 model of ``path``: itself when already quantized, else ``<stem>.int8.onnx``."""
    if path.name.endswith(".int8.onnx"):
        return path
    q = path.with_name(path.stem + ".int8.onnx")
    if not q.is_file():
        raise BackendError(f"{path}: no INT8 model {q.name} beside it; build one with "
                           f"`unet-deploy build-engine {path} -o {q} --precision int8 "
                           f"--calibration IMAGES`")
    return q


__all__ = ["Backend", "open_backend", "choose_backend", "availability", "BACKENDS",
           "AUTO_ORDER", "cuda_device_count"]
