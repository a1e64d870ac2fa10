"""`evaluate` (and `train`) pair images with label images by name, never by position, and
refuse what does not pair, listing the names; a (1, H, W) array is one plane."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import InputError
from unet_deploy.pairing import name_key, pair_folders, read_pairs

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
MASK = Path(__file__).parent / "data" / "bbbc039_crop_mask.tif"
runner = CliRunner()


def write(folder: Path, names, shape=(16, 16)):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        tifffile.imwrite(folder / name, np.full(shape, i, np.uint16))


@pytest.mark.parametrize("stem,key", [("img01_mask", "img01"), ("img01-Labels", "img01"),
                                      ("A02_s1_seg", "a02_s1"), ("cells.gt", "cells"),
                                      ("mask", "mask"), ("img01", "img01")])
def test_name_key(stem, key):
    assert name_key(stem) == key


def test_pairs_by_name_not_position(tmp_path):
    write(tmp_path / "img", ["b.tif", "a.tif", "c.tif"])
    write(tmp_path / "lab", ["a_mask.tif", "c_mask.tif", "b_mask.tif"])
    pairs = pair_folders(tmp_path / "img", tmp_path / "lab")
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a.tif", "a_mask.tif"), ("b.tif", "b_mask.tif"), ("c.tif", "c_mask.tif")]


def test_mismatches_are_refused_with_the_list(tmp_path):
    write(tmp_path / "img", ["a.tif", "b.tif", "c.tif"])
    write(tmp_path / "lab", ["a.tif", "x.tif"])
    with pytest.raises(InputError) as ei:
        read_pairs(tmp_path / "img", tmp_path / "lab")
    msg = str(ei.value)
    assert "no label image for b.tif, c.tif" in msg and "no image for label x.tif" in msg
    assert "3 images" in msg and "2 label" in msg


def test_evaluate_cli_refuses_wrong_pairs(tiny3_model, tmp_path):
    write(tmp_path / "img", ["a.tif", "b.tif", "c.tif"])
    write(tmp_path / "lab", ["a_mask.tif", "b_mask.tif"])
    res = runner.invoke(app, ["evaluate", "--model", str(tiny3_model), "--images",
                              str(tmp_path / "img"), "--labels", str(tmp_path / "lab")])
    assert res.exit_code == 3 and "no label image for c.tif" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_evaluate_cli_pairs_folders_by_name(tiny3_model, tmp_path):
    img, mask = tifffile.imread(EXAMPLE), tifffile.imread(MASK)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "z_first.tif", img[:, :200])
    tifffile.imwrite(tmp_path / "img" / "a_second.tif", img[:, 184:])
    tifffile.imwrite(tmp_path / "lab" / "z_first_mask.tif", mask[:, :200])
    tifffile.imwrite(tmp_path / "lab" / "a_second_mask.tif", mask[:, 184:])
    res = runner.invoke(app, ["evaluate", "--model", str(tiny3_model), "--images",
                              str(tmp_path / "img"), "--labels", str(tmp_path / "lab")])
    assert res.exit_code == 0, res.output
    assert "images: 2" in " ".join(res.output.split())


def test_stacks_pair_by_slice_and_must_match(tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((3, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "l2.tif", np.zeros((2, 16, 16), np.uint8))
    names, imgs, labs = read_pairs(tmp_path / "v.tif", tmp_path / "l.tif")
    assert names == ["v[0]", "v[1]", "v[2]"] and len(labs) == 3
    with pytest.raises(InputError, match="equal length"):
        read_pairs(tmp_path / "v.tif", tmp_path / "l2.tif")
    with pytest.raises(InputError, match="two folders"):
        read_pairs(tmp_path / "v.tif", tmp_path)


def test_one_plane_array_and_channel_first(tiny_model):
    from unet_deploy.pipeline import segment_array

    img = tifffile.imread(EXAMPLE)[:60, :70]
    np.testing.assert_array_equal(segment_array(img[None], tiny_model),
                                  segment_array(img, tiny_model))
    with pytest.raises(InputError, match="channel-first") as ei:
        segment_array(np.stack([img] * 3), tiny_model)
    assert "70 channels" not in str(ei.value)
