"""`unet-deploy evaluate`: segment labelled images with a model and score the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def score_pairs(backend, pairs, label_kind: str = "auto") -> dict:
    """Mean instance F1 (IoU 0.5/0.75/0.9), foreground IoU, pixel error and Rand error over
    (raw image, label image) pairs, segmented through the deployment path."""
    from .metrics import foreground_iou, instance_f1, pixel_error, rand_error
    from .pipeline import segment_array
    from .train.data import to_instances as label_instances  # no torch

    rows = []
    for img, lab in pairs:
        pred = segment_array(img, backend=backend, output="instances")
        true = label_instances(lab, label_kind)
        f1 = instance_f1(true, pred, (0.5, 0.75, 0.9))
        rows.append({"f1@0.5": f1[0.5], "f1@0.75": f1[0.75], "f1@0.9": f1[0.9],
                     "fg_iou": foreground_iou(true > 0, pred > 0),
                     "pixel_error": pixel_error(true > 0, pred > 0),
                     "rand_error": rand_error(true, pred)})
    keys = rows[0].keys() if rows else []
    return {"images": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def evaluate_model(model, images: str | Path, labels: str | Path, label_kind: str = "auto",
                   threads: int = 0, limit: int | None = None) -> dict:
    """``score_pairs`` over a folder or stack of images and one of labels, paired by name
    (``pairing.read_pairs``; mismatches are refused with their list, never paired by position).

    Images are fed raw (the model normalizes them itself, as in deployment)."""
    from .backends import open_backend
    from .pairing import read_pairs

    names, imgs, labs = read_pairs(images, labels)
    for name, img, lab in zip(names, imgs, labs):
        if img.shape[:2] != lab.shape[:2]:
            raise InputError(f"{images}: {name} is {img.shape[0]}x{img.shape[1]} but its label "
                             f"image is {lab.shape[0]}x{lab.shape[1]}; check the pairing")
    with open_backend(model, threads=threads) as be:
        return score_pairs(be, list(zip(imgs, labs))[:limit], label_kind)
