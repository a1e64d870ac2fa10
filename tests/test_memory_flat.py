"""README: "Memory stays flat however big the image is". A whole ``unet-deploy segment`` run in
a fresh process each: the peak RSS for a 9x larger image may only grow by buffers proportional
to the image WIDTH (a band of tile rows, the writer's tile rows), far less than what holding the
image or its result would cost. Bounded memory, not timing.

The tile is fixed (``--tile``): without it the planner picks larger tiles for larger images, up
to its memory cap (``tiling.DEFAULT_MEMORY``), so two images below that plateau would measure
the planner, not the streaming."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

RUN = textwrap.dedent("""
    import sys
    from unet_deploy.cli import app

    def run(args):
        try:
            app(args)
        except SystemExit as exc:
            if exc.code:
                raise

    cut = sys.argv.index("--")
    run(sys.argv[1:cut])  # warm-up: imports, JIT compilation (cache may be cold), ORT
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM): measure the real run only
    run(sys.argv[cut + 1:])
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    print("PEAK_RSS_KB", hwm[0].split()[1], file=sys.stderr)
""")


def peak_rss_mb(warmup, args) -> float:
    proc = subprocess.run([sys.executable, "-c", RUN, *map(str, warmup), "--",
                           *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kb = [int(line.split()[1]) for line in proc.stderr.splitlines()
          if line.startswith("PEAK_RSS_KB")]
    return kb[-1] / 1024


def bounded_cells(model, noise, path):
    """A copy of the watershed model whose cell threshold (the 30 % quantile of its membrane
    probability on noise) keeps cells small on noise images: above about 50 % they percolate
    into one plane-wide region, which no streaming can bound."""
    import shutil

    from unet_deploy.export import update_metadata
    from unet_deploy.pipeline import segment_array

    shutil.copyfile(model, path)
    probs = segment_array(noise, path, backend="onnxruntime", output="probabilities")
    update_metadata(path, foreground_threshold=float(np.quantile(probs[..., 0], 0.3)))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self (VmHWM, clear_refs)")
@pytest.mark.parametrize("output, model", [("probabilities", "tiny_model"),
                                           ("instances", "local_watershed_model")])
def test_segment_run_memory_is_flat_in_image_size(tmp_path, request, output, model):
    """Also the EM model's instances (the watershed's local case, streamed band by band)."""
    rng = np.random.default_rng(0)
    sides = (1024, 3072)
    warm = tmp_path / "warm.tif"
    tifffile.imwrite(warm, (rng.random((300, 300)) * 4000).astype(np.uint16))
    model = request.getfixturevalue(model)
    if output == "instances":
        model = bounded_cells(model, tifffile.imread(warm), tmp_path / "em.onnx")
    opts = ["--model", model, "--output", output, "--tile", 188, "-q"]
    warmup = ["segment", warm, "-o", tmp_path / "warm.out.tif", "--overwrite", *opts]
    peaks = {}
    for side in sides:
        src = tmp_path / f"img{side}.tif"
        tifffile.imwrite(src, (rng.random((side, side)) * 4000).astype(np.uint16))
        out = tmp_path / f"img{side}.{output}.tif"
        peaks[side] = peak_rss_mb(warmup, ["segment", src, "-o", out, *opts])
        with tifffile.TiffFile(out) as tif:  # the run really wrote the whole result
            shape = tif.series[0].shape  # (H, W, K), or (K, H, W) for a large OME-TIFF
            want = [side, side] if output == "instances" else [2, side, side]
            assert sorted(shape) == want, shape
    small, big = sides
    # What a non-streaming run would hold for the big image: its float32 probabilities alone
    # are 75 MB (its uint16 input 18 MB, a float32 copy of it 36 MB).
    whole_result_mb = big * big * 2 * 4 / 2**20
    growth = peaks[big] - peaks[small]
    assert growth < 0.5 * whole_result_mb, (
        f"peak RSS {peaks[small]:.0f} MB at {small}^2 but {peaks[big]:.0f} MB at {big}^2 "
        f"(+{growth:.0f} MB; holding the result would be +{whole_result_mb:.0f} MB)")
