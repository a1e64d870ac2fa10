"""`train --init`: fine-tuning starts from a model's weights (ONNX, checkpoint or shipped name),
takes its architecture and metadata, and re-initialises only the head when classes differ."""

import json

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")

from unet_deploy.errors import InputError  # noqa: E402
from unet_deploy.train.trainer import TrainConfig, init_from, model_info, train  # noqa: E402
from unet_deploy.train.unet import build_unet  # noqa: E402


def discs(rng, shape=(96, 120), n=6):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(36, 100)] = i
    image = (labels > 0) * 800 + rng.normal(200, 30, shape)
    return image.astype(np.uint16), labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_data")
    (root / "img").mkdir()
    (root / "lab").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        img, lab = discs(rng)
        tifffile.imwrite(root / "img" / f"{i}.tif", img)
        tifffile.imwrite(root / "lab" / f"{i}.tif", lab)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A depth-2 base-3 three-class model with tuned post-processing in its metadata."""
    from unet_deploy.export import update_metadata
    from unet_deploy.testing import random_unet_onnx

    path = random_unet_onnx(tmp_path_factory.mktemp("init_src") / "src.onnx", depth=2, base=3,
                            classes=3, seed=5, bias_range=0.1)
    update_metadata(path, seed_threshold=0.65, min_object_size=7, tta="flips")
    return path


def config(dataset, out, **kw):
    base = dict(images=str(dataset / "img"), labels=str(dataset / "lab"), out=str(out),
                name="ft", depth=4, base=16, tile=92, steps=2, val_every=2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def forward(model, x):
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), 1).numpy()


def test_init_from_onnx_keeps_weights_and_metadata(dataset, source, tmp_path):
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend

    cfg = config(dataset, tmp_path / "a", init=str(source))
    state, info, note = init_from(cfg, model_info(cfg))
    assert (cfg.depth, cfg.base, info.depth, info.base) == (2, 3, 2, 3)  # from the model
    assert info.seed_threshold == 0.65 and info.min_object_size == 7 and info.tta == "flips"
    assert "all weights" in note
    model = build_unet(info)
    model.load_state_dict(state)
    x = np.random.default_rng(0).random((1, 1, 92, 92), np.float32)
    with OnnxRuntimeBackend(source, threads=1) as be:
        np.testing.assert_allclose(forward(model, x), be.infer(x), atol=1e-5)


def test_head_reinitialised_when_classes_differ(dataset, source, tmp_path):
    cfg = config(dataset, tmp_path / "b", init=str(source), scheme="binary")
    state, info, note = init_from(cfg, model_info(cfg))
    assert "head is re-initialised" in note and "background/foreground/border" in note
    assert info.classes == ["background", "foreground"] and info.instance_scheme == "binary"
    assert not any(k.startswith("head.") for k in state)
    model = build_unet(info)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected


def test_train_with_init_runs_and_exports(dataset, source, tmp_path):
    from unet_deploy.model_store import read_onnx

    res = train(config(dataset, tmp_path / "c", init=str(source)), progress=False)
    info = read_onnx(res["onnx"]).info
    assert (info.depth, info.base, info.min_object_size) == (2, 3, 7)
    log = [json.loads(x) for x in open(tmp_path / "c" / "train_log.jsonl")]
    assert log[0]["init"] == str(source) and "all weights" in log[0]["note"]
    # from a training checkpoint (.pt) as well
    res2 = train(config(dataset, tmp_path / "d", init=str(tmp_path / "c" / "best.pt")),
                 progress=False)
    assert read_onnx(res2["onnx"]).info.base == 3


def test_init_errors(dataset, source, tmp_path):
    from unet_deploy.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        init_from(cfg := config(dataset, tmp_path / "e", init="no-such-model"), model_info(cfg))
    with pytest.raises(InputError, match="not a legal input size"):
        cfg = config(dataset, tmp_path / "f", init=str(source), tile=93)
        init_from(cfg, model_info(cfg))


def test_cli_train_init(dataset, source, tmp_path):
    from typer.testing import CliRunner

    from unet_deploy.cli import app

    res = CliRunner().invoke(app, ["train", "--images", str(dataset / "img"), "--labels",
                                   str(dataset / "lab"), "--out", str(tmp_path / "cli"),
                                   "--tile", "92", "--steps", "1", "--val-every", "1",
                                   "--threads", "1", "--init", str(source), "--scheme",
                                   "binary"])
    assert res.exit_code == 0, res.output
    assert "head is re-initialised" in res.output
