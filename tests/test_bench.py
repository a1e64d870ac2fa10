"""The quick benchmark path on tiny inputs: it runs, and its output has the checked format."""

import json

import numpy as np
import pytest

from unet_deploy import bench
from unet_deploy.flops import count_flops


@pytest.fixture(scope="module")
def quick_result(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    image = (rng.random((150, 170)) * 4000).astype(np.uint16)
    res = bench.run_benchmark(quick=True, out_dir=out, model=tiny_model, image=image,
                              tile=92, repeats=2, threads=1, log=lambda *_: None)
    return res, out


def test_quick_benchmark_format(quick_result):
    res, out = quick_result
    assert bench.check_result(res) is res
    on_disk = json.loads((out / "benchmark.json").read_text())
    bench.check_result(on_disk)
    md = (out / "benchmark.md").read_text()
    assert "| unet-deploy |" in md and "| whole |" in md
    methods = {r["method"] for r in res["runs"]}
    assert {"unet-deploy", "naive", "whole"} <= methods
    for r in res["runs"]:
        assert len(r["seconds"]) == 2
        assert r["share_of_gemm_ceiling"] > 0


def test_quick_benchmark_seams(quick_result):
    """Depth-2 net: output tiles are multiples of 4 = 2**depth, so tiling is exact."""
    res, _ = quick_result
    by = {r["method"]: r for r in res["runs"]}
    assert by["whole"]["seam_error"] == 0
    assert by["unet-deploy"]["seam_error"] <= 1e-5
    assert by["naive"]["seam_error"] <= 1e-5
    assert by["unet-deploy"]["label_mismatch"] == 0
    assert res["goals"]["zero_seam_error"]["met"]


@pytest.mark.parametrize("depth", [3, 4])
def test_naive_baseline_seamless_on_deep_nets(deep_models, depth):
    """The naive loop steps by ``plan.out_h`` (a multiple of 2**depth, smaller than the
    network output for these nets) and crops each tile's output to that step: it must equal
    the whole-image pass, as the pipeline does."""
    from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from unet_deploy.model_store import read_onnx
    from unet_deploy.pipeline import segment_whole
    from unet_deploy.tiling import plan_tiles

    model = deep_models[depth]
    geo = read_onnx(model).info.geometry
    tile = geo.legal_sizes(geo.input_for_output(2**depth), 400)[1]
    image = (np.random.default_rng(depth).random((203, 171)) * 1000).astype(np.uint16)
    plan = plan_tiles(*image.shape, geo, tile)
    assert plan.out_h < plan.net_h and plan.n_tiles > 4  # the case the planner fix is about
    with OnnxRuntimeBackend(model, threads=1) as be:
        whole = segment_whole(image, be, "probabilities")
        res = bench.naive_segment(image, model, tile, output="probabilities",
                                  session=be.session)
    assert res["complete"] and res["tiles_run"] == plan.n_tiles
    assert np.abs(res["result"] - whole).max() <= 1e-5


def test_check_result_rejects_bad_format(quick_result):
    res, _ = quick_result
    bad = json.loads(json.dumps(res))
    del bad["limits"]
    with pytest.raises(ValueError, match="limits"):
        bench.check_result(bad)
    bad = json.loads(json.dumps(res))
    bad["runs"][0]["seconds"] = []
    with pytest.raises(ValueError):
        bench.check_result(bad)
    bad = json.loads(json.dumps(res))
    bad["schema"] = "something-else"
    with pytest.raises(ValueError, match="schema"):
        bench.check_result(bad)


def test_flops_counted_from_graph(tiny_model):
    """Graph count agrees with an independent hand count of the depth-2, base-4 U-Net."""
    r = count_flops(tiny_model, 92)
    assert r["output_tile"] == 52 and r["conv_nodes"] == 11 and r["convtranspose_nodes"] == 2
    macs = 0
    s, c_in = 92, 1
    skips = []
    for c in (4, 8):  # contracting path: two 3x3 convs, then 2x2 pool
        macs += (s - 2) ** 2 * c * c_in * 9 + (s - 4) ** 2 * c * c * 9
        s, c_in = (s - 4) // 2, c
        skips.append(c)
    macs += (s - 2) ** 2 * 16 * 8 * 9 + (s - 4) ** 2 * 16 * 16 * 9  # bottom
    s, c_in = s - 4, 16
    for c in (8, 4):  # up-conv 2x2 (per input pixel: C_out * 4), then two 3x3 convs
        macs += s * s * c_in * c * 4
        s = 2 * s
        macs += (s - 2) ** 2 * c * 2 * c * 9 + (s - 4) ** 2 * c * c * 9
        s, c_in = s - 4, c
    macs += s * s * 4 * 2  # 1x1 head
    assert s == 52
    assert r["gflop_per_pass"] * 1e9 == pytest.approx(2 * macs)
    assert r["flops_per_output_px"] == pytest.approx(2 * macs / 52**2)


def test_gemm_ceiling_positive():
    g = bench.gemm_ceiling(64, 2)
    assert g["gflops_best"] >= g["gflops_median"] > 0


def test_release_mapped_rows_keeps_data_and_drops_pages(tmp_path):
    """The memmap page release used by the pipeline (found by this benchmark) loses nothing."""
    import sys

    import tifffile

    from unet_deploy.readers import release_mapped_rows

    if not sys.platform.startswith("linux"):
        pytest.skip("madvise accounting is Linux-specific")
    data = np.arange(4096 * 1024, dtype=np.uint16).reshape(4096, 1024)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data)
    mm = tifffile.memmap(path, mode="r")

    def rss_file_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])

    before = rss_file_kb()
    assert int(mm.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # touch every page
    touched = rss_file_kb()
    release_mapped_rows(mm, 0, mm.shape[0])
    released = rss_file_kb()
    assert touched - released > 4000  # most of the 8 MB left RSS
    assert released - before < 1000
    np.testing.assert_array_equal(mm[100:200], data[100:200])  # re-read transparently
    release_mapped_rows(np.asarray(data), 0, 10)  # not a memmap: a no-op

