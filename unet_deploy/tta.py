"""Test-time augmentation as a backend wrapper: the softmax averaged over flips or over the 8
dihedral transforms (rotations by 90° and flips) of every tile.

``TTABackend(inner, "flips"|"d4")`` is a ``backends.base.Backend`` whose ``_infer`` runs the
inner backend once per transform (sequentially, so memory stays that of one batch), maps each
output back and averages. The pipeline does not know it is there.

It stays seamless: tiles start at multiples of 2**depth and all legal input sides are congruent
modulo 2**depth, so a flipped (or transposed) tile is exactly a crop of the flipped (transposed)
mirror-padded whole image at an offset that is again a multiple of 2**depth; the network's output
on it is therefore the matching crop of the whole-image output, and tiled TTA equals whole-image
TTA (``tests/test_tta.py``).
"""

from __future__ import annotations

import numpy as np

from .backends.base import Backend
from .errors import OptionError

TTA_MODES = ("none", "flips", "d4")

# (transpose, flip rows, flip columns): applied in that order to the input; the output is
# mapped back by undoing them in reverse order.
_FLIPS = [(False, False, False), (False, True, False), (False, False, True), (False, True, True)]
TRANSFORMS = {"none": _FLIPS[:1], "flips": _FLIPS,
              "d4": _FLIPS + [(True, fy, fx) for _, fy, fx in _FLIPS]}


def _forward(x: np.ndarray, t: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, fy, fx = t
    if transpose:
        x = x.transpose(0, 1, 3, 2)
    if fy:
        x = x[:, :, ::-1]
    if fx:
        x = x[:, :, :, ::-1]
    return np.ascontiguousarray(x)


def _inverse(y: np.ndarray, t: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, fy, fx = t
    if fx:
        y = y[:, :, :, ::-1]
    if fy:
        y = y[:, :, ::-1]
    if transpose:
        y = y.transpose(0, 1, 3, 2)
    return y


def check_mode(mode: str | None) -> str | None:
    """``mode`` if it is a TTA mode (or None: the model's default), else ``OptionError``."""
    if mode is not None and mode not in TTA_MODES:
        raise OptionError(f"tta {mode!r} is not a test-time augmentation mode; choose one of "
                          f"{', '.join(TTA_MODES)}")
    return mode


def resolve_mode(mode: str | None, info) -> str:
    """The mode to run: ``mode`` when given, else the model's default (metadata ``tta``)."""
    mode = check_mode(mode)
    if mode is None:
        mode = getattr(info, "tta", "none") or "none"
    return check_mode(mode)


class TTABackend(Backend):
    """Averages ``inner``'s softmax over the transforms of ``mode`` ("flips": 4, "d4": 8).
    Activating it activates ``inner``; deactivating it leaves ``inner`` to its owner."""

    def __init__(self, inner, mode: str):
        super().__init__()
        if check_mode(mode) in (None, "none"):
            raise OptionError(f"TTABackend needs mode 'flips' or 'd4', got {mode!r}")
        self.inner = inner
        self.mode = mode
        self.transforms = TRANSFORMS[mode]
        self.info = inner.info
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}+tta-{mode}"
        self.thread_safe = getattr(inner, "thread_safe", False)
        manifest = getattr(inner, "manifest", None)
        if manifest is not None:  # the planner reads a TensorRT engine's tile limit from it
            self.manifest = manifest

    def _activate(self) -> None:
        activate = getattr(self.inner, "activate", None)
        if activate is not None:
            activate()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for t in self.transforms:
            out = _inverse(np.asarray(self.inner.infer(_forward(batch, t))), t)
            total = out.astype(np.float32, copy=True) if total is None else total + out
        return total / np.float32(len(self.transforms))


def with_tta(backend, mode: str | None):
    """``backend`` itself for mode "none" (or a None mode with a model default of "none"),
    else an activated ``TTABackend`` around it."""
    mode = resolve_mode(mode, backend.info)
    if mode == "none":
        return backend
    return TTABackend(backend, mode).activate()
