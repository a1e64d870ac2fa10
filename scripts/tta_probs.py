"""Per-transform softmax maps of a shipped model on its own training/validation split, cached.

    python scripts/tta_probs.py nuclei --train 30          # -> runs/tta/nuclei/*.npz
    python scripts/tta_probs.py em-membranes --train 24
    python scripts/tta_probs.py nuclei --model runs/nuclei-ft/nuclei.onnx --out runs/tta/nuclei-ft

For every image and each of the 8 dihedral transforms ``t`` this stores what the deployment path
computes with only that transform (``TTABackend`` restricted to ``[t]`` through
``segment_array``: tiles, planner, mirror padding exactly as deployed). TTA "flips" is the mean
of transforms 0-3 and "d4" the mean of all 8, exactly as ``TTABackend`` averages them, so every
mode is evaluated from one set of passes (``load``). Also records seconds per pass.
Probabilities are stored as float16 (the metric code casts back).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def split_from_card(name: str):
    """(train pairs, val pairs) of (name, image, label) exactly as the card's split."""
    from make_card import split_pairs

    card = json.loads((ROOT / "models" / f"{name}.json").read_text())
    return split_pairs(card["config"]), card["config"]


def cache_dir(name: str) -> Path:
    return ROOT / "runs" / "tta" / name


def compute(name: str, n_train: int, threads: int = 0, model: Path | None = None,
            out: Path | None = None) -> Path:
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.pipeline import segment_array
    from unet_deploy.tta import TRANSFORMS, TTABackend

    (train, val), _ = split_from_card(name)
    out = out or cache_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    model = model or ROOT / "models" / f"{name}.onnx"
    seconds = []
    with OnnxRuntimeBackend(model, threads=threads) as be:
        for split, pairs in (("val", val), ("train", train[:n_train])):
            for i, (img_name, img, _) in enumerate(pairs):
                path = out / f"{split}_{i:03d}.npz"
                if path.exists():
                    continue
                maps = []
                for t in TRANSFORMS["d4"]:
                    one = TTABackend(be, "d4")
                    one.transforms = [t]
                    one.activate()
                    t0 = time.perf_counter()
                    maps.append(segment_array(img, backend=one, output="probabilities")
                                .astype(np.float16))
                    seconds.append(time.perf_counter() - t0)
                np.savez(path, probs=np.stack(maps), name=img_name)
                print(f"{split} {i}: {img_name} {np.median(seconds):.2f} s/pass", flush=True)
    if seconds:
        (out / "seconds.json").write_text(json.dumps({"per_pass": seconds}))
    return out


def load(name: str, split: str, mode: str, folder: Path | None = None):
    """[(probabilities (H, W, K) float32 for TTA ``mode``, image index)] from the cache."""
    folder = folder or cache_dir(name)
    k = {"none": 1, "flips": 4, "d4": 8}[mode]
    out = []
    for path in sorted(folder.glob(f"{split}_*.npz")):
        probs = np.load(path)["probs"]
        out.append((probs[:k].astype(np.float32).mean(0), int(path.stem.split("_")[1])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--train", type=int, default=30, help="training images to cache")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None,
                    help="a candidate ONNX file (default: models/NAME.onnx), same split")
    ap.add_argument("--out", type=Path, default=None, help="cache folder (default: runs/tta/NAME)")
    args = ap.parse_args()
    print(compute(args.name, args.train, args.threads, args.model, args.out))


if __name__ == "__main__":
    main()
