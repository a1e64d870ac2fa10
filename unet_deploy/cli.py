"""The `unet-deploy` command line. Commands only parse options and call the library."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import EXIT_CODES, UnetDeployError
from .gate import DEFAULT_MIN_AGREEMENT

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Paper-faithful U-Net: train, export, and segment huge images seamlessly.")


def _interrupt(signum, frame):
    # Ignore further signals so a second Ctrl-C cannot cut the cleanup of the temporary file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def cli_errors(fn):
    """One-line errors with documented exit codes instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)  # cleanup runs as for Ctrl-C
        try:
            return fn(*args, **kwargs)
        except UnetDeployError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("interrupted: no output was written", err=True)
            raise typer.Exit(130)

    return wrapper


@app.command()
@cli_errors
def segment(
    input: Path = typer.Argument(..., help="TIFF image (2-D, stack, time series, RGB)."),
    output_path: Optional[Path] = typer.Option(None, "-o", "--output-path",
                                               help="Output TIFF [default: INPUT.<output>.tif]."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Shipped model name or .onnx/.engine path "
                                             "[default: nuclei]."),
    output: str = typer.Option("labels", "--output", help="labels | probabilities | instances"),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Tiles per batch."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Input tile side [default: model's]."),
    threads: int = typer.Option(0, "--threads", min=0, help="Inference threads (0 = all cores)."),
    backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | ..."),
    series: Optional[int] = typer.Option(None, "--series", help="TIFF series to segment."),
    max_pixels: Optional[int] = typer.Option(2_000_000_000, "--max-pixels",
                                             help="Refuse planes with more pixels than this."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    nan_policy: str = typer.Option("error", "--nan-policy",
                                   help="NaN/Inf pixels in float images: error (refuse, "
                                        "naming the count) | zero (treat them as 0)."),
):
    """Segment INPUT with overlap-tile inference; no seams, bounded memory."""
    from .pipeline import default_output_path, segment_file

    from .errors import InputError
    from .io import NAN_POLICIES

    if nan_policy not in NAN_POLICIES:
        raise InputError(f"--nan-policy {nan_policy!r}: choose one of {', '.join(NAN_POLICIES)}")
    out = output_path or default_output_path(input, output)
    summary = segment_file(input, out, model, backend=backend, batch_size=batch_size, tile=tile,
                           output=output, threads=threads, overwrite=overwrite, series=series,
                           max_pixels=max_pixels, progress=not quiet, nan_policy=nan_policy)
    if backend == "auto" and summary.reason and not quiet:
        typer.echo(f"backend: {summary.backend} ({summary.reason})", err=True)
    typer.echo(f"{out}: {summary}")


@app.command()
@cli_errors
def models():
    """List the shipped models and their cards."""
    from .model_store import DEFAULT_MODEL, read_onnx, shipped_models

    found = shipped_models()
    if not found:
        typer.echo("no shipped models installed")
    for name, path in found.items():
        info = read_onnx(path).info
        default = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name}{default}: {path.stat().st_size / 1e6:.1f} MB, classes "
                   f"{'/'.join(info.classes)}, depth {info.depth}, base {info.base}, "
                   f"tile {info.tile}")
        typer.echo(f"    {info.description}")
        card = path.with_suffix(".md")
        if card.exists():
            typer.echo(f"    card: {card}")


@app.command()
@cli_errors
def train(
    images: Path = typer.Option(..., "--images", help="Folder of images, or a multi-page stack."),
    labels: Path = typer.Option(..., "--labels", help="Matching folder or stack of labels."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, log, ONNX."),
    name: str = typer.Option("unet", "--name", help="Model name (the ONNX file's stem)."),
    scheme: str = typer.Option("three_class", "--scheme",
                               help="three_class (instances of touching objects) | binary"),
    label_kind: str = typer.Option("auto", "--label-kind", help="auto | binary | instances"),
    depth: int = typer.Option(4, "--depth", min=1),
    base: int = typer.Option(16, "--base", min=1, help="Channels of the first level."),
    tile: int = typer.Option(572, "--tile", help="Input tile side (paper: 572)."),
    steps: int = typer.Option(4000, "--steps", min=1),
    optimizer: str = typer.Option("adam", "--optimizer",
                                  help="adam (measured better here) | sgd (the paper's, with "
                                       "--momentum 0.99)"),
    lr: float = typer.Option(1e-3, "--lr"),
    momentum: float = typer.Option(0.99, "--momentum"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    dropout: float = typer.Option(0.5, "--dropout"),
    batch_norm: bool = typer.Option(False, "--batch-norm"),
    w0: float = typer.Option(10.0, "--w0", help="Border weight w0 (paper eq. 2)."),
    sigma: float = typer.Option(5.0, "--sigma", help="Border weight sigma in px."),
    val_fraction: float = typer.Option(0.2, "--val-fraction"),
    val_last: bool = typer.Option(False, "--val-last", help="Validate on the last slices."),
    val_every: int = typer.Option(250, "--val-every", min=1),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0),
    minutes: float = typer.Option(0.0, "--minutes", help="Stop after this long (0 = no limit)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore OUT/last.pt."),
):
    """Train a U-Net with the paper's recipe; resumes from OUT/last.pt; exports ONNX at the end."""
    from .train.trainer import TrainConfig
    from .train.trainer import train as run_training

    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(out), name=name,
                      scheme=scheme, label_kind=label_kind, depth=depth, base=base, tile=tile,
                      steps=steps, optimizer=optimizer, lr=lr, momentum=momentum,
                      batch_size=batch_size, dropout=dropout, batch_norm=batch_norm, w0=w0,
                      sigma=sigma, val_fraction=val_fraction, val_last=val_last,
                      val_every=val_every, seed=seed, threads=threads, max_minutes=minutes,
                      resume=not no_resume)
    result = run_training(cfg)
    typer.echo(f"{result['onnx']}: step {result['step']}, validation {result['metrics']}")


