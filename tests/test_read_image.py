"""io.read_image: the one whole-image read (training pairs, calibration, evaluation)."""

import numpy as np
import pytest
import tifffile

from unet_deploy.errors import InputError, InputNotFoundError
from unet_deploy.io import read_image


def test_formats_and_first_plane(tmp_path):
    import imagecodecs

    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (3, 20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif"), stack)  # a stack stays one
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif", first_plane=True), stack[0])
    rgb = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "c.png", first_plane=True), rgb)
    np.save(tmp_path / "a.npy", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), stack)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(InputNotFoundError, match="not found"):
        read_image(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="bad.tif: cannot read image") as ei:
        read_image(bad)
    assert "\n" not in str(ei.value)
