"""Training data: image/label pairs from folders or multi-page stacks, and their targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError, InputNotFoundError
from ..io import read_image
from ..metadata import Normalization
from ..normalize import image_offset_scale

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class Sample:
    name: str
    image: np.ndarray  # float32 (H, W), normalized
    instances: np.ndarray  # int32 (H, W), 0 = background, 1..N objects


def read_planes(path: Path) -> tuple[list[str], list[np.ndarray]]:
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no .tif/.tiff/.png files found")
        return [p.stem for p in files], [read_image(p) for p in files]
    stack = read_image(path)
    if stack.ndim == 2:
        return [path.stem], [stack]
    return [f"{path.stem}[{i}]" for i in range(len(stack))], list(stack)


def to_instances(labels: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Instance labels from a binary mask, a class map or instance labels.

    Binary masks and class maps become connected components of their non-zero pixels, which is
    how the ISBI membrane labels (0 = membrane, 255 = cell) turn into one object per cell.
    """
    if labels.ndim == 3:
        labels = labels[..., 0]
    values = np.unique(labels)
    if kind == "auto":
        kind = "binary" if len(values) <= 2 else "instances"
    if kind == "instances":
        return labels.astype(np.int32)
    comp, _ = ndimage.label(labels > 0)
    return comp.astype(np.int32)


def load_pairs(images: str | Path, labels: str | Path, norm: Normalization,
               label_kind: str = "auto") -> list[Sample]:
    from ..pairing import read_pairs

    names, imgs, labs = read_pairs(images, labels)  # by name, never by position
    samples = []
    for name, img, lab in zip(names, imgs, labs):
        if img.ndim == 3:
            img = img.mean(axis=-1)
        if img.shape != lab.shape[:2]:
            raise InputError(f"{images}/{name}: image {img.shape} and labels {lab.shape} differ")
        offset, scale = image_offset_scale(img, norm)
        image = ((img.astype(np.float32) - offset) * scale).astype(np.float32)
        samples.append(Sample(name, image, to_instances(lab, label_kind)))
    return samples


def split(samples: list[Sample], val_fraction: float, seed: int = 0,
          last: bool = False) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split: a seeded shuffle, or the last slices of a stack
    (``last``), which keeps neighbouring EM sections out of validation."""
    n_val = max(1, int(round(len(samples) * val_fraction)))
    if last:
        return samples[:-n_val], samples[-n_val:]
    order = np.random.default_rng(seed).permutation(len(samples))
    val = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(samples) if i not in val],
            [s for i, s in enumerate(samples) if i in val])
