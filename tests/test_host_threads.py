"""Parallel host stages: gather, stitch and TIFF compression on several threads give the same
output, bit for bit, as one thread (and as the pipeline before them)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from unet_deploy.backends.null import NullBackend
from unet_deploy.backends.onnxruntime import OnnxRuntimeBackend
from unet_deploy.io import TiffBandWriter
from unet_deploy.merger import BandMerger
from unet_deploy.pipeline import StageTimes, segment_array, segment_file
from unet_deploy.tiling import plan_tiles
from unet_deploy.workers import Workers, host_threads, split


def test_split_and_host_threads():
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(2, 5) == [(0, 1), (1, 2)]
    assert split(0, 4) == []
    assert host_threads(3) == 3 and host_threads(0) >= 1


def test_workers_run_all_and_raise_after_all_finished():
    done = []

    def job(i):
        if i == 1:
            raise ValueError("boom")
        done.append(i)

    with Workers(3) as w:
        with pytest.raises(ValueError, match="boom"):
            w.run(job, [0, 1, 2, 3])
        assert sorted(done) == [0, 2, 3]  # nobody still running when the error surfaced
    with Workers(1) as w:  # inline: no pool at all
        w.run(done.append, [9])
        assert w._pool is None and done[-1] == 9


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_segment_array_same_for_any_thread_count(tiny_model, output):
    rng = np.random.default_rng(11)
    image = (rng.random((230, 190, 3)) * 255).astype(np.uint8)  # RGB: the channel-mix path
    with OnnxRuntimeBackend(tiny_model) as be:
        ref = segment_array(image, backend=be, tile=92, batch_size=5, output=output, threads=1)
        for threads in (2, 3, 0):
            times = StageTimes()
            got = segment_array(image, backend=be, tile=92, batch_size=5, output=output,
                                threads=threads, times=times)
            assert got.tobytes() == ref.tobytes(), threads
            assert times.gather > 0 and times.stitch > 0


def test_merger_threads_and_class_maps_agree():
    """Probabilities argmaxed on the host, or class maps pasted, on 1 or 4 threads: one band.
    Tiles overlap their neighbours (net output 36 > step 32), so order matters: later wins."""
    from unet_deploy.geometry import Geometry

    plan = plan_tiles(200, 210, Geometry(3, "valid"), 124)
    assert plan.net_w > plan.out_w
    rng = np.random.default_rng(0)
    probs = rng.random((plan.n_tiles, 3, plan.net_h, plan.net_w), dtype=np.float32)
    ids = np.arange(plan.n_tiles)
    results = []
    for threads, classes in ((1, False), (4, False), (1, True), (4, True)):
        merger = BandMerger(plan, 3, "labels")
        out = probs.argmax(1).astype(np.uint8) if classes else probs
        bands = []
        with Workers(threads) as w:
            for k in range(0, plan.n_tiles, 5):
                merger.add(out[k : k + 5], ids[k : k + 5], w)
                bands += list(merger.pop_complete())
        merger.finalize()
        results.append(np.concatenate(bands))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    with pytest.raises(ValueError, match="class maps cannot give probabilities"):
        BandMerger(plan, 3, "probabilities").add(probs.argmax(1).astype(np.uint8)[:2], ids[:2])


@pytest.mark.parametrize("compression", ["zlib", "zstd", None])
def test_tiff_writer_threads_same_pixels(tmp_path, compression):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 3, (2, 300, 700), dtype=np.uint8)
    for threads in (1, 3):
        path = tmp_path / f"o{threads}.tif"
        with TiffBandWriter(path, (2,), 300, 700, 1, np.uint8, compression=compression,
                            threads=threads) as w:
            for plane in data:
                for y in range(0, 300, 70):
                    w.write_band(plane[y : y + 70])
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == {"zlib": 8, "zstd": 50000, None: 1}[compression]
            np.testing.assert_array_equal(tif.asarray(), data)
    with pytest.raises(ValueError, match="compression 'lzma' is not supported"):
        TiffBandWriter(tmp_path / "x.tif", (), 10, 10, 1, np.uint8, compression="lzma")


def test_segment_file_threads_and_compression(tmp_path, tiny_model):
    rng = np.random.default_rng(5)
    image = (rng.random((260, 300)) * 4000).astype(np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    ref = segment_array(image, tiny_model, tile=92, threads=1)
    for threads, compression in ((1, "zlib"), (2, "zstd"), (0, "none")):
        out = tmp_path / f"o-{threads}-{compression}.tif"
        times = StageTimes()
        segment_file(src, out, tiny_model, tile=92, threads=threads, compression=compression,
                     progress=False, times=times, batch_size=3)
        np.testing.assert_array_equal(tifffile.imread(out), ref)
        assert times.write > 0


def test_null_backend_host_pipeline_threads(tiny_model):
    """The zero-cost backend's class maps go through the paste path; any thread count."""
    image = np.zeros((400, 333), np.uint16)
    be = NullBackend(tiny_model).activate()
    outs = [segment_array(image, backend=be, tile=92, batch_size=4, threads=t) for t in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    be.computes_labels = False  # probabilities, argmaxed on the host: the same labels
    np.testing.assert_array_equal(segment_array(image, backend=be, tile=92, batch_size=4,
                                                threads=2), outs[0])
