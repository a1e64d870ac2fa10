"""Write the measured TTA / post-processing / robustness / fine-tuning results into the model
cards (a section between ``<!-- issue13 -->`` markers, replaced on every run) and the cards'
JSON (``metrics_validation`` of the shipped configuration, ``issue13`` raw results).

    python scripts/update_cards.py em-membranes --verify --extra PROSE.md  # after the tuning

The default TTA mode is the rule's (``recommended``: MARGIN on the training images); ``--shipped
MODE`` overrides it. ``--verify`` scores the shipped file itself for the main table; ``--folder``
names a candidate's cache; PROSE.md is the section's text below its table (``{shift_table}``
in it becomes em_shift_eval.py's table).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tune_postprocessing import MARGIN, choose, train_objective  # noqa: E402

START, END = "<!-- issue13 -->", "<!-- /issue13 -->"
PASSES = {"none": 1, "flips": 4, "d4": 8}


def recommended(tuning: dict) -> str:
    """The cheapest TTA mode no costlier mode beats by MARGIN on the training images."""
    modes = sorted(tuning["modes"], key=PASSES.get)
    chosen = modes[0]
    for mode in modes[1:]:
        if train_objective(tuning["modes"][mode]) >= \
                train_objective(tuning["modes"][chosen]) + MARGIN:
            chosen = mode
    return chosen


def verify(name: str) -> dict:
    """score_pairs of models/NAME.onnx, as shipped, on its card's validation split."""
    from tta_probs import split_from_card
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.evaluate import score_pairs

    (_, val), cfg = split_from_card(name)
    with OnnxRuntimeBackend(ROOT / "models" / f"{name}.onnx") as be:
        return score_pairs(be, [(img, lab) for _, img, lab in val], cfg["label_kind"])


def fmt_settings(s: dict) -> str:
    names = {"foreground_threshold": "fg", "seed_threshold": "seed", "min_object_size": "min size",
             "watershed_h": "h", "watershed_min_distance": "min dist", "binary_method": "method"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in s.items() if k != "binary_method")


def metric_rows(r: dict) -> str:
    v = r["val"]
    return (f"{v['f1@0.5']:.4f} | {v['f1@0.75']:.4f} | {v['f1@0.9']:.4f} | {v['fg_iou']:.4f} | "
            f"{v['rand_error']:.4f} | {v['pixel_error']:.4f}")


