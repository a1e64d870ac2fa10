"""Scale-out on Dask (``unet_deploy.distributed``): a real ``LocalCluster`` of worker processes
gives exactly the single-process ``segment_file`` output -- labels and probabilities bit for
bit, instances with the same objects (a bijection of ids; in fact the same ids) -- for TIFF and
OME-Zarr, with a worker killed mid-run, and cancels/fails without leaving output behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

from unet_deploy.distributed import (  # noqa: E402
    connect,
    loads,
    plan_blocks,
    segment_distributed,
)
from unet_deploy.errors import Cancelled, ClusterError  # noqa: E402
from unet_deploy.pipeline import segment_file  # noqa: E402
from unet_deploy.tiling import plan_tiles  # noqa: E402

# tiny models: tile 92 -> output 52 (step 52), halo 20; blocks of two tile rows
KW = dict(backend="onnxruntime-cpu", tile=92, overwrite=True, progress=False, max_object=4096)
BLOCK = 104


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two instance label images hold the same objects: background is background in
    both, and the ids map one to one (a bijection: every id of ``a`` meets exactly one id of
    ``b`` and the other way round)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg], b[fg]]).astype(np.int64), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])))


def test_same_objects_is_a_bijection_check():
    a = np.array([[1, 1, 0, 2], [3, 3, 0, 2]])
    assert same_objects(a, np.array([[7, 7, 0, 5], [9, 9, 0, 5]]))
    assert not same_objects(a, np.array([[7, 7, 0, 7], [9, 9, 0, 7]]))  # two objects merged
    assert not same_objects(a, np.array([[7, 8, 0, 5], [9, 9, 0, 5]]))  # one object split
    assert not same_objects(a, np.array([[7, 7, 0, 0], [9, 9, 0, 5]]))  # background differs


def _blobs(shape, seed) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    im = ndi.gaussian_filter(rng.random(shape), (0,) * (len(shape) - 2) + (4, 4))
    return (im / im.max() * 4000).astype(np.uint16)


@pytest.fixture(scope="module")
def cluster():
    with connect(workers=2) as cl:
        yield cl


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "image.tif"
    tifffile.imwrite(path, _blobs((330, 250), 0))
    return path


def _read(path: Path) -> np.ndarray:
    return tifffile.imread(path)


@pytest.mark.parametrize("output", ["labels", "probabilities", "instances"])
def test_tiff_outputs_equal_the_single_process_run(tmp_path, image, tiny3_model, cluster,
                                                   output):
    ref = tmp_path / f"ref.{output}.tif"
    segment_file(image, ref, tiny3_model, output=output, **KW)
    out = tmp_path / f"dist.{output}.tif"
    seen = []
    summary = segment_distributed(image, out, tiny3_model, cluster=cluster, output=output,
                                  block_rows=BLOCK, on_blocks=lambda d, n: seen.append((d, n)),
                                  **KW)
    a, b = _read(ref), _read(out)
    assert a.dtype == b.dtype and a.shape == b.shape
    if output == "instances":
        assert a.max() > 5 and same_objects(a, b)
    assert np.array_equal(a, b)  # bit for bit (instances: the very same ids)
    assert seen[-1] == (summary.blocks, summary.blocks) and summary.blocks == 4
    assert "2 workers x 1 thread" in str(summary) and "halo" in str(summary)
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_stack_batches_and_model_loaded_once_per_worker(tmp_path, tiny_model, cluster):
    """A 2-plane stack, batch size 3 (batches cut as in the single-process run), 2 classes,
    backend "auto" (the probe's choice is pinned); many blocks but one model load per worker
    process (this is the first use of this model on the cluster)."""
    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, _blobs((2, 230, 170), 1), metadata={"axes": "ZYX"})
    kw = dict(KW, batch_size=3, backend="auto")
    segment_file(image, tmp_path / "ref.tif", tiny_model, output="labels", **kw)
    before = cluster.client.run(loads)
    s = segment_distributed(image, tmp_path / "dist.tif", tiny_model, cluster=cluster,
                            output="labels", block_rows=52, **kw)
    assert s.blocks == 10 and s.planes == 2
    assert np.array_equal(_read(tmp_path / "ref.tif"), _read(tmp_path / "dist.tif"))
    after = cluster.client.run(loads)
    assert all(after[w] - before.get(w, 0) <= 1 for w in after), (before, after)


def _zarr_equal(a: Path, b: Path) -> list[str]:
    """Every array of two OME-Zarr outputs equal, same attributes (but the image name)."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    attrs = [dict(g.attrs) for g in (ga, gb)]
    for at in attrs:
        for ms in at.get("multiscales", []):
            ms.pop("name", None)
    assert attrs[0] == attrs[1]
    keys = sorted(ga.array_keys())
    assert keys == sorted(gb.array_keys())
    for k in keys:
        x, y = ga[k][...], gb[k][...]
        assert x.dtype == y.dtype and np.array_equal(x, y), f"level {k} differs"
    names = [sorted(str(p.relative_to(d)) for p in d.rglob("*")) for d in (a, b)]
    assert names[0] == names[1]  # same chunks, no stray files (.busy-*, .cancel)
    return keys


@pytest.mark.parametrize("output,shape", [("labels", (2, 1101, 150)),
                                          ("probabilities", (1100, 140)),
                                          ("probabilities", (2, 1100, 40))])
def test_zarr_output_is_written_by_the_workers(tmp_path, tiny3_model, cluster, monkeypatch,
                                               output, shape):
    """Level 0 in chunk-aligned regions by the workers, the pyramid by region tasks: every
    level equals the single-process writer's; the client never writes a band."""
    from unet_deploy.zarr_io import ZarrWriter

    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _blobs(shape, 2), metadata={"axes": "ZYX"[-len(shape):]})
    segment_file(image, tmp_path / "ref.ome.zarr", tiny3_model, output=output, **KW)

    def funnelled(self, band):
        raise AssertionError("the client wrote a band: Zarr output must come from the workers")

    monkeypatch.setattr(ZarrWriter, "write_band", funnelled)
    s = segment_distributed(image, tmp_path / "dist.ome.zarr", tiny3_model, cluster=cluster,
                            output=output, **KW)
    assert s.block_rows % 256 == 0
    assert _zarr_equal(tmp_path / "ref.ome.zarr", tmp_path / "dist.ome.zarr") == ["0", "1"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_zarr_input_and_instances_into_zarr(tmp_path, tiny3_model):
    """Also the plain ``workers=N`` entry (its own LocalCluster, started and closed here)."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale

    src = tmp_path / "in.ome.zarr"
    group = zarr.open_group(str(src), mode="w", zarr_format=2)
    write_multiscale([_blobs((300, 210), 3)], group, fmt=FormatV04(),
                     axes=[{"name": "y", "type": "space"}, {"name": "x", "type": "space"}])
    segment_file(src, tmp_path / "ref.ome.zarr", tiny3_model, output="instances", **KW)
    s = segment_distributed(src, tmp_path / "dist.ome.zarr", tiny3_model, workers=1,
                            output="instances", block_rows=BLOCK, **KW)
    assert "1 worker x 1 thread" in str(s)
    _zarr_equal(tmp_path / "ref.ome.zarr", tmp_path / "dist.ome.zarr")


def test_worker_killed_mid_run_result_still_exact(tmp_path, tiny3_model, cluster):
    """SIGKILL one worker process while it runs blocks: the scheduler re-runs its blocks on
    the other worker (the nanny restarts the dead one) and the output is still exact."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _blobs((520, 200), 4))
    segment_file(image, tmp_path / "ref.tif", tiny3_model, output="probabilities", **KW)
    client = cluster.client
    pids = client.run(os.getpid)
    killed = []

    def kill_busy_worker(done, total):
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys] or list(pids)
        killed.append(pids[busy[0]])
        os.kill(pids[busy[0]], 9)

    segment_distributed(image, tmp_path / "dist.tif", tiny3_model, cluster=cluster,
                        output="probabilities", block_rows=52, on_blocks=kill_busy_worker,
                        **KW)
    assert np.array_equal(_read(tmp_path / "ref.tif"), _read(tmp_path / "dist.tif"))
    assert killed and killed[0] not in client.run(os.getpid).values()
    client.wait_for_workers(2, timeout=60)  # the nanny brings it back for the next tests


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr"])
@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_cancel_and_ctrl_c_leave_nothing(tmp_path, image, tiny3_model, cluster, suffix, how):
    event = threading.Event()

    def stop(done, total):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        event.set()

    out = tmp_path / f"out.labels{suffix}"
    with pytest.raises(Cancelled if how == "cancel" else KeyboardInterrupt):
        segment_distributed(image, out, tiny3_model, cluster=cluster, output="labels",
                            block_rows=BLOCK, cancel=event, on_blocks=stop, **KW)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file or folder


