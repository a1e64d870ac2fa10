"""The cluster a user starts by hand: ``dask scheduler`` and ``dask worker`` as separate
processes (loopback only, bounded waits, always killed), then ``unet-deploy segment
--scheduler ADDRESS``: the output equals the single-process run's, bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")

START_TIMEOUT = 60  # seconds for the scheduler file and the worker to appear


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [shutil.which("dask") or "dask"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_cli_on_a_scheduler_and_worker_started_as_processes(tmp_path, tiny3_model):
    from scipy import ndimage as ndi
    from typer.testing import CliRunner

    from unet_deploy.cli import app
    from unet_deploy.pipeline import segment_file

    rng = np.random.default_rng(5)
    im = ndi.gaussian_filter(rng.random((300, 220)), 4)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, (im / im.max() * 4000).astype(np.uint16))
    ref = tmp_path / "ref.instances.tif"
    segment_file(image, ref, tiny3_model, output="instances", tile=92, progress=False,
                 backend="onnxruntime-cpu", max_object=4096)

    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "worker.log")]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            _dask_cli() + ["scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--dashboard-address", "127.0.0.1:0", "--no-show",
                           "--scheduler-file", str(sched_file)],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env))
        procs.append(subprocess.Popen(  # started at once: it waits for the scheduler file
            _dask_cli() + ["worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                           "--no-nanny", "--death-timeout", "60"],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + START_TIMEOUT
        address = None
        while address is None and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        assert address and address.startswith("tcp://127.0.0.1:"), address

        out = tmp_path / "dist.instances.tif"
        res = CliRunner().invoke(app, ["segment", str(image), "-o", str(out), "--model",
                                       str(tiny3_model), "--output", "instances", "--tile",
                                       "92", "--backend", "onnxruntime-cpu", "--max-object",
                                       "4096", "--scheduler", address, "--quiet"])
        assert res.exit_code == 0, res.output + (tmp_path / "worker.log").read_text()
        assert f"scheduler {address}" in res.output and "1 worker x 1 thread" in res.output
        assert np.array_equal(tifffile.imread(ref), tifffile.imread(out))
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
