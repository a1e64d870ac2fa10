"""Shared fixtures: tiny random-weight U-Nets exported to ONNX (needs the dev extra: torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[1] / "examples"


def export_random_unet(path: Path, **kw) -> Path:
    """``unet_deploy.testing.random_unet_onnx``, skipping the test where torch is missing."""
    pytest.importorskip("torch")
    from unet_deploy.testing import random_unet_onnx

    return random_unet_onnx(path, **kw)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir) -> Path:
    """depth 2, base 4, valid, 2 classes, default tile 92 (output 52, halo 20)."""
    return export_random_unet(model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def deep_models(model_dir) -> dict:
    """depth 3 and depth 4 nets: their output sides are not multiples of 2**depth, the case
    where tiles must step by a multiple of 2**depth to stay seamless."""
    return {3: export_random_unet(model_dir / "d3.onnx", depth=3, base=2, tile=124, seed=3),
            4: export_random_unet(model_dir / "d4.onnx", depth=4, base=2, tile=220, seed=4)}


@pytest.fixture(scope="session")
def tiny3_model(model_dir) -> Path:
    return export_random_unet(model_dir / "tiny3.onnx", classes=3, seed=1)


@pytest.fixture(scope="session")
def rgb_model(model_dir) -> Path:
    return export_random_unet(model_dir / "rgb.onnx", in_channels=3, seed=2)


@pytest.fixture(scope="session")
def real_crop() -> np.ndarray:
    import tifffile

    return tifffile.imread(EXAMPLES / "bbbc039_crop.tif")


@pytest.fixture(scope="session")
def nan_zero_reference():
    return _nan_zero_reference


def _nan_zero_reference(model, image: np.ndarray) -> np.ndarray:
    """Labels the README promises for ``--nan-policy zero``: NaN/Inf pixels fed to the network as
    raw value 0, the normalization percentiles taken from the finite pixels only (computed here
    with np.percentile on the whole image, independently of ``normalize``)."""
    from unet_deploy.backends import open_backend
    from unet_deploy.normalize import Preprocess
    from unet_deploy.pipeline import plane_bands
    from unet_deploy.readers import ArrayReader
    from unet_deploy.tiling import plan_tiles

    finite = np.isfinite(image.astype(np.float32))
    filled = np.where(finite, image, 0).astype(np.float32)
    with open_backend(model, "onnxruntime-cpu") as be:
        norm = be.info.normalization
        lo, hi = np.percentile(image[finite].astype(np.float32), [norm.low, norm.high])
        prep = Preprocess(np.ones((1, 1), np.float32), np.array([lo], np.float32),
                          np.array([1.0 / (hi - lo)], np.float32))
        plan = plan_tiles(*image.shape[:2], be.info.geometry, be.info.tile)
        return np.concatenate(list(plane_bands(ArrayReader(filled), plan, be, prep)))
