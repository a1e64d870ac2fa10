"""Export a model as a bioimage.io model package (model spec 0.5) for deepImageJ, ilastik and
the other bioimage.io consumers: ONNX weights, axes with the legal-size rule (min + n * 2^depth),
the valid-convolution border as the output's size offset, per-image percentile ``scale_range``
preprocessing (the model's own normalization), test tensors, a cover image, the model card as
documentation, the licence and the citations (Ronneberger et al. 2015 and the training data).

Nothing here needs the ``bioimageio`` packages: ``rdf.yaml`` is written as JSON (a subset of
YAML). ``validate_package`` runs the reference validator when it is installed (the
``bioimageio`` extra): ``bioimageio.core``'s model test, else ``bioimageio.spec``'s checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, OptionError, OutputError

FORMAT_VERSION = "0.5.4"
UNET_CITATION = {"text": "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for "
                         "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351:234-241.",
                 "doi": "10.1007/978-3-319-24574-4_28"}
# the training data of the shipped models, as their sources ask to be cited
DATA_CITATIONS = {
    "nuclei": [{"text": "Caicedo JC, Roth J, Goodman A, et al. Evaluation of Deep Learning "
                        "Strategies for Nucleus Segmentation in Fluorescence Images. Cytometry A "
                        "2019 (BBBC039, Broad Bioimage Benchmark Collection).",
                "doi": "10.1002/cyto.a.23863"},
               {"text": "Ljosa V, Sokolnicki KL, Carpenter AE. Annotated high-throughput "
                        "microscopy image sets for validation. Nature Methods 2012.",
                "doi": "10.1038/nmeth.2083"}],
    "em-membranes": [{"text": "Cardona A, Saalfeld S, Preibisch S, et al. An Integrated "
                              "Micro- and Macroarchitectural Analysis of the Drosophila Brain "
                              "by Computer-Assisted Serial Section Electron Microscopy. PLoS "
                              "Biol 2010 (ISBI 2012 EM segmentation challenge data).",
                      "doi": "10.1371/journal.pbio.1000502"},
                     {"text": "Arganda-Carreras I, Turaga SC, Berger DR, et al. Crowdsourcing "
                              "the creation of image segmentation algorithms for connectomics. "
                              "Front Neuroanat 2015.",
                      "doi": "10.3389/fnana.2015.00142"}],
}
SPDX_IN_TEXT = {"CC0": "CC0-1.0", "CC-BY-4.0": "CC-BY-4.0", "CC BY 4.0": "CC-BY-4.0",
                "MIT": "MIT", "Apache-2.0": "Apache-2.0", "BSD-3-Clause": "BSD-3-Clause"}
TEST_SIDE = 256  # the test tensor: the smallest legal side from here
EPS = 1e-6  # scale_range's eps


@dataclass
class PackageResult:
    path: Path
    name: str
    rdf: dict

    def summary(self) -> str:
        size = self.path.stat().st_size / 1e6
        axes = self.rdf["inputs"][0]["axes"][-1]["size"]
        return (f"{self.path}: bioimage.io model '{self.name}' (spec {self.rdf['format_version']},"
                f" ONNX weights, input side {axes['min']} + n*{axes['step']}), {size:.1f} MB")


def spdx_licence(text: str) -> str | None:
    """The SPDX id stated in a metadata licence text, if it names exactly one known one."""
    found = {v for k, v in SPDX_IN_TEXT.items() if re.search(rf"\b{re.escape(k)}\b", text)}
    return found.pop() if len(found) == 1 else None


def display_name(name: str) -> str:
    """bioimage.io names: 5-128 characters of letters, digits, spaces, - _ ( )."""
    clean = re.sub(r"[^A-Za-z0-9 _\-()]", " ", f"unet-deploy {name} U-Net").strip()
    return re.sub(r"\s+", " ", clean)[:128]


def synthetic_sample(side: int, info, seed: int = 0) -> np.ndarray:
    """A (side, side, C) float32 test image like the model's inputs: bright blobs on a dark
    background for fluorescence models, dark lines on bright cells otherwise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    img = np.zeros((side, side), np.float32)
    for _ in range(max(4, side * side // 4000)):
        cy, cx, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(6, 14)
        img += np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) ** 2)
    if (info.expects or {}).get("background") != "dark":
        img = 1.5 - img
    img = 100 + 1000 * img + rng.normal(0, 10, img.shape).astype(np.float32)
    return np.repeat(img[..., None], info.in_channels, -1).astype(np.float32)


