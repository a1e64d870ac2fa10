"""The `unet-deploy` command line. Commands only parse options and call the library.

Every error a user can cause ends as one line, ``error: <what>; <fix>``, with a documented exit
code (``unet-deploy exit-codes``): Click's usage errors (unknown option, invalid choice, missing
argument) are re-worded into that line by ``OneLineGroup`` (exit 2), library errors carry their
code (``errors.UnetDeployError``), a missing optional dependency names the extra to install
(exit 7), and anything unexpected is one line too (exit 1; ``UNET_DEPLOY_DEBUG=1`` shows the
traceback).
"""

from __future__ import annotations

import enum
import functools
import importlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on plain click
    from click import exceptions as click_exc

from . import __version__
from .errors import EXIT_CODES, MissingExtraError, UnetDeployError
from .gate import DEFAULT_MIN_AGREEMENT

PROG = "unet-deploy"
# the extra that brings a module, when the command's own extra does not say better
EXTRA_OF_MODULE = {"tensorrt": "tensorrt", "monai": "bench", "matplotlib": "bench",
                   "napari": "napari", "magicgui": "napari", "bioimageio": "bioimageio"}


def usage_line(exc) -> str:
    """Click's usage error as one line with the command and where to look."""
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else PROG
    msg = " ".join(exc.format_message().replace("Value error, ", "").split()).rstrip(".")
    param = getattr(exc, "param", None)
    if param is not None and param.name == "output" and path.endswith(" segment"):
        value = re.search(r"'([^']*)' is not one of", msg)
        msg += (f"; the output file is given with -o {value.group(1) if value else 'FILE'} "
                f"(--output says what to write)")
    return f"error: {path}: {msg}; see '{path} --help'"


NO_ARGS_IS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


class OneLineGroup(TyperGroup):
    """Runs the command without Click's standalone handling, so usage errors become one line
    (exit 2) instead of a usage block, and ``unet-deploy`` alone prints the help (exit 0)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except NO_ARGS_IS_HELP as exc:
            typer.echo(exc.ctx.get_help() if exc.ctx else "")
            code = 0
        except click_exc.UsageError as exc:
            typer.echo(usage_line(exc), err=True)
            code = 2
        except click_exc.ClickException as exc:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            code = exc.exit_code
        except typer.Abort:
            typer.echo("interrupted: no output was written", err=True)
            code = 130
        if standalone_mode:
            if code == 130:
                # An interrupt that landed inside a module import can leave CPython's
                # "unhandled KeyboardInterrupt" flag set, and `python -m` then dies by SIGINT
                # (-2) instead of exiting 130. Cleanup has run (temporary files are gone).
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(code)
        return code


app = typer.Typer(cls=OneLineGroup, add_completion=False, no_args_is_help=True,
                  help="Paper-faithful U-Net: train, export, and segment huge images seamlessly.")


def _version(value: bool):
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Paper-faithful U-Net: train, export, and segment huge images seamlessly."""


def _interrupt(signum, frame):
    # Ignore further signals so a second Ctrl-C cannot cut the cleanup of the temporary file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def require(command: str, extra: str, *modules: str) -> None:
    """Import ``modules`` or raise MissingExtraError naming the extra that installs them."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise missing_extra(command, extra, exc, module) from None


def missing_extra(command: str, extra: str | None, exc: ImportError,
                  module: str | None = None) -> MissingExtraError:
    name = (module or getattr(exc, "name", None) or "a module").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name) or extra or "dev"
    return MissingExtraError(f"`{PROG} {command}` needs {name}, which is not installed; "
                             f"pip install \"unet-deploy[{extra}]\"")


def cli_errors(command: str, extra: str | None = None):
    """One-line errors with documented exit codes instead of tracebacks. ``extra``: the extra
    that brings this command's optional dependencies (named when an import fails)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            signal.signal(signal.SIGINT, _interrupt)
            signal.signal(signal.SIGTERM, _interrupt)  # cleanup runs as for Ctrl-C
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, click_exc.ClickException):
                raise
            except UnetDeployError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(exc.exit_code)
            except KeyboardInterrupt:
                typer.echo("interrupted: no output was written", err=True)
                raise typer.Exit(130)
            except ModuleNotFoundError as exc:
                err = missing_extra(command, extra, exc)
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(err.exit_code)
            except Exception as exc:  # noqa: BLE001 - a bug: still one line, traceback on demand
                if os.environ.get("UNET_DEPLOY_DEBUG"):
                    raise
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                typer.echo(f"error: unexpected {type(exc).__name__}: {first}; this is a bug, "
                           f"please report it (UNET_DEPLOY_DEBUG=1 shows the traceback)",
                           err=True)
                raise typer.Exit(1)

        return wrapper

    return decorate


