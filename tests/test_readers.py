"""Every ``Reader`` implementation passes the shipped contract check (``readers.check_reader``),
and the pipeline gives the same labels whichever reader feeds it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unet_deploy.io import open_image
from unet_deploy.normalize import preprocess_for
from unet_deploy.pipeline import plane_bands
from unet_deploy.readers import ArrayReader, Reader, check_reader
from unet_deploy.tiling import plan_tiles

RNG = np.random.default_rng(7)
IMAGE = RNG.integers(0, 4000, (57, 43), dtype=np.uint16)

TIFF_LAYOUTS = {
    "memmap": {},
    "strips-zlib": dict(compression="zlib", rowsperstrip=5),
    "tiles-zlib": dict(compression="zlib", tile=(16, 16)),
    "big-endian": dict(byteorder=">"),
}


def tiff_reader(tmp_path, layout):
    path = tmp_path / f"{layout}.tif"
    tifffile.imwrite(path, IMAGE, **TIFF_LAYOUTS[layout])
    return open_image(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_array_reader_contract(dtype, channels):
    image = RNG.integers(0, 200, (31, 17, channels)).astype(dtype)
    check_reader(ArrayReader(image if channels > 1 else image[..., 0]), image)


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
def test_tiff_plane_reader_contract(tmp_path, layout):
    with tiff_reader(tmp_path, layout) as src:
        reader = src.plane(0)
        check_reader(reader, IMAGE[..., None])
        assert (reader.array is not None) == (layout == "memmap")


def test_contract_check_catches_a_broken_reader():
    class OffByOne(ArrayReader):
        def read_rows(self, y0, y1):
            return self.array[y0 + 1 : y1 + 1]

    with pytest.raises(AssertionError):
        check_reader(OffByOne(IMAGE), IMAGE[..., None])
    assert not isinstance(object(), Reader)


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
def test_pipeline_gives_same_labels_from_every_reader(tmp_path, layout, tiny_model):
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(tiny_model) as be, tiff_reader(tmp_path, layout) as src:
        plan = plan_tiles(IMAGE.shape[0], IMAGE.shape[1], be.info.geometry, 92)

        def labels(reader):
            prep = preprocess_for(reader, be.info)
            return np.concatenate(list(plane_bands(reader, plan, be, prep, batch_size=2)))

        np.testing.assert_array_equal(labels(src.plane(0)), labels(ArrayReader(IMAGE)))
