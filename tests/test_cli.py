import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import EXIT_CODES
from unet_deploy.pipeline import segment_array

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_segment_labels_matches_library(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    before = digest(EXAMPLE)
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q")
    assert res.exit_code == 0, res.output
    assert "Mpx/s" in res.output and "tiles" in res.output
    labels = tifffile.imread(out)
    expected = segment_array(tifffile.imread(EXAMPLE), tiny_model)
    np.testing.assert_array_equal(labels, expected)
    assert digest(EXAMPLE) == before
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].compression != 1


def test_refuses_existing_output_then_overwrites(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q")
    assert res.exit_code == 5 and "--overwrite" in res.output
    assert out.read_bytes() == b"old"
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q", "--overwrite")
    assert res.exit_code == 0 and tifffile.imread(out).shape == (320, 384)


def test_probabilities_and_batch_tile_options(tiny_model, tmp_path):
    out = tmp_path / "p.tif"
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q",
              "--output", "probabilities", "--batch-size", "3", "--tile", "140")
    assert res.exit_code == 0, res.output
    probs = tifffile.imread(out)
    assert probs.shape == (320, 384, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


def test_stack_keeps_axes(tiny_model, tmp_path):
    stack = np.stack([tifffile.imread(EXAMPLE)[:100, :120]] * 3)
    stack[1] = stack[1][::-1]
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, compression="zlib", photometric="minisblack")
    res = run("segment", src, "--model", tiny_model, "-q")
    assert res.exit_code == 0, res.output
    labels = tifffile.imread(tmp_path / "stack.labels.tif")
    assert labels.shape == (3, 100, 120)
    for i in range(3):
        np.testing.assert_array_equal(labels[i], segment_array(stack[i], tiny_model))


def test_rgb_input_is_converted(tiny_model, rgb_model, tmp_path):
    gray = tifffile.imread(EXAMPLE)[:64, :80]
    rgb = np.stack([gray] * 3, -1).astype(np.uint16)
    src = tmp_path / "input_rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    for model in (tiny_model, rgb_model):
        out = tmp_path / f"{model.stem}.tif"
        assert run("segment", src, "-o", out, "--model", model, "-q").exit_code == 0
    # gray model on RGB of equal channels == gray model on the gray image (luma weights sum 1)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "tiny.tif"),
                                  segment_array(gray, tiny_model))


@pytest.mark.parametrize("args,code,text", [
    (["segment", "missing.tif"], 2, "not found"),
    (["segment", EXAMPLE, "--model", "no-such-model"], 4, "not a file and not a shipped model"),
])
def test_errors_are_one_line_with_exit_codes(tmp_path, args, code, text):
    res = run(*args)
    assert res.exit_code == code
    assert text in res.output and len(res.output.strip().splitlines()) == 1
    assert code in EXIT_CODES


def test_not_a_tiff(tmp_path, tiny_model):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"hello, not a tiff" * 10)
    res = run("segment", bad, "--model", tiny_model, "-q")
    assert res.exit_code == 3 and str(bad) in res.output
    assert not (tmp_path / "bad.labels.tif").exists()


def test_evaluate_prints_metrics(tiny3_model):
    mask = Path(__file__).parent / "data" / "bbbc039_crop_mask.tif"
    res = run("evaluate", "--model", tiny3_model, "--images", EXAMPLE, "--labels", mask)
    assert res.exit_code == 0, res.output
    assert "f1@0.5" in res.output and "rand_error" in res.output
