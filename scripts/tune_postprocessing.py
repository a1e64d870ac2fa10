"""Choose TTA mode and post-processing of a shipped model on TRAINING images, report validation.

    python scripts/tta_probs.py nuclei --train 20            # cache softmax maps first
    python scripts/tune_postprocessing.py nuclei             # -> runs/tta/nuclei/tuning.json
    python scripts/tune_postprocessing.py em-membranes

For each TTA mode (none / flips / d4) the post-processing grid is scored on the cached training
images only (nuclei: mean instance F1 at IoU 0.5 over foreground threshold x seed threshold x
minimum size; em-membranes: mean foreground-restricted Rand error, connected components vs the
seeded watershed over its parameters). The best setting of each mode replaces the model's
current settings only when it beats them on the training images by ``MARGIN``; the choice is
then applied once to the validation images, whose numbers never influence a choice.
``--apply`` writes the chosen mode and settings into models/NAME.onnx
(``export.update_metadata``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tta_probs import cache_dir, load, split_from_card  # noqa: E402

MODES = ("none", "flips", "d4")
GRIDS = {
    "three_class": {"foreground_threshold": (0.3, 0.4, 0.5, 0.6),
                    "seed_threshold": (0.5, 0.6, 0.7, 0.8, 0.9),
                    "min_object_size": (10, 20, 30, 45, 60)},
    # 0.8 added 2026-12-03: the watershed's best threshold, so the two methods are compared
    # at equal thresholds (the watershed's local case is smoothed components)
    "components": {"foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                   "min_object_size": (0, 20, 60)},
    # min distance 1 px was added after a look at the training slices (2026-12-03: Rand
    # 0.099 vs 0.142 at 2 px); 5 px was never better than 3
    "watershed": {"foreground_threshold": (0.5, 0.6, 0.7, 0.8),
                  "watershed_h": (0.0, 0.3),
                  "watershed_min_distance": (1.0, 2.0, 3.0),
                  "min_object_size": (0, 20)},
}

# a finer grid around the first grid's nuclei optimum, whose minimum size was on its edge
# (``--ext``; results in tuning_ext.json; the card takes the better of both by TRAINING F1)
GRIDS_EXT = {"three_class": {"foreground_threshold": (0.35, 0.4, 0.45),
                             "seed_threshold": (0.75, 0.8, 0.85),
                             "min_object_size": (50, 60, 75, 90, 110)}}


def predict(probs: np.ndarray, info, settings: dict) -> np.ndarray:
    import dataclasses

    from unet_deploy.postprocess import instances_from_probabilities

    return instances_from_probabilities(probs, dataclasses.replace(info, **settings))


def scores(true: np.ndarray, pred: np.ndarray) -> dict:
    from unet_deploy.metrics import foreground_iou, instance_f1, pixel_error, rand_error

    f1 = instance_f1(true, pred, (0.5, 0.75, 0.9))
    return {"f1@0.5": f1[0.5], "f1@0.75": f1[0.75], "f1@0.9": f1[0.9],
            "fg_iou": foreground_iou(true > 0, pred > 0),
            "rand_error": rand_error(true, pred), "pixel_error": pixel_error(true > 0, pred > 0)}


def mean_scores(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def objective_of(true: np.ndarray, pred: np.ndarray, method: str) -> float:
    """What tuning maximises: instance F1 at IoU 0.5 for nuclei, -Rand error for EM."""
    from unet_deploy.metrics import instance_f1, rand_error

    if method == "three_class":
        return instance_f1(true, pred, (0.5,))[0.5]
    return -rand_error(true, pred)


# a change must clearly pay on the TRAINING images: re-tuned settings replace the model's current
# ones, and a costlier TTA mode replaces a cheaper one (update_cards.recommended), only when they
# beat them by this much in the objective (F1 at IoU 0.5 for nuclei, Rand error for EM)
MARGIN = 0.005


def train_objective(r: dict) -> float:
    return r["train"]["f1@0.5"] if r["method"] == "three_class" else -r["train"]["rand_error"]


def choose(candidates: list[dict], current: dict) -> dict:
    """The best candidate by its TRAINING objective, unless ``current`` is within MARGIN."""
    best = max(candidates, key=train_objective)
    return best if train_objective(best) >= train_objective(current) + MARGIN else current


def current_settings(info) -> tuple[str, dict]:
    """(method, settings) the model ships with, in the grids' terms."""
    if info.instance_scheme == "three_class":
        return "three_class", {"foreground_threshold": info.foreground_threshold,
                               "seed_threshold": info.seed_threshold,
                               "min_object_size": info.min_object_size}
    settings = {"foreground_threshold": info.foreground_threshold,
                "min_object_size": info.min_object_size, "binary_method": info.binary_method}
    if info.binary_method == "watershed":
        settings.update(watershed_h=info.watershed_h,
                        watershed_min_distance=info.watershed_min_distance)
    return info.binary_method, settings


