"""Pairing images with their label images by name (for `evaluate` and `train`), never by sorted
position: a mask named like its image, optionally with a suffix such as ``_mask``, ``_labels``,
``_seg`` or ``_gt``, belongs to it. Anything unmatched is refused with the list of names, so a
wrong or missing mask can never be scored against another image.

Two folders are paired file by file; two files (single images or stacks of equal length) slice
by slice; a folder with a file is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import InputError, InputNotFoundError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
LABEL_TAGS = ("mask", "masks", "label", "labels", "seg", "segmentation", "gt", "groundtruth",
              "ground_truth", "annotation", "annotations", "instances", "img", "image")
_TAG = re.compile(r"[_\-. ](?:" + "|".join(sorted(LABEL_TAGS, key=len, reverse=True))
                  + r")$", re.I)
SHOWN = 5


def name_key(stem: str) -> str:
    """``img01_mask`` -> ``img01``: lower case, trailing label/image tags removed."""
    key = stem.lower()
    while (m := _TAG.search(key)) and m.start() > 0:
        key = key[: m.start()]
    return key


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no images ({' '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _listing(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN
                                       else "")


def pair_folders(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image file, label file) pairs of two folders, matched by ``name_key``."""
    imgs, labs = image_files(images), image_files(labels)
    by_key: dict[str, list[Path]] = {}
    for p in labs:
        by_key.setdefault(name_key(p.stem), []).append(p)
    dup = [f"{k}: {', '.join(p.name for p in v)}" for k, v in by_key.items() if len(v) > 1]
    if dup:
        raise InputError(f"{labels}: several label images match one name ({dup[0]}); keep one "
                         f"per image")
    img_keys: dict[str, Path] = {}
    for p in imgs:
        if name_key(p.stem) in img_keys:
            raise InputError(f"{images}: {img_keys[name_key(p.stem)].name} and {p.name} have "
                             f"the same name; keep one")
        img_keys[name_key(p.stem)] = p
    no_label = [p.name for k, p in img_keys.items() if k not in by_key]
    no_image = [v[0].name for k, v in by_key.items() if k not in img_keys]
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"no label image for {_listing(no_label)}")
        if no_image:
            parts.append(f"no image for label {_listing(no_image)}")
        raise InputError(f"{images} ({len(imgs)} images) and {labels} ({len(labs)} label "
                         f"images) do not pair by name: {'; '.join(parts)}; name each label "
                         f"image like its image (a suffix such as _mask or _labels is fine)")
    return [(img_keys[k], by_key[k][0]) for k in img_keys]


def read_pairs(images: str | Path, labels: str | Path
               ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(names, images, label images), paired by name (folders) or slice (files)."""
    from .io import read_image

    images, labels = Path(images), Path(labels)
    for p in (images, labels):
        if not p.exists():
            raise InputNotFoundError(f"{p}: no such file or folder; check the path")
    if images.is_dir() != labels.is_dir():
        raise InputError(f"{images} and {labels}: give two folders (paired by file name) or two "
                         f"files (single images or stacks, paired by slice), not one of each")
    if images.is_dir():
        pairs = pair_folders(images, labels)
        return ([i.stem for i, _ in pairs], [read_image(i) for i, _ in pairs],
                [read_image(lab) for _, lab in pairs])
    img, lab = read_image(images), read_image(labels)
    as_stack = img.ndim > 2 and not (img.ndim == 3 and img.shape[-1] in (3, 4) and lab.ndim == 2)
    if not as_stack:
        return [images.stem], [img], [lab]
    if lab.ndim != img.ndim or len(img) != len(lab):
        raise InputError(f"{images}: {len(img)} slices but {labels}: "
                         f"{len(lab) if lab.ndim == img.ndim else 1} label slice(s); give "
                         f"stacks of equal length")
    return [f"{images.stem}[{i}]" for i in range(len(img))], list(img), list(lab)
