"""Tests for unet_deploy.io: streaming TIFF reads (memmap / per-segment decode) and the
atomic band writer."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import threading

import numpy as np
import pytest
import tifffile

from unet_deploy import io as uio
from unet_deploy.errors import InputError, InputNotFoundError, OutputError
from unet_deploy.io import TiffBandWriter, check_output, open_image

RNG = np.random.default_rng(1234)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def rand(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def row_ranges(h, n=12):
    out = [(0, h), (0, 1), (h - 1, h), (h // 2, h // 2)]
    for _ in range(n):
        a, b = sorted(RNG.integers(0, h + 1, size=2))
        out.append((int(a), int(b)))
    return out


def as_hwc(a):
    return a[..., None] if a.ndim == 2 else a


def no_full_decode(monkeypatch):
    """Make whole-page reads fail, so read_rows must decode segments itself."""

    def boom(*args, **kwargs):
        raise AssertionError("whole page decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", boom)
    monkeypatch.setattr(tifffile.TiffFrame, "asarray", boom)


# ----------------------------------------------------------------------------- reading


def test_memmap_for_contiguous_uncompressed(tmp_path):
    data = rand((70, 53), np.uint16)
    p = tmp_path / "raw.tif"
    tifffile.imwrite(p, data)
    with open_image(p) as src:
        assert (src.axes, src.height, src.width, src.channels) == ("YX", 70, 53, 1)
        assert src.lead_shape == () and src.n_planes == 1 and src.dtype == np.uint16
        pr = src.plane(0)
        assert isinstance(pr.array, np.memmap) or isinstance(pr.array.base, np.memmap)
        assert pr.array.shape == (70, 53, 1)
        np.testing.assert_array_equal(pr.array[..., 0], data)
        np.testing.assert_array_equal(pr.read_rows(10, 33)[..., 0], data[10:33])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(compression="zlib", rowsperstrip=7),
        dict(compression="zlib", predictor=True, rowsperstrip=5),
        dict(compression="lzw", rowsperstrip=16),
        dict(compression="zlib", tile=(32, 48)),
        dict(compression="zstd", tile=(16, 16)),
        dict(tile=(32, 32)),  # uncompressed but tiled -> not contiguous
    ],
    ids=["zlib-strips", "zlib-predictor", "lzw", "zlib-tiles", "zstd-tiles", "raw-tiles"],
)
def test_read_rows_matches_full_array(tmp_path, monkeypatch, kwargs):
    data = rand((101, 75), np.uint16)
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, data, **kwargs)
    no_full_decode(monkeypatch)
    with open_image(p) as src:
        pr = src.plane(0)
        assert pr.array is None
        for y0, y1 in row_ranges(101):
            got = pr.read_rows(y0, y1)
            assert got.shape == (y1 - y0, 75, 1) and got.dtype == np.uint16
            np.testing.assert_array_equal(got[..., 0], data[y0:y1])


def test_read_rows_decodes_only_needed_segments(tmp_path, monkeypatch):
    data = rand((256, 64), np.uint8)
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, data, compression="zlib", tile=(32, 32))  # 8 x 2 tiles
    with open_image(p) as src:
        pr = src.plane(0)
        calls = []
        orig = pr._decode_segment

        def spy(index):
            calls.append(index)
            return orig(index)

        monkeypatch.setattr(pr, "_decode_segment", spy)
        np.testing.assert_array_equal(pr.read_rows(40, 70)[..., 0], data[40:70])
        assert sorted(calls) == [2, 3, 4, 5]  # tile rows 1 and 2 only


def test_stack_and_time_series(tmp_path, monkeypatch):
    stack = rand((5, 40, 30), np.uint8)
    p = tmp_path / "zyx.tif"
    tifffile.imwrite(p, stack, compression="zlib", metadata={"axes": "ZYX"})
    ts = rand((2, 3, 20, 24), np.float32)
    q = tmp_path / "tzyx.tif"
    tifffile.imwrite(q, ts, photometric="minisblack", metadata={"axes": "TZYX"})
    no_full_decode(monkeypatch)
    with open_image(p) as src:
        assert src.axes == "ZYX" and src.lead_shape == (5,) and src.n_planes == 5
        for i in range(5):
            np.testing.assert_array_equal(src.plane(i).read_rows(3, 37)[..., 0], stack[i, 3:37])
    with open_image(q) as src:
        assert src.axes == "TZYX" and src.lead_shape == (2, 3) and src.n_planes == 6
        flat = ts.reshape(6, 20, 24)
        for i in range(6):
            pr = src.plane(i)
            assert pr.array is not None  # uncompressed: memmap
            np.testing.assert_array_equal(pr.read_rows(0, 20)[..., 0], flat[i])


def test_truncated_imagej_contiguous_series(tmp_path):
    """ImageJ 'truncate' files hold one IFD for many planes: planes come from the series offset."""
    data = rand((5, 16, 24), np.uint16)
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, data, imagej=True, truncate=True)
    with tifffile.TiffFile(p) as tif:
        assert len(tif.pages) == 1  # the layout under test
    with open_image(p) as src:
        assert src.lead_shape == (5,)
        for i in range(5):
            pr = src.plane(i)
            assert pr.array is not None
            np.testing.assert_array_equal(pr.read_rows(3, 16)[..., 0], data[i, 3:])


@pytest.mark.parametrize("planar", ["contig", "separate"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_rgb_contig_and_planar(tmp_path, planar, compression):
    rgb = rand((45, 33, 3), np.uint8)
    data = rgb if planar == "contig" else np.moveaxis(rgb, -1, 0)
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, data, photometric="rgb", planarconfig=planar, compression=compression, rowsperstrip=8)
    with open_image(p) as src:
        assert src.channels == 3 and (src.height, src.width) == (45, 33) and src.lead_shape == ()
        pr = src.plane(0)
        if compression is None:
            assert pr.array is not None and pr.array.shape == (45, 33, 3)
            np.testing.assert_array_equal(pr.array, rgb)
        for y0, y1 in row_ranges(45, 6):
            np.testing.assert_array_equal(pr.read_rows(y0, y1), rgb[y0:y1])


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_big_endian_returns_native(tmp_path, compression):
    data = rand((30, 17), np.uint16)
    p = tmp_path / "be.tif"
    tifffile.imwrite(p, data, byteorder=">", compression=compression, rowsperstrip=4)
    with open_image(p) as src:
        pr = src.plane(0)
        got = pr.read_rows(2, 29)
        assert got.dtype == np.dtype("=u2") and got.dtype.isnative
        np.testing.assert_array_equal(got[..., 0], data[2:29])
        if compression is None:
            # the kernels need native order: raw keeps the big-endian view, array is None
            assert pr.raw is not None and pr.raw.dtype == np.dtype(">u2") and pr.array is None
            np.testing.assert_array_equal(pr.raw[..., 0], data)


@pytest.mark.parametrize("kwargs", [{}, {"compression": "zlib", "rowsperstrip": 3}, {"tile": (16, 16), "compression": "zlib"}])
def test_one_pixel_wide(tmp_path, kwargs):
    data = rand((50, 1), np.uint8)
    p = tmp_path / "thin.tif"
    tifffile.imwrite(p, data, **kwargs)
    with open_image(p) as src:
        assert (src.height, src.width) == (50, 1)
        np.testing.assert_array_equal(src.plane(0).read_rows(7, 50)[..., 0], data[7:])


def test_palette_to_rgb_and_bilevel(tmp_path):
    idx = RNG.integers(0, 4, size=(20, 30), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = [[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]]
    p = tmp_path / "pal.tif"
    tifffile.imwrite(p, idx, photometric="palette", colormap=cmap)
    with open_image(p) as src:
        assert src.palette and src.channels == 3
        pr = src.plane(0)
        assert pr.array is None
        np.testing.assert_array_equal(pr.read_rows(0, 20), cmap.T[idx])
    bits = RNG.random((37, 50)) > 0.5
    q = tmp_path / "bits.tif"
    tifffile.imwrite(q, bits)
    with open_image(q) as src:
        got = src.plane(0).read_rows(5, 30)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got[..., 0], bits[5:30].astype(np.uint8))


def test_float16_ok_complex_refused(tmp_path):
    p = tmp_path / "f16.tif"
    data = rand((9, 8), np.float16)
    tifffile.imwrite(p, data)
    with open_image(p) as src:
        np.testing.assert_array_equal(src.plane(0).read_rows(0, 9)[..., 0], data)
    q = tmp_path / "c.tif"
    tifffile.imwrite(q, np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError, match="complex pixel type"):
        open_image(q)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="missing.tif"):
        open_image(tmp_path / "missing.tif")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.tif"):
        open_image(empty)
    text = tmp_path / "notes.tif"
    text.write_text("this is not a tiff\n" * 10)
    with pytest.raises(InputError, match="notes.tif") as ei:
        open_image(text)
    assert not isinstance(ei.value, InputNotFoundError)
    assert "\n" not in str(ei.value)
    # truncated data: header and IFD intact (written first), pixel data cut off
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, rand((200, 200), np.uint8), compression="zlib", rowsperstrip=10)
    raw = good.read_bytes()
    for cut in (len(raw) // 2, 12):
        trunc = tmp_path / f"trunc{cut}.tif"
        trunc.write_bytes(raw[:cut])
        with pytest.raises(InputError, match=f"trunc{cut}.tif"):
            with open_image(trunc) as src:
                src.plane(0).read_rows(0, 200)


def test_max_pixels_from_metadata_only(tmp_path, monkeypatch):
    p = tmp_path / "huge.tif"
    # tiled, all tiles but the first empty (None -> bytecount 0): header says 100000 x 60000
    ntiles = 98 * 59
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(
            iter([np.zeros((1024, 1024), np.uint8)] + [None] * (ntiles - 1)), shape=(100_000, 60_000), dtype=np.uint8, tile=(1024, 1024), compression="zlib"
        )
    assert p.stat().st_size < 10_000_000

    def boom(*a, **k):
        raise AssertionError("pixels read")

    monkeypatch.setattr(uio.PlaneReader, "_decode_segment", boom)
    with pytest.raises(InputError, match=r"huge.tif.*6000000000 pixels.*limit"):
        open_image(p, max_pixels=50_000_000)


def test_series_choice(tmp_path):
    p = tmp_path / "two.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(rand((32, 32), np.uint8))
        tw.write(rand((30, 31), np.uint8))
    with pytest.raises(InputError, match="--series"):
        open_image(p)
    with open_image(p, series=1) as src:
        assert (src.height, src.width) == (30, 31)
    with pytest.raises(InputError, match="series 5"):
        open_image(p, series=5)
    q = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(q) as tw:
        tw.write(rand((20, 20), np.uint8))  # small first: thumbnail-like
        tw.write(rand((128, 100), np.uint8))
    with open_image(q) as src:
        assert (src.series_index, src.height) == (1, 128)


def test_resolution_read(tmp_path):
    p = tmp_path / "ij.tif"
    tifffile.imwrite(
        p,
        rand((3, 16, 16), np.uint8),
        imagej=True,
        resolution=(2.5, 4.0),
        metadata={"spacing": 0.75, "unit": "um", "axes": "ZYX"},
    )
    with open_image(p) as src:
        r = src.resolution
        assert r["xresolution"] == pytest.approx(2.5) and r["yresolution"] == pytest.approx(4.0)
        assert r["spacing"] == pytest.approx(0.75) and r["unit"] == "um"


def test_input_bytes_unchanged(tmp_path):
    p = tmp_path / "in.tif"
    tifffile.imwrite(p, rand((64, 64), np.uint16))
    before = sha(p)
    with open_image(p) as src:
        pr = src.plane(0)
        assert pr.array is not None
        with pytest.raises((ValueError, TypeError)):
            pr.array[0, 0, 0] = 1  # read-only memmap
        pr.read_rows(0, 64)
    assert sha(p) == before


# ----------------------------------------------------------------------------- output


def test_check_output(tmp_path):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, np.zeros((4, 4), np.uint8))
    check_output(tmp_path / "new.tif", inp, overwrite=False)
    with pytest.raises(OutputError, match="same"):
        check_output(inp, inp, overwrite=True)
    link = tmp_path / "link.tif"
    link.symlink_to(inp)
    with pytest.raises(OutputError, match="same"):
        check_output(link, inp, overwrite=True)
    hard = tmp_path / "hard.tif"
    os.link(inp, hard)
    with pytest.raises(OutputError, match="same"):
        check_output(hard, inp, overwrite=True)
    with pytest.raises(OutputError, match="same"):
        check_output(tmp_path / "sub" / ".." / "in.tif", inp, overwrite=True)
    other = tmp_path / "exists.tif"
    other.write_bytes(b"x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_output(other, inp, overwrite=False)
    check_output(other, inp, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "nope" / "o.tif", inp, overwrite=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anyway
            with pytest.raises(OutputError, match="cannot write"):
                check_output(ro / "o.tif", inp, overwrite=False)
    finally:
        ro.chmod(0o700)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["in.tif", "link.tif", "hard.tif", "exists.tif", "ro"])


def test_check_output_unwritable_folder(tmp_path, monkeypatch):
    """Works as root too: the probe file creation is made to fail like EACCES."""
    inp = tmp_path / "in.tif"
    inp.write_bytes(b"x")
    real_open = os.open

    def deny(path, *a, **k):
        if ".probe-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(uio.os, "open", deny)
    with pytest.raises(OutputError, match=r"cannot write in output folder .*Permission denied") as ei:
        check_output(tmp_path / "out.tif", inp, overwrite=False)
    assert "\n" not in str(ei.value)


def write_bands(writer, planes, band_rows):
    for plane in planes:
        y = 0
        while y < plane.shape[0]:
            writer.write_band(plane[y : y + band_rows])
            y += band_rows


@pytest.mark.parametrize("band_rows", [1, 37, 64, 100])
def test_writer_roundtrip_labels_multiplane(tmp_path, band_rows):
    labels = RNG.integers(0, 5, size=(3, 100, 70), dtype=np.uint8)
    out = tmp_path / "labels.tif"
    with TiffBandWriter(out, (3,), 100, 70, 1, np.uint8, tile=32) as w:
        write_bands(w, labels, band_rows)
    assert sorted(os.listdir(tmp_path)) == ["labels.tif"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), labels)
    with open_image(out) as src:  # our reader reads our writer
        assert src.lead_shape == (3,)
        np.testing.assert_array_equal(src.plane(2).read_rows(0, 100)[..., 0], labels[2])


def test_writer_roundtrip_probabilities_and_resolution(tmp_path):
    probs = RNG.random((2, 50, 41, 3)).astype(np.float32)
    res = {"xresolution": 3.5, "yresolution": 2.0, "resolutionunit": 3, "spacing": 0.5, "unit": "um"}
    out = tmp_path / "probs.tif"
    with TiffBandWriter(out, (2,), 50, 41, 3, np.float32, resolution=res, tile=16, axes="ZYXC") as w:
        write_bands(w, probs, 13)
    with tifffile.TiffFile(out) as tif:
        np.testing.assert_array_equal(tif.asarray(), probs)
        assert tif.series[0].axes == "ZYXC"
        assert tif.pages[0].dtype == np.float32
    with open_image(out) as src:
        assert src.channels == 3 and src.n_planes == 2
        r = src.resolution
        assert r["xresolution"] == pytest.approx(3.5) and r["yresolution"] == pytest.approx(2.0)
        assert r["resolutionunit"] == 3 and r["spacing"] == 0.5 and r["unit"] == "um"
        np.testing.assert_array_equal(src.plane(1).read_rows(10, 20), probs[1, 10:20])


@pytest.mark.parametrize("threads", [1, 2])
def test_writer_memory_bounded(tmp_path, threads):
    """Peak Python/NumPy allocation while writing a 32 MB image band by band stays at a few
    tile rows (tile row = 2 MB here), far below the image size, also when tiles are
    compressed in parallel (tifffile buffers up to its ``buffersize``)."""
    import tracemalloc

    h = w = 4096
    band = np.arange(256 * w, dtype=np.uint16).reshape(256, w)
    out = tmp_path / "big.tif"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with TiffBandWriter(out, (), h, w, 1, np.uint16, tile=256, threads=threads) as wr:
            for _ in range(h // 256):
                wr.write_band(band)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 32 MiB image"
    with tifffile.TiffFile(out) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray()[-256:], band)


def test_writer_exception_midway_leaves_nothing(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with TiffBandWriter(out, (2,), 64, 40, 1, np.uint8, tile=16) as w:
            w.write_band(np.ones((50, 40), np.uint8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    # old file stays intact
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with TiffBandWriter(out, (), 64, 40, 1, np.uint8, tile=16, overwrite=True) as w:
            w.write_band(np.ones((20, 40), np.uint8))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["o.tif"] and out.read_bytes() == b"old"


def test_writer_incomplete_raises(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(OutputError, match=r"incomplete \(63 of 64 rows"):
        with TiffBandWriter(out, (), 64, 40, 1, np.uint8, tile=16) as w:
            w.write_band(np.ones((63, 40), np.uint8))
    assert os.listdir(tmp_path) == []


def test_writer_refuses_overwrite_and_bad_bands(tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="--overwrite"):
        with TiffBandWriter(out, (), 8, 8, 1, np.uint8, tile=16):
            pass
    assert out.read_bytes() == b"old"
    with pytest.raises(ValueError, match="width"):
        with TiffBandWriter(tmp_path / "b.tif", (), 8, 8, 1, np.uint8, tile=16) as w:
            w.write_band(np.zeros((4, 9), np.uint8))
    with pytest.raises(ValueError, match="fit"):
        with TiffBandWriter(tmp_path / "c.tif", (), 8, 8, 1, np.uint8, tile=16) as w:
            w.write_band(np.full((8, 8), 300, np.int64))
    assert sorted(os.listdir(tmp_path)) == ["o.tif"]
    with TiffBandWriter(tmp_path / "d.tif", (), 8, 8, 1, np.uint8, tile=16) as w:
        w.write_band(np.full((8, 8), 7, np.int64))  # fits: converted
    assert (tifffile.imread(tmp_path / "d.tif") == 7).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_writer_takes_the_whole_range_of_its_dtype_and_nothing_beyond(tmp_path, dtype):
    info = np.iinfo(dtype)
    edges = np.array([[info.min, info.max]] * 4, np.int64)
    with TiffBandWriter(tmp_path / "ok.tif", (), 4, 2, 1, dtype, tile=16) as w:
        w.write_band(edges)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ok.tif"), edges)
    for beyond in (info.min - 1, info.max + 1):
        with pytest.raises(ValueError, match="fit"):
            with TiffBandWriter(tmp_path / "no.tif", (), 4, 2, 1, dtype, tile=16) as w:
                w.write_band(np.full((4, 2), beyond, np.int64))
    assert not (tmp_path / "no.tif").exists()


def test_bands_of_another_dtype_are_converted(tmp_path):
    """Integer bands into a float output are converted (no integer range check applies), and
    an empty band of another dtype is a no-op."""
    band = np.array([[0, 255, 7]] * 4, np.uint8)
    with TiffBandWriter(tmp_path / "f.tif", (), 4, 3, 1, np.float32, tile=16) as w:
        w.write_band(np.zeros((0, 3), np.int64))
        w.write_band(band)
    got = tifffile.imread(tmp_path / "f.tif")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, band.astype(np.float32))


def test_a_plain_output_has_no_sub_resolutions(tmp_path):
    """SubIFDs are only for the pyramidal OME-TIFF writer (ome_tiff.py)."""
    with TiffBandWriter(tmp_path / "o.tif", (), 16, 16, 1, np.uint8, tile=16) as w:
        w.write_band(np.ones((16, 16), np.uint8))
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert "SubIFDs" not in tif.pages[0].tags and len(tif.pages) == 1


def test_writer_disk_full(tmp_path, monkeypatch):
    out = tmp_path / "o.tif"
    real_write = tifffile.FileHandle.write
    count = {"n": 0}

    def full_write(self, data):
        count["n"] += 1
        if count["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(tifffile.FileHandle, "write", full_write)
    with pytest.raises(OutputError, match=r"o.tif.*disk full") as ei:
        with TiffBandWriter(out, (), 256, 64, 1, np.uint8, tile=16) as w:
            for y in range(0, 256, 16):
                w.write_band(RNG.integers(0, 255, size=(16, 64), dtype=np.uint8))
    assert "\n" not in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_writer_thread_does_not_leak(tmp_path):
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with TiffBandWriter(tmp_path / "x.tif", (), 64, 64, 1, np.uint8, tile=16) as w:
            w.write_band(np.zeros((20, 64), np.uint8))
            raise RuntimeError
    with TiffBandWriter(tmp_path / "y.tif", (), 16, 16, 1, np.uint8, tile=16) as w:
        w.write_band(np.zeros((16, 16), np.uint8))
    assert threading.active_count() == before


@pytest.mark.parametrize("size", [(0, 10, 1), (10, 0, 1), (10, 10, 0), (-1, 10, 1)])
def test_writer_refuses_an_empty_output(tmp_path, size):
    h, w, samples = size
    with pytest.raises(ValueError, match="invalid output size"):
        TiffBandWriter(tmp_path / "o.tif", (), h, w, samples, np.uint8)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lead", [(0,), (3, 0)])
def test_writer_refuses_an_empty_stack(tmp_path, lead):
    with pytest.raises(ValueError, match="invalid lead_shape"):
        TiffBandWriter(tmp_path / "o.tif", lead, 10, 10, 1, np.uint8)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("res", [{"xresolution": 3.5}, {"yresolution": 2.0},
                                 {"xresolution": 3.5, "resolutionunit": 3}])
def test_writer_skips_a_resolution_given_for_one_axis_only(tmp_path, res):
    """A source with a resolution for one axis only (some writers do that): the output gets
    no resolution rather than a half-invented one, and is still written."""
    out = tmp_path / "o.tif"
    labels = RNG.integers(0, 3, (40, 30)).astype(np.uint8)
    with TiffBandWriter(out, (), 40, 30, 1, np.uint8, resolution=res, tile=16) as w:
        w.write_band(labels)
    with tifffile.TiffFile(out) as tif:
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert "XResolution" not in tif.pages[0].tags or \
            tif.pages[0].tags["XResolution"].value == (1, 1)
