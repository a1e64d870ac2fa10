"""Shared fixtures: tiny random-weight U-Nets exported to ONNX (needs the dev extra: torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[1] / "examples"


def export_random_unet(path: Path, depth: int = 2, base: int = 4, classes=2, tile: int = 92,
                       in_channels: int = 1, seed: int = 0, padding: str = "valid",
                       norm_mode: str = "percentile") -> Path:
    torch = pytest.importorskip("torch")
    from unet_deploy.export import export_onnx
    from unet_deploy.metadata import ModelInfo, Normalization
    from unet_deploy.train.unet import build_unet

    names = ["background", "foreground", "border"][:classes]
    info = ModelInfo(name=path.stem, depth=depth, base=base, in_channels=in_channels,
                     classes=names, padding=padding, tile=tile,
                     normalization=Normalization(mode=norm_mode),
                     instance_scheme="three_class" if classes == 3 else "binary")
    torch.manual_seed(seed)
    model = build_unet(info)
    # Make the random net's outputs depend strongly on the input, so labels are not one class.
    with torch.no_grad():
        model.head.bias.zero_()
    export_onnx(model, info, path)
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
def tiny3_model(model_dir) -> Path:
    return export_random_unet(model_dir / "tiny3.onnx", classes=3, seed=1)


@pytest.fixture(scope="session")
def rgb_model(model_dir) -> Path:
    return export_random_unet(model_dir / "rgb.onnx", in_channels=3, seed=2)


@pytest.fixture(scope="session")
def real_crop() -> np.ndarray:
    import tifffile

    return tifffile.imread(EXAMPLES / "bbbc039_crop.tif")
