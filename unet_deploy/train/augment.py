"""Data augmentation for U-Net training (Ronneberger et al. 2015, sec. 3.1).

The paper's key augmentation is a smooth elastic deformation: random displacement
vectors on a coarse 3x3 grid, N(0, 10 px), interpolated bicubically to every pixel.
On top we add flips, rotations, shifts (all one inverse map, so image, labels and
weights are resampled exactly once, with one interpolation error) and gray-value
changes on the image only. For robustness to another microscope (pixel size, contrast,
noise) there are optional isotropic scaling (part of the same inverse map), Gaussian blur and
additive Gaussian noise (``random_augment(max_scale=..., blur=..., noise=...)``, all off by
default so the paper recipe draws the same random numbers as before).

Convention: a transform is an *inverse* map.  Output pixel ``p`` (row, col) samples the
input at ``c_in + A @ (p + d(p) - c_out) + shift`` where ``d = (dy, dx)`` is the elastic
displacement (defined on the output grid), ``A`` a rotation/flip matrix and ``c_in``,
``c_out`` the array centres.  Because the mapping is centred, an output smaller than the
input (``out_shape``) is a centre crop of the transformed input; this is how a
valid-convolution U-Net gets its large input tile and its smaller, aligned label tile.

numpy + scipy only, so the module is importable without torch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "elastic_displacement",
    "affine_matrix",
    "sample_coordinates",
    "warp",
    "gray_value_jitter",
    "blur_and_noise",
    "random_augment",
]


def _spline_resample_matrix(n_out: int, n_grid: int, order: int = 3) -> np.ndarray:
    """(n_out, n_grid) matrix that spline-interpolates grid values at n_out even points.

    Interpolation is linear in the data, so interpolating each basis vector once gives
    a matrix; the 2-D field is then ``R_y @ C @ R_x.T`` (separable), far cheaper than
    map_coordinates at every pixel.  Grid nodes sit on the first/last pixel.
    """
    pos = np.linspace(0.0, n_grid - 1, n_out)
    eye = np.eye(n_grid)
    cols = [ndimage.map_coordinates(eye[k], pos[None], order=order, mode="mirror") for k in range(n_grid)]
    return np.stack(cols, axis=1)


def elastic_displacement(
    shape: tuple[int, int],
    rng: np.random.Generator,
    grid: int = 3,
    sigma: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel displacement fields ``(dy, dx)`` (float32, ``shape``), in pixels.

    Displacements are drawn i.i.d. N(0, sigma) on a ``grid x grid`` lattice spanning
    the array (nodes at corners) and upsampled with cubic-spline (bicubic, order 3)
    interpolation, as in the paper.  The spline passes through the node values.
    """
    h, w = shape
    if grid < 2:
        raise ValueError("grid must be >= 2")
    ry = _spline_resample_matrix(h, grid)
    rx = _spline_resample_matrix(w, grid)
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    dy = (ry @ coarse[0] @ rx.T).astype(np.float32)
    dx = (ry @ coarse[1] @ rx.T).astype(np.float32)
    return dy, dx


def affine_matrix(angle_deg: float = 0.0, flip: tuple[bool, bool] = (False, False),
                  scale: float = 1.0) -> np.ndarray:
    """2x2 matrix (row, col coordinates) for a rotation by ``angle_deg`` then flips, then a
    zoom by ``scale`` (objects appear ``scale`` times larger: the inverse map samples the
    input at offsets divided by ``scale``).

    Multiples of 90 degrees are built from exact integers so that ``rot90`` style
    transforms hit pixel centres exactly (no interpolation blur).
    """
    k, rest = divmod(float(angle_deg), 90.0)
    quarter = np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), int(k) % 4)
    t = np.deg2rad(rest)
    small = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) if rest else np.eye(2)
    flips = np.diag([-1.0 if flip[0] else 1.0, -1.0 if flip[1] else 1.0])
    return flips @ quarter @ small / float(scale)


