"""The paper's training recipe (section 3): large tiles, batch 1, weighted pixel-wise softmax
cross-entropy over the valid output region, elastic augmentation, dropout, He initialisation."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..export import export_onnx, load_checkpoint, unet_from_checkpoint
from ..metadata import ModelInfo, Normalization
from ..postprocess import to_instances
from .augment import random_augment
from .data import Sample, load_pairs, split
from .unet import build_unet
from .weights import three_class_target, unet_weight_map

SCHEMES = {
    "three_class": ["background", "interior", "border"],
    "binary": ["background", "foreground"],
}
# Validation scores keep their definition: during training, binary objects are not size-filtered
# and three-class ones drop objects under 10 px (a deployed model's min_object_size is tuned
# after training, see scripts/make_card.py).
VAL_MIN_OBJECT_SIZE = {"three_class": 10, "binary": 0}


@dataclass
class TrainConfig:
    images: str
    labels: str
    out: str
    name: str = "unet"
    scheme: str = "three_class"
    label_kind: str = "auto"
    depth: int = 4
    base: int = 16
    tile: int = 572
    steps: int = 4000
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.99
    batch_size: int = 1
    dropout: float = 0.5
    batch_norm: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    val_fraction: float = 0.2
    val_last: bool = False
    val_every: int = 250
    seed: int = 0
    threads: int = 0
    resume: bool = True
    max_minutes: float = 0.0  # stop (and export) after this long; 0 = no limit
    # start from these weights: a shipped model name, an .onnx file or a training checkpoint
    # (.pt); architecture and normalization come from it (see ``init_from``)
    init: str = ""
    # robustness augmentation (off in the paper recipe): zoom +-scale_aug (0.2 = +-20 %),
    # Gaussian blur up to blur_aug px, noise up to noise_aug x the image range; gamma and
    # contrast changes are always on (augment.gray_value_jitter)
    scale_aug: float = 0.0
    blur_aug: float = 0.0
    noise_aug: float = 0.0
    description: str = ""
    licence: str = ""
    norm: Normalization = field(default_factory=Normalization)


@dataclass
class Prepared:
    image: np.ndarray  # float32, mirror-padded
    target: np.ndarray  # uint8 classes, mirror-padded
    weights: np.ndarray  # float32, mirror-padded
    pad: int


def make_target(instances: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "three_class":
        return three_class_target(instances)
    return (instances > 0).astype(np.uint8)


def prepare(sample: Sample, cfg: TrainConfig, halo: int, out: int) -> Prepared:
    n_classes = len(SCHEMES[cfg.scheme])
    target = make_target(sample.instances, cfg.scheme)
    weights = unet_weight_map(sample.instances, n_classes=n_classes, w0=cfg.w0,
                              sigma=cfg.sigma, classes=target)
    h, w = target.shape
    pad = halo + max(0, out - min(h, w))
    padded = [np.pad(a, pad, mode="reflect") for a in (sample.image, target, weights)]
    return Prepared(padded[0], padded[1], padded[2].astype(np.float32), pad)


def random_patch(p: Prepared, tile: int, out: int, rng: np.random.Generator):
    """A random input window whose central output window lies inside the original image."""
    h = p.image.shape[0] - 2 * p.pad
    w = p.image.shape[1] - 2 * p.pad
    oy = rng.integers(0, max(1, h - out + 1))
    ox = rng.integers(0, max(1, w - out + 1))
    y0 = p.pad + oy - (tile - out) // 2
    x0 = p.pad + ox - (tile - out) // 2
    win = (slice(y0, y0 + tile), slice(x0, x0 + tile))
    return p.image[win], p.target[win], p.weights[win]


def center(a: np.ndarray, n: int) -> np.ndarray:
    d = (a.shape[-1] - n) // 2
    return a[..., d : d + n, d : d + n]


def predict_probs(model: torch.nn.Module, image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Whole-image softmax (K, H, W): mirror-pad to a legal size, one forward pass, crop."""
    h, w = image.shape
    padded = np.pad(image, info.geometry.whole_image_padding(h, w), mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
    return torch.softmax(logits, 1)[0, :, :h, :w].numpy()


def evaluate(model, val: list[Sample], info: ModelInfo, scheme: str) -> dict:
    from ..metrics import foreground_iou, instance_f1, pixel_error, rand_error

    model.eval()
    scores: dict[str, list[float]] = {}
    for s in val:
        labels = predict_probs(model, s.image, info).argmax(0)
        pred = to_instances(labels, info, min_size=VAL_MIN_OBJECT_SIZE[scheme])
        res = {"f1@0.5": instance_f1(s.instances, pred, (0.5,))[0.5],
               "fg_iou": foreground_iou(s.instances > 0, pred > 0)}
        if scheme == "binary":
            res["rand_error"] = rand_error(s.instances, pred)
            res["pixel_error"] = pixel_error(s.instances > 0, pred > 0)
        for k, v in res.items():
            scores.setdefault(k, []).append(float(v))
    model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}


