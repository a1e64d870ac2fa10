"""EM instances by seeded watershed (em_watershed.py): h-minima, no merge through a membrane gap,
and the deployment path uses it when the model's metadata says so."""

import shutil

import numpy as np
import pytest
from scipy import ndimage

from unet_deploy.em_watershed import h_minima, instances_for, watershed_instances


def test_h_minima_depth():
    f = np.array([[5, 5, 5, 5, 5, 5, 5],
                  [5, 1, 1, 5, 3, 3, 5],
                  [5, 1, 1, 5, 3, 4, 5],
                  [5, 5, 5, 5, 5, 5, 5]])
    both = h_minima(f, 0)
    assert both[1:3, 1:3].all() and both[1, 4:6].all() and both.sum() == 7
    deep = h_minima(f, 2)  # the minimum at 3 is only 2 deep
    assert deep[1:3, 1:3].all() and deep.sum() == 4
    assert h_minima(np.full((4, 4), 7), 0).all()  # a flat image is one plateau minimum


def two_cells_with_gap(gap: float = 0.3) -> np.ndarray:
    m = np.full((60, 100), 0.05, np.float32)
    m[:, 48:52] = 0.95  # membrane between two cells
    m[28:30, 48:52] = gap  # with a gap the cell mask leaks through
    m[[0, -1], :] = 0.95
    return np.stack([m, 1 - m], -1)


def test_no_merge_through_a_membrane_gap():
    probs = two_cells_with_gap()
    assert ndimage.label(probs[..., 0] < 0.5)[1] == 1  # components merge the two cells
    ws = watershed_instances(probs, 0.5, h=0.1)
    assert len(np.unique(ws[ws > 0])) == 2
    assert ws[30, 20] != ws[30, 80] and ws[30, 20] > 0 and ws[30, 80] > 0
    assert (ws[probs[..., 0] >= 0.5] == 0).all()  # membrane stays background
    # seeds from the distance transform alone (h = 0): the eroded cell mask separates them too
    dt = watershed_instances(probs, 0.5, h=0.0, min_distance=2.0)
    assert len(np.unique(dt[dt > 0])) == 2 and dt[30, 20] != dt[30, 80]


def test_min_distance_and_min_size():
    probs = two_cells_with_gap()
    assert watershed_instances(probs, 0.5, h=0.1, min_distance=100).max() == 0  # no seed
    ws = watershed_instances(probs, 0.5, h=0.1, min_size=10_000)
    assert ws.max() == 0 and ws.dtype == np.uint32


def test_deployment_path_uses_watershed(tmp_path, tiny_model, real_crop):
    pytest.importorskip("onnx")
    from unet_deploy.export import update_metadata
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array

    path = tmp_path / "ws.onnx"
    shutil.copyfile(tiny_model, path)
    update_metadata(path, binary_method="watershed", watershed_h=0.02, foreground_threshold=0.5,
                    min_object_size=5)
    info = read_onnx(path).info
    image = real_crop[:100, :120]
    probs = segment_array(image, path, backend="onnxruntime", output="probabilities")
    got = segment_array(image, path, backend="onnxruntime", output="instances")
    want = instances_for(probs, info)
    assert want.max() > 0
    np.testing.assert_array_equal(got, want)


def smooth_field(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random(shape), 3)
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


@pytest.mark.parametrize("min_distance", [0.0, 0.5, 1.0])
def test_local_case_is_components_of_the_smoothed_mask(min_distance):
    """The module's "Local case": with h = 0 and min distance <= 1 the flood gives exactly the
    8-connected components of the cell mask -- the claim the direct (and streamed) path rests on."""
    from unet_deploy.em_watershed import SQUARE, flood, is_local, smooth

    assert is_local(0.0, min_distance) and not is_local(0.0, 2.0) and not is_local(0.02, 1.0)
    for seed in range(3):
        membrane = smooth(smooth_field((80, 90), seed))
        cells = membrane < 0.35
        want, n = ndimage.label(cells, structure=SQUARE)
        assert n > 10
        np.testing.assert_array_equal(flood(membrane, cells, 0.0, min_distance), want)
    # with real seeds the flood is different: the gap case splits where components merge
    probs = two_cells_with_gap(gap=0.05)
    m = smooth(probs[..., 0])
    assert ndimage.label(m < 0.5, structure=SQUARE)[1] == 1
    assert len(np.unique(flood(m, m < 0.5, 0.0, 2.0))) == 3  # background + two cells


@pytest.mark.parametrize("bands", [[1] * 67, [2, 10, 55], [67], [4, 5, 58], [30, 1, 1, 35]])
def test_smooth_bands_equal_the_whole_plane(bands):
    """SmoothBands, fed any band heights (smaller or larger than its context RADIUS), gives the
    whole plane's smoothed membrane bit for bit, every row once, none before its context."""
    from unet_deploy.em_watershed import RADIUS, SmoothBands, smooth

    membrane = smooth_field((67, 41), 7)
    sb = SmoothBands(67)
    out, y = [], 0
    for h in bands:
        rows = sb.push(membrane[y:y + h])
        y += h
        assert rows.dtype == np.float32 and rows.shape[1] == 41
        done = sum(len(r) for r in out) + len(rows)
        assert done <= (y if y == 67 else max(0, y - RADIUS))
        out.append(rows)
    np.testing.assert_array_equal(np.concatenate(out), smooth(membrane))


def test_needs_whole_plane_only_with_real_seeds(tiny_model):
    import dataclasses

    from unet_deploy.model_store import read_onnx
    from unet_deploy.postprocess import needs_whole_plane

    info = dataclasses.replace(read_onnx(tiny_model).info, binary_method="watershed")
    assert not needs_whole_plane(dataclasses.replace(info, watershed_h=0.0,
                                                     watershed_min_distance=1.0))
    assert needs_whole_plane(dataclasses.replace(info, watershed_h=0.0,
                                                 watershed_min_distance=2.0))
    assert needs_whole_plane(dataclasses.replace(info, watershed_h=0.1,
                                                 watershed_min_distance=0.0))


def test_streamed_file_equals_whole_plane(tmp_path, local_watershed_model, real_crop):
    """`segment --output instances` streams the local watershed band by band (tile 92: bands of
    52 rows) and still gives the whole-plane result, up to renumbering."""
    pytest.importorskip("onnx")
    import tifffile

    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_array, segment_file
    from unet_deploy.postprocess import instances_from_probabilities

    path = local_watershed_model
    tifffile.imwrite(tmp_path / "in.tif", real_crop)
    segment_file(tmp_path / "in.tif", tmp_path / "out.tif", path, backend="onnxruntime",
                 output="instances", tile=92, progress=False)
    got = tifffile.imread(tmp_path / "out.tif")
    probs = segment_array(real_crop, path, backend="onnxruntime", output="probabilities",
                          tile=92)
    info = read_onnx(path).info
    want = instances_for(probs, info)
    assert want.max() > 20
    # the whole-plane entry point (scripts, the seeded case) takes the same method
    np.testing.assert_array_equal(instances_from_probabilities(probs, info), want)
    assert np.array_equal(got == 0, want == 0)
    pairs = np.unique(np.stack([got[got > 0], want[want > 0]]).astype(np.int64), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
