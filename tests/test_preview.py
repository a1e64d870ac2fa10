"""`unet-deploy preview` and `segment --preview`: a small PNG, labels sampled exactly, memory
flat for a big result (bands, not the whole plane)."""

import tracemalloc
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.preview import contours, label_colours, preview_path, render, write_preview

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


def test_render_draws_contours_in_label_colours():
    labels = np.zeros((20, 20), np.int64)
    labels[5:15, 5:15] = 7
    img = np.full((20, 20, 1), 100, np.uint16)
    img[0, 0] = 0
    rgb = render(labels, img)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    edge = contours(labels)
    assert edge[5, 8] and not edge[10, 10] and not edge[0, 0]
    np.testing.assert_array_equal(rgb[5, 8], label_colours(np.array([7]))[0])
    assert len(np.unique(rgb[0:4, 0:4].reshape(-1, 3), axis=0)) <= 2  # gray background
    assert (label_colours(np.array([0]))[0] == 0).all()


def test_preview_of_big_result_is_small_and_memory_flat(tmp_path):
    h, w = 6000, 5000
    labels = np.zeros((h, w), np.uint32)
    for i in range(20):
        labels[i * 300 : i * 300 + 200, 100 : 4900] = i + 1
    result = tmp_path / "big.instances.tif"
    tifffile.imwrite(result, labels, tile=(256, 256), compression="zlib", bigtiff=True)
    del labels
    tracemalloc.start()
    out = write_preview(result, max_side=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out == preview_path(result) == tmp_path / "big.instances.preview.png"
    png = imagecodecs.png_decode(out.read_bytes())
    assert png.shape == (1000, 834, 3)  # stride 6: long side <= 1000
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB for a {h * w * 4 / 1e6:.0f} MB result"
    # object ids are sampled, not averaged: each object keeps one colour inside
    inside = png[2 * 300 // 6 + 10, 2000 // 6]
    np.testing.assert_array_equal(png[2 * 300 // 6 + 15, 3000 // 6], inside)


def test_preview_cli_over_input_and_mismatch(tmp_path):
    img = tifffile.imread(EXAMPLE)
    labels = (img > np.percentile(img, 80)).astype(np.uint8)
    result = tmp_path / "r.labels.tif"
    tifffile.imwrite(result, labels)
    res = runner.invoke(app, ["preview", str(result), "--image", str(EXAMPLE),
                              "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    png = imagecodecs.png_decode((tmp_path / "p.png").read_bytes())
    assert png.shape == img.shape + (3,)
    res = runner.invoke(app, ["preview", str(result), "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 5 and "--overwrite" in res.output
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, img[:50, :50])
    res = runner.invoke(app, ["preview", str(result), "--image", str(small), "-o",
                              str(tmp_path / "q.png")])
    assert res.exit_code == 3 and "pass the image that was segmented" in res.output


def test_segment_preview_writes_png_beside_output(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    res = runner.invoke(app, ["segment", str(EXAMPLE), "-o", str(out), "--model",
                              str(tiny_model), "-q", "--preview"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.preview.png").exists() and "preview" in res.output


def test_probabilities_preview_shows_argmax(tmp_path):
    probs = np.zeros((40, 40, 3), np.float32)
    probs[..., 0] = 1
    probs[10:30, 10:30] = [0, 0, 1]
    result = tmp_path / "p.probabilities.tif"
    tifffile.imwrite(result, probs, photometric="minisblack", planarconfig="contig")
    png = imagecodecs.png_decode(write_preview(result).read_bytes())
    assert png.shape == (40, 40, 3) and png[20, 20].any() and not png[2, 2].any()


@pytest.mark.parametrize("bad", [0, 8])
def test_too_small_max_side_is_a_usage_error(tmp_path, bad):
    res = runner.invoke(app, ["preview", "x.tif", "--max-side", str(bad)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
