"""em-membranes under a simulated change of microscope: validation slices rescaled (0.87x,
1.15x: pixel size), gamma 0.7 / 1.4 (membrane contrast) and added Gaussian noise.

    python scripts/em_shift_eval.py --modes none,flips     # -> runs/tta/em-membranes/shift.json

Each variant is segmented through the deployment path (``segment_array`` with the TTA mode;
probabilities), then post-processed two ways with settings chosen on *training* slices
(``runs/tta/em-membranes/tuning.json`` from scripts/tune_postprocessing.py): connected components
(the old method) and the seeded watershed. Scores: foreground-restricted Rand error and pixel
error against the equally transformed labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

NOISE_SIGMA = 12.0  # gray levels of the uint8 slices (about 5 % of the range)


def variants(img: np.ndarray, lab: np.ndarray, rng):
    """(name, image uint8, label image 0/255) for every shift."""
    yield "original", img, lab
    for z in (0.87, 1.15):
        yield (f"rescale {z}x", np.clip(ndimage.zoom(img.astype(np.float32), z, order=1),
                                        0, 255).astype(np.uint8),
               ndimage.zoom(lab, z, order=0))
    for g in (0.7, 1.4):
        yield f"gamma {g}", (255 * (img / 255.0) ** g).round().astype(np.uint8), lab
    noisy = img.astype(np.float32) + rng.normal(0, NOISE_SIGMA, img.shape)
    yield f"noise sigma {NOISE_SIGMA:g}", np.clip(noisy, 0, 255).round().astype(np.uint8), lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="none,flips")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "em-membranes.onnx")
    ap.add_argument("--folder", type=Path, default=None,
                    help="its tta_probs/tune cache (default: runs/tta/em-membranes)")
    args = ap.parse_args()
    from tta_probs import cache_dir, split_from_card
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.metrics import pixel_error, rand_error
    from unet_deploy.pipeline import segment_array
    from unet_deploy.postprocess import instances_from_probabilities
    from unet_deploy.train.data import to_instances as label_instances

    (_, val), _ = split_from_card("em-membranes")
    folder = args.folder or cache_dir("em-membranes")
    tuning = json.loads((folder / "tuning.json").read_text())
    rng = np.random.default_rng(0)
    results = {}
    with OnnxRuntimeBackend(args.model, threads=args.threads) as be:
        base_info = dataclasses.replace(be.info, tta="none")
        for mode in args.modes.split(","):
            settings = {"components": tuning["components"][mode], "watershed":
                        tuning["modes"][mode]["settings"]
                        if tuning["modes"][mode]["method"] == "watershed"
                        else tuning["watershed"][mode]}
            for _, img, lab in val:
                for name, vimg, vlab in variants(img, lab, rng):
                    probs = segment_array(vimg, backend=be, output="probabilities", tta=mode)
                    true = label_instances(vlab, "binary")
                    for method, s in settings.items():
                        info = dataclasses.replace(base_info, **s)
                        pred = instances_from_probabilities(probs, info)
                        row = results.setdefault(mode, {}).setdefault(method, {}).setdefault(
                            name, {"rand_error": [], "pixel_error": []})
                        row["rand_error"].append(rand_error(true, pred))
                        row["pixel_error"].append(pixel_error(true > 0, pred > 0))
            print(mode, "done", flush=True)
    summary = {m: {meth: {v: {k: float(np.mean(x)) for k, x in d.items()}
                          for v, d in by_v.items()} for meth, by_v in by_m.items()}
               for m, by_m in results.items()}
    out = folder / "shift.json"
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
