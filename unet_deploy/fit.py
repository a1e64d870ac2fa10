"""Does an input look like what a model was trained on? Cheap checks that warn, never refuse.

The model's metadata says what it expects (``ModelInfo.expects``: modality, channels, dark or
bright background); ``fit_warnings`` compares a small sample of one plane (a few bands, not a
full pass, so huge files cost nothing noticeable) and returns one-line warnings naming the fix.
"""

from __future__ import annotations

import numpy as np

from .metadata import ModelInfo
from .readers import Reader

SAMPLE_BANDS = 8
BAND_ROWS = 32
# fluorescence: most pixels are background, near the low percentile; this fraction of the
# low..high range at the median means a bright background (brightfield, H&E, phase)
BRIGHT_MEDIAN = 0.5


def sample_bands(reader: Reader, bands: int = SAMPLE_BANDS, rows: int = BAND_ROWS) -> np.ndarray:
    """(n, W, C) rows from ``bands`` evenly spaced bands of the plane, columns strided."""
    h = reader.height
    starts = sorted({int(y) for y in np.linspace(0, max(0, h - rows), bands)})
    sx = max(1, reader.width // 2048)
    return np.concatenate([np.asarray(reader.read_rows(y, min(h, y + rows)))[:, ::sx]
                           for y in starts])


def fit_warnings(reader: Reader, info: ModelInfo, where: str = "image") -> list[str]:
    """Warnings (one line each) when the plane clearly does not fit the model."""
    expects = info.expects or {}
    modality = expects.get("modality", "")
    what = f"model '{info.name}'" + (f" ({modality})" if modality else "")
    out = []
    if info.in_channels == 1 and reader.channels in (3, 4):
        out.append(f"{where}: an RGB image into single-channel {what}; it is converted to "
                   f"gray. If it is a multichannel stain pick one channel with --channel N; "
                   f"a brightfield/H&E image needs a model trained on such images")
    if expects.get("background") == "dark":
        sample = sample_bands(reader).astype(np.float32)
        gray = sample.mean(axis=-1) if sample.shape[-1] > 1 else sample[..., 0]
        gray = gray[np.isfinite(gray)]
        if gray.size:
            lo, med, hi = np.percentile(gray, [1, 50, 99.8])
            if hi > lo and (med - lo) / (hi - lo) > BRIGHT_MEDIAN:
                out.append(f"{where}: bright background (median at {(med - lo) / (hi - lo):.0%} "
                           f"of the intensity range), but {what} expects dark-background "
                           f"images; results may be poor (inverted or brightfield input?)")
    return out
