"""Write the measured TTA / post-processing / robustness / fine-tuning results into the model
cards (a section between ``<!-- issue13 -->`` markers, replaced on every run) and the cards'
JSON (``metrics_validation`` of the shipped configuration, ``issue13`` raw results).

    python scripts/update_cards.py nuclei --shipped d4        # after tune_postprocessing.py
    python scripts/update_cards.py em-membranes --shipped flips
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

START, END = "<!-- issue13 -->", "<!-- /issue13 -->"
PASSES = {"none": 1, "flips": 4, "d4": 8}


def fmt_settings(s: dict) -> str:
    names = {"foreground_threshold": "fg", "seed_threshold": "seed", "min_object_size": "min size",
             "watershed_h": "h", "watershed_min_distance": "min dist", "binary_method": "method"}
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in s.items() if k != "binary_method")


def metric_rows(r: dict) -> str:
    v = r["val"]
    return (f"{v['f1@0.5']:.4f} | {v['f1@0.75']:.4f} | {v['f1@0.9']:.4f} | {v['fg_iou']:.4f} | "
            f"{v['rand_error']:.4f} | {v['pixel_error']:.4f}")


def section(name: str, tuning: dict, shipped: str, extra: str) -> str:
    lines = [START, "", "## Test-time augmentation and post-processing (issue 13)", ""]
    before = tuning["shipped_before"]["val"]
    n_train = next(iter(tuning["modes"].values()))["train_images"]
    n_val = next(iter(tuning["modes"].values()))["val_images"]
    lines += [f"Post-processing chosen per TTA mode on {n_train} **training** images only "
              f"(`scripts/tune_postprocessing.py`; objective: "
              f"{'instance F1 at IoU 0.5' if name == 'nuclei' else 'foreground-restricted Rand error'}"
              f"), then applied once to the {n_val} validation images. Every number goes "
              f"through the deployment path's tiles, planner and mirror padding "
              f"(`scripts/tta_probs.py`).", "",
              "| TTA | post-processing (chosen on training images) | train objective | val F1@0.5 "
              "| F1@0.75 | F1@0.9 | fg IoU | Rand err | pixel err | network passes |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| none (as shipped before) | previous settings | – | "
              f"{before['f1@0.5']:.4f} | {before['f1@0.75']:.4f} | {before['f1@0.9']:.4f} | "
              f"{before['fg_iou']:.4f} | {before['rand_error']:.4f} | "
              f"{before['pixel_error']:.4f} | 1 |"]
    for mode, per_method in tuning["per_method"].items():
        for method, r in per_method.items():
            obj = r["train"]["f1@0.5"] if method == "three_class" else r["train"]["rand_error"]
            tag = " **(shipped)**" if mode == shipped and r["method"] == \
                tuning["modes"][mode]["method"] else ""
            label = method if method != "three_class" else "three-class seeds"
            lines.append(f"| {mode}{tag} | {label}: {fmt_settings(r['settings'])} | {obj:.4f} | "
                         f"{metric_rows(r)} | {PASSES[mode]} |")
    lines += ["", extra, "", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--shipped", required=True, choices=list(PASSES))
    ap.add_argument("--extra", default="", help="markdown appended to the section (a file)")
    ap.add_argument("--verified", default="", help="score_pairs JSON of the shipped model "
                    "through the deployment path (preferred for the main table)")
    ap.add_argument("--folder", type=Path, default=None,
                    help="the tta_probs/tune cache (default: runs/tta/NAME)")
    args = ap.parse_args()
    from tta_probs import cache_dir

    folder = args.folder or cache_dir(args.name)
    tuning = json.loads((folder / "tuning.json").read_text())
    ext = folder / "tuning_ext.json"
    if ext.exists():  # the finer grid's choice wins a mode when it is better on TRAINING images
        finer = json.loads(ext.read_text())
        for mode, r in finer["modes"].items():
            if r["train"]["f1@0.5"] > tuning["modes"][mode]["train"]["f1@0.5"]:
                tuning["modes"][mode] = r
                tuning["per_method"][mode] = finer["per_method"][mode]
    extra = Path(args.extra).read_text() if args.extra else ""
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
    if args.verified:  # the shipped model itself, segment_array(..., output="instances")
        v = json.loads(Path(args.verified).read_text())
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
    card_md.write_text(text)
    card_json = ROOT / "models" / f"{args.name}.json"
    card = json.loads(card_json.read_text())
    card["metrics_validation"] = {k: v[key] for k, key in keys.items()}
    card["issue13"] = {"shipped_tta": args.shipped, "tuning": tuning}
    card_json.write_text(json.dumps(card, indent=2) + "\n")
    print(block)


if __name__ == "__main__":
    main()