def score_of(metrics: dict, scheme: str) -> float:
    return -metrics["rand_error"] if scheme == "binary" else metrics["f1@0.5"]


def make_optimizer(model, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def model_info(cfg: TrainConfig) -> ModelInfo:
    return ModelInfo(name=cfg.name, depth=cfg.depth, base=cfg.base, in_channels=1,
                     classes=SCHEMES[cfg.scheme], padding="valid", tile=cfg.tile,
                     normalization=cfg.norm,
                     instance_scheme="three_class" if cfg.scheme == "three_class" else "binary",
                     batch_norm=cfg.batch_norm, dropout=cfg.dropout, licence=cfg.licence,
                     description=cfg.description)


# metadata a fine-tuned model keeps from the model it started from, when the classes match
_CARRIED = ("classes", "seed_threshold", "min_object_size", "foreground_threshold", "tta",
            "binary_method", "watershed_h", "watershed_min_distance", "expects",
            "default_output")


def initial_weights(spec: str):
    """(UNet, ModelInfo) of ``--init``: a shipped model name or ONNX path (weights read back
    from the graph) or a training checkpoint ``.pt`` (weights-only)."""
    from ..export import load_training_checkpoint
    from ..model_store import resolve_model
    from .unet import unet_from_onnx

    if Path(spec).suffix == ".pt":
        return load_training_checkpoint(spec)
    return unet_from_onnx(resolve_model(spec))


def init_from(cfg: TrainConfig, info: ModelInfo) -> tuple[dict, ModelInfo, str]:
    """(state dict to load, ModelInfo of the new model, one-line note) for ``cfg.init``.

    Depth, base, padding, input channels and normalization are the init model's (``cfg`` is
    updated to match, so the run's config says what was trained). When its classes fit
    ``cfg.scheme`` (same count and instance scheme) every weight and the post-processing
    settings are kept; otherwise the 1x1 head is re-initialised and the note says so."""
    src_model, src = initial_weights(cfg.init)
    state = src_model.state_dict()
    if src.in_channels != 1:
        raise InputError(f"--init {cfg.init}: the model takes {src.in_channels} channels; "
                         f"training takes 1-channel images; use a 1-channel model")
    batch_norm = any(k.endswith("running_mean") for k in state)
    cfg.depth, cfg.base, cfg.batch_norm = src.depth, src.base, batch_norm
    cfg.norm = src.normalization
    new = dataclasses.replace(info, depth=src.depth, base=src.base, padding=src.padding,
                              in_channels=1, normalization=src.normalization,
                              batch_norm=batch_norm)
    if not new.geometry.is_legal(cfg.tile):
        raise InputError(f"--tile {cfg.tile} is not a legal input size for the depth-"
                         f"{src.depth} model of --init {cfg.init}; try "
                         f"{new.geometry.nearest_legal(cfg.tile)}")
    same = (len(src.classes) == len(new.classes)
            and src.instance_scheme == new.instance_scheme)
    if same:
        for key in _CARRIED:
            setattr(new, key, getattr(src, key))
        return state, new, (f"--init {cfg.init}: all weights, classes "
                            f"{'/'.join(src.classes)} and post-processing settings kept")
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return state, new, (f"--init {cfg.init}: its classes {'/'.join(src.classes)} "
                        f"({src.instance_scheme}) do not fit --scheme {cfg.scheme} "
                        f"({'/'.join(new.classes)}); the 1x1 head is re-initialised, all other "
                        f"weights are kept")


def save_checkpoint(path: Path, model, opt, step: int, best: float, rng, cfg, info):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "best": best, "torch_rng": torch.get_rng_state(),
                "np_rng": json.dumps(rng.bit_generator.state),
                "config": json.dumps(asdict(cfg)), "info": info.to_json()}, tmp)
    tmp.replace(path)