class OutputKind(str, enum.Enum):
    labels = "labels"
    probabilities = "probabilities"
    instances = "instances"


class NanPolicy(str, enum.Enum):
    error = "error"
    zero = "zero"


class Tta(str, enum.Enum):
    none = "none"
    flips = "flips"
    d4 = "d4"


class Scheme(str, enum.Enum):
    three_class = "three_class"
    binary = "binary"


class LabelKind(str, enum.Enum):
    auto = "auto"
    binary = "binary"
    instances = "instances"


class Optimizer(str, enum.Enum):
    adam = "adam"
    sgd = "sgd"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


def _value(choice):
    return choice.value if isinstance(choice, enum.Enum) else choice


@app.command()
@cli_errors("segment")
def segment(
    inputs: List[str] = typer.Argument(..., metavar="INPUT",
                                       help="Images: TIFF (2-D, stack, time series, RGB, tiled), "
                                            "PNG or JPEG; files, folders or quoted globs."),
    output_path: Optional[Path] = typer.Option(
        None, "-o", "--output-path", show_default="INPUT.<output>.tif beside each input",
        help="Output TIFF; with several inputs, an output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default="nuclei",
                                        help="Shipped model name or .onnx/.engine path."),
    output: Optional[OutputKind] = typer.Option(
        None, "--output", case_sensitive=False,
        show_default="the model's: instances for models with an instance scheme, else labels",
        help="What to write (the file name is -o)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Tiles per batch."),
    tile: Optional[int] = typer.Option(None, "--tile", show_default="the model's",
                                       help="Input tile side (a legal size for the model)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for inference, tiling, stitching and compression (0 = all cores)."),
    backend: str = typer.Option("auto", "--backend", help="auto | tensorrt | onnxruntime-gpu | torch-cuda | onnxruntime-cpu | a name added with unet_deploy.backends.register_backend."),
    series: Optional[int] = typer.Option(None, "--series", min=0, help="TIFF series to segment."),
    level: Optional[int] = typer.Option(None, "--level", min=0, show_default="0 (full resolution)",
                                        help="Pyramid level of a whole-slide TIFF or OME-Zarr."),
    max_object: Optional[int] = typer.Option(
        None, "--max-object", min=1, show_default="512",
        help="Instances: largest object extent (px) streamed exactly; more memory."),
    channel: Optional[List[int]] = typer.Option(
        None, "--channel", "-c", min=0, show_default="all, converted to the model's channels",
        help="Input channel(s) to feed the model, from 0; repeat for several."),
    max_pixels: Optional[int] = typer.Option(2_000_000_000, "--max-pixels", min=1,
                                             help="Refuse planes with more pixels than this."),
    preview: bool = typer.Option(False, "--preview",
                                 help="Also write OUT.preview.png (contours over the input)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or warnings."),
    nan_policy: NanPolicy = typer.Option(NanPolicy.error, "--nan-policy", case_sensitive=False,
                                         help="NaN/Inf pixels in float images: error (refuse, "
                                              "naming the count) | zero (treat them as 0)."),
    tta: Optional[Tta] = typer.Option(
        None, "--tta", case_sensitive=False, show_default="the model's (metadata), else none",
        help="Test-time augmentation: average the softmax over the 4 flips or the 8 "
             "rotations/flips of every tile (seamless; 4x / 8x the network cost)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, show_default="none: this process",
        help="Run on a local Dask cluster of N worker processes (same output; dask extra)."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", metavar="ADDRESS",
        help="Run on an existing Dask cluster, e.g. tcp://head:8786 (same output; dask extra)."),
):
    """Segment images with overlap-tile inference; no seams, bounded memory. Several files, a
    folder or a glob are segmented with one model load and one progress bar."""
    from tqdm import tqdm

    from .batch import segment_files

    def say_backend(name, reason):
        if backend == "auto" and reason and not quiet:
            typer.echo(f"backend: {name} ({reason})", err=True)

    def done(result):
        line = f"{result.output}: {result.summary}"
        if result.preview:
            line += f"; preview {result.preview}"
        tqdm.write(line)

    if workers is not None or scheduler is not None:  # the same job on a Dask cluster
        from .distributed import segment_files_distributed

        segment_files_distributed(
            inputs, model, workers=workers, scheduler=scheduler, output_path=output_path,
            output=_value(output), threads=threads or None, preview=preview, on_file=done,
            on_backend=say_backend, backend=backend, batch_size=batch_size, tile=tile,
            overwrite=overwrite, series=series, max_pixels=max_pixels,
            nan_policy=_value(nan_policy), channels=channel or None, progress=not quiet,
            level=level, max_object=max_object, tta=_value(tta),
            warn=None if quiet else (lambda m: typer.echo(f"warning: {m}", err=True)))
        return
    segment_files(inputs, model, output_path=output_path, output=_value(output),
                  backend=backend, batch_size=batch_size, tile=tile, threads=threads,
                  overwrite=overwrite, series=series, max_pixels=max_pixels,
                  nan_policy=_value(nan_policy), channels=channel or None, progress=not quiet,
                  level=level, max_object=max_object,
                  preview=preview, warn=None if quiet else (lambda m: typer.echo(
                      f"warning: {m}", err=True)),
                  on_file=done, on_backend=say_backend, tta=_value(tta))


