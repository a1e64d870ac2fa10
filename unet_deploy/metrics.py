"""Segmentation metrics for ``unet-deploy evaluate`` (numpy + scipy only).

* Instance detection: IoU matching of labelled objects, F1 / precision / recall.
* Pixel level: foreground IoU and pixel error.
* ISBI 2012 foreground-restricted Rand error (Arganda-Carreras et al. 2015).

Label maps are integer arrays, 0 = background, any positive ids (not necessarily
consecutive).  All functions work on arrays of any dimensionality.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "match_instances",
    "instance_scores",
    "instance_f1",
    "foreground_iou",
    "pixel_error",
    "rand_error",
]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat ids mapped to 0..N (0 stays background) so they index dense arrays."""
    flat = labels.ravel()
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    integer = np.issubdtype(flat.dtype, np.integer)
    if integer and flat.size and flat.min() >= 0 and flat.max() <= 4 * flat.size:
        # histogram lookup table: O(pixels), avoids np.unique's sort
        present = np.bincount(flat, minlength=1) > 0
        present[0] = False
        lut = np.zeros(present.size, dtype=np.intp)
        n = int(np.count_nonzero(present))
        lut[present] = np.arange(1, n + 1)
        return lut[flat], n
    ids, inv = np.unique(flat, return_inverse=True)
    if ids.size and ids[0] == 0:
        return inv, ids.size - 1
    return inv + 1, ids.size  # no background pixel present: shift so 0 stays unused


def _iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Dense (n_true, n_pred) IoU of overlapping object pairs.

    The intersection counts come from a sparse contingency table: np.unique over
    paired compact ids of the pixels where both maps are foreground, so cost is
    O(pixels log pixels) regardless of the number of objects.
    """
    t, nt = _compact(true_labels)
    p, npred = _compact(pred_labels)
    area_t = np.bincount(t, minlength=nt + 1)[1:]
    area_p = np.bincount(p, minlength=npred + 1)[1:]
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(t[both] * (npred + 1) + p[both], return_counts=True)
    ti, pj = np.divmod(pairs, npred + 1)
    iou = np.zeros((nt, npred), dtype=np.float64)
    union = area_t[ti - 1] + area_p[pj - 1] - inter
    iou[ti - 1, pj - 1] = inter / union
    return iou


def _count_matches(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU > threshold.

    For threshold >= 0.5 a strict IoU > 0.5 implies each object overlaps the other by
    more than half its area, so every object has at most one such partner and no
    assignment is needed.  Below 0.5 candidates can conflict: a Hungarian assignment
    maximising total IoU picks the one-to-one matching.
    """
    if iou.size == 0:
        return 0
    if threshold >= 0.5:
        return int(np.count_nonzero(iou > threshold))
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return int(np.count_nonzero(iou[rows, cols] > threshold))


def match_instances(
    true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5
) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` for one-to-one object matches with ``IoU > iou_threshold``."""
    true_labels, pred_labels = _check_pair(true_labels, pred_labels)
    iou = _iou_matrix(true_labels, pred_labels)
    tp = _count_matches(iou, iou_threshold)
    return tp, iou.shape[1] - tp, iou.shape[0] - tp


def _prf(tp: int, fp: int, fn: int) -> dict:
    # Nothing to find and nothing predicted is a perfect result, not 0/0.
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def instance_scores(
    true_labels: np.ndarray, pred_labels: np.ndarray, thresholds=(0.5,)
) -> dict[float, dict]:
    """Per IoU threshold: ``{"tp", "fp", "fn", "precision", "recall", "f1"}``.

    The IoU table is computed once for all thresholds.  An image with no objects in
    either map scores 1.0 (precision, recall and F1).
    """
    true_labels, pred_labels = _check_pair(true_labels, pred_labels)
    iou = _iou_matrix(true_labels, pred_labels)
    out = {}
    for thr in thresholds:
        tp = _count_matches(iou, thr)
        out[float(thr)] = _prf(tp, iou.shape[1] - tp, iou.shape[0] - tp)
    return out


def instance_f1(true_labels: np.ndarray, pred_labels: np.ndarray, thresholds=(0.5,)) -> dict[float, float]:
    """``{threshold: F1}`` of object matching; see :func:`instance_scores` for P/R."""
    return {t: s["f1"] for t, s in instance_scores(true_labels, pred_labels, thresholds).items()}


def foreground_iou(true: np.ndarray, pred: np.ndarray) -> float:
    """IoU of the binary foregrounds (``> 0``); 1.0 when both are empty."""
    t, p = _check_pair(true, pred)
    t, p = t > 0, p > 0
    union = np.count_nonzero(t | p)
    return np.count_nonzero(t & p) / union if union else 1.0


def pixel_error(true_fg: np.ndarray, pred_fg: np.ndarray) -> float:
    """Fraction of pixels whose binary label (``> 0``) differs."""
    t, p = _check_pair(true_fg, pred_fg)
    return float(np.mean((t > 0) != (p > 0))) if t.size else 0.0


def rand_error(true_labels: np.ndarray, pred_labels: np.ndarray, foreground_only: bool = True) -> float:
    """Rand error ``1 - V_Rand`` (ISBI 2012 challenge definition).

    With ``foreground_only=True`` (the challenge's "foreground-restricted" score,
    Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142, and Fiji's
    ``RandError.foregroundRestrictedStatsN2``):

    * only pixels where the ground truth is not background (label != 0, i.e. not
      boundary) are considered; let ``n`` be their number;
    * ``p_ij`` = fraction of those pixels with predicted segment ``i`` and true
      segment ``j``; ``s_i = sum_j p_ij``, ``t_j = sum_i p_ij``;
    * predicted background (label 0) pixels are treated as singleton segments, each
      contributing ``(1/n)^2`` to ``sum p_ij^2`` and ``sum s_i^2`` (a pixel the
      prediction left unassigned is merged with nothing);
    * ``V_Rand = sum_ij p_ij^2 / (0.5 sum_i s_i^2 + 0.5 sum_j t_j^2)``, the harmonic
      mean of Rand split score ``sum p_ij^2 / sum t_j^2`` and Rand merge score
      ``sum p_ij^2 / sum s_i^2``.

    With ``foreground_only=False`` all pixels count and label 0 is an ordinary
    segment in both maps.  Returns 0.0 when there is nothing to compare.
    """
    t, p = _check_pair(true_labels, pred_labels)
    t, p = t.ravel(), p.ravel()
    if foreground_only:
        keep = t != 0
        t, p = t[keep], p[keep]
    n = t.size
    if n == 0:
        return 0.0
    singletons = np.count_nonzero(p == 0) if foreground_only else 0
    grouped = p != 0 if foreground_only else np.ones(n, bool)
    tc, _ = _compact(t)
    pc, npred = _compact(p[grouped])
    pairs = tc[grouped] * (npred + 1) + pc
    _, n_ij = np.unique(pairs, return_counts=True)
    _, t_j = np.unique(tc, return_counts=True)
    _, s_i = np.unique(pc, return_counts=True)
    # work in counts (p = count / n); the 1/n^2 factors cancel in the ratio
    sum_p2 = float(np.sum(n_ij.astype(np.float64) ** 2)) + singletons
    sum_s2 = float(np.sum(s_i.astype(np.float64) ** 2)) + singletons
    sum_t2 = float(np.sum(t_j.astype(np.float64) ** 2))
    return 1.0 - sum_p2 / (0.5 * sum_s2 + 0.5 * sum_t2)