def test_scheduler_unreachable_is_one_line_exit_8(tmp_path, image, tiny_model, monkeypatch):
    import socket

    from typer.testing import CliRunner

    import unet_deploy.distributed as dist
    from unet_deploy.cli import app

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", 1.0)
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(app, ["segment", str(image), "-o", str(out), "--model",
                                   str(tiny_model), "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert res.exit_code == 8 == ClusterError.exit_code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Dask scheduler")
    assert "dask scheduler" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_workers_and_scheduler_together_is_a_usage_error(tmp_path, image, tiny_model):
    from typer.testing import CliRunner

    from unet_deploy.cli import app

    res = CliRunner().invoke(app, ["segment", str(image), "-o", str(tmp_path / "o.tif"),
                                   "--model", str(tiny_model), "--workers", "2",
                                   "--scheduler", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "not both" in res.output


def test_plan_blocks_cover_the_plan_once():
    from unet_deploy.geometry import Geometry

    geo = Geometry(depth=4, padding="valid")
    plan = plan_tiles(5000, 3000, geo, 572)  # step 384, tile 572
    bp = plan_blocks(plan, 2, block_rows=4 * 384)
    assert [b.y1 - b.y0 for b in bp.blocks[:4]] == [1536, 1536, 1536, 392]
    assert bp.tiles == bp.plan_tiles and bp.extra_tiles == 0  # the plan's tiles, once each
    # halo: each block reads tile - step = 188 rows beyond its own (clipped at the border)
    assert bp.rows_read == 2 * (5000 + 3 * 188)
    assert abs(bp.halo_share - 3 * 188 / (5000 + 3 * 188)) < 1e-12
    for p in (0, 1):  # the blocks of a plane tile it exactly, in order
        ys = [(b.y0, b.y1) for b in bp.blocks if b.plane == p]
        assert ys[0][0] == 0 and ys[-1][1] == 5000
        assert all(a[1] == b[0] for a, b in zip(ys, ys[1:]))
    # Zarr output: edges on 256-row chunks; lcm(384, 256) = 768 needs no tile row twice
    z = plan_blocks(plan, 1, block_rows=4 * 384, chunk=256)
    assert all(b.y0 % 256 == 0 for b in z.blocks) and z.extra_tiles == 0
    odd = plan_tiles(5000, 3000, Geometry(depth=2, padding="valid"), 92)  # step 52
    z = plan_blocks(odd, 1, block_rows=520, chunk=256)
    assert all(b.y0 % 256 == 0 for b in z.blocks) and 0 < z.extra_tiles < 0.25
    # default: about TARGET_BLOCK_ROWS, but several blocks per cluster thread
    assert len(plan_blocks(plan, 1, threads=8).blocks) >= 13


def test_import_stays_light():
    code = ("import sys, unet_deploy, unet_deploy.distributed, unet_deploy.pipeline;"
            "bad = [m for m in ('dask', 'distributed', 'torch') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_em_watershed_instances_equal_the_single_process_run(tmp_path, local_watershed_model,
                                                             cluster):
    """The shipped EM post-processing (the watershed's local case) streams on the cluster too:
    workers send the membrane probability, the client smooths across blocks -- same ids."""
    src = tmp_path / "crop.tif"
    tifffile.imwrite(src, tifffile.imread(Path(__file__).parents[1] / "examples" /
                                          "bbbc039_crop.tif"))
    segment_file(src, tmp_path / "ref.tif", local_watershed_model, output="instances", **KW)
    segment_distributed(src, tmp_path / "dist.tif", local_watershed_model, cluster=cluster,
                        output="instances", block_rows=BLOCK, **KW)
    a, b = _read(tmp_path / "ref.tif"), _read(tmp_path / "dist.tif")
    assert a.max() > 20 and np.array_equal(a, b)


def test_seeded_em_watershed_is_refused_before_any_block(tmp_path, image, tiny_model, cluster):
    """A watershed with real seeds needs each plane whole: --workers says so and writes nothing."""
    import shutil

    from unet_deploy.errors import OptionError
    from unet_deploy.export import update_metadata

    model = tmp_path / "seeded.onnx"
    shutil.copyfile(tiny_model, model)
    update_metadata(model, binary_method="watershed", watershed_h=0.05)
    with pytest.raises(OptionError, match="need each plane whole.*without them"):
        segment_distributed(image, tmp_path / "out.tif", model, cluster=cluster,
                            output="instances", block_rows=BLOCK, **KW)
    assert not list(tmp_path.glob("out*"))
