"""Bounded seeded mutation fuzzing in CI (benchmarks/fuzz.py runs many more inputs): every
mutated TIFF or ONNX file ends in a result or a UnetDeployError -- never another exception,
never a crash. The ONNX part runs in a child process, so an ONNX Runtime segfault fails this
test with the case number instead of killing pytest."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FUZZ = Path(__file__).parents[1] / "benchmarks" / "fuzz.py"
N_TIFF = 110
N_ONNX = 40


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("unet_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mutations_are_seeded_and_varied():
    fuzz = _fuzz_module()
    data = (Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif").read_bytes()[:4096]
    a = [fuzz.mutate(data, np.random.default_rng(7)) for _ in range(3)]
    b = [fuzz.mutate(data, np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    kinds = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        out, ops = fuzz.mutate(data, rng)
        kinds.update(op.split("@")[0] for op in ops)
    assert {"flip", "truncate", "insert", "delete", "dup"} <= kinds
    assert any(k.startswith("field") for k in kinds)
    assert fuzz._ifd_entries(data)


def test_fuzz_tiff(tiny_model, tmp_path):
    fuzz = _fuzz_module()
    stats = fuzz.fuzz_tiff(N_TIFF, seed=12345, model=tiny_model, work=tmp_path)
    assert stats.n == N_TIFF
    assert not stats.failures, json.dumps(stats.failures, indent=1)
    assert stats.ok > 0 and sum(stats.errors.values()) > 0  # both outcomes exercised


def test_fuzz_onnx_in_subprocess(tiny_model, tmp_path):
    cmd = [sys.executable, str(FUZZ), "--tiff", "0", "--onnx", str(N_ONNX), "--seed", "777",
           "--model", str(tiny_model), "--work", str(tmp_path), "--no-write", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON ")]
    assert line, proc.stdout + proc.stderr
    (stats,) = json.loads(line[-1][5:])
    assert stats["n"] == N_ONNX
    assert not stats["failures"], json.dumps(stats["failures"], indent=1)
    assert proc.returncode == 0
