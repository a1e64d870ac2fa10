"""The self-description stored in every exported ONNX file (metadata key ``unet_deploy``).

It carries everything the tiler and the pre/post-processing need, so a model is one file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .geometry import Geometry

METADATA_KEY = "unet_deploy"
FORMAT_VERSION = 1


def label_dtype(n_classes: int) -> np.dtype:
    """The dtype of a class map over ``n_classes`` classes: uint8 up to 256, else uint16."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


@dataclass
class Normalization:
    """Maps raw pixel values x to (x - offset) * scale before the network.

    mode "percentile": offset/scale come from the image's own low/high percentiles (computed on
    a strided sample, so huge images cost little); mode "fixed": offset/scale are used as stored.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    offset: float = 0.0
    scale: float = 1.0


@dataclass
class ModelInfo:
    name: str = "unet"
    depth: int = 4
    base: int = 64
    in_channels: int = 1
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    padding: str = "valid"
    tile: int = 572  # default input tile side
    normalization: Normalization = field(default_factory=Normalization)
    output: str = "probabilities"  # the graph ends in softmax over classes
    instance_scheme: str = "none"  # "none" | "binary" | "three_class" (bg/interior/border)
    seed_threshold: float = 0.5  # three_class: interior probability that makes a seed pixel
    min_object_size: int = 10  # instances smaller than this (pixels) are dropped
    # instances: a pixel is foreground when P(class 0) < this; None = argmax
    foreground_threshold: float | None = None
    # test-time augmentation when none is asked for: "none" | "flips" | "d4" (see tta.py)
    tta: str = "none"
    # binary scheme: "components" (connected cells) | "watershed" (seeded watershed on the
    # membrane probability, see em_watershed.py) with its h-minima depth (probability units)
    # and the seeds' least distance (px) from the predicted membrane
    binary_method: str = "components"
    watershed_h: float = 0.1
    watershed_min_distance: float = 0.0
    batch_norm: bool = False
    dropout: float = 0.0
    licence: str = ""
    description: str = ""
    # what `segment` writes when no --output is given: "labels" | "probabilities" | "instances";
    # "" = instances for a model with an instance scheme, else labels (``default_output_kind``)
    default_output: str = ""
    # what the training images looked like, for warnings when an input clearly differs:
    # modality (text), channels (text), background "dark" (fluorescence) | "bright" | ""
    expects: dict = field(default_factory=dict)
    sha256: str = ""  # of the weights, filled in by the exporter
    format_version: int = FORMAT_VERSION

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.depth, self.padding)

    @property
    def default_output_kind(self) -> str:
        if self.default_output:
            return self.default_output
        return "instances" if self.instance_scheme != "none" else "labels"

    @property
    def out_channels(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        raw = json.loads(text)
        norm = Normalization(**raw.pop("normalization", {}))
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(normalization=norm, **known)
