"""Whole-slide formats: OME-Zarr in and out, pyramidal OME-TIFF, physical units, --level, and
the bad-input cases (not NGFF, missing level, existing output, disk full mid-write)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import InputError, OutputError
from unet_deploy.instances import same_objects
from unet_deploy.io import open_image
from unet_deploy.model_store import read_onnx
from unet_deploy.physical import (
    PhysicalSize,
    from_ngff,
    from_ome_xml,
    from_svs_description,
    from_tiff_tags,
)
from unet_deploy.pipeline import segment_file
from unet_deploy.pyramid import Cascade, level_shape, n_levels, reduce_mean, reduce_mode

zarr = pytest.importorskip("zarr")


def _zarr_image(path, levels, physical=PhysicalSize(0.5, 0.5), axes="yx"):
    """An NGFF 0.4 image written by ome-zarr's own writer (not ours): ``levels`` arrays."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    transforms = [[{"type": "scale", "scale": [1.0] * (len(axes) - 2)
                    + [physical.y * 2**k, physical.x * 2**k]}] for k in range(len(levels))]
    ax = [{"name": a, "type": {"c": "channel", "t": "time"}.get(a, "space"),
           **({"unit": "micrometer"} if a in "yx" else {})} for a in axes]
    write_multiscale(levels, group, fmt=FormatV04(), axes=ax,
                     coordinate_transformations=transforms)
    return path


def _read_zarr(path, level=0):
    return zarr.open_group(str(path), mode="r")[str(level)][:]


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# -- OME-Zarr input -------------------------------------------------------------------


def test_zarr_input_gives_the_tiff_labels(tmp_path, real_crop, tiny3_model):
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, real_crop)
    half = real_crop[::2, ::2]
    z = _zarr_image(tmp_path / "in.ome.zarr", [real_crop, half])
    for output in ("labels", "instances"):
        segment_file(tif, tmp_path / f"t.{output}.tif", tiny3_model, output=output, progress=False)
        segment_file(z, tmp_path / f"z.{output}.tif", tiny3_model, output=output, progress=False)
        a = tifffile.imread(tmp_path / f"t.{output}.tif")
        b = tifffile.imread(tmp_path / f"z.{output}.tif")
        np.testing.assert_array_equal(a, b)
    # --level 1 gives what the same pixels give from a TIFF; the pixel size doubles
    tifffile.imwrite(tmp_path / "half.tif", half)
    segment_file(tmp_path / "half.tif", tmp_path / "h.tif", tiny3_model, progress=False)
    res = _cli("segment", z, "--level", 1, "-o", tmp_path / "zl1.tif", "-m", tiny3_model,
               "--output", "labels", "-q")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "h.tif"),
                                  tifffile.imread(tmp_path / "zl1.tif"))
    with open_image(z, level=1) as src:
        assert (src.height, src.width, src.n_levels) == half.shape + (2,)
        assert (src.physical.x, src.physical.y) == (1.0, 1.0)
    with tifffile.TiffFile(tmp_path / "zl1.tif") as t:  # 1 µm/pixel = 10000 pixels per cm
        x = t.pages[0].tags["XResolution"].value
        assert x[0] / x[1] == pytest.approx(1e4) and t.pages[0].tags["ResolutionUnit"].value == 3


def test_zarr_input_with_channel_and_time_axes(tmp_path):
    data = np.arange(2 * 3 * 20 * 30, dtype=np.uint16).reshape(2, 3, 20, 30)
    z = _zarr_image(tmp_path / "tc.ome.zarr", [data], axes="tcyx")
    with open_image(z) as src:
        assert (src.lead_shape, src.channels, src.lead_axes) == ((2,), 3, "t")
        from unet_deploy.readers import check_reader

        check_reader(src.plane(1), np.moveaxis(data[1], 0, -1))


