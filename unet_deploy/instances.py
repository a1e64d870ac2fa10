"""Network output -> instance label maps (numpy + scipy only).

For touching objects a binary foreground is not enough: the 3-class scheme
(0 background, 1 interior, 2 border, see ``train.weights.three_class_target``) predicts
thin borders so that the interiors of touching objects are disconnected.  Interiors
become seeds; the border pixels are then handed to the nearest seed so objects get
their full extent back.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["instances_from_three_class", "instances_from_binary", "remove_small", "relabel_sequential"]

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connectivity


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
    """
    classes = _to_classes(labels_or_probs)
    interior = classes == interior_class
    fg = interior | (classes == border_class)
    seeds, n_seeds = ndimage.label(interior, structure=_CROSS)
    comps, _ = ndimage.label(fg, structure=_SQUARE)
    out = np.zeros(classes.shape, dtype=np.int64)
    if n_seeds:
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        same = fg & (comps[iy, ix] == comps)
        out[same] = seeds[iy[same], ix[same]]
        _grow_within(out, fg)
    orphans = fg & (out == 0)
    if orphans.any():
        # seedless components keep their component id, shifted past the seed ids
        out[orphans] = comps[orphans] + n_seeds
    return remove_small(out, min_size)


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
