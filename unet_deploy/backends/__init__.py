"""Inference backends behind one protocol (see ``base.Backend``), and their selection.

``--backend auto`` tries, in order, tensorrt > onnxruntime-gpu > torch-cuda > onnxruntime-cpu
and says which it chose and why (``choose_backend``). Availability checks are cheap: module
specs and a ``libcuda`` device count through ctypes; nothing heavy is imported until a backend
is really opened. TensorRT is only chosen for an ONNX model when a matching engine already
exists (``<model>.engine`` beside it or in the engine cache); engines are never built
implicitly. A model path ending in ``.engine`` always means TensorRT.

Own runtimes plug in by name: ``register_backend(name, factory)`` (or an installed package's
``unet_deploy.backends`` entry point, looked up only when an unknown name is asked for), and
then ``backend=name`` works in ``segment_file``, ``segment_array`` and ``Segmenter``, and
``--backend name`` in the CLI. ``auto`` never picks a registered backend.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
import threading
from pathlib import Path
from typing import Callable

from ..errors import BackendError, ModelError
from .base import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime-gpu", "torch-cuda", "onnxruntime-cpu",
            "onnxruntime", "onnxruntime-int8", "torch-cpu")
AUTO_ORDER = ("tensorrt", "onnxruntime-gpu", "torch-cuda", "onnxruntime-cpu")
ENTRY_POINT_GROUP = "unet_deploy.backends"


# ------------------------------------------------------------------ the registry

_registry: dict[str, Callable[..., Backend]] = {}
_registry_lock = threading.Lock()


def register_backend(name: str, factory: Callable[..., Backend], *,
                     replace: bool = False) -> None:
    """Make ``name`` a backend: ``factory(model_path, threads)`` is called with the resolved
    model file (``pathlib.Path``) and the CPU thread count (0 = all), and returns a ``Backend``
    (not yet activated; subclass ``backends.base.Backend`` and implement ``_activate`` and
    ``_infer``, optionally ``_infer_labels``). Built-in names cannot be taken; registering a
    name twice needs ``replace=True``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"backend name {name!r}: use letters, digits and . _ + - only")
    if name in BACKENDS:
        raise ValueError(f"backend name {name!r} is built in; choose another name")
    if not callable(factory):
        raise TypeError(f"register_backend({name!r}, ...): factory must be callable")
    with _registry_lock:
        if name in _registry and not replace:
            raise ValueError(f"backend {name!r} is already registered; pass replace=True to "
                             f"replace it")
        _registry[name] = factory


def unregister_backend(name: str) -> None:
    """Remove a registered backend (no error when it is not registered)."""
    with _registry_lock:
        _registry.pop(name, None)


def registered_backends() -> tuple[str, ...]:
    with _registry_lock:
        return tuple(sorted(_registry))


def _registered(name: str) -> Callable[..., Backend] | None:
    """The factory for ``name``: registered in this process, else an installed package's
    entry point (loaded and registered on first use)."""
    with _registry_lock:
        factory = _registry.get(name)
    if factory is not None or name in BACKENDS:
        return factory
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                factory = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin: say which and why
                raise BackendError(f"backend {name!r} (entry point {ep.value}) cannot be "
                                   f"loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                                   f"reinstall the package that provides it") from exc
            with _registry_lock:
                _registry.setdefault(name, factory)
            return factory
    return None


def _unknown(backend: str) -> BackendError:
    names = list(BACKENDS) + list(registered_backends())
    return BackendError(f"unknown backend {backend!r}; choose one of {', '.join(names)} (or "
                        f"register your own with unet_deploy.backends.register_backend)")


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
    # Every candidate is tried: a stale engine beside the model must not hide a valid one in
    # the cache (or the other way round).
    unusable = []
    for cand in candidates:
        if cand.is_file():
            try:
                E.check_manifest(E.read_manifest(cand), cand, env, onnx_path=model)
                return cand, f"engine {cand} matches this GPU and TensorRT"
            except ModelError as exc:
                unusable.append(f"engine {cand} not usable: {exc}")
    if unusable:
        return None, "; ".join(unusable)
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
    if _registered(name) is not None:
        return True, "registered backend"
    raise _unknown(name)


def choose_backend(model=None, backend: str = "auto") -> tuple[str, str]:
    """(backend name, one-line reason) for ``model`` (path or shipped name)."""
    from ..model_store import resolve_model

    if backend not in BACKENDS:
        if _registered(backend) is None:
            raise _unknown(backend)
        return backend, "registered backend"
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
    factory = _registered(name) if name not in BACKENDS else None
    if factory is not None:
        try:
            b = factory(path, threads)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - someone else's code: one line, their name
            raise BackendError(f"registered backend {name!r} failed to open {path.name}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")\
                from exc
        if not isinstance(b, Backend):
            raise BackendError(f"registered backend {name!r} returned {type(b).__name__}, not "
                               f"a unet_deploy.backends.base.Backend; subclass Backend")
        b.choice = (name, reason)
        return b
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
           "AUTO_ORDER", "cuda_device_count", "register_backend", "unregister_backend",
           "registered_backends"]
