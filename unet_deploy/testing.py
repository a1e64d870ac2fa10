"""Random-weight U-Nets exported to ONNX: the one model factory of the tests and benchmarks.

The weights are a pure function of the arguments (seeded He initialisation, then the optional
bias and head changes in a fixed order), so a test fixture and a benchmark that ask for the same
net get the same file contents. Needs the ``train`` extra (torch, onnx); torch is imported only
when a model is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

CLASS_NAMES = ["background", "foreground", "border"]


def random_unet_onnx(path: str | Path, depth: int = 2, base: int = 4,
                     classes: int | Sequence[str] = 2, tile: int = 92, in_channels: int = 1,
                     seed: int = 0, padding: str = "valid", norm_mode: str = "percentile", *,
                     name: str | None = None, instance_scheme: str | None = None,
                     description: str = "", bias_range: float = 0.0, head_gain: float = 1.0,
                     parity: bool = True) -> Path:
    """Export a seeded random ``UNet`` to ``path`` and return it.

    ``classes``: a count (named from ``CLASS_NAMES``) or the names. ``instance_scheme``
    defaults to ``three_class`` for three classes, else ``binary``. ``name`` defaults to the
    file stem. ``bias_range`` > 0 draws every bias from U(-r, r) and ``head_gain`` scales the
    1x1 head: both make the random net's outputs decisive and input-dependent (He
    initialisation leaves all biases at zero)."""
    import torch

    from .export import export_onnx
    from .metadata import ModelInfo, Normalization
    from .train.unet import build_unet

    path = Path(path)
    names = CLASS_NAMES[:classes] if isinstance(classes, int) else list(classes)
    if instance_scheme is None:
        instance_scheme = "three_class" if len(names) == 3 else "binary"
    info = ModelInfo(name=name or path.stem, depth=depth, base=base, in_channels=in_channels,
                     classes=names, padding=padding, tile=tile,
                     normalization=Normalization(mode=norm_mode),
                     instance_scheme=instance_scheme, description=description)
    torch.manual_seed(seed)
    model = build_unet(info)
    with torch.no_grad():
        if bias_range:
            for pname, p in model.named_parameters():
                if pname.endswith("bias"):
                    p.uniform_(-bias_range, bias_range)
        if head_gain != 1.0:
            model.head.weight.mul_(head_gain)
    export_onnx(model, info, path, parity=parity)
    return path
