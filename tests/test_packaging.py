"""The wheel ships the kernels as unet_deploy.kernels (nothing bare named `kernels`), the models
as package data, and the deployment path never imports torch."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(out)], check=True)
    (whl,) = out.glob("unet_deploy-*.whl")
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "unet_deploy/kernels/gather.py" in names
    assert "unet_deploy/kernels/stitch.py" in names
    assert not [n for n in names if n.startswith(("kernels/", "models/", "tests/"))]
    shipped = [p.name for p in (ROOT / "models").glob("*.onnx")]
    for name in shipped:
        assert f"unet_deploy/models/{name}" in names
        assert f"unet_deploy/models/{Path(name).stem}.md" in names


def test_kernels_import_from_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    code = ("import unet_deploy.kernels as k, importlib.util as u; "
            "print(k.__file__); print(u.find_spec('kernels'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                                            "NUMBA_CACHE_DIR": str(tmp_path / "nb")},
                         check=True)
    kernel_file, bare = res.stdout.split()
    assert kernel_file.startswith(str(site))
    assert bare == "None"  # no top-level `kernels` package was installed


def test_segment_path_never_imports_torch(tiny_model, tmp_path):
    code = f"""
import sys, unet_deploy
assert 'torch' not in sys.modules, 'import unet_deploy pulled in torch'
from unet_deploy.pipeline import segment_file
segment_file({str(ROOT / 'examples' / 'bbbc039_crop.tif')!r}, {str(tmp_path / 'o.tif')!r},
             {str(tiny_model)!r}, progress=False)
import unet_deploy.cli
heavy = [m for m in ('torch', 'onnx', 'torchvision') if m in sys.modules]
print(heavy)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    assert (tmp_path / "o.tif").exists()