def sample_coordinates(
    in_shape: tuple[int, int],
    out_shape: tuple[int, int] | None = None,
    dy: np.ndarray | None = None,
    dx: np.ndarray | None = None,
    matrix: np.ndarray | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Input coordinates (2, *out_shape) sampled by each output pixel (see module doc)."""
    out_shape = tuple(in_shape) if out_shape is None else tuple(out_shape)
    c_in = (np.asarray(in_shape, np.float64) - 1) / 2
    c_out = (np.asarray(out_shape, np.float64) - 1) / 2
    yy, xx = np.meshgrid(
        np.arange(out_shape[0], dtype=np.float64) - c_out[0],
        np.arange(out_shape[1], dtype=np.float64) - c_out[1],
        indexing="ij",
    )
    if dy is not None:
        yy = yy + _fit(dy, out_shape)
    if dx is not None:
        xx = xx + _fit(dx, out_shape)
    a = np.eye(2) if matrix is None else np.asarray(matrix, np.float64)
    ys = a[0, 0] * yy + a[0, 1] * xx + c_in[0] + shift[0]
    xs = a[1, 0] * yy + a[1, 1] * xx + c_in[1] + shift[1]
    return np.stack([ys, xs])


def _fit(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop a displacement field to ``shape`` (fields may be drawn at input size)."""
    field = np.asarray(field)
    if field.shape == tuple(shape):
        return field
    ey, ex = field.shape[0] - shape[0], field.shape[1] - shape[1]
    # an odd margin would put the label grid half a pixel off the image grid
    if ey < 0 or ex < 0 or ey % 2 or ex % 2:
        raise ValueError(f"cannot centre-crop displacement {field.shape} to {shape} (need even margins)")
    oy, ox = ey // 2, ex // 2
    return field[oy : oy + shape[0], ox : ox + shape[1]]


def _map(array: np.ndarray, coords: np.ndarray, order: int, mode: str) -> np.ndarray:
    """map_coordinates over the last two axes, looping over leading (channel) axes."""
    if array.dtype == bool:  # ndimage has no bool output type
        return _map(array.view(np.uint8), coords, order, mode).astype(bool)
    if array.ndim == 2:
        # prefilter only matters for order > 1; output keeps the dtype (labels stay ints)
        return ndimage.map_coordinates(array, coords, order=order, mode=mode, output=array.dtype)
    flat = array.reshape(-1, *array.shape[-2:])
    out = np.stack([_map(a, coords, order, mode) for a in flat])
    return out.reshape(*array.shape[:-2], *coords.shape[1:])


def warp(
    array: np.ndarray,
    dy: np.ndarray | None,
    dx: np.ndarray | None,
    order: int,
    mode: str = "reflect",
    *,
    angle: float = 0.0,
    flip: tuple[bool, bool] = (False, False),
    shift: tuple[float, float] = (0.0, 0.0),
    out_shape: tuple[int, int] | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Resample ``array`` (H, W) or (..., H, W) through displacement + optional affine.

    Use ``order=3`` (or 1) for images, ``order=0`` (nearest) for label maps (keeps the
    value set and dtype) and ``order=1`` for weight maps (no spline over/undershoot, so
    weights stay positive).  ``mode='reflect'`` mirrors the data at the border, so no
    fake constant values (e.g. a label 0 that is not in the data) are introduced.
    ``dy``/``dx`` may be None (no elastic part).  Calling ``warp`` with the same
    arguments on several arrays applies the identical geometric transform.
    """
    array = np.asarray(array)
    coords = sample_coordinates(
        array.shape[-2:], out_shape, dy, dx, affine_matrix(angle, flip, scale), shift
    )
    return _map(array, coords, order, mode)


def gray_value_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma_range: tuple[float, float] = (0.7, 1.4),
    contrast_range: tuple[float, float] = (0.8, 1.2),
    brightness: float = 0.1,
) -> np.ndarray:
    """Random gamma, contrast and brightness change (image only, float32).

    Gamma acts on the image rescaled to [0, 1] and is mapped back to the original range,
    so it works for any intensity scale; contrast scales about the mean and brightness
    adds a fraction of the image's dynamic range.  Gamma is drawn log-uniformly so that
    darkening and brightening are equally likely.
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    span = hi - lo
    if span <= 0:
        return img.copy()
    gamma = np.exp(rng.uniform(np.log(gamma_range[0]), np.log(gamma_range[1])))
    out = ((img - lo) / span) ** gamma * span + lo
    mean = out.mean()
    out = (out - mean) * rng.uniform(*contrast_range) + mean
    out = out + rng.uniform(-brightness, brightness) * span
    return out.astype(np.float32)


def blur_and_noise(image: np.ndarray, rng: np.random.Generator, blur: float = 0.0,
                   noise: float = 0.0) -> np.ndarray:
    """Gaussian blur with sigma drawn from U(0, ``blur``) px and additive Gaussian noise with
    standard deviation drawn from U(0, ``noise``) times the image's range (float32). Each is
    applied with probability 1/2; a zero limit draws nothing."""
    img = np.asarray(image, dtype=np.float32)
    if blur > 0 and rng.random() < 0.5:
        img = ndimage.gaussian_filter(img, rng.uniform(0.0, blur))
    if noise > 0 and rng.random() < 0.5:
        span = float(img.max() - img.min()) or 1.0
        img = img + rng.normal(0.0, rng.uniform(0.0, noise) * span, img.shape).astype(np.float32)
    return img.astype(np.float32, copy=False)


def random_augment(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    rng: np.random.Generator,
    out_shape: tuple[int, int] | None = None,
    label_shape: tuple[int, int] | None = None,
    *,
    flip: bool = True,
    rot90: bool = True,
    max_angle: float = 15.0,
    max_shift: float = 0.0,
    elastic_sigma: float = 10.0,
    elastic_grid: int = 3,
    image_order: int = 3,
    gray: bool = True,
    mode: str = "reflect",
    max_scale: float = 0.0,
    blur: float = 0.0,
    noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random geometric + gray-value augmentation of one training sample.

    ``image`` is (H, W) or (C, H, W); ``labels`` and ``weights`` are (H, W) and aligned
    with the image.  One random transform (flips, a random multiple of 90 degrees plus
    a rotation in ``[-max_angle, max_angle]``, a shift of up to ``max_shift`` px per axis,
    an elastic deformation with ``elastic_sigma`` px on an ``elastic_grid`` lattice) is
    applied to all three arrays.  ``out_shape`` is the image output shape (default input
    shape); ``label_shape`` the label/weight output shape (default ``out_shape``), both
    centred on the same point, e.g. ``out_shape=(572, 572), label_shape=(388, 388)`` for
    the paper's valid-convolution tiles.  The elastic field is drawn at ``out_shape``
    and centre-cropped for the labels, so the deformation is identical.

    Robustness (off by default): ``max_scale`` r zooms by a factor drawn log-uniformly from
    [1/(1+r), 1+r] (pixel size), ``blur``/``noise`` see ``blur_and_noise`` (image only,
    after the gray-value change, which already covers gamma and contrast).

    Returns ``(image float32, labels with input dtype/value set, weights float32 or
    None)``.  Set ``elastic_sigma=0``, ``max_angle=0`` etc. to disable parts.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"labels {labels.shape} not aligned with image {image.shape}")
    if weights is not None and np.shape(weights) != labels.shape:
        raise ValueError("weights must have the labels' shape")
    out_shape = tuple(image.shape[-2:]) if out_shape is None else tuple(out_shape)
    label_shape = out_shape if label_shape is None else tuple(label_shape)

    fl = tuple(bool(b) for b in rng.random(2) < 0.5) if flip else (False, False)
    angle = 90.0 * rng.integers(0, 4) if rot90 else 0.0
    angle += rng.uniform(-max_angle, max_angle) if max_angle > 0 else 0.0
    shift = tuple(rng.uniform(-max_shift, max_shift, 2)) if max_shift > 0 else (0.0, 0.0)
    if elastic_sigma > 0:
        dy, dx = elastic_displacement(out_shape, rng, elastic_grid, elastic_sigma)
    else:
        dy = dx = None

    zoom = float(np.exp(rng.uniform(-np.log1p(max_scale), np.log1p(max_scale)))) \
        if max_scale > 0 else 1.0
    geo = dict(angle=angle, flip=fl, shift=shift, scale=zoom)
    img = warp(image.astype(np.float32, copy=False), dy, dx, image_order, mode, out_shape=out_shape, **geo)
    lab = warp(labels, dy, dx, 0, mode, out_shape=label_shape, **geo)
    wts = None
    if weights is not None:
        wts = warp(np.asarray(weights, np.float32), dy, dx, 1, mode, out_shape=label_shape, **geo)
    if gray:
        img = gray_value_jitter(img, rng)
    if blur > 0 or noise > 0:
        img = blur_and_noise(img, rng, blur, noise)
    return img.astype(np.float32, copy=False), lab, wts
