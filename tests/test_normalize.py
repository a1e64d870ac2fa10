"""normalize.py on its own: sampling strides, percentile normalization and its edge cases,
channel mixing, and the band-by-band sample of a memory-mapped plane. Each checked against
plain NumPy, not against the module."""

from __future__ import annotations

import numpy as np
import pytest

from unet_deploy.errors import InputError
from unet_deploy.metadata import ModelInfo, Normalization
from unet_deploy.normalize import (MAX_SAMPLE, channel_mix, image_offset_scale,
                                   offset_scale, plane_sample, preprocess_for, sample_rows)
from unet_deploy.readers import ArrayReader


@pytest.mark.parametrize("h,w", [(1, 1), (100, 130), (1999, 1999), (2000, 2000), (2001, 1999),
                                 (3999, 3999), (20000, 20000), (3, 40_000_000)])
def test_sample_stride_is_the_smallest_that_fits(h, w):
    sy, sx = sample_rows(h, w)
    assert sy == sx >= 1

    def size(s):
        return (h // s + 1) * (w // s + 1)

    assert size(sy) <= MAX_SAMPLE
    assert sy == 1 or size(sy - 1) > MAX_SAMPLE


def test_percentiles_and_degenerate_samples():
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 5000, 10_000).astype(np.float32)
    norm = Normalization()
    lo, hi = np.percentile(x, [norm.low, norm.high])
    assert offset_scale(x, norm) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)
    u16 = x.astype(np.uint16)  # integer samples are used as they are
    lo, hi = np.percentile(u16, [norm.low, norm.high])
    assert offset_scale(u16, norm) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)
    assert offset_scale(np.full(50, 7.0), norm) == (7.0, 1.0)  # constant: no division by 0
    assert offset_scale(np.full(50, np.nan), norm) == (0.0, 1.0)  # nothing finite
    x[::3] = np.nan
    lo, hi = np.percentile(x[np.isfinite(x)], [norm.low, norm.high])
    assert offset_scale(x, norm) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)
    small = rng.uniform(0.0, 0.5, 10_000)  # a span below 1 is still divided by
    lo, hi = np.percentile(small, [norm.low, norm.high])
    assert offset_scale(small, norm) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)
    fixed = Normalization(mode="fixed", offset=12.5, scale=0.25)
    assert offset_scale(x, fixed) == (12.5, 0.25)
    custom = Normalization(low=10.0, high=90.0)
    lo, hi = np.percentile(x[np.isfinite(x)], [10.0, 90.0])
    assert offset_scale(x, custom) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)


def test_training_and_inference_use_the_same_statistics():
    """image_offset_scale (training) equals what preprocess_for (inference) computes, also
    for an image large enough to be sampled with a stride."""
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 4000, (4100, 1100)).astype(np.float32)  # tall: strides differ per axis
    sy = sample_rows(*img.shape)[0]
    assert sy > 1 and sample_rows(img.shape[1], img.shape[1])[0] == 1
    norm = ModelInfo().normalization
    lo, hi = np.percentile(img[::sy, ::sy], [norm.low, norm.high])
    offset, scale = image_offset_scale(img, norm)
    assert (offset, scale) == pytest.approx((lo, 1 / (hi - lo)), rel=1e-6)
    prep = preprocess_for(ArrayReader(img), ModelInfo())
    assert prep.offset[0] == pytest.approx(offset) and prep.scale[0] == pytest.approx(scale)


def test_channel_mix():
    np.testing.assert_array_equal(channel_mix(1, 1), [[1.0]])
    np.testing.assert_array_equal(channel_mix(3, 3), np.eye(3))
    np.testing.assert_array_equal(channel_mix(3, 1), np.float32([[0.299, 0.587, 0.114]]))
    np.testing.assert_allclose(channel_mix(3, 1).sum(), 1.0, rtol=1e-6)  # gray stays gray
    np.testing.assert_array_equal(channel_mix(4, 1), np.float32([[0.299, 0.587, 0.114, 0]]))  # no alpha
    np.testing.assert_array_equal(channel_mix(1, 3), np.ones((3, 1)))
    for src, model in ((2, 1), (2, 3), (5, 1), (4, 3)):
        with pytest.raises(InputError, match=f"has {src} channels but the model takes {model}"):
            channel_mix(src, model, "img.tif")


def test_memmap_sample_equals_the_strided_array(tmp_path):
    """A memory-mapped plane is sampled band by band (pages released as it goes): the same
    pixels as striding the whole array."""
    from unet_deploy.normalize import SAMPLE_BAND

    h, w = 2600, 1700  # > MAX_SAMPLE pixels: stride 2; several bands of SAMPLE_BAND * 2 rows
    data = np.random.default_rng(2).integers(0, 255, (h, w, 1)).astype(np.uint8)
    mm = np.memmap(tmp_path / "plane.raw", np.uint8, "w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    reader = ArrayReader(data)
    reader.array = np.memmap(tmp_path / "plane.raw", np.uint8, "r", shape=data.shape)
    sy, sx = sample_rows(h, w)
    assert sy == 2 and h > SAMPLE_BAND * sy
    got = plane_sample(reader)
    np.testing.assert_array_equal(got, data[::sy, ::sx])
    assert not isinstance(got, np.memmap)


def _mapped_file_mb() -> float:
    """File-backed resident memory of this process (RssFile), MB: pages of a memory-mapped
    input count here while they stay mapped."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status (Linux only)")


def test_sampling_and_counting_a_mapped_plane_release_its_pages(tmp_path):
    """README: memory stays flat. Sampling a memory-mapped plane for the percentiles and
    counting its NaNs read it band by band and release each band's pages, so a 128 MB input
    does not stay resident."""
    from unet_deploy.normalize import count_nonfinite

    h, w = 4096, 8192  # float32: 128 MB; sampled with stride 3
    mm = np.memmap(tmp_path / "plane.raw", np.float32, "w+", shape=(h, w, 1))
    mm[:] = 1.0
    mm[::97, ::89] = np.nan
    mm.flush()
    del mm
    array = np.memmap(tmp_path / "plane.raw", np.float32, "r", shape=(h, w, 1))
    reader = ArrayReader(array)
    assert reader.array is array
    before = _mapped_file_mb()
    sample = plane_sample(reader)
    assert np.isnan(sample).sum() == len(range(0, h, 97 * 3)) * len(range(0, w, 89 * 3))
    after_sample = _mapped_file_mb()  # the sample read (not a view into the mapping)
    assert count_nonfinite(reader) == len(range(0, h, 97)) * len(range(0, w, 89))
    after_count = _mapped_file_mb()
    assert sample.shape == (len(range(0, h, 3)), len(range(0, w, 3)), 1)
    assert after_sample - before < 24, f"sampling left {after_sample - before:.0f} MB mapped"
    assert after_count - before < 24, f"counting left {after_count - before:.0f} MB mapped"
