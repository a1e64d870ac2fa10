"""A few steps of real training on synthetic touching discs (CI never trains a full model)."""

import json

import numpy as np
import pytest
import tifffile

torch = pytest.importorskip("torch")

from unet_deploy.export import load_checkpoint  # noqa: E402
from unet_deploy.export import load_training_checkpoint as load_unet  # noqa: E402
from unet_deploy.train.trainer import TrainConfig, train  # noqa: E402


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
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    (root / "lab").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        img, lab = discs(rng)
        tifffile.imwrite(root / "img" / f"{i}.tif", img)
        tifffile.imwrite(root / "lab" / f"{i}.tif", lab)
    return root


def config(dataset, out, **kw):
    base = dict(images=str(dataset / "img"), labels=str(dataset / "lab"), out=str(out),
                name="t", depth=2, base=4, tile=92, steps=6, val_every=3, val_fraction=0.2,
                threads=1, optimizer="adam", lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_train_resume_export(dataset, tmp_path):
    res = train(config(dataset, tmp_path / "run"), progress=False)
    assert res["onnx"].endswith("t.onnx") and "f1@0.5" in res["metrics"]
    ck = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True
    assert ck["step"] == 6
    # resume: continue to 9 steps from step 6
    res2 = train(config(dataset, tmp_path / "run", steps=9), progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 9
    log = [json.loads(x) for x in open(tmp_path / "run" / "train_log.jsonl")]
    assert [e["step"] for e in log] == [3, 6, 9]
    model, info = load_unet(tmp_path / "run" / "best.pt")
    assert info.instance_scheme == "three_class" and info.classes[2] == "border"
    # the exported model segments with the deployment path
    from unet_deploy.pipeline import segment_array

    labels = segment_array(tifffile.imread(dataset / "img" / "0.tif"), res2["onnx"])
    assert labels.shape == (96, 120) and labels.max() <= 2


def test_same_seed_same_losses(dataset, tmp_path):
    for name in ("a", "b"):
        train(config(dataset, tmp_path / name, steps=4, val_every=2, dropout=0.0), progress=False)
    la = [json.loads(x)["loss"] for x in open(tmp_path / "a" / "train_log.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "b" / "train_log.jsonl")]
    assert la == lb


def test_learns_something(dataset, tmp_path):
    """An easy task is learnt in 60 steps: validation foreground IoU rises above 0.8."""
    train(config(dataset, tmp_path / "r", steps=60, val_every=20, lr=3e-3, scheme="binary",
                 base=8, dropout=0.0), progress=False)
    log = [json.loads(x) for x in open(tmp_path / "r" / "train_log.jsonl")]
    assert log[0]["fg_iou"] < log[-1]["fg_iou"] and log[-1]["fg_iou"] > 0.8