@app.command()
@cli_errors("preview")
def preview(
    result: Path = typer.Argument(..., help="A labels, instances or probabilities TIFF."),
    image: Optional[Path] = typer.Option(None, "--image", "-i",
                                         help="The segmented input, drawn under the contours."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", show_default="RESULT.preview.png",
                                       help="Preview PNG."),
    max_side: int = typer.Option(2048, "--max-side", min=16, help="Long side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing preview."),
):
    """Write a downsampled PNG: object contours and tinted labels over the input image."""
    from .preview import write_preview

    path = write_preview(result, out, image=image, max_side=max_side, overwrite=overwrite)
    typer.echo(f"{path}")


@app.command()
@cli_errors("models")
def models():
    """List the shipped models and their cards."""
    from .model_store import describe_shipped

    for line in describe_shipped():
        typer.echo(line)


@app.command()
@cli_errors("train", "train")
def train(
    images: Path = typer.Option(..., "--images", help="Folder of images, or a multi-page stack."),
    labels: Path = typer.Option(..., "--labels",
                                help="Label images named like the images (folder), or a stack."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, log, ONNX."),
    name: str = typer.Option("unet", "--name", help="Model name (the ONNX file's stem)."),
    scheme: Scheme = typer.Option(Scheme.three_class, "--scheme",
                                  help="three_class: instances of touching objects; binary."),
    label_kind: LabelKind = typer.Option(LabelKind.auto, "--label-kind"),
    depth: int = typer.Option(4, "--depth", min=1),
    base: int = typer.Option(16, "--base", min=1, help="Channels of the first level."),
    tile: int = typer.Option(572, "--tile", help="Input tile side (paper: 572)."),
    steps: int = typer.Option(4000, "--steps", min=1),
    optimizer: Optimizer = typer.Option(Optimizer.adam, "--optimizer",
                                        help="adam (measured better here) | sgd (the paper's, "
                                             "with --momentum 0.99)"),
    lr: float = typer.Option(1e-3, "--lr"),
    momentum: float = typer.Option(0.99, "--momentum"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    dropout: float = typer.Option(0.5, "--dropout", min=0.0, max=1.0),
    batch_norm: bool = typer.Option(False, "--batch-norm"),
    w0: float = typer.Option(10.0, "--w0", help="Border weight w0 (paper eq. 2)."),
    sigma: float = typer.Option(5.0, "--sigma", help="Border weight sigma in px."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=1.0),
    val_last: bool = typer.Option(False, "--val-last", help="Validate on the last slices."),
    val_every: int = typer.Option(250, "--val-every", min=1),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0),
    minutes: float = typer.Option(0.0, "--minutes", min=0.0,
                                  help="Stop after this long (0 = no limit)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore OUT/last.pt."),
    init: Optional[str] = typer.Option(None, "--init",
                                       help="Start from these weights: nuclei | em-membranes "
                                            "| PATH.onnx | PATH.pt (architecture and "
                                            "normalization from it; the head is "
                                            "re-initialised when its classes differ)."),
    scale_aug: float = typer.Option(0.0, "--scale-aug", min=0.0, max=0.5,
                                    help="Robustness: zoom by up to +-this fraction (0.2 = "
                                         "+-20 %, a pixel-size shift). 0 = off (the paper)."),
    blur_aug: float = typer.Option(0.0, "--blur-aug", min=0.0, max=5.0,
                                   help="Robustness: Gaussian blur up to this sigma in px."),
    noise_aug: float = typer.Option(0.0, "--noise-aug", min=0.0, max=0.5,
                                    help="Robustness: Gaussian noise up to this fraction of the "
                                         "image range."),
):
    """Train a U-Net with the paper's recipe; resumes from OUT/last.pt; exports ONNX at the end."""
    require("train", "train", "torch", "onnx")
    from .train.trainer import TrainConfig
    from .train.trainer import train as run_training

    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(out), name=name,
                      scheme=_value(scheme), label_kind=_value(label_kind), depth=depth,
                      base=base, tile=tile, steps=steps, optimizer=_value(optimizer), lr=lr,
                      momentum=momentum, batch_size=batch_size, dropout=dropout,
                      batch_norm=batch_norm, w0=w0, sigma=sigma, val_fraction=val_fraction,
                      val_last=val_last, val_every=val_every, seed=seed, threads=threads,
                      max_minutes=minutes, resume=not no_resume, init=init or "",
                      scale_aug=scale_aug, blur_aug=blur_aug, noise_aug=noise_aug)
    result = run_training(cfg)
    typer.echo(f"{result['onnx']}: step {result['step']}, validation {result['metrics']}")


