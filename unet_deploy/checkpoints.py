"""Loading PyTorch training checkpoints safely: tensors and plain values only.

``load_checkpoint`` goes through ``unet_deploy.train.trainer.load_checkpoint``
(``torch.load(weights_only=True)``), so a checkpoint carrying a pickle payload (code run on
unpickling) is refused before any of it executes; every failure becomes a ``ModelError``
(exit code 4) naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError, ModelNotFoundError


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such checkpoint; check the path")
    from .train.trainer import load_checkpoint as torch_load_weights_only

    try:
        ck = torch_load_weights_only(path)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{path}: refused: not a weights-only checkpoint ({first}); only "
                         f"tensors and plain values are loaded, re-save it with "
                         f"torch.save(model.state_dict()) from a trusted source") from None
    if not isinstance(ck, dict):
        raise ModelError(f"{path}: checkpoint holds a {type(ck).__name__}, expected a dict; "
                         f"save a state dict")
    return ck
