"""NaN/Inf pixels (README "NaN and Inf pixels"): the "error" policy refuses them with a count
(float64 values beyond the float32 range count as Inf); the "zero" policy feeds them to the
network as raw value 0 while the normalization percentiles IGNORE them -- computed from the
finite pixels only, not from a zero-filled image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import InputError
from unet_deploy.io import open_image
from unet_deploy.metadata import ModelInfo
from unet_deploy.normalize import (channel_mix, count_nonfinite, nonfinite_mask, preprocess_for,
                                   sample_statistics_input)
from unet_deploy.pipeline import segment_array
from unet_deploy.readers import ArrayReader
from unet_deploy.segmenter import Segmenter

runner = CliRunner()
LOW, HIGH = 1.0, 99.8  # ModelInfo's default percentiles


@pytest.fixture(scope="module")
def holey():
    """(image with 30 % NaN/±Inf pixels, finite mask): values 1000..5000, so ignoring the holes
    gives an offset near 1040 while zero-filling them gives 0."""
    rng = np.random.default_rng(7)
    img = rng.uniform(1000, 5000, (120, 130)).astype(np.float32)
    holes = rng.random(img.shape) < 0.3
    img[holes] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), int(holes.sum()))
    return img, ~holes


def expected_offset_scale(img, finite):
    lo, hi = np.percentile(img[finite].astype(np.float32), [LOW, HIGH])
    return float(lo), 1.0 / float(hi - lo)


def test_zero_policy_percentiles_ignore_nonfinite_array(holey):
    img, finite = holey
    prep = preprocess_for(ArrayReader(img), ModelInfo(), nan_policy="zero")
    offset, scale = expected_offset_scale(img, finite)
    assert prep.offset[0] == pytest.approx(offset, rel=1e-6)
    assert prep.scale[0] == pytest.approx(scale, rel=1e-5)
    # what zero-filling would give (the old, undocumented behaviour) is far away
    zero_filled = preprocess_for(ArrayReader(np.where(finite, img, 0)), ModelInfo())
    assert zero_filled.offset[0] == 0.0 and prep.offset[0] > 1000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [{}, {"compression": "zlib", "rowsperstrip": 16}],
                         ids=["memmap", "compressed"])
def test_zero_policy_percentiles_ignore_nonfinite_tiff(tmp_path, holey, dtype, kwargs):
    img, finite = holey
    img = img.astype(dtype)
    if dtype == np.float64:  # finite in float64, Inf for the float32 network
        img[~finite] = np.where(np.arange((~finite).sum()) % 2, 1e300, -1e300)
    p = tmp_path / "holey.tif"
    tifffile.imwrite(p, img, **kwargs)
    with open_image(p, nan_policy="zero") as src:
        reader = src.plane(0)
        rows = reader.read_rows(0, reader.height)[..., 0]
        np.testing.assert_array_equal(rows[~finite], 0)  # fed to the network as 0
        np.testing.assert_array_equal(rows[finite], img[finite])
        prep = preprocess_for(reader, ModelInfo(), str(p))
    offset, scale = expected_offset_scale(img, finite)
    assert prep.offset[0] == pytest.approx(offset, rel=1e-6)
    assert prep.scale[0] == pytest.approx(scale, rel=1e-5)
    with open_image(p) as src, pytest.raises(InputError, match=f"{(~finite).sum()} NaN/Inf"):
        preprocess_for(src.plane(0), ModelInfo(), str(p))


def test_float64_beyond_float32_counts_as_inf():
    img = np.full((40, 50), 100.0)
    img[3, 4] = 1e300
    img[5, 6] = -3.5e38  # just beyond float32's max (3.4028e38)
    img[7, 8] = 3.4e38  # still finite in float32
    img[9, 10] = float(np.finfo(np.float32).max)  # exactly the largest float32: finite
    assert count_nonfinite(ArrayReader(img)) == 2
    assert nonfinite_mask(img).sum() == 2 and not nonfinite_mask(np.arange(5)).any()
    with pytest.raises(InputError, match=r"2 NaN/Inf pixel\(s\)"):
        preprocess_for(ArrayReader(img), ModelInfo())


def test_statistics_input_excludes_pixels_whose_fed_channels_are_nonfinite():
    sample = np.ones((2, 3, 4), np.float32)
    sample[0, 0, 0] = np.nan  # R: feeds luminance
    sample[0, 1, 3] = np.inf  # alpha: weight 0, does not feed luminance
    mixed = sample_statistics_input(sample, channel_mix(4, 1))
    assert np.isnan(mixed[0, 0, 0]) and np.isfinite(mixed[0, 0, 1])
    assert np.isfinite(mixed).sum() == 5
    np.testing.assert_allclose(mixed[0, 0, 1], 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def reference(tiny_model, holey, nan_zero_reference):
    """Labels the README promises for the holey image (``conftest.nan_zero_reference``); they
    must differ from the zero-filled image's labels, else the test could not tell the two
    behaviours apart."""
    img, finite = holey
    want = nan_zero_reference(tiny_model, img)
    naive = segment_array(np.where(finite, img, 0).astype(np.float32), tiny_model)
    assert (want != naive).mean() > 0.01
    return want


def test_segmenter_zero_policy_end_to_end(tiny_model, holey, reference):
    img, _ = holey
    before = img.copy()
    with Segmenter(tiny_model, nan_policy="zero", warmup=False) as seg:
        np.testing.assert_array_equal(seg(img), reference)
    np.testing.assert_array_equal(img, before)  # the caller's frame is not modified


def test_cli_zero_policy_end_to_end(tmp_path, tiny_model, holey, reference):
    img, _ = holey
    for kwargs in ({}, {"compression": "zlib", "rowsperstrip": 16}):
        p = tmp_path / "holey.tif"
        tifffile.imwrite(p, img, **kwargs)
        out = tmp_path / "holey.labels.tif"
        res = runner.invoke(app, ["segment", str(p), "-o", str(out), "--model", str(tiny_model),
                                  "--nan-policy", "zero", "-q", "--overwrite"])
        assert res.exit_code == 0, res.output
        np.testing.assert_array_equal(tifffile.imread(out), reference)
