"""``benchmarks/gpu.py --smoke`` in CI: every code path of the one GPU call, on the CPU, run the
way the GPU machine runs it -- from a checkout whose package is NOT installed (``python -S``
skips the editable install's import hook; numpy etc. still come from site-packages)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_smoke_from_an_uninstalled_checkout(tmp_path):
    pytest.importorskip("torch")
    paths = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    out = tmp_path / "results"
    mine = [ROOT / "benchmarks" / "results" / n for n in ("gpu.md", "gpu.json", "host.md",
                                                           "host.json")]
    before = {p: p.stat().st_mtime if p.exists() else None for p in mine}
    r = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "gpu.py"), "--smoke",
                        "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    text = (out / "gpu.md").read_text()
    assert "(checkout, not installed)" in text  # it did not rely on an install
    row = next(line for line in text.splitlines() if line.startswith("| torch-cpu fp32"))
    assert "100.000%" in row and "FAILED" not in text
    assert (out / "gpu.json").is_file() and "| new | in memory | class maps |" in \
        (out / "host.md").read_text()
    after = {p: p.stat().st_mtime if p.exists() else None for p in mine}
    assert after == before  # results go to --out, never into the repo


def test_gpu_script_times_warm_runs_only(tiny_model):
    """Every timed repeat runs on warm shapes: one untimed call per batch shape (throughput)
    and one untimed full run (end to end) come first, and there are at least 3 repeats."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    from unet_deploy.backends.null import NullBackend

    shapes = []

    class Counting(NullBackend):
        def _infer(self, batch):
            shapes.append(batch.shape)
            return super()._infer(batch)

        _infer_labels_base = NullBackend._infer_labels

        def _infer_labels(self, batch):
            shapes.append(batch.shape)
            return self._infer_labels_base(batch)

    with Counting(tiny_model) as b:
        gpu.end_to_end(b, np.zeros((150, 150), np.uint16), 92, 4, 3, device_labels=True)
        per_run = len(shapes) // 4
        assert len(shapes) == 4 * per_run  # 1 untimed + 3 timed full runs, same batches
        assert set(shapes[:per_run]) == set(shapes[per_run:])  # nothing new while timed
        shapes.clear()
        gpu.throughput(b, tiny_model, b.info, [1, 3], 92, 3)
        assert [s[0] for s in shapes] == [1] * 4 + [3] * 4
    assert gpu.MIN_REPS >= 3