def scale_range(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """bioimage.io's ``scale_range`` over (y, x) per channel of a (1, C, H, W) tensor."""
    lo = np.percentile(x, low, axis=(2, 3), keepdims=True)
    hi = np.percentile(x, high, axis=(2, 3), keepdims=True)
    return ((x - lo) / (hi - lo + EPS)).astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_package(model, out: str | Path | None = None, *, licence: str | None = None,
                   sample: str | Path | None = None, authors: list[str] | None = None,
                   cite: list[str] | None = None, overwrite: bool = False) -> PackageResult:
    """Write ``out`` (default ``NAME.zip``), a bioimage.io model package of ``model`` (a
    shipped name or an .onnx path). ``licence``: SPDX id of the weights (default: read from
    the model's licence text when it names one). ``sample``: an image for the test tensors
    and cover (default: a synthetic one). ``cite``: extra "TEXT | DOI-or-URL" entries."""
    import onnxruntime as ort

    from .io import read_image
    from .model_store import read_onnx, resolve_model
    from .preview import render

    path = resolve_model(model)
    if path.suffix != ".onnx":
        raise ModelError(f"{path}: bioimage.io packages hold ONNX weights; pass the .onnx model "
                         f"(engines are built per machine)")
    info = read_onnx(path).info
    name = info.name or path.stem
    out = Path(out) if out else Path(f"{name}.zip")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist; create it first")
    spdx = licence or spdx_licence(info.licence)
    if not spdx:
        raise OptionError(f"{path}: the model's licence ({info.licence or 'not stated'}) names "
                          f"no SPDX licence id; state the weights' licence with --license "
                          f"(e.g. CC-BY-4.0)")
    geo = info.geometry
    step, smallest = 2**geo.depth, geo.input_for_output(1)
    side = geo.input_for_output(1)
    while side < TEST_SIDE:
        side += step
    offset = geo.output_size(side) - side

    # test tensors: the sample (centre crop / mirrored to side x side), the model's output
    img = (read_image(sample, first_plane=True) if sample else synthetic_sample(side, info))
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[-1] != info.in_channels:
        raise OptionError(f"{sample}: {img.shape[-1]} channel(s) but the model takes "
                          f"{info.in_channels}; pass a matching sample image")
    pad = [(max(0, (side - s) // 2), max(0, side - s - (side - s) // 2)) for s in img.shape[:2]]
    img = np.pad(img, pad + [(0, 0)], mode="reflect") if any(sum(p) for p in pad) else img
    y0, x0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    raw = np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side].transpose(2, 0, 1)[None],
                               dtype=np.float32)
    norm = info.normalization
    low, high = (norm.low, norm.high) if norm.mode == "percentile" else (None, None)
    if low is None:
        raise ModelError(f"{path}: fixed normalization is not exported yet; bioimage.io "
                         f"packages here use percentile scale_range")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: scale_range(raw, low, high)})[0]
    h = (side - probs.shape[2]) // 2
    labels = probs[0].argmax(0)
    cover = render(labels, raw[0, :, h : h + labels.shape[0], h : h + labels.shape[1]]
                   .transpose(1, 2, 0))

    import imagecodecs

    weights = path.read_bytes()
    card = path.with_suffix(".md")
    doc = (card.read_text() if card.exists() else
           f"# {name}\n\n{info.description or 'A U-Net exported by unet-deploy.'}\n\n"
           f"Classes: {', '.join(info.classes)}. Input: {info.in_channels} channel(s), "
           f"per-image percentile normalization ({low}-{high}). Valid convolutions: the output "
           f"is {-offset} pixels smaller than the input in y and x.\n")
    files = {f"{path.stem}.onnx": weights, "test_input.npy": _npy(raw),
             "test_output.npy": _npy(probs.astype(np.float32)),
             "cover.png": imagecodecs.png_encode(np.ascontiguousarray(cover)),
             "README.md": doc.encode()}
    citations = [UNET_CITATION] + DATA_CITATIONS.get(path.stem, [])
    for entry in cite or []:
        text, _, ref = (part.strip() for part in entry.partition("|"))
        if not ref:
            raise OptionError(f"--cite {entry!r}: give 'TEXT | DOI or URL'")
        citations.append({"text": text, ("url" if "://" in ref else "doi"): ref})
    channel_names = [f"channel{i}" for i in range(info.in_channels)] if info.in_channels > 1 \
        else ["raw"]
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": display_name(name),
        "description": (info.description or f"U-Net ({name})")[:1024],
        "authors": [{"name": a} for a in (authors or ["unet-deploy contributors"])],
        "cite": citations,
        "license": spdx,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["unet", "segmentation", "2d", "onnx", "unet-deploy"]
                + (["instance-segmentation"] if info.instance_scheme != "none" else []),
        "inputs": [{
            "id": "raw",
            "description": "raw image; normalized by per-image percentiles "
                           f"{low}-{high} (scale_range)",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": channel_names},
                     {"type": "space", "id": "y", "size": {"min": smallest, "step": step}},
                     {"type": "space", "id": "x", "size": {"min": smallest, "step": step}}],
            "test_tensor": {"source": "test_input.npy",
                            "sha256": _sha(files["test_input.npy"])},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_range",
                               "kwargs": {"axes": ["y", "x"], "min_percentile": low,
                                          "max_percentile": high, "eps": EPS}}],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "softmax class probabilities; valid convolutions make the output "
                           f"{-offset} px smaller than the input (centred)",
            "axes": [{"type": "batch"},
                     {"type": "channel",
                      "channel_names": [re.sub(r"\W", "_", c) for c in info.classes]},
                     {"type": "space", "id": "y",
                      "size": {"tensor_id": "raw", "axis_id": "y", "offset": offset}},
                     {"type": "space", "id": "x",
                      "size": {"tensor_id": "raw", "axis_id": "x", "offset": offset}}],
            "test_tensor": {"source": "test_output.npy",
                            "sha256": _sha(files["test_output.npy"])},
            "data": {"type": "float32"},
        }],
        "weights": {"onnx": {"source": f"{path.stem}.onnx", "sha256": _sha(weights),
                             "opset_version": _opset(weights)}},
        "config": {"unet_deploy": json.loads(info.to_json())},
    }
    files["rdf.yaml"] = (json.dumps(rdf, indent=2) + "\n").encode()
    tmp = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for fname, data in files.items():
            zf.writestr(fname, data)
    tmp.replace(out)
    return PackageResult(out, name, rdf)