def shift_table(shift: dict) -> str:
    """em_shift_eval.py's results: one row per variant, Rand | pixel per (mode, method)."""
    cols = [(mode, method) for mode in shift for method in shift[mode]]
    variants = list(shift[cols[0][0]][cols[0][1]])
    head = "| variant | " + " | ".join(f"{method} + TTA {mode} Rand | pixel"
                                        for mode, method in cols) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(cols)]
    for v in variants:
        cells = [shift[m][meth][v] for m, meth in cols]
        lines.append(f"| {v} | " + " | ".join(f"{c['rand_error']:.4f} | {c['pixel_error']:.4f}"
                                              for c in cells) + " |")
    means = []
    for m, meth in cols:
        shifted = [r for v, r in shift[m][meth].items() if v != "original"]
        means.append(f"**{np.mean([r['rand_error'] for r in shifted]):.4f}** | "
                     f"{np.mean([r['pixel_error'] for r in shifted]):.4f}")
    lines.append("| **mean of the shifted variants** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def section(name: str, tuning: dict, shipped: str, extra: str) -> str:
    lines = [START, "", "## Test-time augmentation and post-processing (issue 13)", ""]
    n_train = next(iter(tuning["modes"].values()))["train_images"]
    n_val = next(iter(tuning["modes"].values()))["val_images"]
    lines += [f"Post-processing chosen per TTA mode on {n_train} **training** images only "
              f"(`scripts/tune_postprocessing.py`; objective: "
              f"{'instance F1 at IoU 0.5' if name == 'nuclei' else 'foreground-restricted Rand error'}"
              f"), then applied once to the {n_val} validation images. Every number goes "
              f"through the deployment path's tiles, planner and mirror padding "
              f"(`scripts/tta_probs.py`).", "",
              "| TTA | post-processing (the grid's best on training images, or the model's own) "
              "| train objective | val F1@0.5 "
              "| F1@0.75 | F1@0.9 | fg IoU | Rand err | pixel err | network passes |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, per_method in tuning["per_method"].items():
        names = {"three_class": "three-class seeds"}
        rows = [(names.get(m, m), r) for m, r in per_method.items()]
        current = tuning["current"][mode]
        if all(r["settings"] != current["settings"] for r in per_method.values()):
            method = names.get(current["method"], current["method"])
            rows.append((f"before this tuning, {method}", current))
        for label, r in rows:
            obj = abs(train_objective(r))
            tag = " **(shipped)**" if mode == shipped and r == tuning["modes"][mode] else ""
            lines.append(f"| {mode}{tag} | {label}: {fmt_settings(r['settings'])} | {obj:.4f} | "
                         f"{metric_rows(r)} | {PASSES[mode]} |")
    lines += ["", extra, "", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--shipped", default=None, choices=list(PASSES),
                    help=f"the default TTA mode (default: the rule, MARGIN {MARGIN})")
    ap.add_argument("--extra", default="", help="markdown appended to the section (a file)")
    ap.add_argument("--verify", action="store_true",
                    help="score the shipped model itself on the validation split through the "
                         "deployment path (its default TTA and settings) for the main table; "
                         "saved as FOLDER/verified.json")
    ap.add_argument("--folder", type=Path, default=None,
                    help="the tta_probs/tune cache (default: runs/tta/NAME)")
    args = ap.parse_args()
    from tta_probs import cache_dir

    folder = args.folder or cache_dir(args.name)
    tuning = json.loads((folder / "tuning.json").read_text())
    ext = folder / "tuning_ext.json"
    if ext.exists():  # the finer grid's best wins a mode when it is better on TRAINING images
        finer = json.loads(ext.read_text())
        for mode, per_method in finer["per_method"].items():
            old, new = tuning["per_method"][mode], per_method
            if max(map(train_objective, new.values())) > max(map(train_objective, old.values())):
                tuning["per_method"][mode] = new
            tuning["modes"][mode] = choose(list(tuning["per_method"][mode].values()),
                                           tuning["current"][mode])
    rule = recommended(tuning)
    print(f"rule (margin {MARGIN} on training images): {rule}", file=sys.stderr)
    args.shipped = args.shipped or rule
    extra = Path(args.extra).read_text() if args.extra else ""
    if (folder / "shift.json").exists():  # em_shift_eval.py; the extra text says where it goes
        extra = extra.replace("{shift_table}",
                              shift_table(json.loads((folder / "shift.json").read_text())))
    card_md = ROOT / "models" / f"{args.name}.md"
    text = card_md.read_text()
    block = section(args.name, tuning, args.shipped, extra)
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: block, text,
                      flags=re.S)
    else:
        text = text.replace("\n## Reproduce", "\n" + block + "\n\n## Reproduce", 1)
    # the main validation table shows the shipped configuration
    v = tuning["modes"][args.shipped]["val"]
    if args.verify:
        v = verify(args.name)
        (folder / "verified.json").write_text(json.dumps(v, indent=1))
    keys = {"instance_f1@0.5": "f1@0.5", "instance_f1@0.75": "f1@0.75",
            "instance_f1@0.9": "f1@0.9", "foreground_iou": "fg_iou",
            "rand_error": "rand_error", "pixel_error": "pixel_error"}
    for card_key, key in keys.items():
        row = f"| {card_key} | {v[key]:.4f} |"
        if re.search(rf"^\| {re.escape(card_key)} \| [0-9.]+ \|$", text, flags=re.M):
            text = re.sub(rf"^\| {re.escape(card_key)} \| [0-9.]+ \|$", row, text, flags=re.M)
        elif card_key == "instance_f1@0.9":
            text = re.sub(r"^(\| instance_f1@0\.75 \| [0-9.]+ \|)$", rf"\1\n{row}", text,
                          flags=re.M)
    # the weights the metrics belong to
    from unet_deploy.model_store import read_onnx

    sha = read_onnx(ROOT / "models" / f"{args.name}.onnx").info.sha256
    text = re.sub(r"weights sha256 `[0-9a-f]{16}…`", f"weights sha256 `{sha[:16]}…`", text)
    card_md.write_text(text)
    card_json = ROOT / "models" / f"{args.name}.json"
    card = json.loads(card_json.read_text())
    card["sha256"] = sha
    card["metrics_validation"] = {k: v[key] for k, key in keys.items()}
    card["issue13"] = {"shipped_tta": args.shipped, "tuning": tuning}
    # what the model's metadata should hold (tune_postprocessing.py --apply writes it)
    card["postprocessing"] = {"tta": args.shipped, **tuning["modes"][args.shipped]["settings"]}
    card_json.write_text(json.dumps(card, indent=2) + "\n")
    print(block)


if __name__ == "__main__":
    main()
