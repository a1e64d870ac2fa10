"""Robustness augmentations (issue 13, EM): scale, blur, noise -- labels follow the image, the
paper recipe's random stream is unchanged when they are off."""

import numpy as np

from unet_deploy.train.augment import affine_matrix, blur_and_noise, random_augment, warp


def disc(shape=(101, 101), r=20):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    c = (shape[0] - 1) / 2
    return ((yy - c) ** 2 + (xx - c) ** 2 < r * r).astype(np.uint8)


def test_scale_zooms_about_the_centre():
    lab = disc()
    big = warp(lab, None, None, 0, scale=1.2)
    small = warp(lab, None, None, 0, scale=0.8)
    assert abs(big.sum() / lab.sum() - 1.44) < 0.05
    assert abs(small.sum() / lab.sum() - 0.64) < 0.05
    np.testing.assert_allclose(affine_matrix(0, (False, False), 2.0), np.eye(2) / 2)


def test_labels_follow_the_scaled_image():
    rng = np.random.default_rng(3)
    lab = disc((140, 140), 30).astype(np.uint16)
    image = lab * 100.0 + 10
    for seed in range(5):
        img, l2, _ = random_augment(image, lab, None, np.random.default_rng(seed),
                                    out_shape=(120, 120), label_shape=(80, 80), max_scale=0.2,
                                    gray=False, elastic_sigma=0, max_angle=0)
        fg = img[20:100, 20:100] > 60
        inter = np.logical_and(fg, l2 > 0).sum()
        union = np.logical_or(fg, l2 > 0).sum()
        assert inter / union > 0.95
    del rng


def test_blur_and_noise():
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    np.testing.assert_array_equal(blur_and_noise(img, rng), img)
    assert rng.bit_generator.state == state  # nothing drawn when off
    outs = [blur_and_noise(img, np.random.default_rng(s), blur=2.0, noise=0.1) for s in range(8)]
    assert any(np.abs(np.diff(o[:, 30:34], axis=1)).max() < 0.9 for o in outs)  # blurred edge
    assert any(o[:, :20].std() > 0.01 for o in outs)  # noise


def test_off_by_default_keeps_the_random_stream():
    image = np.random.default_rng(1).random((60, 60)).astype(np.float32)
    lab = disc((60, 60), 15)
    a = random_augment(image, lab, None, np.random.default_rng(7))
    b = random_augment(image, lab, None, np.random.default_rng(7), max_scale=0.0, blur=0.0,
                       noise=0.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_cli_flags_reach_the_training_config(tmp_path):
    """`unet-deploy train --scale-aug/--blur-aug/--noise-aug` set the recipe's robustness
    augmentation (recorded in the checkpoint); out-of-range values are refused (exit 2)."""
    import json

    import pytest
    import tifffile

    torch = pytest.importorskip("torch")
    from typer.testing import CliRunner

    from unet_deploy.cli import app

    for sub in ("img", "lab"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        lab = disc((96, 96), 20 + 5 * i).astype(np.uint16)
        tifffile.imwrite(tmp_path / "img" / f"{i}.tif", (lab * 800 + 100).astype(np.uint16))
        tifffile.imwrite(tmp_path / "lab" / f"{i}.tif", lab)
    args = ["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
            "--out", str(tmp_path / "run"), "--tile", "92", "--steps", "1", "--depth", "2",
            "--base", "2", "--val-every", "1", "--threads", "1", "--scheme", "binary"]
    res = CliRunner().invoke(app, args + ["--scale-aug", "0.2", "--blur-aug", "1.5",
                                          "--noise-aug", "0.05"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"])
    assert (cfg["scale_aug"], cfg["blur_aug"], cfg["noise_aug"]) == (0.2, 1.5, 0.05)
    bad = CliRunner().invoke(app, args + ["--scale-aug", "0.9"])
    assert bad.exit_code == 2 and "--scale-aug" in bad.output
