import numpy as np
import pytest
import tifffile

from unet_deploy.pipeline import default_output_path, segment_array, segment_file
from unet_deploy.readers import ArrayReader
from unet_deploy.tiling import RowSource, plan_tiles


@pytest.mark.parametrize("layout", [
    dict(compression="zlib", tile=(32, 48)),  # tiled + compressed: band decoding
    dict(compression="zlib", rowsperstrip=7),  # striped + compressed
    dict(),  # contiguous: memory-mapped
    dict(byteorder=">"),  # big-endian, memory-mapped as '>u2'
])
def test_file_layouts_give_identical_labels(tiny_model, real_crop, tmp_path, layout):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, real_crop, **layout)
    summary = segment_file(src, tmp_path / "out.tif", tiny_model, progress=False, tile=60,
                           batch_size=2)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"),
                                  segment_array(real_crop, tiny_model, tile=60))
    assert summary.pixels == real_crop.size and summary.tiles > 1 and summary.mpx_per_s > 0


def test_band_source_reads_only_needed_rows(real_crop):
    """RowSource asks a non-mapped reader only for the mirrored rows a tile row needs."""
    asked = []

    class Reader(ArrayReader):
        def read_rows(self, y0, y1):
            asked.append((y0, y1))
            return self.data[y0:y1]

    reader = Reader(real_crop)
    reader.data, reader.array = reader.array, None  # force the band path
    from unet_deploy.geometry import Geometry

    plan = plan_tiles(*real_crop.shape, Geometry(2), 60)
    src = RowSource(reader, plan)
    for row in range(plan.rows):
        band, row0 = src.rows_for(row)
        assert band.shape[0] <= plan.tile_h
    assert len(asked) == plan.rows


def test_instances_output(tiny3_model, real_crop):
    from unet_deploy.model_store import read_onnx
    from unet_deploy.postprocess import instance_classes, to_instances

    info = read_onnx(tiny3_model).info
    inst = segment_array(real_crop, tiny3_model, output="instances", tile=60)
    probs = segment_array(real_crop, tiny3_model, output="probabilities")
    classes = instance_classes(probs, info)
    assert inst.shape == real_crop.shape and inst.dtype == np.uint32 and inst.max() > 1
    from unet_deploy.instances import same_objects

    # streamed band by band: the whole-plane objects, ids renumbered (sequential 1..N)
    whole = to_instances(classes, info)
    assert same_objects(inst, whole) and inst.max() == whole.max()
    assert not inst[classes == 0].any()  # objects only on the foreground
    # a seed needs interior probability >= seed_threshold
    seeds = classes == 1
    assert (probs[..., 1][seeds] >= info.seed_threshold).all()


def test_default_output_path(tmp_path):
    assert default_output_path(tmp_path / "a.ome.tif", "labels").name == "a.labels.tif"
    assert default_output_path(tmp_path / "b.tiff", "probabilities").name == "b.probabilities.tif"


@pytest.mark.parametrize("rows,batch", [((0, 1), 2), ((1, 3), 3), ((2, 4), 1)])
def test_segment_plane_over_a_block_of_tile_rows_gives_the_planes_bands(tiny_model, real_crop,
                                                                         rows, batch):
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.normalize import preprocess_for
    from unet_deploy.pipeline import segment_plane

    image = real_crop[:200, :150]
    with OnnxRuntimeBackend(tiny_model) as be:
        reader = ArrayReader(image)
        plan = plan_tiles(200, 150, be.info.geometry, 92)
        prep = preprocess_for(reader, be.info)
        whole = list(segment_plane(reader, plan, be, prep, batch, "probabilities"))
        block = list(segment_plane(reader, plan, be, prep, batch, "probabilities", rows=rows))
    assert plan.rows >= 4 and len(block) == rows[1] - rows[0]
    for got, want in zip(block, whole[rows[0] : rows[1]]):
        np.testing.assert_array_equal(got, want)
