"""Ship a trained model: validate it through the deployment path, time it, and write
`models/NAME.onnx` + `models/NAME.md` (the model card).

    python scripts/make_card.py nuclei runs/nuclei
"""

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.evaluate import score_pairs
from unet_deploy.metrics import foreground_iou, instance_f1
from unet_deploy.pipeline import segment_array
from unet_deploy.train.data import read_planes, split, to_instances as label_instances

ROOT = Path(__file__).resolve().parents[1]


def split_pairs(cfg: dict):
    names, imgs = read_planes(Path(cfg["images"]))
    _, labs = read_planes(Path(cfg["labels"]))
    items = list(zip(names, imgs, labs))
    return split(items, cfg["val_fraction"], cfg["seed"], cfg["val_last"])


def tune_postprocessing(path: Path, train_pairs, label_kind: str, n: int = 20) -> dict:
    """Pick, on TRAINING images (validation stays untouched): the foreground threshold by mean
    foreground IoU, then seed threshold and minimum object size by mean instance F1 at IoU 0.5."""
    from unet_deploy.export import update_metadata
    from unet_deploy.postprocess import instance_classes, to_instances

    with OnnxRuntimeBackend(path) as be:
        info = be.info
        probs = [segment_array(img, backend=be, output="probabilities")
                 for _, img, _ in train_pairs[:n]]
    trues = [label_instances(lab, label_kind) for _, _, lab in train_pairs[:n]]
    fg_scores = {}
    for fg in (0.3, 0.4, 0.5, 0.6):
        fg_scores[fg] = float(np.mean([foreground_iou(true > 0, p[..., 0] < fg)
                                       for p, true in zip(probs, trues)]))
    info.foreground_threshold = max(fg_scores, key=fg_scores.get)
    scores = {}
    thresholds = (0.5, 0.6, 0.7, 0.8) if info.instance_scheme == "three_class" else (0.5,)
    for t in thresholds:
        for size in (10, 30, 60):
            info.seed_threshold, info.min_object_size = t, size
            f1 = [instance_f1(true, to_instances(instance_classes(p, info), info))[0.5]
                  for p, true in zip(probs, trues)]
            scores[(t, size)] = float(np.mean(f1))
    (t, size), best = max(scores.items(), key=lambda kv: kv[1])
    update_metadata(path, seed_threshold=t, min_object_size=size,
                    foreground_threshold=info.foreground_threshold)
    return {"foreground_threshold": info.foreground_threshold,
            "train_fg_iou": fg_scores[info.foreground_threshold],
            "seed_threshold": t, "min_object_size": size, "train_f1@0.5": best,
            "grid": {f"{k[0]}/{k[1]}": v for k, v in scores.items()}}


CARD_KEYS = {"f1@0.5": "instance_f1@0.5", "f1@0.75": "instance_f1@0.75",
             "fg_iou": "foreground_iou", "rand_error": "rand_error", "pixel_error": "pixel_error"}


def validate(be, pairs, label_kind: str) -> dict:
    scores = score_pairs(be, [(img, lab) for _, img, lab in pairs], label_kind)
    return {card: scores[key] for key, card in CARD_KEYS.items()}


def speed(be, side: int = 2048, repeats: int = 3) -> float:
    img = np.random.default_rng(0).integers(0, 4000, (side, side)).astype(np.uint16)
    segment_array(img[:256, :256], backend=be)  # warm-up: kernels compile, arena grows
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        segment_array(img, backend=be)
        times.append(time.perf_counter() - t)
    return side * side / 1e6 / float(np.median(times))


def rel(path: str) -> str:
    return path.replace(str(ROOT.parent), "..")


def card_markdown(card: dict, info, commands: list[str], notes: str) -> str:
    m = card["metrics_validation"]
    cfg = card["config"]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items())
    cmds = "\n".join(commands)
    return f"""# Model card: `{card['name']}`

{info.description}

| | |
|---|---|
| file | `models/{card['name']}.onnx` ({card['onnx_bytes'] / 1e6:.1f} MB), weights sha256 `{info.sha256[:16]}…` |
| architecture | paper U-Net, depth {info.depth}, base {info.base}, valid 3x3 convolutions, dropout {cfg['dropout']} at the end of the contracting path, softmax output |
| input | 1 channel; per-image percentile normalization ({info.normalization.low}–{info.normalization.high} %), stored in the model |
| default tile | {info.tile} → output {info.geometry.output_size(info.tile)} (halo {info.geometry.halo(info.tile)}) |
| output classes | {', '.join(f'{i} = {c}' for i, c in enumerate(info.classes))} |
| instances | scheme `{info.instance_scheme}`, foreground where P(background) < {info.foreground_threshold}, seed threshold {info.seed_threshold}, min object size {info.min_object_size} px (all tuned on training images) |
| data | `{rel(cfg['images'])}` + `{rel(cfg['labels'])}` |
| licence | {info.licence} |
| training | {card['steps_run']} steps ({card['train_minutes']} min) on {card['machine']}; best checkpoint at step {card['best_step']}; optimizer {cfg['optimizer']}, batch {cfg['batch_size']}, tile {cfg['tile']}, w0 {cfg['w0']}, sigma {cfg['sigma']} |
| validation split | {'last' if cfg['val_last'] else 'seeded random'} {cfg['val_fraction']:.0%} of the images (seed {cfg['seed']}), never trained on |
| speed here | {card['speed_mpx_s_2048']:.2f} Mpx/s on a 2048x2048 image, ONNX Runtime CPU, 2 cores (shared machine) |

## Validation metrics (through the deployment path: `segment_array(..., output="instances")`)

| metric | value |
|---|---:|
{rows}

{notes}

## Reproduce

```bash
{cmds}
```
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("run", type=Path)
    ap.add_argument("--command", action="append", default=[], help="reproduce step (repeat)")
    ap.add_argument("--notes", default="")
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="total training time when the run was resumed")
    args = ap.parse_args()
    result = json.loads((args.run / "result.json").read_text())
    import torch

    ck = torch.load(args.run / "last.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"])
    log = [json.loads(x) for x in open(args.run / "train_log.jsonl")]
    onnx_path = Path(result["onnx"])
    target = ROOT / "models" / f"{args.name}.onnx"
    shutil.copyfile(onnx_path, target)
    train_pairs, val_pairs = split_pairs(cfg)
    tuning = tune_postprocessing(target, train_pairs, cfg["label_kind"])
    with OnnxRuntimeBackend(target) as be:
        metrics = validate(be, val_pairs, cfg["label_kind"])
        mpx = speed(be)
    from unet_deploy.model_store import read_onnx

    info = read_onnx(target).info
    card = {
        "name": args.name, "metrics_validation": metrics, "postprocessing": tuning, "train_metrics_at_best": result["metrics"],
        "best_step": result["step"], "steps_run": ck["step"],
        "train_minutes": args.train_minutes or round(log[-1]["seconds"] / 60, 1),
        "machine": f"{platform.processor() or platform.machine()}, 2 cores, 1 torch thread",
        "speed_mpx_s_2048": mpx, "onnx_bytes": target.stat().st_size, "config": cfg,
        "sha256": info.sha256,
    }
    (ROOT / "models" / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    (ROOT / "models" / f"{args.name}.md").write_text(
        card_markdown(card, info, args.command, args.notes))
    print(json.dumps(card, indent=2, default=str))


if __name__ == "__main__":
    main()
