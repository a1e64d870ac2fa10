import numpy as np
import pytest

from unet_deploy.metrics import (
    foreground_iou,
    instance_f1,
    instance_scores,
    match_instances,
    pixel_error,
    rand_error,
)


def _three_objects():
    lab = np.zeros((30, 40), np.int32)
    lab[2:10, 2:10] = 1
    lab[15:25, 5:15] = 2
    lab[5:20, 25:35] = 3
    return lab


def test_identical_segmentations_are_perfect():
    lab = _three_objects()
    relabelled = np.where(lab > 0, lab * 7 + 100, 0)  # ids need not agree
    assert match_instances(lab, relabelled) == (3, 0, 0)
    assert instance_f1(lab, relabelled, thresholds=(0.5, 0.9)) == {0.5: 1.0, 0.9: 1.0}
    assert rand_error(lab, relabelled) == 0.0
    assert rand_error(lab, relabelled, foreground_only=False) == 0.0
    assert pixel_error(lab > 0, relabelled > 0) == 0.0
    assert foreground_iou(lab, relabelled) == 1.0


def test_split_and_merge_by_hand():
    true = _three_objects()
    pred = np.zeros_like(true)
    # object 1 found exactly
    pred[2:10, 2:10] = 1
    # object 2 split in two halves: each half has IoU 0.5, not > 0.5 -> no match
    pred[15:20, 5:15] = 2
    pred[20:25, 5:15] = 3
    # object 3 (150 px) merged with a 75 px false blob next to it: IoU = 150 / 225 = 2/3
    pred[5:20, 25:35] = 4
    pred[5:20, 35:40] = 4
    # TP = 2 (objects 1, 3); FP = 2 (the two halves); FN = 1 (object 2)
    assert match_instances(true, pred, 0.5) == (2, 2, 1)
    s = instance_scores(true, pred, thresholds=(0.5, 0.7))
    assert s[0.5]["precision"] == pytest.approx(2 / 4)
    assert s[0.5]["recall"] == pytest.approx(2 / 3)
    assert s[0.5]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))  # 4/7
    # at 0.7 only object 1 survives: tp=1, fp=3, fn=2 -> F1 = 2/(2+3+2)
    assert s[0.7]["f1"] == pytest.approx(2 / 7)
    # at 0.3 the Hungarian matching pairs object 2 with one of its halves
    assert match_instances(true, pred, 0.3) == (3, 1, 0)


def test_low_threshold_matching_is_one_to_one():
    true = np.zeros((10, 20), np.int32)
    true[:, :10] = 1
    true[:, 10:] = 2
    pred = np.ones_like(true)  # one object covering both: IoU 0.5 with each
    # only one of the two true objects may claim the single prediction
    assert match_instances(true, pred, 0.1) == (1, 0, 1)
    assert match_instances(true, pred, 0.5) == (0, 1, 2)


def test_empty_prediction_scores_zero():
    true = _three_objects()
    pred = np.zeros_like(true)
    assert match_instances(true, pred) == (0, 0, 3)
    s = instance_scores(true, pred)[0.5]
    assert s["f1"] == 0.0 and s["recall"] == 0.0
    assert instance_f1(true, pred) == {0.5: 0.0}
    assert foreground_iou(true, pred) == 0.0
    # every GT pixel is an unassigned singleton: V = n / (0.5 n + 0.5 sum t_j^2)
    n_j = np.array([64, 100, 150])
    v = n_j.sum() / (0.5 * n_j.sum() + 0.5 * np.sum(n_j**2))
    assert rand_error(true, pred) == pytest.approx(1 - v)


def test_both_empty_is_perfect():
    z = np.zeros((5, 5), np.int32)
    assert instance_f1(z, z) == {0.5: 1.0}
    assert foreground_iou(z, z) == 1.0
    assert rand_error(z, z) == 0.0


def test_foreground_iou_of_two_rectangles():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True  # 100 px
    b[5:15, 5:13] = True  # 80 px, overlap rows 5-9, cols 5-9 = 25 px
    assert foreground_iou(a, b) == pytest.approx(25 / (100 + 80 - 25))
    # pixel error = symmetric difference / total
    assert pixel_error(a, b) == pytest.approx((100 + 80 - 2 * 25) / 400)


def test_rand_error_split_by_hand():
    # one true object of 4 px split into two predicted halves of 2 px.
    # p_ij = {1/2, 1/2}, sum p^2 = 1/2; t = {1}, sum t^2 = 1; s = {1/2, 1/2}, sum s^2 = 1/2
    # V = 0.5 / (0.5 * 0.5 + 0.5 * 1) = 2/3
    true = np.array([[0, 1, 1, 1, 1, 0]])
    pred = np.array([[9, 1, 1, 2, 2, 9]])  # background GT pixels are ignored
    assert rand_error(true, pred) == pytest.approx(1 / 3)


def test_rand_error_unassigned_pixels_are_singletons():
    # pred leaves 2 of the 4 GT pixels as background (0).
    # p: one cell 1/2, two singletons (1/4)^2 each -> sum p^2 = 1/4 + 1/8 = 3/8
    # sum s^2 = 1/4 + 1/8 = 3/8; sum t^2 = 1 -> V = (3/8) / (3/16 + 1/2) = 6/11
    true = np.array([[1, 1, 1, 1]])
    pred = np.array([[5, 5, 0, 0]])
    assert rand_error(true, pred) == pytest.approx(5 / 11)


def test_rand_error_merge_by_hand():
    # two true objects of 2 px merged into one prediction
    # p = {1/2, 1/2}: sum p^2 = 1/2; sum t^2 = 1/2; s = {1}: sum s^2 = 1 -> V = 2/3
    true = np.array([[1, 1, 2, 2]])
    pred = np.array([[3, 3, 3, 3]])
    assert rand_error(true, pred) == pytest.approx(1 / 3)


def test_rand_error_full_image_counts_background():
    true = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 0]])
    # all pixels, 0 is a segment: p = {1/2, 1/2}, sum p^2 = 1/2, sum t^2 = 1/2, sum s^2 = 1
    assert rand_error(true, pred, foreground_only=False) == pytest.approx(1 / 3)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        match_instances(np.zeros((3, 3), int), np.zeros((3, 4), int))
