"""The backend protocol (after Polygraphy's runners): ``activate / infer / deactivate``, usable
as a context manager. ``infer`` takes a float32 batch (B, C, h, w) and returns float32
probabilities (B, K, h_out, w_out)."""

from __future__ import annotations

import numpy as np

from ..metadata import ModelInfo


class Backend:
    name = "base"
    # True when one instance may be called from many threads at once (ORT sessions are);
    # otherwise the Segmenter serialises calls with a lock.
    thread_safe = False

    def __init__(self):
        self.info: ModelInfo | None = None
        self.active = False

    def activate(self) -> "Backend":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
