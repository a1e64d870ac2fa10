"""Build big uint16 test images by tiling the real BBBC039 nuclei images into a mosaic.

The mosaic is written as an *uncompressed, contiguous* TIFF, so unet-deploy (and anyone else)
can memory-map it. It is built band by band through a ``tifffile.memmap``: building a
20000x20000 mosaic (800 MB on disk) never holds more than one band of images in memory.

Never commit the output: it goes to /tmp (or a folder you pass) and is cached by size.

    python benchmarks/mosaic.py 20000              # -> /tmp/unet-deploy-bench/mosaic_20000.tif
    python benchmarks/mosaic.py 512 2000 --out DIR
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("UNET_DEPLOY_DATA", "/work/shared/data")) / "bbbc039" / "images"
DEFAULT_DIR = Path(os.environ.get("UNET_DEPLOY_BENCH_DIR", "/tmp/unet-deploy-bench"))


def source_images(data: Path = DATA, limit: int | None = None) -> list[np.ndarray]:
    import tifffile

    files = sorted(data.glob("*.tif"))[:limit]
    if not files:
        raise FileNotFoundError(f"no BBBC039 images in {data}")
    return [tifffile.imread(f) for f in files]


def mosaic_array(height: int, width: int, data: Path = DATA) -> np.ndarray:
    """An in-memory (height, width) uint16 mosaic (for small sizes)."""
    out = np.empty((height, width), np.uint16)
    _fill(out, source_images(data))
    return out


def _fill(out, images) -> None:
    ih, iw = images[0].shape
    n = len(images)
    k = 0
    for y in range(0, out.shape[0], ih):
        for x in range(0, out.shape[1], iw):
            img = images[k % n]
            k += 1
            h, w = min(ih, out.shape[0] - y), min(iw, out.shape[1] - x)
            out[y : y + h, x : x + w] = img[:h, :w]


def build_mosaic(size: int | tuple[int, int], folder: Path = DEFAULT_DIR, data: Path = DATA,
                 force: bool = False) -> Path:
    """Path of an uncompressed uint16 TIFF mosaic of ``size`` (side or (h, w)); cached."""
    import tifffile

    h, w = (size, size) if isinstance(size, int) else size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"mosaic_{h}.tif" if h == w else f"mosaic_{h}x{w}.tif")
    if path.exists() and not force:
        return path
    images = source_images(data)
    ih = images[0].shape[0]
    tmp = path.with_name(path.name + ".partial")
    mm = tifffile.memmap(tmp, shape=(h, w), dtype=np.uint16, bigtiff=h * w * 2 > 2**31,
                         photometric="minisblack")
    n, k = len(images), 0
    for y in range(0, h, ih):  # one band of source images at a time
        band = np.empty((min(ih, h - y), w), np.uint16)
        row = [images[(k + j) % n] for j in range(-(-w // images[0].shape[1]))]
        k += len(row)
        _fill(band, row)
        mm[y : y + band.shape[0]] = band
    mm.flush()
    del mm
    tmp.replace(path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="+", type=int, help="square side(s) in pixels")
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    for s in args.sizes:
        p = build_mosaic(s, args.out, force=args.force)
        print(f"{p}  {p.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
