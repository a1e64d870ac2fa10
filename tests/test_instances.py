import numpy as np
import pytest

from unet_deploy.instances import (
    instances_from_binary,
    instances_from_three_class,
    relabel_sequential,
    remove_small,
)
from unet_deploy.metrics import match_instances
from unet_deploy.train.weights import three_class_target


def _touching_squares():
    lab = np.zeros((30, 40), np.int32)
    lab[5:20, 5:18] = 1
    lab[5:20, 18:32] = 2  # shares the edge between columns 17 and 18
    return lab


def test_touching_squares_split_by_border_line():
    truth = _touching_squares()
    classes = three_class_target(truth)
    out = instances_from_three_class(classes)
    assert out.dtype == np.int32
    assert set(np.unique(out)) == {0, 1, 2}
    assert np.all(out[truth == 0] == 0)  # background stays 0
    assert np.all(out[truth > 0] > 0)  # borders are given back to the objects
    assert match_instances(truth, out, 0.9) == (2, 0, 0)
    # binary connected components merge them
    assert set(np.unique(instances_from_binary(truth > 0))) == {0, 1}


def test_single_border_line_class_map():
    # hand-made class map: one 1-px border column between two interiors
    classes = np.zeros((10, 21), np.uint8)
    classes[2:8, 2:19] = 1
    classes[2:8, 10] = 2
    out = instances_from_three_class(classes, min_size=1)
    left, right = out[4, 5], out[4, 15]
    assert left > 0 and right > 0 and left != right
    assert np.all(out[2:8, 2:10] == left) and np.all(out[2:8, 11:19] == right)
    assert np.all(out[2:8, 10] > 0)


def test_accepts_channel_first_scores():
    truth = _touching_squares()
    classes = three_class_target(truth)
    scores = np.eye(3, dtype=np.float32)[classes].transpose(2, 0, 1)  # one-hot (3, H, W)
    np.testing.assert_array_equal(instances_from_three_class(scores), instances_from_three_class(classes))


def test_min_size_removes_specks():
    classes = np.zeros((30, 30), np.uint8)
    classes[5:15, 5:15] = 1
    classes[25, 25] = 1  # 1-px interior speck
    classes[27:29, 2:4] = 2  # 4-px border-only blob (no seed)
    out = instances_from_three_class(classes, min_size=10)
    assert set(np.unique(out)) == {0, 1}
    assert out[25, 25] == 0 and out[28, 3] == 0
    kept = instances_from_three_class(classes, min_size=1)
    assert set(np.unique(kept)) == {0, 1, 2, 3}  # seedless blob becomes its own object
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True
    mask[15, 15] = True
    assert set(np.unique(instances_from_binary(mask, min_size=5))) == {0, 1}
    assert set(np.unique(instances_from_binary(mask))) == {0, 1, 2}


def test_border_pixels_never_cross_background():
    # a border pixel closer (Euclidean) to a seed of another object across a gap
    classes = np.zeros((12, 30), np.uint8)
    classes[2:10, 2:12] = 2
    classes[5:7, 3:5] = 1  # seed of object A far left; A's right edge near object B
    classes[2:10, 14:25] = 1  # object B, 2 px to the right across background
    out = instances_from_three_class(classes, min_size=1)
    a, b = out[5, 3], out[5, 20]
    assert a != b
    assert np.all(out[2:10, 2:12] == a)


def test_empty_input():
    out = instances_from_three_class(np.zeros((8, 8), np.uint8))
    assert out.dtype == np.int32 and not out.any()
    assert not instances_from_binary(np.zeros((8, 8), bool)).any()


def test_relabel_and_remove_small():
    lab = np.array([[0, 5, 5, 9], [0, 5, 7, 9]])
    np.testing.assert_array_equal(relabel_sequential(lab), [[0, 1, 1, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(remove_small(lab, 2), [[0, 1, 1, 2], [0, 1, 0, 2]])


def test_rejects_float_class_map():
    with pytest.raises(ValueError):
        instances_from_three_class(np.zeros((4, 4), np.float32))
