"""Network output → instance labels, by the model's declared instance scheme."""

from __future__ import annotations

import numpy as np

from .metadata import ModelInfo


def instance_classes(probs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(rows, W, K) probabilities → uint8 class map ready for ``to_instances``.

    With ``info.foreground_threshold`` set, a pixel is foreground when its background probability
    is below it (else the argmax decides). For the three-class scheme a pixel is interior (a seed) only when its interior probability
    reaches ``info.seed_threshold``; other foreground pixels count as border, so touching objects
    whose shared border is faint still get separate seeds."""
    labels = probs.argmax(-1).astype(np.uint8)
    if info.foreground_threshold is not None:
        # Background where P(background) >= threshold; elsewhere the best non-background class.
        labels = np.where(probs[..., 0] < info.foreground_threshold,
                          1 + probs[..., 1:].argmax(-1), 0).astype(np.uint8)
    if info.instance_scheme == "three_class":
        fg = labels > 0
        labels[fg] = 2
        labels[fg & (probs[..., 1] >= info.seed_threshold)] = 1
    return labels


def to_instances(labels: np.ndarray, info: ModelInfo, min_size: int | None = None) -> np.ndarray:
    """Class map → uint32 instance labels by ``info.instance_scheme``; objects smaller than
    ``min_size`` pixels (default ``info.min_object_size``) are dropped."""
    from .instances import instances_from_binary, instances_from_three_class

    if min_size is None:
        min_size = info.min_object_size
    if info.instance_scheme == "three_class":
        return instances_from_three_class(labels, min_size=min_size).astype(np.uint32)
    return instances_from_binary(labels == info.out_channels - 1,
                                 min_size=min_size).astype(np.uint32)


def _watershed(info: ModelInfo) -> bool:
    return info.instance_scheme != "three_class" and info.binary_method == "watershed"


def _local_watershed(info: ModelInfo) -> bool:
    from .em_watershed import is_local

    return _watershed(info) and is_local(info.watershed_h, info.watershed_min_distance)


def needs_whole_plane(info: ModelInfo) -> bool:
    """True when the instances come from the whole plane's probabilities and cannot be
    streamed band by band: the EM seeded watershed with real seeds (h-minima or a minimum
    distance above 1 px; its local case streams, see ``em_watershed``)."""
    return _watershed(info) and not _local_watershed(info)


def stream_input(probs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """What ``PlaneInstances`` needs of a (rows, W, K) probability band: its class map, or for
    the EM watershed the membrane probability (its smoothing spans bands)."""
    if _local_watershed(info):
        return np.asarray(probs[..., 0], np.float32)
    return instance_classes(probs, info)


class PlaneInstances:
    """Instances of one plane from ``stream_input`` bands pushed top to bottom: exactly
    ``instances_from_probabilities`` on the whole plane up to renumbering, in bounded memory
    (``stream_instances.InstanceStream``; for the local EM watershed, ``em_watershed.SmoothBands``
    first). Not for ``needs_whole_plane`` models."""

    def __init__(self, info: ModelInfo, height: int, width: int, max_object: int, name: str = ""):
        from .em_watershed import SmoothBands, cell_threshold
        from .stream_instances import InstanceStream

        if needs_whole_plane(info):
            raise ValueError("this model's watershed needs the whole plane; it cannot stream")
        self.smooth = SmoothBands(height) if _local_watershed(info) else None
        self.threshold = cell_threshold(info.foreground_threshold)
        self.stream = InstanceStream(height, width, info.instance_scheme, info.out_channels,
                                     info.min_object_size, max_object, name,
                                     connectivity=1 if self.smooth is None else 2)
        self.fg_class = info.out_channels - 1

    def push(self, band: np.ndarray):
        if self.smooth is not None:  # the smoothed cell mask as the binary class map
            band = (self.smooth.push(band) < self.threshold).astype(np.uint8) * \
                np.uint8(self.fg_class)
        yield from self.stream.push(band)

    def finish(self) -> None:
        self.stream.finish()


def instances_from_probabilities(probs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(H, W, K) probabilities of a whole plane → uint32 instance labels by the model's
    settings (the EM watershed, ``em_watershed.py``, or the class-map schemes above)."""
    if _watershed(info):
        from .em_watershed import instances_for

        return instances_for(probs, info)
    return to_instances(instance_classes(probs, info), info)
