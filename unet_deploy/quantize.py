"""CPU INT8 models (ONNX Runtime static Q/DQ quantization) and the accuracy gate.

``quantize_int8(model.onnx, model.int8.onnx, calibration=[images...])``:

1. calibration tiles are cut from the user's own images exactly as ``segment`` would feed them
   (the model's channel mix and normalization, mirror-padded overlap tiles at the model tile);
2. ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8 weights,
   MinMax-calibrated activations, the final Softmax left in float32;
3. the int8 model is compared with the float32 model on the same tiles (the *accuracy gate*):
   per-pixel label agreement (argmax) and max/mean absolute probability error. Below
   ``min_agreement`` the build fails and nothing is written;
4. the output carries the same ``unet_deploy`` metadata (so ``segment --model model.int8.onnx``
   works unchanged) plus ``unet_deploy_quantization`` with the gate report.

Why 99.5 % label agreement by default: label flips can only happen where the float32 model is
itself undecided (p ≈ 0.5), i.e. on the one-pixel rim of object boundaries. For nuclei at the
sizes in BBBC039 those rims are a few percent of all pixels; 0.5 % disagreement is at most a
fraction of that rim, well below the boundary-placement disagreement between human annotators,
and it leaves instance counts and IoU-matched F1 practically unchanged. A precision loss that
flips more than that is no longer "the same model".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError, OutputError
from .io import read_image
from .model_store import file_sha256

QUANT_METADATA_KEY = "unet_deploy_quantization"
DEFAULT_MIN_AGREEMENT = 0.995


# ------------------------------------------------------------------------ gate

@dataclass
class GateReport:
    tiles: int
    pixels: int
    label_agreement: float
    max_abs_error: float
    mean_abs_error: float
    min_agreement: float
    passed: bool

    def summary(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"{verdict}: label agreement {100 * self.label_agreement:.3f}% "
                f"(required >= {100 * self.min_agreement:.2f}%) on {self.tiles} tiles / "
                f"{self.pixels} px, probability error max {self.max_abs_error:.4f} mean "
                f"{self.mean_abs_error:.5f}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        return d


def gate_report(reference: np.ndarray, candidate: np.ndarray,
                min_agreement: float = DEFAULT_MIN_AGREEMENT) -> GateReport:
    """Compare probabilities (N, K, h, w) of a reduced-precision model with float32's."""
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate, np.float32)
    if reference.shape != candidate.shape:
        raise ModelError(f"accuracy gate: output shapes differ {reference.shape} vs "
                         f"{candidate.shape}")
    agree = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    diff = np.abs(reference - candidate)
    finite = bool(np.isfinite(candidate).all())
    if not finite:
        agree = 0.0
    return GateReport(tiles=int(reference.shape[0]),
                      pixels=int(reference.shape[0] * reference.shape[2] * reference.shape[3]),
                      label_agreement=agree, max_abs_error=float(np.nanmax(diff)),
                      mean_abs_error=float(np.nanmean(diff)), min_agreement=float(min_agreement),
                      passed=bool(finite and agree >= min_agreement))


# ----------------------------------------------------------------- calibration data

def expand_calibration(items) -> list[Path]:
    """Files, directories (their .tif/.tiff/.npy files) or glob patterns → sorted paths."""
    import glob

    out: list[Path] = []
    for item in items or ():
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".tif", ".tiff", ".npy"))
        elif any(ch in str(item) for ch in "*?["):
            out += [Path(q) for q in sorted(glob.glob(str(item)))]
        else:
            out.append(p)
    return out


def calibration_tiles(images, info, tile: int | None = None, n_tiles: int = 32,
                      seed: int = 0) -> np.ndarray:
    """Up to ``n_tiles`` float32 tiles (N, C, tile, tile) from ``images`` (paths, directories,
    globs or arrays), produced by the inference pipeline's own gather (channel mix,
    normalization, mirroring), spread evenly over the images."""
    from .normalize import preprocess_for
    from .readers import ArrayReader
    from .tiling import RowSource, gather_batch, plan_tiles

    tile = int(tile or info.tile)
    arrays = [im for im in images if isinstance(im, np.ndarray)]
    paths = expand_calibration([im for im in images if not isinstance(im, np.ndarray)])
    sources = arrays + paths
    if not sources:
        raise InputError("no calibration images given")
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-n_tiles // len(sources)))
    if len(sources) > n_tiles:
        sources = [sources[i] for i in sorted(rng.choice(len(sources), n_tiles, replace=False))]
    out = []
    for src in sources:
        img = src if isinstance(src, np.ndarray) else read_image(src, first_plane=True)
        reader = ArrayReader(np.asarray(img))
        plan = plan_tiles(reader.height, reader.width, info.geometry, tile, shrink=False)
        prep = preprocess_for(reader, info, str(src) if not isinstance(src, np.ndarray)
                              else "calibration array")
        k = min(per_image, plan.n_tiles)
        ids = np.sort(rng.choice(plan.n_tiles, k, replace=False)).astype(np.int64)
        buf = np.empty((k, info.in_channels, tile, tile), np.float32)
        for j, i in enumerate(ids):  # one id at a time: rows of a batch must be contiguous
            gather_batch(RowSource(reader, plan), plan, ids[j : j + 1], prep, buf[j : j + 1])
        out.append(buf)
    return np.concatenate(out)[:n_tiles]


