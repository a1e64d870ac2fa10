"""Numba kernels of the overlap-tile strategy, each with a NumPy twin.

Kernels are pure functions that fill arrays the caller allocates (stumpy
style).  They are compiled with ``@numba.njit(cache=True, nogil=True)`` and
deliberately NOT ``parallel=True``: the caller decides the threads --
``unet_deploy.workers`` runs one kernel call per piece of work (tile chunks,
band row ranges) on as many threads as asked, next to inference and the
writer, with no second thread pool fighting ONNX Runtime's for the cores.

* :mod:`.mirror` -- "reflect" coordinate mapping (U-Net mirroring).
* :mod:`.gather` -- mirrored tile extraction fused with dtype conversion,
  channel mixing and normalisation.
* :mod:`.stitch` -- writing tiles back (argmax labels, probabilities, or class
  maps a backend already computed).
* :mod:`.reduce` -- 2x2 mode of label maps (resolution pyramids).
* :mod:`.reconstruct` -- grey-scale reconstruction by dilation (EM watershed seeds).

The compiled code is cached outside the installed package (:mod:`.caching`), so an
uninstall leaves nothing behind that could shadow a later install.
"""

from .caching import cache_outside_package

with cache_outside_package():
    from .gather import gather_tiles, gather_tiles_numpy
    from .mirror import mirror_index, mirror_indices
    from .reconstruct import reconstruct_dilation, reconstruct_dilation_numpy
    from .reduce import mode_2x2, mode_2x2_numpy
    from .stitch import (
        stitch_classes,
        stitch_classes_numpy,
        stitch_labels,
        stitch_labels_numpy,
        stitch_probabilities,
        stitch_probabilities_numpy,
    )

__all__ = [
    "mirror_index",
    "mirror_indices",
    "mode_2x2",
    "mode_2x2_numpy",
    "reconstruct_dilation",
    "reconstruct_dilation_numpy",
    "gather_tiles",
    "gather_tiles_numpy",
    "stitch_classes",
    "stitch_classes_numpy",
    "stitch_labels",
    "stitch_labels_numpy",
    "stitch_probabilities",
    "stitch_probabilities_numpy",
]
