"""README "Embedding": ``examples/acquisition_loop.py --watch DIR`` watches a folder instead of
simulating frames. Run as a user would (a subprocess): every complete new TIFF in DIR is
segmented into ``DIR/labels/NAME.labels.tif`` with the same labels as a ``Segmenter``;
hidden files are ignored, an unusable file is logged and skipped without stopping the loop, and Ctrl-C
stops it cleanly (exit 0)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

EXAMPLE = Path(__file__).parents[1] / "examples" / "acquisition_loop.py"


def wait_for(predicate, proc, timeout=120.0):
    """Poll until ``predicate()``; fail early if the watcher died. Not a timing assertion: the
    timeout only bounds a hung run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited early ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the watcher")


def write_complete(path: Path, image: np.ndarray) -> None:
    """As an acquisition program would: write elsewhere, then move into the folder."""
    tmp = path.parent.parent / (path.name + ".tmp")
    tifffile.imwrite(tmp, image)
    os.replace(tmp, path)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_watch_folder_segments_new_tiffs(tmp_path, tiny_model, real_crop):
    from unet_deploy import Segmenter

    folder = tmp_path / "incoming"
    folder.mkdir()
    labels = folder / "labels"
    frames = {"a": real_crop, "b": np.ascontiguousarray(real_crop[::-1, :200])}
    write_complete(folder / "a.tif", frames["a"])  # present before the watcher starts
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--watch", str(folder), "--model", str(tiny_model),
         "--backend", "onnxruntime-cpu", "--interval", "0.1", "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (labels / "a.labels.tif").exists(), proc)
        (folder / ".hidden.tif").write_bytes(b"not even a TIFF")
        (folder / "broken.tif").write_bytes(b"II*\x00garbage")
        write_complete(folder / "b.tif", frames["b"])  # arrives while watching
        wait_for(lambda: (labels / "b.labels.tif").exists(), proc)
        assert proc.poll() is None  # the broken file did not stop the loop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert sorted(p.name for p in labels.iterdir()) == ["a.labels.tif", "b.labels.tif"]
    assert re.search(r"ERROR .*broken", err), err[-2000:]  # logged and skipped
    with Segmenter(tiny_model, backend="onnxruntime-cpu", batch_size=2, warmup=False) as seg:
        for name, frame in frames.items():
            np.testing.assert_array_equal(tifffile.imread(labels / f"{name}.labels.tif"),
                                          seg(frame))
