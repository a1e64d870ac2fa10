"""README command 1 (`pip install .` + segment) then command 2 (`pip install -e .`) in one venv.

Numba's default cache location is a ``__pycache__`` folder next to the kernel sources. Under a
regular install that is ``site-packages/unet_deploy/kernels/__pycache__``; pip does not remove
it on uninstall (it is not in RECORD), and the leftover ``site-packages/unet_deploy`` folder then
shadows the editable install as a namespace package (``cannot import name 'stitch_labels' from
'unet_deploy.kernels' (unknown location)``). The kernels therefore cache outside the package.

The test uses a bare venv whose dependencies come from this interpreter's site-packages (a .pth
line, so nothing is downloaded) and installs a copy of the source (no build files in the repo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# compiles (and caches) one small kernel; imports another name as the README's tests would
KERNEL_RUN = ("from unet_deploy.kernels import mirror_index, stitch_labels; "
              "print([mirror_index(i, 3) for i in range(-2, 3)])")


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: this interpreter's packages (numpy, numba, pip, setuptools) become
    # importable, but its .pth files -- among them the editable unet_deploy finder -- do not run
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc", "*.onnx", "*.egg-info")
    for name in ("unet_deploy", "kernels", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


@pytest.mark.slow
def test_regular_then_editable_install_in_one_venv(tmp_path):
    venv, src = _venv(tmp_path), _source_copy(tmp_path)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "PYTHON"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]

    def run(*cmd, cwd=tmp_path):
        res = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    run(*pip, str(src))  # README command 1: a regular install ...
    assert run(py, "-c", KERNEL_RUN).strip() == "[2, 1, 0, 1, 2]"  # ... that compiles kernels
    site = Path(run(py, "-c", "import unet_deploy, os; print(os.path.dirname(unet_deploy.__file__))")
                .strip())
    assert site.is_relative_to(venv)
    written = [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert not written, f"Numba cache written into the installed package: {written}"
    assert list((tmp_path / "cache").rglob("*.nbi")), "kernels were not cached at all"

    run(*pip, "-e", str(src))  # README command 2 in the same venv
    assert not site.exists(), f"leftover {sorted(site.rglob('*'))} shadows the editable install"
    out = run(py, "-c", KERNEL_RUN + "; import unet_deploy.kernels as k; print(k.__file__)")
    assert out.split("\n")[1].startswith(str(src / "kernels"))