@app.command()
@cli_errors
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or path."),
    images: Path = typer.Option(..., "--images"),
    labels: Path = typer.Option(..., "--labels"),
    label_kind: str = typer.Option("auto", "--label-kind"),
    threads: int = typer.Option(0, "--threads", min=0),
):
    """Segment labelled images and print instance F1, foreground IoU, Rand and pixel error."""
    from .evaluate import evaluate_model

    scores = evaluate_model(model, images, labels, label_kind, threads)
    for key, value in scores.items():
        typer.echo(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")


@app.command()
@cli_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt, loaded weights_only)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="ONNX file [default: next to it]."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Default input tile in the metadata."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Export a checkpoint to a self-describing ONNX file (parity-checked against PyTorch)."""
    from .export import export_checkpoint

    typer.echo(export_checkpoint(checkpoint, out, tile=tile, overwrite=overwrite).summary())


def build_for_output(model, out, *, precision: str = "fp16", batch: int = 8,
                     tile: int | None = None, calibration=None, timing_cache=None,
                     min_agreement: float = DEFAULT_MIN_AGREEMENT, overwrite: bool = False):
    """``build-engine``'s routing by output suffix: ``-o X.onnx`` is the CPU INT8 model
    (``quantize.QuantizeResult``), anything else a TensorRT engine (``engine_build.BuildResult``);
    both results have ``.summary()``."""
    out = Path(out)
    if out.suffix == ".onnx":
        if precision != "int8":
            from .errors import ModelError
            raise ModelError(f"{out}: an .onnx output is the CPU INT8 model and needs "
                             f"--precision int8 (got {precision}); use -o MODEL.engine for a "
                             f"TensorRT engine")
        from .quantize import quantize_int8
        return quantize_int8(model, out, calibration=calibration or (), tile=tile,
                             min_agreement=min_agreement, overwrite=overwrite)
    from .engine_build import build_engine as build_tensorrt_engine
    return build_tensorrt_engine(model, out, precision=precision, batch=batch, tile=tile,
                                 calibration=calibration, timing_cache=timing_cache,
                                 min_agreement=min_agreement, overwrite=overwrite)


@app.command("build-engine")
@cli_errors
def build_engine(
    model: Path = typer.Argument(..., help="ONNX model exported by unet-deploy."),
    out: Path = typer.Option(..., "-o", "--out",
                             help="X.engine (TensorRT) or X.onnx with --precision int8 (CPU)."),
    precision: str = typer.Option("fp16", "--precision", help="fp32 | fp16 | bf16 | int8"),
    batch: int = typer.Option(8, "--batch", min=1, help="Batch of the optimization profile."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Input tile [default: model's]."),
    calibration: Optional[List[str]] = typer.Option(None, "--calibration",
                                                    help="Images for INT8 calibration and the "
                                                         "accuracy gate (files, folders, globs)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache"),
    min_agreement: float = typer.Option(DEFAULT_MIN_AGREEMENT, "--min-agreement",
                                        help="Accuracy gate: label agreement with fp32."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Build a TensorRT engine (GPU) or a CPU INT8 ONNX model, gated on accuracy vs fp32."""
    result = build_for_output(model, out, precision=precision, batch=batch, tile=tile,
                              calibration=calibration, timing_cache=timing_cache,
                              min_agreement=min_agreement, overwrite=overwrite)
    typer.echo(result.summary())


@app.command()
@cli_errors
def benchmark(
    quick: bool = typer.Option(False, "--quick", help="Small run (< 2 min): format-checked."),
    out: Path = typer.Option(Path("benchmark-results"), "--out", help="Results folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model [default: random]."),
    tile: Optional[int] = typer.Option(None, "--tile"),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    threads: int = typer.Option(0, "--threads", min=0),
):
    """Compare unet-deploy with MONAI-style and naive tiling on one model and image."""
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
