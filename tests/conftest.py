"""Shared fixtures: tiny random-weight U-Nets exported to ONNX (needs the dev extra: torch)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[1] / "examples"


def export_random_unet(path: Path, **kw) -> Path:
    """``unet_deploy.testing.random_unet_onnx``, skipping the test where torch is missing.

    With ``UNET_DEPLOY_TEST_MODEL_CACHE`` set (the mutation runs, ``tests/mutation.md``), a model
    exported once is copied from that folder (the factory is a pure function of its
    arguments), saving the export in each of the many short test runs."""
    cache = os.environ.get("UNET_DEPLOY_TEST_MODEL_CACHE")
    if cache:
        key = hashlib.sha256(repr((path.name, sorted(kw.items()))).encode()).hexdigest()[:16]
        cached = Path(cache) / f"{path.stem}-{key}.onnx"
        if cached.is_file():
            shutil.copyfile(cached, path)
            return path
    pytest.importorskip("torch")
    from unet_deploy.testing import random_unet_onnx

    random_unet_onnx(path, **kw)
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
    return path


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
def local_watershed_model(model_dir, tiny_model, real_crop) -> Path:
    """tiny_model with the EM watershed's local case (h 0, min distance 1 px: what
    em-membranes ships), its threshold at the median membrane probability of the example crop
    so the random net gives many cells."""
    from unet_deploy.export import update_metadata
    from unet_deploy.pipeline import segment_array

    path = model_dir / "local_ws.onnx"
    shutil.copyfile(tiny_model, path)
    probs = segment_array(real_crop, path, backend="onnxruntime", output="probabilities")
    update_metadata(path, binary_method="watershed", watershed_h=0.0, watershed_min_distance=1.0,
                    foreground_threshold=float(np.median(probs[..., 0])), min_object_size=3)
    return path


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


def _blob_image(seed: int, hot: bool = False) -> np.ndarray:
    """Smooth blobs (0..4000, uint16) with noise. ``hot``: 10x dimmer with 0.1 % saturated hot
    pixels (65535), which stretch the MinMax activation ranges of an INT8 calibration: a
    realistic INT8 failure (``decisive_model`` measures ~93 % label agreement on them)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    im = ndi.gaussian_filter(rng.random((200, 260)), 6)
    im = (im / im.max() * 4000 + rng.normal(0, 50, im.shape)).clip(0).astype(np.uint16)
    if hot:
        im //= 10
        im[np.random.default_rng(10 + seed).random(im.shape) < 0.001] = 65535
    return im


@pytest.fixture(scope="session")
def make_blob_image():
    return _blob_image


@pytest.fixture(scope="session")
def blob_images() -> list:
    return [_blob_image(s) for s in range(3)]


@pytest.fixture(scope="session")
def hot_blob_images() -> list:
    return [_blob_image(s, hot=True) for s in range(3)]


@pytest.fixture(scope="session")
def decisive_model(model_dir) -> Path:
    """A random net with mixed, decisive labels on ``blob_images`` (~12 % foreground): its CPU
    INT8 build measures ~99.7 % label agreement there on an AVX2-only CPU (~99.9 % with VNNI;
    passes the 99.5 % gate) and ~93 % on ``hot_blob_images`` (fails it): the gate decides by
    measurement."""
    return export_random_unet(model_dir / "decisive.onnx", seed=3, instance_scheme="none",
                              head_gain=16, bias_range=0.5)
