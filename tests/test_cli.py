import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app
from unet_deploy.errors import EXIT_CODES
from unet_deploy.pipeline import segment_array

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_segment_labels_matches_library(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    before = digest(EXAMPLE)
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q", "--output", "labels")
    assert res.exit_code == 0, res.output
    assert "Mpx/s" in res.output and "tiles" in res.output
    labels = tifffile.imread(out)
    expected = segment_array(tifffile.imread(EXAMPLE), tiny_model)
    np.testing.assert_array_equal(labels, expected)
    assert digest(EXAMPLE) == before
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].compression != 1


def test_refuses_existing_output_then_overwrites(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q")
    assert res.exit_code == 5 and "--overwrite" in res.output
    assert out.read_bytes() == b"old"
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q", "--overwrite")
    assert res.exit_code == 0 and tifffile.imread(out).shape == (320, 384)


def test_probabilities_and_batch_tile_options(tiny_model, tmp_path):
    out = tmp_path / "p.tif"
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q",
              "--output", "probabilities", "--batch-size", "3", "--tile", "140")
    assert res.exit_code == 0, res.output
    probs = tifffile.imread(out)
    assert probs.shape == (320, 384, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


def test_stack_keeps_axes(tiny_model, tmp_path):
    stack = np.stack([tifffile.imread(EXAMPLE)[:100, :120]] * 3)
    stack[1] = stack[1][::-1]
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, compression="zlib", photometric="minisblack")
    res = run("segment", src, "--model", tiny_model, "-q", "--output", "labels")
    assert res.exit_code == 0, res.output
    labels = tifffile.imread(tmp_path / "stack.labels.tif")
    assert labels.shape == (3, 100, 120)
    for i in range(3):
        np.testing.assert_array_equal(labels[i], segment_array(stack[i], tiny_model))


def test_rgb_input_is_converted(tiny_model, rgb_model, tmp_path):
    gray = tifffile.imread(EXAMPLE)[:64, :80]
    rgb = np.stack([gray] * 3, -1).astype(np.uint16)
    src = tmp_path / "input_rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    for model in (tiny_model, rgb_model):
        out = tmp_path / f"{model.stem}.tif"
        assert run("segment", src, "-o", out, "--model", model, "-q",
                   "--output", "labels").exit_code == 0
    # gray model on RGB of equal channels == gray model on the gray image (luma weights sum 1)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "tiny.tif"),
                                  segment_array(gray, tiny_model))




def test_not_a_tiff(tmp_path, tiny_model):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"hello, not a tiff" * 10)
    res = run("segment", bad, "--model", tiny_model, "-q")
    assert res.exit_code == 3 and str(bad) in res.output
    assert not (tmp_path / "bad.labels.tif").exists()


def test_evaluate_prints_metrics(tiny3_model):
    mask = Path(__file__).parent / "data" / "bbbc039_crop_mask.tif"
    res = run("evaluate", "--model", tiny3_model, "--images", EXAMPLE, "--labels", mask)
    assert res.exit_code == 0, res.output
    assert "f1@0.5" in res.output and "rand_error" in res.output


# ----------------------------------------------------------------------------- user mistakes

def one_line(res) -> str:
    """The single line a failed command prints; no traceback, no usage block."""
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output and "╭" not in res.output, res.output
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


MISTAKES = [
    # (arguments, exit code, text the one line must contain: what is wrong or the fix)
    (["segment", EXAMPLE, "--output", "out.tif"], 2, "-o out.tif"),
    (["segment", EXAMPLE, "--output", "lables"], 2, "'labels', 'probabilities', 'instances'"),
    (["segment", EXAMPLE, "--tile", "500", "-o", "{tmp}/t.tif"], 2, "nearest legal sizes"),
    (["segment", EXAMPLE, "--bogus"], 2, "No such option: --bogus"),
    (["segment"], 2, "Missing argument"),
    (["segment", EXAMPLE, "--batch-size", "0"], 2, "--batch-size"),
    (["segment", EXAMPLE, "--nan-policy", "ignore"], 2, "'error', 'zero'"),
    (["segment", "{tmp}/empty"], 3, "directory with no images"),
    (["segment", "{tmp}/missing.tif"], 3, "not found"),
    (["segment", "{tmp}/*.nothing"], 3, "no files match"),
    (["segment", EXAMPLE, "--model", "no-such-model"], 4, "not a file and not a shipped model"),
    (["segment", EXAMPLE, "--channel", "3", "-o", "{tmp}/c.tif"], 3, "channels from 0 to 0"),
    (["segment", EXAMPLE, EXAMPLE.with_name("missing.tif")], 3, "not found"),
    (["segment", EXAMPLE, "{tmp}/img.png", "-o", "{tmp}/x.tif"], 2, "output folder"),
    (["build-engine", "nuclei", "-o", "{tmp}/m.onnx", "--precision", "int9"], 2, "int8"),
    (["build-engine", "nuclei", "-o", "{tmp}/m.onnx", "--precision", "fp16"], 2,
     "--precision int8"),
    (["train", "--images", "x"], 2, "Missing option"),
    (["evaluate", "--images", EXAMPLE, "--labels", "{tmp}"], 3, "two folders"),
    (["preview", "{tmp}/missing.tif"], 3, "not found"),
    (["nosuchcommand"], 2, "No such command"),
]