def tune(name: str, folder: Path | None = None, modes=MODES, grids=None,
         out_name: str = "tuning.json", model: Path | None = None) -> dict:
    from unet_deploy.instances import remove_small
    from unet_deploy.model_store import read_onnx
    from unet_deploy.train.data import to_instances as label_instances

    (train, val), cfg = split_from_card(name)
    info = read_onnx(model or ROOT / "models" / f"{name}.onnx").info
    truth = {"train": [label_instances(lab, cfg["label_kind"]) for _, _, lab in train],
             "val": [label_instances(lab, cfg["label_kind"]) for _, _, lab in val]}
    methods = ["three_class"] if info.instance_scheme == "three_class" else \
        ["components", "watershed"]
    result = {"model": name, "modes": {}}
    for mode in modes:
        train_probs = load(name, "train", mode, folder)
        val_probs = load(name, "val", mode, folder)
        per_method = {}

        def row(method: str, settings: dict) -> dict:
            """The settings scored on both splits (train: the choice; val: reported only)."""
            return {"settings": settings, "method": method, **{
                split: mean_scores([scores(truth[split][i], predict(p, info, settings))
                                    for p, i in probs])
                for split, probs in (("train", train_probs), ("val", val_probs))},
                "train_images": len(train_probs), "val_images": len(val_probs)}

        for method in methods:
            grid = dict((grids or GRIDS)[method])
            sizes = grid.pop("min_object_size")
            best = None
            for values in itertools.product(*grid.values()):
                base = dict(zip(grid, values), min_object_size=0)
                if method != "three_class":
                    base["binary_method"] = method
                # the size filter is the last step of every method: objects once per setting
                objects = [(predict(p, info, base), i) for p, i in train_probs]
                for size in sizes:
                    settings = dict(base, min_object_size=size)
                    score = float(np.mean([objective_of(truth["train"][i], remove_small(o, size),
                                                        method) for o, i in objects]))
                    if best is None or score > best[1]:
                        best = (settings, score)
            per_method[method] = row(method, best[0])
            result.setdefault(method, {})[mode] = best[0]
            print(mode, method, json.dumps(per_method[method]), flush=True)
        current = row(*current_settings(info))
        print(mode, "current", json.dumps(current), flush=True)
        result["modes"][mode] = choose(list(per_method.values()), current)
        result.setdefault("current", {})[mode] = current
        result.setdefault("per_method", {})[mode] = per_method
    seconds = (folder or cache_dir(name)) / "seconds.json"
    if seconds.exists():
        result["seconds_per_pass"] = float(np.median(json.loads(seconds.read_text())["per_pass"]))
    out = (folder or cache_dir(name)) / out_name
    out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--apply", choices=MODES, default=None,
                    help="write this mode and its training-chosen settings into the model")
    ap.add_argument("--modes", default=",".join(MODES), help="TTA modes to tune")
    ap.add_argument("--ext", action="store_true", help="the finer nuclei grid (GRIDS_EXT)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a candidate ONNX file (default: models/NAME.onnx); --apply writes it")
    ap.add_argument("--folder", type=Path, default=None,
                    help="the tta_probs.py cache of that model (default: runs/tta/NAME)")
    args = ap.parse_args()
    result = tune(args.name, args.folder, modes=tuple(args.modes.split(",")),
                  grids=GRIDS_EXT if args.ext else None,
                  out_name="tuning_ext.json" if args.ext else "tuning.json", model=args.model)
    if args.apply:
        from unet_deploy.export import update_metadata

        target = args.model or ROOT / "models" / f"{args.name}.onnx"
        chosen = result["modes"][args.apply]
        update_metadata(target, tta=args.apply, **chosen["settings"])
        print(f"{target}: tta={args.apply}, {chosen['settings']}")


if __name__ == "__main__":
    main()
