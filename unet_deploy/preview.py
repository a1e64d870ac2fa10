"""Previews: a downsampled PNG of a segmentation result, object contours and tinted labels
over the (optional) input image, at most ``max_side`` pixels on the long side.

Memory stays flat however big the result: both files are read band by band (only the strips or
tiles of each band are decoded) and every ``stride``-th row and column is kept, so a 20000²
result costs a few bands plus the small preview. Labels are sampled, never averaged, so object
ids stay exact. Only the first plane of a stack or time series is shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, OutputError

MAX_SIDE = 2048
BAND_BYTES = 8 << 20  # decoded bytes per band read (peak is a few bands)
TINT = 0.35  # label colour weight inside objects (contours are drawn in full colour)


def preview_path(result: str | Path) -> Path:
    """``x.instances.tif`` -> ``x.instances.preview.png``."""
    p = Path(result)
    return p.with_name(p.name[: -len(p.suffix)] + ".preview.png" if p.suffix else
                       p.name + ".preview.png")


def strided_plane(path: str | Path, max_side: int = MAX_SIDE, stride: int | None = None):
    """(every stride-th row/column of plane 0 as (h, w, C), stride, (H, W)), read in bands."""
    from .io import open_image

    with open_image(path) as src:
        reader = src.plane(0)
        h, w = reader.height, reader.width
        s = stride or max(1, -(-max(h, w) // max_side))
        row_bytes = w * reader.channels * np.dtype(reader.dtype).itemsize
        band = max(s, (BAND_BYTES // max(row_bytes, 1)) // s * s)
        parts = [np.array(np.asarray(reader.read_rows(y0, min(h, y0 + band)))[::s, ::s])
                 for y0 in range(0, h, band)]
    return np.concatenate(parts), s, (h, w)


def label_colours(labels: np.ndarray) -> np.ndarray:
    """A stable, well spread RGB colour per label id (uint8 (..., 3)); 0 is black. Hashed
    once per distinct id, then looked up, so memory is a few bytes per preview pixel."""
    ids, inverse = np.unique(labels, return_inverse=True)
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    table = np.stack([(x >> np.uint64(s)) & np.uint64(0xFF) for s in (16, 32, 48)], -1)
    table = (64 + table.astype(np.uint16) * 191 // 255).astype(np.uint8)  # never too dark
    table[ids == 0] = 0
    return table[inverse.reshape(labels.shape)]


def contours(labels: np.ndarray) -> np.ndarray:
    """True on object pixels that touch a different label (4-neighbourhood)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 (h, w) from any (h, w, C) sample: channel mean, 1..99.8 percentile stretch."""
    img = image.astype(np.float32).mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [1, 99.8]) if finite.size else (0.0, 1.0)
    g = np.clip((np.nan_to_num(img) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return (g * 255).astype(np.uint8)


def render(labels: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 preview: contours in full colour and a light tint inside objects over the gray
    image; without an image, the labels' colours on black."""
    colours = label_colours(labels)
    if image is None:
        out = colours
        out[contours(labels)] = 255
        return out
    gray = np.repeat(to_gray(image)[..., None], 3, -1)
    inside = labels > 0
    out = gray.copy()
    out[inside] = ((1 - TINT) * gray[inside] + TINT * colours[inside]).astype(np.uint8)
    edge = contours(labels)
    out[edge] = colours[edge]
    return out


def write_preview(result: str | Path, out: str | Path | None = None, *,
                  image: str | Path | None = None, max_side: int = MAX_SIDE,
                  overwrite: bool = False) -> Path:
    """Write the preview PNG of ``result`` (labels, instances or probabilities TIFF), over
    ``image`` when given (the segmented input: same height and width). Returns its path."""
    import imagecodecs

    result = Path(result)
    out = Path(out) if out else preview_path(result)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: preview file already exists; use --overwrite to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: output folder {out.parent} does not exist; create it first")
    if max_side < 16:
        raise InputError(f"max side {max_side}: too small for a preview; use at least 16")
    res, stride, (h, w) = strided_plane(result, max_side)
    # probabilities (several float samples) show their argmax class; else the label ids
    labels = res.argmax(-1) if res.dtype.kind == "f" and res.shape[-1] > 1 else res[..., 0]
    if labels.dtype.kind == "f":
        raise InputError(f"{result}: float values with one sample are not labels; preview a "
                         f"labels, instances or probabilities file written by unet-deploy")
    sample = None
    if image is not None:
        sample, _, (ih, iw) = strided_plane(image, stride=stride)
        if (ih, iw) != (h, w):
            raise InputError(f"{image}: {ih}x{iw} pixels but the result {result} is {h}x{w}; "
                             f"pass the image that was segmented")
    rgb = render(labels.astype(np.int64), sample)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb)))
    tmp.replace(out)
    return out
