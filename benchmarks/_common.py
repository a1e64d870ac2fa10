"""Helpers shared by the Segmenter benchmarks (soak, latency)."""

from __future__ import annotations

import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def resolve_or_export(model: str | None, folder: Path, depth: int = 4, base: int = 16,
                      tile: int = 572) -> tuple[Path, str]:
    """(model path, description): ``model`` if given; else the shipped ``nuclei`` if present;
    else a random-weight U-Net of the given size exported on the fly (needs torch)."""
    from unet_deploy.errors import ModelNotFoundError
    from unet_deploy.model_store import resolve_model

    if model:
        return resolve_model(model), str(model)
    try:
        return resolve_model("nuclei"), "nuclei (shipped)"
    except ModelNotFoundError:
        pass
    for candidate in (ROOT / "models" / "nuclei.onnx",):
        if candidate.exists():
            return candidate, "nuclei (models/nuclei.onnx)"
    from unet_deploy.testing import random_unet_onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"random_d{depth}_b{base}_t{tile}.onnx"
    if not path.exists():
        random_unet_onnx(path, depth=depth, base=base, tile=tile)
    return path, f"random weights, depth {depth}, base {base}, tile {tile} (nuclei not present)"


def machine() -> str:
    import os

    import onnxruntime

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def publish(lines: list[str], name: str, write: bool = True) -> str:
    """Print a results table and, unless ``write`` is off, save it as results/``name``."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / name).write_text(text)
    return text
