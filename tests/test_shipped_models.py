"""The shipped models load, describe themselves, and segment real data sensibly."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.metrics import instance_f1
from unet_deploy.model_store import DEFAULT_MODEL, read_onnx, resolve_model, shipped_models
from unet_deploy.pipeline import segment_array

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "models"


def test_default_model_is_nuclei_and_shipped():
    assert DEFAULT_MODEL == "nuclei"
    assert resolve_model(None) == shipped_models()["nuclei"]


@pytest.mark.parametrize("name", sorted(p.stem for p in MODELS.glob("*.onnx")))
def test_model_has_card_and_metadata(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 20e6
    card = (MODELS / f"{name}.md").read_text()
    assert "Reproduce" in card and "licence" in card and "Validation metrics" in card
    info = read_onnx(path).info
    assert info.padding == "valid" and info.geometry.is_legal(info.tile)
    assert len(info.sha256) == 64


@pytest.mark.parametrize("name", sorted(p.stem for p in MODELS.glob("*.onnx")))
def test_card_postprocessing_is_what_ships(name):
    """The card's JSON records the TTA mode and post-processing the metrics were measured with;
    the model's metadata (what `segment` uses by default) must hold exactly those, and the
    card's weights hash must be the file's."""
    import json

    card = json.loads((MODELS / f"{name}.json").read_text())
    info = read_onnx(MODELS / f"{name}.onnx").info
    wanted = card["postprocessing"]
    assert {key: getattr(info, key) for key in wanted} == wanted
    assert card["sha256"] == info.sha256


def test_models_command_lists_cards():
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0 and "nuclei (default)" in res.output and "card:" in res.output


def test_nuclei_on_the_example_crop():
    """README main job, checked against the crop's expert instance mask (the crop comes from
    a training image: a sanity check of the shipped file, not a validation figure)."""
    image = tifffile.imread(ROOT / "examples" / "bbbc039_crop.tif")
    truth = tifffile.imread(Path(__file__).parent / "data" / "bbbc039_crop_mask.tif")
    pred = segment_array(image, output="instances")
    assert instance_f1(truth, pred)[0.5] > 0.85
    labels = segment_array(image)
    assert ((labels > 0) == (truth > 0)).mean() > 0.95
