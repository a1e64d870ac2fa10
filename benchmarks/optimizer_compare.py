"""Paper SGD (momentum 0.99, batch 1) vs Adam on the nuclei task at an equal, short budget.

    python benchmarks/optimizer_compare.py --steps 300 --threads 1

Same data, seed, model (depth 4, base 8), tile, augmentation; validation F1 (IoU 0.5) and
foreground IoU on the nuclei validation split after every 100 steps. Writes
benchmarks/results/optimizer_compare.md.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from unet_deploy.train.trainer import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bbbc039"
RUNS = {"sgd (paper: lr 0.01, momentum 0.99)": dict(optimizer="sgd", lr=0.01, momentum=0.99),
        "sgd (lr 0.001, momentum 0.99)": dict(optimizer="sgd", lr=0.001, momentum=0.99),
        "adam (lr 0.001)": dict(optimizer="adam", lr=1e-3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rows = {}
    for name, opt in RUNS.items():
        out = Path(tempfile.mkdtemp())
        cfg = TrainConfig(images=str(DATA / "images"), labels=str(DATA / "masks"), out=str(out),
                          name="cmp", scheme="three_class", label_kind="instances", depth=4,
                          base=8, tile=380, steps=args.steps, val_every=100, threads=args.threads,
                          val_fraction=0.2, **opt)
        train(cfg, progress=False)
        rows[name] = [json.loads(x) for x in open(out / "train_log.jsonl")]
        shutil.rmtree(out)
        print(name, [(r["step"], round(r["f1@0.5"], 3), round(r["fg_iou"], 3)) for r in rows[name]])
    lines = ["# SGD (paper) vs Adam, equal budget", "",
             f"nuclei (BBBC039), depth 4, base 8, tile 380, batch 1, {args.steps} steps, seed 0, "
             f"{args.threads} thread(s); validation = the nuclei model's validation split "
             "(argmax 3-class → instances).", "",
             "| optimizer | step | val F1@0.5 | val fg IoU | loss |", "|---|---:|---:|---:|---:|"]
    for name, log in rows.items():
        for r in log:
            lines.append(f"| {name} | {r['step']} | {r['f1@0.5']:.3f} | {r['fg_iou']:.3f} | "
                         f"{r['loss']:.3f} |")
    path = ROOT / "benchmarks" / "results" / "optimizer_compare.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