@pytest.mark.parametrize("args,code,text", MISTAKES,
                         ids=[" ".join(str(a) for a in m[0])[:60] for m in MISTAKES])
def test_user_mistakes_are_one_line_with_documented_codes(tmp_path, args, code, text):
    (tmp_path / "empty").mkdir()
    import imagecodecs
    (tmp_path / "img.png").write_bytes(imagecodecs.png_encode(np.zeros((8, 8), np.uint8)))
    res = run(*[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    line = one_line(res)
    assert res.exit_code == code, line
    assert text in line, line
    assert code in EXIT_CODES


def test_readme_exit_code_table_matches_exit_codes_command():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("## Errors and exit codes"):]
    documented = {int(m) for m in __import__("re").findall(r"^\| (\d+) \|", table, re.M)}
    assert documented == set(EXIT_CODES), (documented, set(EXIT_CODES))
    res = run("exit-codes")
    assert res.exit_code == 0
    assert [int(ln.split()[0]) for ln in res.output.splitlines()] == list(EXIT_CODES)
    from unet_deploy import errors
    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.UnetDeployError)}
    assert codes <= set(EXIT_CODES)
    assert errors.InputNotFoundError.exit_code == 3  # 2 is only ever a usage error


@pytest.mark.parametrize("command,extra,blocked", [
    (["train", "--images", "a", "--labels", "b", "--out", "c"], "train", "torch"),
    (["export", "x.pt"], "train", "torch"),
    (["build-engine", "nuclei", "-o", "m.onnx", "--precision", "int8"], "train", "onnx"),
    (["benchmark", "--quick"], "bench", "onnx"),
])
def test_missing_extra_names_it(monkeypatch, command, extra, blocked):
    monkeypatch.setitem(__import__("sys").modules, blocked, None)  # import raises
    res = run(*command)
    line = one_line(res)
    assert res.exit_code == 7 and f'unet-deploy[{extra}]' in line and blocked in line, line


def test_unexpected_errors_are_one_line_too(monkeypatch):
    import unet_deploy.batch as batch

    def boom(*a, **k):
        raise ZeroDivisionError("planted")
    monkeypatch.setattr(batch, "segment_files", boom)
    res = run("segment", EXAMPLE)
    assert res.exit_code == 1 and "planted" in one_line(res) and "UNET_DEPLOY_DEBUG" in res.output


def test_no_arguments_prints_help_and_version():
    res = run()
    assert res.exit_code == 0 and "segment" in res.output and "preview" in res.output
    res = run("--version")
    assert res.exit_code == 0 and res.output.strip() == f"unet-deploy {__import__('unet_deploy').__version__}"


def test_help_shows_defaults_and_choices():
    res = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert "INPUT.<output>.tif" in text and "labels|probabilities|instances" in text
    assert "default: 1]" in text and "error|zero" in text
    assert "Output TIFF ." not in text and "tile ." not in text
    res = runner.invoke(app, ["build-engine", "--help"], env={"COLUMNS": "200"})
    assert "fp32|fp16|bf16|int8" in res.output


def test_models_lists_classes_and_default_output():
    res = run("models")
    assert res.exit_code == 0, res.output
    assert "em-membranes: " in res.output and "0 membrane, 1 cell" in res.output
    assert "0 background, 1 interior, 2 border" in res.output
    assert "writes instances by default" in res.output


# --------------------------------------------------------------------------- segment, batch

def test_instance_model_writes_instances_by_default(tiny_model, tmp_path):
    out = tmp_path / "o.tif"
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q")
    assert res.exit_code == 0, res.output
    expected = segment_array(tifffile.imread(EXAMPLE), tiny_model, output="instances")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    copy = tmp_path / "img.tif"
    copy.write_bytes(EXAMPLE.read_bytes())
    assert run("segment", copy, "--model", tiny_model, "-q").exit_code == 0
    assert (tmp_path / "img.instances.tif").exists()  # the default name says the kind


