"""The `unet-deploy` command line. Commands only parse options and call the library."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import EXIT_CODES, UnetDeployError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Paper-faithful U-Net: train, export, and segment huge images seamlessly.")


def _terminate(signum, frame):
    raise KeyboardInterrupt


def cli_errors(fn):
    """One-line errors with documented exit codes instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _terminate)  # cleanup runs as for Ctrl-C
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
):
    """Segment INPUT with overlap-tile inference; no seams, bounded memory."""
    from .pipeline import default_output_path, segment_file

    out = output_path or default_output_path(input, output)
    summary = segment_file(input, out, model, backend=backend, batch_size=batch_size, tile=tile,
                           output=output, threads=threads, overwrite=overwrite, series=series,
                           max_pixels=max_pixels, progress=not quiet)
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


@app.command("exit-codes")
def exit_codes():
    """Print the documented exit codes."""
    for code, text in EXIT_CODES.items():
        typer.echo(f"{code:>4}  {text}")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