class TileReader:
    """onnxruntime.quantization CalibrationDataReader over an array of tiles."""

    def __init__(self, tiles: np.ndarray, input_name: str = "image", batch: int = 1):
        self.tiles, self.name, self.batch, self.pos = tiles, input_name, batch, 0

    def get_next(self):
        if self.pos >= len(self.tiles):
            return None
        x = self.tiles[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.name: np.ascontiguousarray(x)}

    def rewind(self):
        self.pos = 0


def run_onnx(model, tiles: np.ndarray, batch: int = 4, threads: int = 0) -> np.ndarray:
    """Probabilities of an ONNX model (path or bytes) on ``tiles`` with ONNX Runtime CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model) if isinstance(model, Path) else model, opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: tiles[i : i + batch]})[0]
                           for i in range(0, len(tiles), batch)])


# -------------------------------------------------------------------- quantization

def quantize_qdq(proto, tiles: np.ndarray, symmetric: bool = True, per_channel: bool = True):
    """ModelProto → Q/DQ int8 ModelProto calibrated on ``tiles`` (MinMax). ``symmetric``
    activations (zero point 0) are what TensorRT's explicit quantization requires; the final
    Softmax stays float32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    softmax = [n.name for n in proto.graph.node if n.op_type == "Softmax"]
    with tempfile.TemporaryDirectory(prefix="unet-deploy-q") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        quantize_static(
            str(src), str(dst), TileReader(tiles, proto.graph.input[0].name),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            # u8 activations / s8 weights is ONNX Runtime's fast x86 path (VNNI); TensorRT
            # needs symmetric s8 activations
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "ConvTranspose", "MaxPool", "Relu", "Slice",
                                  "Concat"],
            nodes_to_exclude=softmax, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        return onnx.load(str(dst))


@dataclass
class QuantizeResult:
    path: Path
    report: GateReport
    seconds: float

    def summary(self) -> str:
        return f"{self.path}: int8 (Q/DQ, ONNX Runtime CPU); gate {self.report.summary()}"


def default_int8_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8.onnx")


def quantize_int8(onnx_path: str | Path, out: str | Path | None = None, *,
                  calibration=(), n_tiles: int = 32, tile: int | None = None,
                  min_agreement: float = DEFAULT_MIN_AGREEMENT, overwrite: bool = False,
                  symmetric: bool = False, seed: int = 0) -> QuantizeResult:
    """Build ``model.int8.onnx`` (CPU INT8) from ``model.onnx`` and the user's own images;
    raises ModelError (nothing written) when the accuracy gate fails."""
    import time

    import onnx

    from .model_store import read_onnx

    t0 = time.perf_counter()
    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else default_int8_path(onnx_path)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")
    if not calibration:
        raise InputError("INT8 needs calibration images from your own data: pass "
                         "--calibration IMAGE [--calibration IMAGE ...]")
    info = read_onnx(onnx_path).info
    tiles = calibration_tiles(list(calibration), info, tile, n_tiles, seed)
    proto = onnx.load(str(onnx_path))
    q = quantize_qdq(proto, tiles, symmetric=symmetric)
    meta = {p.key: p.value for p in proto.metadata_props}
    ref = run_onnx(onnx_path, tiles)
    got = run_onnx(q.SerializeToString(), tiles)
    report = gate_report(ref, got, min_agreement)
    if not report.passed:
        raise ModelError(f"{onnx_path}: INT8 model rejected by the accuracy gate: "
                         f"{report.summary()}; keep using the float32 model or calibrate "
                         f"with more representative images")
    del q.metadata_props[:]
    for k, v in meta.items():
        e = q.metadata_props.add()
        e.key, e.value = k, v
    e = q.metadata_props.add()
    e.key = QUANT_METADATA_KEY
    e.value = json.dumps({"precision": "int8", "format": "QDQ", "source_sha256":
                          file_sha256(onnx_path), "calibration_tiles": int(len(tiles)),
                          "gate": report.to_dict()}, sort_keys=True)
    q.producer_name = "unet-deploy"
    onnx.checker.check_model(q)
    tmp = out.with_name(out.name + ".partial")
    onnx.save(q, str(tmp))
    tmp.replace(out)
    return QuantizeResult(out, report, time.perf_counter() - t0)
