"""Class maps → instance labels, by the model's declared instance scheme."""

from __future__ import annotations

import numpy as np

from .metadata import ModelInfo


def to_instances(labels: np.ndarray, info: ModelInfo) -> np.ndarray:
    from .instances import instances_from_binary, instances_from_three_class

    if info.instance_scheme == "three_class":
        return instances_from_three_class(labels).astype(np.uint32)
    return instances_from_binary(labels == info.out_channels - 1).astype(np.uint32)
