"""Segment several images in one call: files, folders and globs are expanded, the model is
loaded once, one progress bar covers every tile of every file, and each file gets its summary.
Every output path is checked before the first tile runs, so a mistake costs no compute."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import InputError, InputNotFoundError, OptionError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
OUTPUT_KINDS = ("labels", "probabilities", "instances")
# files unet-deploy wrote itself: never picked up as inputs when a folder is expanded
OWN_OUTPUT_TAGS = tuple(f".{k}." for k in OUTPUT_KINDS) + (".preview.",)


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Files in the order given; a folder gives its images (sorted, our own outputs skipped);
    a pattern with ``*``/``?``/``[`` is expanded (quoted globs work on every shell)."""
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        from .zarr_io import is_zarr_path

        if path.is_dir() and not is_zarr_path(path):  # an OME-Zarr folder is one image
            files = sorted(p for p in path.iterdir() if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(t in p.name for t in OWN_OUTPUT_TAGS)
                           and not p.name.startswith("."))
            if not files:
                raise InputError(f"{path}: a directory with no images "
                                 f"({' '.join(IMAGE_SUFFIXES)}) in it; pass image files, a "
                                 f"folder of images or a glob")
            found += files
        elif path.exists():
            found.append(path)
        elif any(c in str(item) for c in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not files:
                raise InputNotFoundError(f"{item}: no files match this pattern; check it")
            found += files
        else:
            raise InputNotFoundError(f"{path}: input file not found; check the path")
    seen, unique = set(), []
    for p in found:  # a file named twice (or by a folder and a glob) is segmented once
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def output_paths(inputs: list[Path], output_path: str | Path | None, kind: str) -> list[Path]:
    """One input: ``output_path`` is the output file (or OME-Zarr folder). Several: it is a
    folder (created if missing) holding ``NAME.<kind>.tif`` for each input; without it, outputs
    go beside the inputs."""
    from .pipeline import default_output_path

    if len(inputs) == 1:
        # an existing folder is refused by io.check_output (naming a file inside it)
        return [Path(output_path) if output_path else default_output_path(inputs[0], kind)]
    if output_path is None:
        outs = [default_output_path(p, kind) for p in inputs]
    else:
        folder = Path(output_path)
        if folder.suffix.lower() in (".tif", ".tiff") and not folder.is_dir():
            raise OptionError(f"{folder}: {len(inputs)} inputs need an output folder, not a "
                              f"file name; pass -o FOLDER")
        outs = [folder / default_output_path(p, kind).name for p in inputs]
    clash = {o for o in outs if outs.count(o) > 1}
    if clash:
        raise OptionError(f"{sorted(clash)[0]}: several inputs would write this same output "
                          f"(same name in different folders); segment them separately")
    return outs


def declared_info(model):
    """The ModelInfo a model file declares (ONNX metadata or an engine's manifest), read
    without opening a backend."""
    from .model_store import read_onnx, resolve_model

    path = resolve_model(model)
    if path.suffix == ".engine":
        from .engines import model_info_of, read_manifest

        return model_info_of(read_manifest(path))
    return read_onnx(path).info


@dataclass
class FileResult:
    input: Path
    output: Path
    summary: object  # pipeline.Summary
    preview: Path | None = None


def segment_files(inputs: Iterable[str | Path], model=None, *, output_path=None,
                  output: str | None = None, backend: str = "auto", batch_size: int = 1,
                  tile: int | None = None, threads: int = 0, overwrite: bool = False,
                  series: int | None = None, max_pixels: int | None = None,
                  nan_policy: str = "error", channels: list[int] | None = None,
                  level: int | None = None, max_object: int | None = None,
                  progress: bool = True, preview: bool = False,
                  warn: Callable[[str], None] | None = None,
                  on_file: Callable[[FileResult], None] | None = None,
                  on_backend: Callable[[str, str], None] | None = None,
                  tta: str | None = None) -> list[FileResult]:
    """Segment every input with one model load. ``output``: None = the model's default kind
    (``ModelInfo.default_output_kind``: instances for models with an instance scheme).
    ``tta``: test-time augmentation (``segment_file``; None = the model's default).
    ``warn``: receives one-line warnings (input that does not fit the model); ``on_file``: each
    FileResult as soon as it is written; ``on_backend``: the backend's (name, reason) once."""
    from tqdm import tqdm

    from .backends import open_backend
    from .fit import fit_warnings
    from .io import check_output, open_image
    from .pipeline import segment_file
    from .readers import ChannelReader
    from .tiling import plan_for

    paths = expand_inputs(inputs)
    if output is not None and output not in OUTPUT_KINDS:
        raise OptionError(f"output {output!r}: choose one of {', '.join(OUTPUT_KINDS)}")
    # every output is checked before a backend is opened (no compute, no GPU, for a mistake)
    kind = output or declared_info(model).default_output_kind
    outs = output_paths(paths, output_path, kind)
    if len(paths) > 1 and output_path is not None:
        Path(output_path).mkdir(parents=True, exist_ok=True)
    for src_path, out in zip(paths, outs):
        check_output(out, src_path, overwrite)
    results: list[FileResult] = []
    with open_backend(model, backend, threads=threads) as be:
        info = be.info
        total = 0
        for src_path in paths:  # metadata only, plus a few sample bands for the fit check
            with open_image(src_path, series=series, max_pixels=max_pixels,
                            nan_policy=nan_policy, level=level) as src:
                plan = plan_for(src.height, src.width, info, tile, batch_size, be)
                total += plan.n_tiles * src.n_planes
                reader = src.plane(0)
                if channels is not None:
                    reader = ChannelReader(reader, channels, str(src_path))
                for line in fit_warnings(reader, info, str(src_path)) if warn else ():
                    warn(line)
        if on_backend is not None:
            on_backend(*getattr(be, "choice", (be.name, "")))
        with tqdm(total=total, unit="tile", disable=not progress, dynamic_ncols=True,
                  desc=paths[0].name if len(paths) == 1 else f"{len(paths)} files") as bar:
            for src_path, out in zip(paths, outs):
                summary = segment_file(src_path, out, model, backend=be, batch_size=batch_size,
                                       tile=tile, output=kind, threads=threads,
                                       overwrite=overwrite, series=series,
                                       max_pixels=max_pixels, nan_policy=nan_policy,
                                       on_tiles=bar.update, channels=channels, level=level,
                                       max_object=max_object, tta=tta)
                result = FileResult(src_path, out, summary)
                if preview:
                    from .preview import preview_path, write_preview

                    result.preview = write_preview(out, preview_path(out), image=src_path,
                                                   overwrite=True)
                results.append(result)
                if on_file is not None:
                    on_file(result)
    return results