def test_not_ngff_and_missing_level(tmp_path, tiny_model):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", zarr_format=2).create_array("a", shape=(4, 4),
                                                                     dtype="u1")
    res = _cli("segment", plain, "-m", tiny_model, "-q")
    assert res.exit_code == 3 and "multiscales" in res.output and str(plain) in res.output
    assert len(res.output.strip().splitlines()) == 1
    z = _zarr_image(tmp_path / "one.ome.zarr", [np.zeros((16, 16), np.uint8)])
    res = _cli("segment", z, "--level", 3, "-m", tiny_model, "-q")
    assert res.exit_code == 3 and "--level 0..0" in res.output
    import unet_deploy.zarr_io as zio  # chunks too large to stream: refused, naming the fix

    big = _zarr_image(tmp_path / "big.ome.zarr", [np.zeros((64, 64), np.uint8)])
    orig = zio.MAX_CHUNK_BYTES
    try:
        zio.MAX_CHUNK_BYTES = 1000
        with pytest.raises(InputError, match="rechunk"):
            open_image(big)
    finally:
        zio.MAX_CHUNK_BYTES = orig
    path0 = json.loads((z / ".zattrs").read_text())["multiscales"][0]["datasets"][0]["path"]
    shutil.rmtree(z / path0)  # an incomplete image: metadata names an array that is gone
    with pytest.raises(InputError, match="missing"):
        open_image(z)
    assert not list(tmp_path.glob("*.labels.*"))  # nothing written for any of them


# -- OME-Zarr output ------------------------------------------------------------------


def test_zarr_output_metadata_and_pyramid(tmp_path, tiny3_model):
    img = np.random.default_rng(0).integers(0, 4000, (1100, 36), np.uint16)
    inp = tmp_path / "tall.tif"
    tifffile.imwrite(inp, img, resolution=(1 / 0.25, 1 / 0.25), imagej=True,
                     metadata={"unit": "um"})
    ref = tmp_path / "ref.tif"
    segment_file(inp, ref, tiny3_model, output="probabilities", progress=False)
    probs = tifffile.imread(ref)
    out = tmp_path / "tall.ome.zarr"
    segment_file(inp, out, tiny3_model, output="probabilities", progress=False)
    attrs = json.loads((out / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][-1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.25, 0.25], [1.0, 0.5, 0.5]]  # 1100 px -> one level <= 1024
    classes = read_onnx(tiny3_model).info.classes
    assert [c["label"] for c in attrs["omero"]["channels"]] == classes
    np.testing.assert_array_equal(np.moveaxis(_read_zarr(out), 0, -1), probs)
    np.testing.assert_allclose(np.moveaxis(_read_zarr(out, 1), 0, -1),
                               reduce_mean(np.concatenate([probs, probs[-1:]])[:1100]),
                               rtol=1e-6)
    assert json.loads((out / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    lab = tmp_path / "tall.labels.ome.zarr"
    segment_file(inp, lab, tiny3_model, output="labels", progress=False)
    attrs = json.loads((lab / ".zattrs").read_text())
    assert attrs["image-label"]["version"] == "0.4"
    assert _read_zarr(lab, 1).shape == level_shape(1100, 36, 1)
    # ome-zarr's reader sees a multiscale label image
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(lab)))())
    assert nodes and any(type(s).__name__ == "Label" for s in nodes[0].specs)
    assert not list(tmp_path.glob(".*partial*"))


