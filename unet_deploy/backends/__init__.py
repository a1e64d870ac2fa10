"""Inference backends behind one protocol (see ``base.Backend``)."""

from __future__ import annotations

from .base import Backend

BACKENDS = ("auto", "onnxruntime")


def open_backend(model=None, backend: str = "auto", threads: int = 0) -> Backend:
    """A backend for ``model`` (path or shipped name). Not yet activated."""
    from ..model_store import resolve_model
    from .onnxruntime import OnnxRuntimeBackend

    path = resolve_model(model)
    if backend in ("auto", "onnxruntime", "onnxruntime-cpu"):
        return OnnxRuntimeBackend(path, threads=threads)
    from ..errors import BackendError

    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "open_backend", "BACKENDS"]
