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
from unet_deploy.metrics import foreground_iou, instance_f1, pixel_error, rand_error
from unet_deploy.pipeline import segment_array
from unet_deploy.train.data import read_planes, split, to_instances as label_instances

ROOT = Path(__file__).resolve().parents[1]


def validation_pairs(cfg: dict):
    names, imgs = read_planes(Path(cfg["images"]))
    _, labs = read_planes(Path(cfg["labels"]))
    items = list(zip(names, imgs, labs))
    _, val = split(items, cfg["val_fraction"], cfg["seed"], cfg["val_last"])
    return val


def validate(be, pairs, label_kind: str) -> dict:
    rows = []
    for _, img, lab in pairs:
        pred = segment_array(img, backend=be, output="instances")
        true = label_instances(lab, label_kind)
        f1 = instance_f1(true, pred, (0.5, 0.75))
        rows.append({"instance_f1@0.5": f1[0.5], "instance_f1@0.75": f1[0.75],
                     "foreground_iou": foreground_iou(true > 0, pred > 0),
                     "rand_error": rand_error(true, pred),
                     "pixel_error": pixel_error(true > 0, pred > 0)})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def speed(be, side: int = 2048, repeats: int = 3) -> float:
    img = np.random.default_rng(0).integers(0, 4000, (side, side)).astype(np.uint16)
    segment_array(img[:256, :256], backend=be)  # warm-up: kernels compile, arena grows
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        segment_array(img, backend=be)
        times.append(time.perf_counter() - t)
    return side * side / 1e6 / float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    result = json.loads((args.run / "result.json").read_text())
    import torch

    ck = torch.load(args.run / "last.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"])
    log = [json.loads(x) for x in open(args.run / "train_log.jsonl")]
    onnx_path = Path(result["onnx"])
    target = ROOT / "models" / f"{args.name}.onnx"
    shutil.copyfile(onnx_path, target)
    with OnnxRuntimeBackend(target) as be:
        metrics = validate(be, validation_pairs(cfg), cfg["label_kind"])
        mpx = speed(be)
        info = be.info
    card = {
        "name": args.name, "metrics_validation": metrics, "train_metrics_at_best": result["metrics"],
        "best_step": result["step"], "steps_run": ck["step"],
        "train_minutes": round(log[-1]["seconds"] / 60, 1),
        "machine": f"{platform.processor() or platform.machine()}, 2 cores, 1 torch thread",
        "speed_mpx_s_2048": mpx, "onnx_bytes": target.stat().st_size, "config": cfg,
        "sha256": info.sha256,
    }
    (ROOT / "models" / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2, default=str))


if __name__ == "__main__":
    main()