def append_log(out: Path, entry: dict) -> None:
    with open(out / "train_log.jsonl", "a") as log:
        log.write(json.dumps(entry) + "\n")


def sample_batch(prepared: list[Prepared], cfg: TrainConfig, out_size: int, rng):
    """A batch of augmented (image, target, weights) tiles as tensors."""
    xs, ys, ws = [], [], []
    for _ in range(cfg.batch_size):
        p = prepared[rng.integers(len(prepared))]
        img, tgt, wts = random_augment(*random_patch(p, cfg.tile, out_size, rng), rng,
                                       label_shape=(out_size, out_size),
                                       max_scale=cfg.scale_aug, blur=cfg.blur_aug,
                                       noise=cfg.noise_aug)
        xs.append(img)
        ys.append(tgt)
        ws.append(wts)
    return (torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)),
            torch.from_numpy(np.stack(ys).astype(np.int64)),
            torch.from_numpy(np.stack(ws).astype(np.float32)))


def resume(last: Path, model, opt, cfg: TrainConfig, rng) -> tuple[int, float]:
    """Restore model, optimizer and RNG states; returns (step, best score)."""
    ck = load_checkpoint(last)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    for group in opt.param_groups:  # the given lr wins, so a resumed run can decay it
        group["lr"] = cfg.lr
    torch.set_rng_state(ck["torch_rng"])
    rng.bit_generator.state = json.loads(ck["np_rng"])
    return ck["step"], ck["best"]


def output_side(cfg: TrainConfig, info: ModelInfo) -> int:
    out_size = info.geometry.output_size(cfg.tile)
    if out_size is None:
        raise InputError(f"--tile {cfg.tile} is not a legal input size for depth {cfg.depth}; "
                         f"try {info.geometry.nearest_legal(cfg.tile)}")
    return out_size


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) a run in ``cfg.out``; exports the best checkpoint to ONNX at the end."""
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    info = model_info(cfg)
    last = out / "last.pt"
    init_state = None
    if cfg.init:  # architecture and metadata from the init model (also when resuming)
        init_state, info, note = init_from(cfg, info)
        if cfg.resume and last.exists():
            init_state = None  # a resumed run continues from its own weights
        else:
            print(note, flush=True)
            append_log(out, {"step": 0, "init": cfg.init, "note": note})
    out_size = output_side(cfg, info)
    samples = load_pairs(cfg.images, cfg.labels, cfg.norm, cfg.label_kind)
    train_set, val_set = split(samples, cfg.val_fraction, cfg.seed, cfg.val_last)
    prepared = [prepare(s, cfg, (cfg.tile - out_size) // 2, out_size) for s in train_set]
    model = build_unet(info)
    if init_state is not None:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise InputError(f"--init {cfg.init}: weights do not fit (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    opt = make_optimizer(model, cfg)
    step, best = resume(last, model, opt, cfg, rng) if cfg.resume and last.exists() else (0, -np.inf)
    t0 = time.time()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=cfg.name)
    metrics: dict = {}
    while step < cfg.steps:
        x, y, w = sample_batch(prepared, cfg, out_size, rng)
        loss = (F.cross_entropy(model(x), y, reduction="none") * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.4f}" for k, v in metrics.items()})
        timed_out = cfg.max_minutes and (time.time() - t0) > cfg.max_minutes * 60
        if step % cfg.val_every == 0 or step == cfg.steps or timed_out:
            metrics = evaluate(model, val_set, info, cfg.scheme)
            if score_of(metrics, cfg.scheme) > best:
                best = score_of(metrics, cfg.scheme)
                torch.save({"model": model.state_dict(), "info": info.to_json(), "step": step,
                            "metrics": json.dumps(metrics)}, out / "best.pt")
            save_checkpoint(last, model, opt, step, best, rng, cfg, info)
            append_log(out, {"step": step, "loss": loss.item(),
                             "seconds": time.time() - t0, **metrics})
        if timed_out:
            break
    bar.close()
    return finish(out, info, cfg)


def finish(out: Path, info: ModelInfo, cfg: TrainConfig) -> dict:
    """Export the best checkpoint to ONNX and report its validation metrics."""
    ck = load_checkpoint(out / "best.pt")
    model, _ = unet_from_checkpoint(ck, out / "best.pt")
    path = export_onnx(model, info, out / f"{cfg.name}.onnx")
    result = {"onnx": str(path), "step": ck["step"], "metrics": json.loads(ck["metrics"])}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result

