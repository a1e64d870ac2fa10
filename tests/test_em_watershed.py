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