def test_zarr_output_exists_and_disk_full(tmp_path, tiny_model, monkeypatch):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, np.random.default_rng(1).integers(0, 255, (300, 40), np.uint8))
    out = tmp_path / "out.ome.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    res = _cli("segment", inp, "-o", out, "-m", tiny_model, "-q")
    assert res.exit_code == 5 and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "user data"  # untouched
    shutil.rmtree(out)

    from zarr.storage import LocalStore

    calls = {"n": 0}
    real = LocalStore.set

    async def full(self, key, value):  # the disk fills after a few chunks
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full)
    with pytest.raises(OutputError, match="disk full"):
        segment_file(inp, out, tiny_model, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


# -- pyramidal OME-TIFF ---------------------------------------------------------------


def test_ome_tiff_output(tmp_path, tiny3_model):
    img = np.random.default_rng(2).integers(0, 4000, (1030, 40), np.uint16)
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, img, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    ref = tmp_path / "ref.tif"
    segment_file(inp, ref, tiny3_model, output="probabilities", progress=False)
    out = tmp_path / "p.ome.tif"
    segment_file(inp, out, tiny3_model, output="probabilities", progress=False)
    with tifffile.TiffFile(out) as t:
        assert t.is_ome
        s = t.series[0]
        assert s.axes == "CYX" and len(s.levels) == 2
        np.testing.assert_array_equal(np.moveaxis(s.asarray(), 0, -1), tifffile.imread(ref))
        assert s.levels[1].shape == (3, 515, 20)
        xml = t.ome_metadata
        assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeXUnit="µm"' in xml
        assert all(f'Name="{c}"' in xml for c in read_onnx(tiny3_model).info.classes)
        assert len(t.pages[0].tags["SubIFDs"].value) == 1
    if shutil.which("tiffinfo") and shutil.which("tiffcp"):  # libtiff reads every tile
        info = subprocess.run(["tiffinfo", "-D", str(out)], capture_output=True, text=True)
        assert info.returncode == 0 and "error" not in info.stderr.lower()
        cp = subprocess.run(["tiffcp", str(out), str(tmp_path / "cp.tif")],
                            capture_output=True, text=True)
        assert cp.returncode == 0, cp.stderr


def test_large_tiff_output_is_a_pyramid_by_default(tmp_path, tiny_model):
    inp = tmp_path / "wide.tif"
    tifffile.imwrite(inp, np.random.default_rng(3).integers(0, 255, (24, 2100), np.uint8))
    out = tmp_path / "wide.labels.tif"
    segment_file(inp, out, tiny_model, progress=False)
    with tifffile.TiffFile(out) as t:
        assert t.is_ome and [lv.shape for lv in t.series[0].levels] == [(24, 2100), (12, 1050),
                                                                        (6, 525)]


def test_level_of_a_pyramidal_tiff(tmp_path, tiny_model):
    from unet_deploy.ome_tiff import OmeTiffWriter

    img = np.random.default_rng(4).integers(0, 255, (64, 2100), np.uint8)
    pyr = tmp_path / "pyr.ome.tif"
    with OmeTiffWriter(pyr, (), 64, 2100, 1, np.uint8, physical=PhysicalSize(0.25, 0.25)) as w:
        w.write_band(img)
    with open_image(pyr, level=1) as src:
        assert (src.height, src.width, src.n_levels) == (32, 1050, 3)
        assert src.physical.x == pytest.approx(0.5)
        np.testing.assert_array_equal(src.plane(0).read_rows(0, 32)[..., 0],
                                      reduce_mode(img))
    with pytest.raises(InputError, match="--level 0..2"):
        open_image(pyr, level=5)


# -- physical units -------------------------------------------------------------------


def test_physical_sizes_from_every_format(tmp_path):
    assert from_tiff_tags(2.0, 4.0, 3) == PhysicalSize(5000.0, 2500.0, None,
                                                        "TIFF resolution tags")
    assert from_tiff_tags(1.0, 1.0, 2).x == 25400.0
    assert not from_tiff_tags(1.0, 1.0, 1).known  # unitless, no ImageJ unit
    ij = from_tiff_tags(2.0, 2.0, 1, "micron", 3.0)
    assert (ij.x, ij.z) == (0.5, 3.0)
    assert from_tiff_tags(1.0, 1.0, 1, "nm").x == 1e-3
    assert from_svs_description("Aperio Image Library v11|AppMag = 20|MPP = 0.4990|x").x == 0.499
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
           'PhysicalSizeX="325" PhysicalSizeXUnit="nm" PhysicalSizeY="0.325"/></Image></OME>')
    assert from_ome_xml(xml) == PhysicalSize(0.325, 0.325, None, "OME-XML")
    axes = [{"name": "y", "unit": "millimeter"}, {"name": "x", "unit": "millimeter"}]
    assert from_ngff(axes, [0.001, 0.002]) == PhysicalSize(2.0, 1.0, None, "NGFF scale")
    # an SVS-like file: MPP in the description reaches the output as resolution tags
    p = tmp_path / "slide.svs"
    tifffile.imwrite(p, np.zeros((32, 32, 3), np.uint8), photometric="rgb", tile=(16, 16),
                     description="Aperio Image Library v10.0.51\n32x32 [0,0 32x32] (16x16) "
                                 "JPEG/RGB Q=30|AppMag = 20|MPP = 0.4990")
    with open_image(p) as src:
        assert src.physical.x == pytest.approx(0.499) and src.physical.source == "Aperio MPP"
        assert src.resolution["xresolution"] == pytest.approx(1e4 / 0.499)


def test_cli_zarr_output_and_ome_tiff_units(tmp_path, tiny3_model):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, np.random.default_rng(5).integers(0, 255, (60, 70), np.uint8),
                     resolution=(1 / 0.65, 1 / 0.65), imagej=True, metadata={"unit": "um"})
    res = _cli("segment", inp, "-o", tmp_path / "o.ome.zarr", "-m", tiny3_model,
               "--output", "instances", "-q")
    assert res.exit_code == 0, res.output
    ms = json.loads((tmp_path / "o.ome.zarr" / ".zattrs").read_text())["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.65, 0.65]
    res = _cli("segment", inp, "-o", tmp_path / "o.ome.tif", "-m", tiny3_model,
               "--output", "instances", "-q")
    assert res.exit_code == 0, res.output
    a = _read_zarr(tmp_path / "o.ome.zarr")
    b = tifffile.imread(tmp_path / "o.ome.tif")
    assert a.dtype == np.uint32 and same_objects(a, b)
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as t:
        assert 'PhysicalSizeX="0.65"' in t.ome_metadata


# -- streamed pyramids ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 4),
       st.lists(st.integers(1, 7), min_size=1, max_size=3), st.integers(0, 2**31))
