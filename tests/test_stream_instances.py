"""Streaming instances (stream_instances.InstanceStream) give the whole-plane result exactly,
up to renumbering, for any band heights -- or a one-line ObjectTooLargeError, never a
different answer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet_deploy.errors import InputError, ObjectTooLargeError
from unet_deploy.instances import instances_from_binary, instances_from_three_class, same_objects
from unet_deploy.stream_instances import InstanceStream


def _stream(classes, band_heights, scheme="three_class", min_size=0, max_object=512):
    h, w = classes.shape
    stream = InstanceStream(h, w, scheme, 3, min_size, max_object=max_object)
    out, y, k = [], 0, 0
    while y < h:
        step = band_heights[k % len(band_heights)]
        out += list(stream.push(classes[y : y + step]))
        y, k = y + step, k + 1
    stream.finish()
    return np.concatenate(out) if out else np.zeros((0, w), np.uint32)


def _whole(classes, scheme, min_size):
    if scheme == "three_class":
        return instances_from_three_class(classes, min_size=min_size)
    return instances_from_binary(classes == 2, min_size=min_size)


def _check(classes, bands, scheme, min_size, max_object):
    whole = _whole(classes, scheme, min_size)
    got = _stream(classes, bands, scheme, min_size, max_object)
    assert got.dtype == np.uint32 and got.shape == classes.shape
    assert same_objects(whole, got)
    n = int(whole.max())
    assert set(np.unique(got[got > 0]).tolist()) == set(range(1, n + 1))  # sequential ids


@st.composite
def class_maps(draw):
    h = draw(st.integers(1, 28))
    w = draw(st.integers(1, 28))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # noise: many odd, merged and diagonal shapes
        p = rng.dirichlet([1, 1, 1])
        return rng.choice(3, size=(h, w), p=p).astype(np.uint8)
    # blobs: smooth field thresholded into interior cores inside border rims
    field = ndimage.gaussian_filter(rng.random((h, w)), draw(st.floats(0.5, 3.0)))
    lo, hi = np.sort(np.quantile(field, rng.uniform(0.2, 0.9, 2)))
    return np.where(field > hi, 1, np.where(field > lo, 2, 0)).astype(np.uint8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(class_maps(), st.lists(st.integers(1, 9), min_size=1, max_size=3),
       st.sampled_from(["three_class", "binary"]), st.integers(0, 5))
def test_stream_equals_whole_plane(classes, bands, scheme, min_size):
    # max_object >= every region's bounding-box diagonal: exact, never an error
    _check(classes, bands, scheme, min_size, max_object=sum(classes.shape))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(class_maps(), st.lists(st.integers(1, 9), min_size=1, max_size=3), st.integers(1, 12))
def test_small_max_object_is_exact_or_refuses(classes, bands, max_object):
    try:
        _check(classes, bands, "three_class", 2, max_object)
    except ObjectTooLargeError as exc:
        assert "--max-object" in str(exc) and "\n" not in str(exc)


def test_objects_crossing_band_borders():
    from unet_deploy.train.weights import three_class_target

    truth = np.zeros((60, 50), np.int32)
    yy, xx = np.mgrid[:60, :50]
    truth[(yy - 20) ** 2 + (xx - 15) ** 2 < 14**2] = 1  # spans bands 0..4 at height 7
    truth[(yy - 30) ** 2 + (xx - 33) ** 2 < 12**2] = 2  # touches the first one
    truth[40:58, 2:6] = 3
    classes = three_class_target(truth).astype(np.uint8)
    for bands in ([7], [1], [3, 11], [60]):
        _check(classes, bands, "three_class", 10, max_object=64)
    got = _stream(classes, [7], min_size=10, max_object=64)
    assert got.max() == 3


def test_scipy_nearest_seed_rule():
    # the exactness argument rests on this: EDT indices pick the nearest seed, ties to the
    # smallest column then row -- a function of the seed pixels within that distance only
    rng = np.random.default_rng(0)
    for _ in range(40):
        seeds = rng.random((12, 15)) < 0.15
        if not seeds.any():
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
        sy, sx = np.nonzero(seeds)
        for y in range(12):
            for x in range(15):
                d2 = (sy - y) ** 2 + (sx - x) ** 2
                best = min((int(sx[i]), int(sy[i])) for i in np.flatnonzero(d2 == d2.min()))
                assert (int(ix[y, x]), int(iy[y, x])) == best


def test_too_large_object_error_names_the_fix():
    classes = np.zeros((80, 10), np.uint8)
    classes[2:78, 3:6] = 2  # one tall region
    classes[2:4, 3:6] = 1
    with pytest.raises(ObjectTooLargeError) as info:
        _stream(classes, [4], max_object=8)
    msg = str(info.value)
    assert "--max-object" in msg and "\n" not in msg
    assert isinstance(info.value, InputError) and info.value.exit_code == 3
    _check(classes, [4], "three_class", 0, max_object=80)  # enough: exact


def test_memory_is_bounded_by_max_object():
    rng = np.random.default_rng(3)
    classes = np.zeros((600, 40), np.uint8)
    for y, x in zip(rng.integers(3, 597, 60), rng.integers(3, 37, 60)):
        classes[y - 3 : y + 4, x - 3 : x + 4] = 2
        classes[y - 1 : y + 2, x - 1 : x + 2] = 1
    h, w = classes.shape
    stream = InstanceStream(h, w, "three_class", 3, 0, max_object=16)
    for y in range(0, h, 10):
        list(stream.push(classes[y : y + 10]))
    assert stream.peak_rows <= 3 * 16 + 10
    assert same_objects(_stream(classes, [10], max_object=16), instances_from_three_class(classes, 0))
