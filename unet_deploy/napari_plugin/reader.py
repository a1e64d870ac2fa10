"""The napari reader for unet-deploy results (``*.labels.tif``, ``*.instances.tif``,
``*.probabilities.tif`` and their ``.zarr`` twins): labels and instances open as a Labels
layer, probabilities as an Image with one channel per class; pyramid levels (TIFF SubIFDs or
OME-Zarr multiscales) open as a multiscale layer, read lazily where zarr is installed."""

from __future__ import annotations

from pathlib import Path

KINDS = ("labels", "instances", "probabilities")


def result_kind(path) -> str | None:
    """The output kind a unet-deploy result's name says, or None for anything else."""
    if isinstance(path, (list, tuple)):
        return None
    name = Path(str(path)).name.lower()
    for kind in KINDS:
        for ext in (".tif", ".tiff", ".zarr"):
            if name.endswith(f".{kind}{ext}"):
                return kind
    return None


def get_reader(path):
    """napari's reader hook: a function for our results, None for anything else."""
    return read_result if result_kind(path) and Path(str(path)).exists() else None


def tiff_levels(path: Path) -> list:
    """The levels of the first series, full resolution first; lazy zarr arrays when the zarr
    package is installed, else arrays read into memory."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        n = len(tif.series[0].levels)
    try:
        import zarr

        store = tifffile.imread(path, aszarr=True)
        group = zarr.open(store, mode="r")
        if n == 1:
            return [group]
        return [group[str(i)] for i in range(n)]
    except ImportError:
        with tifffile.TiffFile(path) as tif:
            return [level.asarray() for level in tif.series[0].levels]


def zarr_levels(path: Path) -> list:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return [group[d["path"]] for d in ms[0]["datasets"]]


def read_result(path) -> list[tuple]:
    """[(data, metadata, layer type)] for a unet-deploy result."""
    path = Path(str(path))
    kind = result_kind(path)
    levels = zarr_levels(path) if path.suffix.lower() == ".zarr" else tiff_levels(path)
    data = levels if len(levels) > 1 else levels[0]
    meta = {"name": path.name, "multiscale": len(levels) > 1}
    if kind == "probabilities":
        return [(data, {**meta, "channel_axis": -1}, "image")]
    return [(data, meta, "labels")]
