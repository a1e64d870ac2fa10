"""CPU INT8 models: ``quantize_int8(model.onnx, model.int8.onnx, calibration=[images...])``
cuts calibration tiles from the user's own images exactly as ``segment`` would feed them (the
model's channel mix and normalization, mirror-padded overlap tiles at the model tile), quantizes
with ``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel int8 weights,
MinMax-calibrated activations, the final Softmax left in float32), passes the result through the
accuracy gate (``gate``; below ``min_agreement`` the build fails and nothing is written) and
writes it with the same ``unet_deploy`` metadata (so ``segment --model model.int8.onnx`` works
unchanged) plus ``unet_deploy_quantization`` with the gate report. The calibration tiles and the
Q/DQ graph are also what the TensorRT builder (``engine_build``) uses for strongly typed INT8.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError, OutputError
from .gate import DEFAULT_MIN_AGREEMENT, GateReport, gate_report, run_onnx
from .io import read_image
from .model_store import file_sha256

QUANT_METADATA_KEY = "unet_deploy_quantization"


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
            # u8 activations / s8 weights is ONNX Runtime's fast x86 path; TensorRT needs
            # symmetric s8 activations. On x86 CPUs without VNNI (AVX2 only) u8 x s8 products
            # are summed in saturating int16: 7-bit weights avoid that (measured on an AVX2
            # EPYC: 99.33 % -> 99.66 % label agreement), and an INT8 file may run on any CPU.
            reduce_range=not symmetric,
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