def test_several_files_folder_and_glob_one_model_load(tiny_model, tmp_path, monkeypatch):
    import imagecodecs

    import unet_deploy.backends as backends

    img = tifffile.imread(EXAMPLE)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", img[:100, :140])
    tifffile.imwrite(src / "b.tif", img[100:220, :160])
    png8 = (img[:90, :90] // 256).astype(np.uint8)
    (src / "c.png").write_bytes(imagecodecs.png_encode(png8))
    (src / "a.instances.tif").write_bytes(b"an earlier output, not an input")
    opened = []
    real = backends.open_backend
    monkeypatch.setattr(backends, "open_backend", lambda *a, **k: opened.append(a) or real(*a, **k))
    out = tmp_path / "out"
    res = run("segment", src, "--model", tiny_model, "-o", out, "--output", "labels")
    assert res.exit_code == 0, res.output
    assert len(opened) == 1  # the model is loaded once for all files
    assert sorted(p.name for p in out.iterdir()) == ["a.labels.tif", "b.labels.tif",
                                                     "c.labels.tif"]
    for name in "ab":
        assert f"{name}.labels.tif: " in res.output
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}.labels.tif"),
                                      segment_array(tifffile.imread(src / f"{name}.tif"),
                                                    tiny_model))
    np.testing.assert_array_equal(tifffile.imread(out / "c.labels.tif"),
                                  segment_array(png8, tiny_model))
    # a quoted glob, outputs beside the inputs
    res = run("segment", str(src / "[ab].tif"), "--model", tiny_model, "-q", "--output", "labels")
    assert res.exit_code == 0, res.output
    assert (src / "b.labels.tif").exists()
    # every output is checked before any work: an existing one stops the run up front
    res = run("segment", src / "a.tif", src / "b.tif", "--model", tiny_model, "-q",
              "--output", "probabilities", "-o", out)
    assert res.exit_code == 0
    before = (out / "b.probabilities.tif").stat().st_mtime_ns
    (out / "a.probabilities.tif").unlink()
    res = run("segment", src / "a.tif", src / "b.tif", "--model", tiny_model, "-q",
              "--output", "probabilities", "-o", out)
    assert res.exit_code == 5 and "--overwrite" in one_line(res)
    assert not (out / "a.probabilities.tif").exists()
    assert (out / "b.probabilities.tif").stat().st_mtime_ns == before


def test_channel_picks_channels(tiny_model, tmp_path):
    img = tifffile.imread(EXAMPLE)[:80, :96]
    rgb = np.stack([np.zeros_like(img), img, img[::-1]], -1)
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    out = tmp_path / "g.tif"
    res = run("segment", src, "-c", "1", "-o", out, "--model", tiny_model, "-q",
              "--output", "labels")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(tifffile.imread(out), segment_array(img, tiny_model))


def test_warns_when_input_does_not_fit_the_model(tmp_path):
    from unet_deploy.fit import fit_warnings
    from unet_deploy.metadata import ModelInfo
    from unet_deploy.readers import ArrayReader

    info = ModelInfo(name="nuclei", expects={"modality": "fluorescence", "background": "dark"})
    fluo = np.random.default_rng(0).poisson(5, (300, 300)).astype(np.uint16)
    fluo[100:140, 100:140] += 500
    assert fit_warnings(ArrayReader(fluo), info) == []
    bright = 4000 - fluo  # brightfield-like: bright background, dark objects
    (warn,) = fit_warnings(ArrayReader(bright), info, "slide.tif")
    assert "slide.tif" in warn and "bright background" in warn
    rgb = np.stack([bright.astype(np.uint8)] * 3, -1)
    warns = fit_warnings(ArrayReader(rgb), info, "he.tif")
    assert any("RGB" in w and "--channel" in w for w in warns)
    assert fit_warnings(ArrayReader(bright), ModelInfo()) == []  # a model that says nothing


def test_segment_prints_fit_warning(tmp_path):
    img = tifffile.imread(EXAMPLE)[:64, :64]
    src = tmp_path / "inverted.tif"
    tifffile.imwrite(src, (img.max() - img).astype(np.uint16))
    res = run("segment", src, "-o", tmp_path / "o.tif")  # the shipped nuclei model
    assert res.exit_code == 0, res.output
    assert "warning: " in res.output and "bright background" in res.output


def test_build_engine_accepts_shipped_names_without_ort_noise(tmp_path, capfd):
    pytest.importorskip("onnx")
    from unet_deploy.cli import build_for_output

    with pytest.raises(Exception) as ei:
        build_for_output("nuclei", tmp_path / "m.onnx", precision="fp16")
    assert "--precision int8" in str(ei.value)  # resolved the name, then refused the precision
    img = tmp_path / "cal.tif"
    tifffile.imwrite(img, tifffile.imread(EXAMPLE)[:64, :64])
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "unet_deploy.cli", "build-engine", "nuclei",
                          "-o", str(tmp_path / "q.onnx"), "--precision", "int8",
                          "--calibration", str(img), "--min-agreement", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "W:onnxruntime" not in res.stderr and "WARNING" not in res.stderr.upper(), res.stderr
    assert (tmp_path / "q.onnx").exists()
