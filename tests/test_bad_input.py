"""Bad and unusual input TIFFs through the CLI: each either segments correctly or fails with a
one-line message naming the file and the fix, the documented exit code, no output left behind
and the input untouched."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import EXIT_CODES, InputError
from unet_deploy.io import open_image
from unet_deploy.pipeline import segment_array

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


@pytest.fixture(scope="module")
def img():
    return tifffile.imread(EXAMPLE)[:96, :110]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def segment(inp: Path, model: Path, *extra):
    out = inp.parent / "out" / (inp.stem + ".labels.tif")
    out.parent.mkdir(exist_ok=True)
    before = digest(inp) if inp.is_file() else None
    kind = [] if "--output" in map(str, extra) else ["--output", "labels"]  # default: instances
    res = runner.invoke(app, ["segment", str(inp), "-o", str(out), "--model", str(model), "-q",
                              *kind, *map(str, extra)])
    if before is not None:
        assert digest(inp) == before, "input modified"
    return res, out


def refused(inp: Path, model: Path, code: int, text: str, *extra) -> str:
    folder = inp.parent / "out"
    folder.mkdir(exist_ok=True)
    existing = sorted(folder.iterdir())
    res, out = segment(inp, model, *extra)
    msg = res.output.strip()
    assert res.exit_code == code, msg
    assert code in EXIT_CODES
    assert len(msg.splitlines()) == 1, msg
    assert str(inp) in msg and text in msg, msg
    assert ";" in msg, f"no fix suggested: {msg}"
    assert sorted(out.parent.iterdir()) == existing, "output left behind"
    return msg


def segmented(inp: Path, model: Path, *extra) -> np.ndarray:
    res, out = segment(inp, model, *extra)
    assert res.exit_code == 0, res.output
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
    return tifffile.imread(out)


def tiff_bytes(entries: list[tuple[int, int, int, int]], first_ifd: int = 8,
               next_ifd: int = 0, trailer: bytes = b"", bo: str = "<") -> bytes:
    """A classic TIFF with one IFD at offset 8: entries (tag, type, count, value)."""
    head = (b"II" if bo == "<" else b"MM") + struct.pack(bo + "HI", 42, first_ifd)
    ifd = struct.pack(bo + "H", len(entries))
    for tag, typ, count, value in sorted(entries):
        if typ == 3 and count == 1:
            ifd += struct.pack(bo + "HHIHH", tag, typ, count, value, 0)
        else:
            ifd += struct.pack(bo + "HHII", tag, typ, count, value)
    ifd += struct.pack(bo + "I", next_ifd)
    return head + ifd + trailer


def gray_entries(w, h, offset, nbytes):
    return [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, offset), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, nbytes)]


# ---------------------------------------------------------------------------------- refused


def test_empty_and_not_a_tiff(tmp_path, tiny_model):
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    refused(p, tiny_model, 3, "empty")
    q = tmp_path / "photo.tif"
    q.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    refused(q, tiny_model, 3, "not a readable TIFF")
    d = tmp_path / "folder.tif"
    d.mkdir()
    refused(d, tiny_model, 3, "directory")
    refused(tmp_path / "missing.tif", tiny_model, 3, "not found")  # 2 is usage only


@pytest.mark.parametrize("cut", [3, 8, 12, 40])
def test_truncated_header(tmp_path, tiny_model, img, cut):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, img)
    p = tmp_path / "cut.tif"
    p.write_bytes(good.read_bytes()[:cut])
    refused(p, tiny_model, 3, "cut.tif")


@pytest.mark.parametrize("kwargs", [{}, {"compression": "zlib", "rowsperstrip": 8},
                                    {"compression": "zlib", "tile": (32, 32)}])
def test_truncated_strips(tmp_path, tiny_model, img, kwargs):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, img, **kwargs)
    raw = good.read_bytes()
    p = tmp_path / "cut.tif"
    p.write_bytes(raw[: len(raw) - 300])
    refused(p, tiny_model, 3, "truncated")


def test_missing_codec_names_imagecodecs(tmp_path, tiny_model, img, monkeypatch):
    p = tmp_path / "zstd.tif"
    tifffile.imwrite(p, img, compression="zstd")

    class NoCodecs:  # as if imagecodecs were not installed
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", {1: lambda x, *a, **k: x})
    monkeypatch.setattr(tifffile.tifffile, "imagecodecs", NoCodecs())
    refused(p, tiny_model, 3, "imagecodecs")


def test_unknown_compression(tmp_path, tiny_model):
    data = bytes(64)
    e = gray_entries(8, 8, 200, 64)
    e = [x if x[0] != 259 else (259, 3, 1, 12345) for x in e]
    raw = tiff_bytes(e)
    p = tmp_path / "odd.tif"
    p.write_bytes(raw + bytes(200 - len(raw)) + data)
    refused(p, tiny_model, 3, "odd.tif")


def test_huge_declared_size_refused_from_metadata(tmp_path, tiny_model):
    raw = tiff_bytes(gray_entries(200_000, 200_000, 256, 4_000_000_000))
    p = tmp_path / "huge.tif"
    p.write_bytes(raw + bytes(512))
    assert p.stat().st_size < 1024
    tracemalloc.start()
    try:
        msg = refused(p, tiny_model, 3, "pixel limit")
        assert "200000x200000" in msg
        refused(p, tiny_model, 3, "truncated", "--max-pixels", 10**11)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB for a 1 KB file"


def test_small_max_pixels(tmp_path, tiny_model, img):
    p = tmp_path / "small.tif"
    tifffile.imwrite(p, img)
    refused(p, tiny_model, 3, "pixel limit", "--max-pixels", 100)


def test_ifd_offset_out_of_range(tmp_path, tiny_model):
    p = tmp_path / "far.tif"
    p.write_bytes(tiff_bytes(gray_entries(8, 8, 8, 64), first_ifd=10**9) + bytes(64))
    refused(p, tiny_model, 3, "far.tif")


def test_ifd_cycle_and_overlap_refused(tmp_path, tiny_model):
    """IFD 0 -> IFD 0 (self loop); IFD 0 -> an IFD inside IFD 0 (overlap: a fuzzing find that
    kept tifffile busy for minutes); an IFD whose tags run past the end."""
    body = tiff_bytes(gray_entries(8, 8, 300, 64), next_ifd=8)
    p = tmp_path / "loop.tif"
    p.write_bytes(body + bytes(300 - len(body)) + bytes(range(64)))
    refused(p, tiny_model, 3, "loops or overlaps")
    body = tiff_bytes(gray_entries(8, 8, 300, 64), next_ifd=12)
    q = tmp_path / "overlap.tif"
    q.write_bytes(body + bytes(300 - len(body)) + bytes(range(64)))
    refused(q, tiny_model, 3, "loops or overlaps")
    r = tmp_path / "longifd.tif"
    r.write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xff" + bytes(100))
    refused(r, tiny_model, 3, "runs past the end")


def test_multi_series_needs_series(tmp_path, tiny_model, img):
    p = tmp_path / "two.tif"
    with tifffile.TiffWriter(p) as tw:  # shaped metadata: one series per write
        tw.write(img)
        tw.write(img[::-1].copy())
    msg = refused(p, tiny_model, 3, "--series")
    assert "2 image series" in msg
    refused(p, tiny_model, 3, "series 5", "--series", 5)
    out = segmented(p, tiny_model, "--series", 1)
    np.testing.assert_array_equal(out, segment_array(img[::-1].copy(), tiny_model))


def test_nan_inf_pixels(tmp_path, tiny_model, img, nan_zero_reference):
    f = img.astype(np.float32)
    f[1, 2] = np.nan
    f[3, 4] = np.inf
    f[5, 6] = -np.inf
    for kwargs in ({}, {"compression": "zlib", "rowsperstrip": 16}):
        p = tmp_path / "nan.tif"
        tifffile.imwrite(p, f, **kwargs)
        refused(p, tiny_model, 3, "3 NaN/Inf pixel(s)")
        res, _ = segment(p, tiny_model, "--nan-policy", "bogus")
        assert res.exit_code == 2 and "'error', 'zero'" in res.output  # a usage error
        out = segmented(p, tiny_model, "--nan-policy", "zero")
        np.testing.assert_array_equal(out, nan_zero_reference(tiny_model, f))
        for q in (p.parent / "out").iterdir():
            q.unlink()


def test_channel_count_mismatch(tmp_path, tiny_model, img):
    p = tmp_path / "two_channel.tif"
    tifffile.imwrite(p, np.stack([img, img], -1), photometric="minisblack", planarconfig="contig")
    refused(p, tiny_model, 3, "channel")


def test_complex_refused(tmp_path, tiny_model):
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, np.zeros((20, 20), np.complex64))
    refused(p, tiny_model, 3, "complex")


# -------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("dtype,kwargs", [
    ("int16", {}), ("float16", {}), ("float32", {}), ("float64", {}),
    (">u2", {"byteorder": ">"}), (">f4", {"byteorder": ">"}),
    ("uint16", {"byteorder": ">", "compression": "zlib", "rowsperstrip": 10}),
    ("int32", {}), ("uint8", {"compression": "lzw", "tile": (32, 32)}),
    ("uint16", {"bigtiff": True}), (">u2", {"bigtiff": True, "byteorder": ">", "compression": "zlib"}),
])
def test_dtypes_and_byte_orders(tmp_path, tiny_model, img, dtype, kwargs):
    data = (img // (64 if dtype in ("float16", "uint8") else 1)).astype(dtype)
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, data, **kwargs)
    out = segmented(p, tiny_model)
    np.testing.assert_array_equal(out, segment_array(data.astype(np.float64), tiny_model))


def test_rgb_palette_bilevel_planar(tmp_path, tiny_model, rgb_model, img):
    rgb = np.stack([img // 64, img // 128, img // 256], -1).astype(np.uint8)
    for name, kwargs in [("contig", {}), ("planar", {"planarconfig": "separate"})]:
        p = tmp_path / f"{name}.tif"
        data = np.moveaxis(rgb, -1, 0) if kwargs else rgb
        tifffile.imwrite(p, data, photometric="rgb", **kwargs)
        np.testing.assert_array_equal(segmented(p, rgb_model), segment_array(rgb, rgb_model))
        np.testing.assert_array_equal(segmented(p, tiny_model, "--overwrite"),
                                      segment_array(rgb, tiny_model))
        for q in (tmp_path / "out").iterdir():
            q.unlink()
    idx = (img // 1024 % 4).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = [[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]]
    p = tmp_path / "pal.tif"
    tifffile.imwrite(p, idx, photometric="palette", colormap=cmap)
    np.testing.assert_array_equal(segmented(p, tiny_model), segment_array(cmap.T[idx], tiny_model))
    bits = img > img.mean()
    b = tmp_path / "bits.tif"
    tifffile.imwrite(b, bits)
    with tifffile.TiffFile(b) as t:
        assert t.pages[0].bitspersample == 1
    np.testing.assert_array_equal(segmented(b, tiny_model), segment_array(bits.astype(np.uint8), tiny_model))


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (1, 300), (300, 1), (40, 40)])
def test_smaller_than_tile_and_one_pixel_wide(tmp_path, tiny_model, img, shape):
    data = np.resize(img, shape)
    for kwargs in ({}, {"compression": "zlib", "rowsperstrip": 7}):
        p = tmp_path / "s.tif"
        tifffile.imwrite(p, data, **kwargs)
        out = segmented(p, tiny_model, "--overwrite")
        assert out.shape == shape
        np.testing.assert_array_equal(out, segment_array(data, tiny_model))


def test_library_errors_are_input_errors(tmp_path):
    p = tmp_path / "junk.tif"
    p.write_bytes(b"II*\x00" + bytes(4))
    with pytest.raises(InputError, match="junk.tif"):
        open_image(p)