@app.command()
@cli_errors("evaluate")
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default="nuclei",
                                        help="Model name or path."),
    images: Path = typer.Option(..., "--images", help="Folder of images, or a stack."),
    labels: Path = typer.Option(..., "--labels",
                                help="Label images named like the images (a suffix such as "
                                     "_mask is fine), or a stack of equal length."),
    label_kind: LabelKind = typer.Option(LabelKind.auto, "--label-kind"),
    threads: int = typer.Option(0, "--threads", min=0),
):
    """Segment labelled images and print instance F1, foreground IoU, Rand and pixel error.
    Images and labels are paired by name; a mismatch is refused with the list."""
    from .evaluate import evaluate_model

    scores = evaluate_model(model, images, labels, _value(label_kind), threads)
    for key, value in scores.items():
        typer.echo(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")


@app.command()
@cli_errors("export", "train")
def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt, loaded weights_only)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", show_default="next to CHECKPOINT",
                                       help="ONNX file."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Default input tile in the metadata."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Export a checkpoint to a self-describing ONNX file (parity-checked against PyTorch)."""
    require("export", "train", "torch", "onnx")
    from .export import export_checkpoint

    typer.echo(export_checkpoint(checkpoint, out, tile=tile, overwrite=overwrite).summary())


@app.command("export-bioimageio")
@cli_errors("export-bioimageio", "bioimageio")
def export_bioimageio(
    model: str = typer.Argument(..., help="Shipped model name or .onnx path."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", show_default="MODEL.zip",
                                       help="bioimage.io model package (.zip)."),
    licence: Optional[str] = typer.Option(None, "--license", show_default="from the model",
                                          help="SPDX id of the weights' licence."),
    sample: Optional[Path] = typer.Option(None, "--sample", show_default="a synthetic image",
                                          help="Image for the test tensors and the cover."),
    author: Optional[List[str]] = typer.Option(None, "--author",
                                               show_default="unet-deploy contributors",
                                               help="Author name; repeat for several."),
    cite: Optional[List[str]] = typer.Option(None, "--cite",
                                             help="Extra citation 'TEXT | DOI or URL' (the "
                                                  "training data); repeat for several."),
    validate: bool = typer.Option(False, "--validate",
                                  help="Run bioimage.io's reference test on the package "
                                       "(needs the bioimageio extra)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Package a model for bioimage.io (deepImageJ, ilastik, bioimage.io tools): ONNX weights,
    axes with the legal-size rule, halo, percentile preprocessing, test tensors, cover, citations."""
    from .bioimageio import export_package, validate_package

    if validate:
        require("export-bioimageio --validate", "bioimageio", "bioimageio.spec")
    result = export_package(model, out, licence=licence, sample=sample, authors=author or None,
                            cite=cite or None, overwrite=overwrite)
    typer.echo(result.summary())
    if validate:
        validator, status = validate_package(result.path)
        typer.echo(f"{result.path}: {validator}: {status}")


def build_for_output(model, out, *, precision: str = "fp16", batch: int = 8,
                     tile: int | None = None, calibration=None, timing_cache=None,
                     min_agreement: float = DEFAULT_MIN_AGREEMENT, overwrite: bool = False):
    """``build-engine``'s routing by output suffix: ``-o X.onnx`` is the CPU INT8 model
    (``quantize.QuantizeResult``), anything else a TensorRT engine (``engine_build.BuildResult``);
    both results have ``.summary()``. ``model``: a path or a shipped model's name."""
    from .model_store import resolve_model

    model = resolve_model(model)
    out = Path(out)
    if out.suffix == ".onnx":
        if precision != "int8":
            from .errors import OptionError
            raise OptionError(f"{out}: an .onnx output is the CPU INT8 model and needs "
                              f"--precision int8 (got {precision}); use -o MODEL.engine for a "
                              f"TensorRT engine")
        from .quantize import quantize_int8
        return quantize_int8(model, out, calibration=calibration or (), tile=tile,
                             min_agreement=min_agreement, overwrite=overwrite)
    from .engine_build import build_engine as build_tensorrt_engine
    return build_tensorrt_engine(model, out, precision=precision, batch=batch, tile=tile,
                                 calibration=calibration, timing_cache=timing_cache,
                                 min_agreement=min_agreement, overwrite=overwrite)


def quiet_onnxruntime() -> None:
    """ONNX Runtime's C++ warnings (e.g. unused initializers, 'consider pre-processing before
    quantization') are not actionable for a user of build-engine: show errors only."""
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)


@app.command("build-engine")
@cli_errors("build-engine", "train")
def build_engine(
    model: str = typer.Argument(..., help="Shipped model name or ONNX model exported by "
                                          "unet-deploy."),
    out: Path = typer.Option(..., "-o", "--out",
                             help="X.engine (TensorRT) or X.onnx with --precision int8 (CPU)."),
    precision: Precision = typer.Option(Precision.fp16, "--precision"),
    batch: int = typer.Option(8, "--batch", min=1, help="Batch of the optimization profile."),
    tile: Optional[int] = typer.Option(None, "--tile", show_default="the model's",
                                       help="Input tile."),
    calibration: Optional[List[str]] = typer.Option(None, "--calibration",
                                                    help="Images for INT8 calibration and the "
                                                         "accuracy gate (files, folders, globs)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache"),
    min_agreement: float = typer.Option(DEFAULT_MIN_AGREEMENT, "--min-agreement", min=0.0,
                                        max=1.0, help="Accuracy gate: label agreement with fp32."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Build a TensorRT engine (GPU) or a CPU INT8 ONNX model, gated on accuracy vs fp32."""
    require("build-engine", "train", "onnx")
    if out.suffix != ".onnx":
        require("build-engine", "tensorrt", "tensorrt")
    quiet_onnxruntime()
    result = build_for_output(model, out, precision=_value(precision), batch=batch, tile=tile,
                              calibration=calibration, timing_cache=timing_cache,
                              min_agreement=min_agreement, overwrite=overwrite)
    typer.echo(result.summary())


@app.command()
@cli_errors("benchmark", "bench")
def benchmark(
    quick: bool = typer.Option(False, "--quick", help="Small run (< 2 min): format-checked."),
    out: Path = typer.Option(Path("benchmark-results"), "--out", help="Results folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", show_default="a random U-Net",
                                        help="Model to time."),
    tile: Optional[int] = typer.Option(None, "--tile"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    threads: int = typer.Option(0, "--threads", min=0),
):
    """Compare unet-deploy with MONAI-style and naive tiling on one model and image."""
    require("benchmark", "bench", "onnx", *(() if model else ("torch",)))
    from .bench import run_benchmark

    run_benchmark(quick=quick, out_dir=out, model=model, tile=tile, batch=batch_size,
                  threads=threads, log=typer.echo)
    typer.echo(f"results: {out / 'benchmark.md'}")


@app.command("exit-codes")
def exit_codes():
    """Print the documented exit codes."""
    for code, text in EXIT_CODES.items():
        typer.echo(f"{code:>4}  {text}")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
