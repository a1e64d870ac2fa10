"""Reproduce the shipped models: `python scripts/train_models.py nuclei|em-membranes [--minutes M]`.

Each recipe is exactly what `unet-deploy train` runs with the flags printed at start-up;
`--robust` is `train --scale-aug 0.2 --blur-aug 1.5 --noise-aug 0.05`.
Runs resume from OUT/last.pt when restarted.
"""

import argparse
import json
import sys
from pathlib import Path

from unet_deploy.metadata import Normalization
from unet_deploy.train.trainer import TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

RECIPES = {
    "nuclei": dict(
        images=str(DATA / "bbbc039" / "images"), labels=str(DATA / "bbbc039" / "masks"),
        name="nuclei", scheme="three_class", label_kind="instances", depth=4, base=16,
        tile=572, steps=6000, optimizer="adam", lr=1e-3, val_fraction=0.2, val_every=250,
        description="BBBC039 U2OS Hoechst nuclei; 3-class (background/interior/border) output "
                    "turned into instances",
        licence="Weights trained on BBBC039 (CC0 1.0). Model weights: CC0 1.0.",
    ),
    "em-membranes": dict(
        images=str(DATA / "isbi2012" / "train-volume.tif"),
        labels=str(DATA / "isbi2012" / "train-labels.tif"),
        name="em-membranes", scheme="binary", label_kind="binary", depth=4, base=16,
        tile=572, steps=6000, optimizer="adam", lr=1e-3, val_fraction=0.2, val_last=True,
        val_every=250,
        description="ISBI 2012 serial-section TEM (Drosophila VNC); classes membrane(0)/cell(1)",
        licence="Trained on ISBI 2012 data (Cardona et al. 2010): research / non-commercial use "
                "only; cite Cardona et al. 2010, PLoS Biol 8(10):e1000502.",
    ),
}

# zoom +-20 % (the pixel-size shift), blur up to 1.5 px, noise up to 5 % of the range
ROBUST = dict(scale_aug=0.2, blur_aug=1.5, noise_aug=0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", choices=sorted(RECIPES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--minutes", type=float, default=85.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    ap.add_argument("--lr", type=float, default=None, help="override lr (e.g. a decay phase)")
    ap.add_argument("--init", default=None, help="start from these weights (train --init)")
    ap.add_argument("--robust", action="store_true",
                    help=f"robustness augmentation on top of elastic: {ROBUST}")
    args = ap.parse_args()
    recipe = dict(RECIPES[args.recipe])
    recipe.update({k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("init", args.init))
                   if v is not None})
    if args.robust:
        recipe.update(ROBUST)
    cfg = TrainConfig(out=args.out or f"runs/{args.recipe}", threads=args.threads,
                      max_minutes=args.minutes, norm=Normalization(), **recipe)
    print(json.dumps({k: v for k, v in vars(cfg).items() if k != "norm"}), file=sys.stderr)
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
