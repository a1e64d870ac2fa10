"""Fine-tuning vs training from scratch on a few images, at an equal (short) time budget.

    python scripts/finetune_compare.py --n 5,10 --minutes 3 --init nuclei,em-membranes

For each n, the first n images of the nuclei model's own training split are the training set
and its 30-image validation split is the validation set (files are symlinked so the trainer's
``--val-last`` split is exactly that). Every arm (scratch, and one per ``--init``) of one n runs
*at the same time* in its own process with 1 torch thread, so load from anything else on the
machine hits all arms alike; each stops after ``--minutes`` and exports its best checkpoint.
The exported models are then scored on the validation split through the deployment path
(``evaluate.score_pairs``: instances with each model's metadata post-processing).
Writes benchmarks/results/finetune_compare.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def make_split(n: int, folder: Path) -> tuple[Path, Path]:
    """Folders of symlinks: n training images then the 30 validation images, sorted so the
    validation images are last."""
    from tta_probs import split_from_card

    (train, val), cfg = split_from_card("nuclei")
    imgs, labs = folder / "images", folder / "masks"
    for d in (imgs, labs):
        d.mkdir(parents=True, exist_ok=True)
    src_i, src_l = Path(cfg["images"]), Path(cfg["labels"])
    for prefix, items in (("a", train[:n]), ("z", val)):
        for name, _, _ in items:
            for src, dst in ((src_i, imgs), (src_l, labs)):
                link = dst / f"{prefix}_{name}.tif"
                if not link.exists():
                    link.symlink_to(src / f"{name}.tif")
    return imgs, labs


def run_arm(args) -> None:
    imgs, labs, out, init, minutes, n_val, total = args
    from unet_deploy.train.trainer import TrainConfig, train

    cfg = TrainConfig(images=str(imgs), labels=str(labs), out=str(out), name="ft",
                      scheme="three_class", label_kind="instances", depth=4, base=16, tile=572,
                      steps=100000, lr=1e-4 if init else 1e-3, val_fraction=n_val / total,
                      val_last=True, val_every=100000, threads=1, max_minutes=minutes,
                      init=init or "", resume=False)
    t0 = time.time()
    train(cfg, progress=False)
    (Path(out) / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="5,10")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--init", default="nuclei,em-membranes")
    ap.add_argument("--out", default=str(ROOT / "runs" / "finetune"))
    args = ap.parse_args()
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.evaluate import score_pairs
    from tta_probs import split_from_card

    (_, val), _ = split_from_card("nuclei")
    arms = [""] + [a for a in args.init.split(",") if a]
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        base = Path(args.out) / f"n{n}"
        imgs, labs = make_split(n, base / "data")
        jobs = [(imgs, labs, base / (arm or "scratch"), arm, args.minutes, len(val),
                 n + len(val)) for arm in arms]
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            pool.map(run_arm, jobs)
        for arm, job in zip(arms, jobs):
            out = Path(job[2])
            log = [json.loads(x) for x in open(out / "train_log.jsonl")]
            steps = max(e["step"] for e in log)
            with OnnxRuntimeBackend(out / "ft.onnx", threads=2) as be:
                s = score_pairs(be, [(img, lab) for _, img, lab in val], "instances")
            rows.append({"n": n, "arm": arm or "scratch", "steps": steps, **s,
                         "note": next((e.get("note", "") for e in log if "note" in e), "")})
            print(json.dumps(rows[-1]), flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Fine-tuning vs training from scratch (nuclei task, few images)", "",
             f"Equal budget: {args.minutes:g} min of training per arm (1 torch thread; the arms "
             f"of one n ran at the same time on this shared 2-core machine), Adam, lr 1e-3 from "
             f"scratch, 1e-4 fine-tuning, tile 572, batch 1. Training images: the first n of the "
             f"nuclei model's training split; scores: its 30-image validation split through the "
             f"deployment path (instances, each model's metadata post-processing).", "",
             "| train images | start | steps in budget | F1@0.5 | F1@0.75 | F1@0.9 | fg IoU |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['arm']} | {r['steps']} | {r['f1@0.5']:.3f} | "
                     f"{r['f1@0.75']:.3f} | {r['f1@0.9']:.3f} | {r['fg_iou']:.3f} |")
    lines += ["", "Notes: `nuclei` was itself trained on the whole training split (including these "
              "n images), so that arm measures that fine-tuning keeps (or loses) what the model "
              "knows; `em-membranes` (2 classes, EM) is a cross-domain start whose 1x1 head is "
              "re-initialised (3 classes needed).",
              "",
              "Post-processing is each model's metadata: the `nuclei` arm keeps the nuclei "
              "model's tuned settings, the others use the defaults (argmax foreground, seed "
              "threshold 0.5, 10 px), so only the `nuclei` arm's instances are tuned. The number "
              "of steps a budget buys depends on the machine's load (see the table); with a "
              "budget this short the comparison shows where each start *begins*, not where "
              "it converges."]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "finetune_compare.md").write_text(text)


if __name__ == "__main__":
    main()