def test_cascade_equals_whole_array_reduction(h, w, levels, bands, seed):
    a = np.random.default_rng(seed).integers(0, 4, (h, w)).astype(np.uint8)
    ref = [a]
    for _ in range(1, levels):
        p = ref[-1]
        ref.append(reduce_mode(np.concatenate([p, p[-1:]]) if p.shape[0] % 2 else p))
    got = {k: [] for k in range(1, levels)}
    c = Cascade(h, levels, reduce_mode, lambda k, r: got[k].append(r))
    y = k = 0
    while y < h:
        c.push(a[y : y + bands[k % len(bands)]])
        y, k = y + bands[k % len(bands)], k + 1
    c.end_plane()
    for k in range(1, levels):
        np.testing.assert_array_equal(np.concatenate(got[k]), ref[k])
        assert ref[k].shape == level_shape(h, w, k)


def test_pyramid_rules():
    assert n_levels(1024, 1024) == 1 and n_levels(1025, 10) == 2 and n_levels(20000, 20000) == 6
    assert reduce_mode(np.array([[1, 2], [3, 4]])).item() == 1  # all differ: top-left
    assert reduce_mode(np.array([[1, 2], [2, 4]])).item() == 2  # the majority
    assert reduce_mean(np.array([[0.0, 1.0], [1.0, 0.0]])).item() == 0.5


def test_ome_tiff_disk_full_leaves_nothing(tmp_path, tiny3_model, monkeypatch):
    import unet_deploy.ome_tiff as ome

    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, np.random.default_rng(6).integers(0, 255, (1100, 30), np.uint8))

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ome.os, "pwrite", full)
    out = tmp_path / "p.ome.tif"
    with pytest.raises(OutputError, match="disk full"):
        segment_file(inp, out, tiny3_model, output="probabilities", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_axes_a_format_cannot_hold(tmp_path, tiny3_model):
    # an ImageJ hyperstack with a channel axis: class planes cannot join it as OME-TIFF C, nor
    # can NGFF order z before c -- refused before any inference, naming a format that works;
    # the default pyramid of a big TIFF falls back to one plain level instead
    hyper = np.random.default_rng(7).integers(0, 255, (2, 2, 24, 30), np.uint8)
    inp = tmp_path / "hyper.tif"
    tifffile.imwrite(inp, hyper, imagej=True, metadata={"axes": "ZCYX"})
    for out in ("p.ome.tif", "p.ome.zarr"):
        with pytest.raises(OutputError, match=r"\.tif output"):
            segment_file(inp, tmp_path / out, tiny3_model, output="probabilities",
                         progress=False)
    segment_file(inp, tmp_path / "p.tif", tiny3_model, output="probabilities", progress=False)
    assert tifffile.imread(tmp_path / "p.tif").shape == (2, 2, 24, 30, 3)
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, np.zeros((2, 2, 8, 2100), np.uint8), imagej=True,
                     metadata={"axes": "ZCYX"})
    segment_file(wide, tmp_path / "w.tif", tiny3_model, output="probabilities", progress=False)
    with tifffile.TiffFile(tmp_path / "w.tif") as t:
        assert not t.is_ome and t.series[0].shape == (2, 2, 8, 2100, 3)


def test_zarr_probabilities_of_a_stack_put_classes_before_space(tmp_path, tiny3_model):
    """NGFF orders axes time, channel, space: a Z stack's class planes are (c, z, y, x)."""
    stack = np.random.default_rng(3).integers(0, 4000, (2, 40, 30), np.uint16)
    inp = tmp_path / "zstack.tif"
    tifffile.imwrite(inp, stack, metadata={"axes": "ZYX"})
    ref = tmp_path / "ref.tif"
    segment_file(inp, ref, tiny3_model, output="probabilities", progress=False)
    out = tmp_path / "zstack.ome.zarr"
    segment_file(inp, out, tiny3_model, output="probabilities", progress=False)
    ms = json.loads((out / ".zattrs").read_text())["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    np.testing.assert_array_equal(np.moveaxis(_read_zarr(out), 0, -1), tifffile.imread(ref))
