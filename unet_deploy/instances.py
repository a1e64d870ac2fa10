"""Network output -> instance label maps (numpy + scipy only).

For touching objects a binary foreground is not enough: the 3-class scheme
(0 background, 1 interior, 2 border, see ``train.weights.three_class_target``) predicts
thin borders so that the interiors of touching objects are disconnected.  Interiors
become seeds; the border pixels are then handed to the nearest seed so objects get
their full extent back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["instances_from_three_class", "instances_from_binary", "remove_small", "relabel_sequential",
           "three_class_objects", "ThreeClassObjects", "same_objects", "CROSS", "SQUARE"]

CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connectivity
_CROSS, _SQUARE = CROSS, SQUARE


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber positive ids to 1..N in increasing order of the old ids (int32)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int32)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > 4 * labels.size:
        # sparse or negative ids: sort-based (slower) path
        ids, inv = np.unique(labels, return_inverse=True)
        return (inv.reshape(labels.shape) + (ids[0] != 0)).astype(np.int32)
    # lookup table from a histogram: O(pixels), no sort
    present = np.bincount(labels.ravel(), minlength=1) > 0
    present[0] = False
    lut = np.zeros(present.size, dtype=np.int32)
    lut[present] = np.arange(1, np.count_nonzero(present) + 1, dtype=np.int32)
    return lut[labels]


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps hold the same objects, whatever their ids: same shape, same
    background (0), and a one-to-one map between their ids."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    if not fg.any():
        return True
    pairs = np.unique(np.stack([a[fg].astype(np.int64), b[fg].astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects with fewer than ``min_size`` pixels to 0 and renumber 1..N."""
    labels = np.asarray(labels)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)


def _to_classes(labels_or_probs: np.ndarray) -> np.ndarray:
    """Class map from a (H, W) integer class map or (C, H, W) scores (argmax over C)."""
    a = np.asarray(labels_or_probs)
    if a.ndim == 3:
        return np.argmax(a, axis=0)
    if a.ndim != 2:
        raise ValueError("expected a (H, W) class map or (C, H, W) class scores")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError("a 2-D input must be an integer class map")
    return a


def instances_from_three_class(
    labels_or_probs: np.ndarray,
    min_size: int = 10,
    interior_class: int = 1,
    border_class: int = 2,
) -> np.ndarray:
    """Instance labels (int32, 0 background) from a 3-class prediction.

    1. Seeds: 4-connected components of the interior class (4-connectivity so that a
       diagonal pixel gap in a predicted border does not merge two objects).
    2. Every foreground pixel (interior or border) takes the id of its nearest seed
       (Euclidean, one ``distance_transform_edt(return_indices=True)``), but only if that
       seed lies in the same 8-connected foreground component; otherwise the nearest
       seed belongs to a different object across background.
    3. Pixels rejected in 2 that share a component with a seed are filled by geodesic
       growth (repeated 3x3 dilation inside the foreground), so they join an object of
       their own component; usually a handful of pixels and iterations.
    4. Foreground components without any seed (e.g. tiny objects predicted as all
       border) become objects of their own.
    5. Objects smaller than ``min_size`` pixels are removed; ids are renumbered 1..N.

    Steps 1-4 are ``three_class_objects`` (which ``stream_instances`` runs on windows).
    """
    return remove_small(three_class_objects(labels_or_probs, interior_class,
                                            border_class).objects, min_size)


@dataclass
class ThreeClassObjects:
    """Steps 1-4 of ``instances_from_three_class`` on one class map.

    ``objects``: int64 object keys (0 background; seed ids 1..n_seeds, then seedless
    components as n_seeds + component id), before size filtering and renumbering.
    ``comps``: the 8-connected foreground components (int32). ``nearest``: (iy, ix) of each
    pixel's nearest seed pixel (None without seeds) -- the nearest in Euclidean distance, ties
    going to the smallest column, then the smallest row (scipy's rule, checked in the tests),
    so a window that holds every seed within that distance of a pixel computes the same
    choice as the whole plane."""

    objects: np.ndarray
    comps: np.ndarray
    n_seeds: int
    nearest: tuple[np.ndarray, np.ndarray] | None


def three_class_objects(labels_or_probs: np.ndarray, interior_class: int = 1,
                        border_class: int = 2) -> ThreeClassObjects:
    """Steps 1-4 of ``instances_from_three_class``: object keys before size filtering."""
    classes = _to_classes(labels_or_probs)
    interior = classes == interior_class
    fg = interior | (classes == border_class)
    seeds, n_seeds = ndimage.label(interior, structure=_CROSS)
    comps, _ = ndimage.label(fg, structure=_SQUARE)
    out = np.zeros(classes.shape, dtype=np.int64)
    nearest = None
    if n_seeds:
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = (iy, ix)
        same = fg & (comps[iy, ix] == comps)
        out[same] = seeds[iy[same], ix[same]]
        _grow_within(out, fg)
    orphans = fg & (out == 0)
    if orphans.any():
        # seedless components keep their component id, shifted past the seed ids
        out[orphans] = comps[orphans] + n_seeds
    return ThreeClassObjects(out, comps, int(n_seeds), nearest)


def _grow_within(labels: np.ndarray, mask: np.ndarray) -> None:
    """Grow labels into unlabelled ``mask`` pixels by 8-neighbour dilation, in place.

    Background neighbours are 0 and 8-neighbours inside ``mask`` share its
    8-connected component, so labels never jump between components.  Stops when
    nothing changes (only seedless components are left).
    """
    todo = mask & (labels == 0)
    while todo.any():
        grown = ndimage.grey_dilation(labels, footprint=_SQUARE)
        fill = todo & (grown > 0)
        if not fill.any():
            return
        labels[fill] = grown[fill]
        todo &= ~fill


def instances_from_binary(fg_mask: np.ndarray, min_size: int = 0, connectivity: int = 1) -> np.ndarray:
    """Connected components of a foreground mask (``> 0``), int32, 0 background.

    ``connectivity`` 1 = 4-neighbourhood, 2 = 8-neighbourhood.  Touching objects merge;
    use the 3-class scheme to separate them.
    """
    fg = np.asarray(fg_mask) > 0
    structure = ndimage.generate_binary_structure(fg.ndim, connectivity)
    labels, _ = ndimage.label(fg, structure=structure)
    return remove_small(labels, min_size)