def _opset(model_bytes: bytes) -> int:
    """The default-domain opset of an ONNX file, without the onnx package (17 if unread)."""
    try:
        import onnx

        proto = onnx.load_model_from_string(model_bytes)
        return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    except Exception:  # noqa: BLE001 - onnx missing or unparsable: exporter's default
        return 17


def validate_package(path: str | Path) -> tuple[str, str]:
    """(validator, status) from the reference validator: ``bioimageio.core``'s model test
    (runs the weights on the test tensors) when installed, else ``bioimageio.spec``'s format
    checks. Raises ModelError with the first failure, ImportError when neither is installed."""
    try:
        from bioimageio.core import test_model

        summary = test_model(str(path))
        validator = "bioimageio.core test_model"
    except ImportError:
        from bioimageio.spec import load_description

        summary = load_description(str(path), perform_io_checks=True).validation_summary
        validator = "bioimageio.spec load_description"
    if summary.status not in ("passed", "valid-format"):
        errors = [f"{getattr(d, 'name', '')}: {getattr(e, 'msg', e)}"
                  for d in summary.details for e in getattr(d, "errors", [])]
        raise ModelError(f"{path}: {validator} says {summary.status}: "
                         f"{errors[0] if errors else summary.format()[:300]}")
    return validator, summary.status
