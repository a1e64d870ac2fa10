"""Output safety: never overwrite the input or an existing file unasked, fail before inference
when the output cannot be written, and never leave a file that looks complete after disk-full,
SIGINT/SIGTERM (exit 130, nothing written) or SIGKILL (final path absent or old file intact)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unet_deploy.cli import app

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"
runner = CliRunner()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def no_inference(monkeypatch):
    """Fail loudly if a backend is opened: the output checks must come first."""
    import unet_deploy.backends as backends

    def boom(*a, **k):
        raise AssertionError("backend opened before the output was checked")

    monkeypatch.setattr(backends, "open_backend", boom)


def test_same_path_as_input_also_through_symlink(tmp_path, tiny_model, no_inference):
    inp = tmp_path / "in.tif"
    tifffile.imwrite(inp, tifffile.imread(EXAMPLE)[:64, :64])
    before = digest(inp)
    link = tmp_path / "link.tif"
    os.symlink(inp, link)
    for src, out in [(inp, inp), (inp, link), (link, inp), (inp, tmp_path / "." / "in.tif")]:
        res = run("segment", src, "-o", out, "--model", tiny_model, "-q", "--overwrite")
        assert res.exit_code == 5, res.output
        assert "same" in res.output and len(res.output.strip().splitlines()) == 1
        assert digest(inp) == before and link.is_symlink()


def test_existing_output_needs_overwrite(tmp_path, tiny_model, no_inference):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    res = run("segment", EXAMPLE, "-o", out, "--model", tiny_model, "-q")
    assert res.exit_code == 5 and "--overwrite" in res.output and str(out) in res.output
    assert out.read_bytes() == b"precious"
    res = run("segment", EXAMPLE, "-o", tmp_path, "--model", tiny_model, "-q", "--overwrite")
    assert res.exit_code == 5 and "directory" in res.output


def _mount_tmpfs(folder: Path, opts: str) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                       capture_output=True)
    return r.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_unwritable_folder_fails_before_inference(tmp_path, tiny_model, no_inference):
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"")  # root ignores permissions ...
            probe.unlink()
            folder.chmod(0o755)
            mounted = _mount_tmpfs(folder, "ro,size=1m")  # ... but not a read-only mount
            if not mounted:
                pytest.skip("running as root and cannot mount a read-only tmpfs")
        except PermissionError:
            pass
        res = run("segment", EXAMPLE, "-o", folder / "out.tif", "--model", tiny_model, "-q")
        assert res.exit_code == 5, res.output
        assert "cannot write in output folder" in res.output and "writable folder" in res.output
        res = run("segment", EXAMPLE, "-o", tmp_path / "nope" / "out.tif", "--model", tiny_model, "-q")
        assert res.exit_code == 5 and "does not exist" in res.output
    finally:
        if mounted:
            _umount(folder)
        folder.chmod(0o755)


def test_disk_full_leaves_nothing(tmp_path, tiny_model):
    folder = tmp_path / "small"
    folder.mkdir()
    if not _mount_tmpfs(folder, "size=1m"):
        pytest.skip("cannot mount a 1 MB tmpfs (needs root); test_io covers ENOSPC by monkeypatch")
    try:
        inp = tmp_path / "in.tif"
        rng = np.random.default_rng(0)
        tifffile.imwrite(inp, rng.integers(0, 65535, (500, 500), dtype=np.uint16))
        before = digest(inp)
        out = folder / "probs.tif"
        res = run("segment", inp, "-o", out, "--model", tiny_model, "-q", "--output", "probabilities")
        assert res.exit_code == 5, res.output
        assert "disk full" in res.output and len(res.output.strip().splitlines()) == 1
        assert list(folder.iterdir()) == []
        assert digest(inp) == before
    finally:
        _umount(folder)


# -------------------------------------------------------------------------------- signals


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """Big enough for the tiny model to take several seconds."""
    path = tmp_path_factory.mktemp("sig") / "big.tif"
    tile = tifffile.imread(EXAMPLE)
    tifffile.imwrite(path, np.tile(tile, (6, 5))[:1900, :1900])
    return path


def _start(inp: Path, out: Path, model: Path, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "unet_deploy.cli", "segment", str(inp), "-o", str(out),
           "--model", str(model), "-q", "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list(out.parent.glob(f".{out.name}.partial-*")):
            time.sleep(0.5)  # some tile rows are written
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before the signal: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no partial file appeared")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("old", [False, True])
def test_sigint_sigterm_mid_write(tmp_path, tiny_model, big_input, sig, old):
    out = tmp_path / "out.tif"
    before = digest(big_input)
    if old:
        out.write_bytes(b"old result")
    proc = _start(big_input, out, tiny_model, *(["--overwrite"] if old else []))
    _wait_for_partial(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    if old:
        assert out.read_bytes() == b"old result"
    else:
        assert not out.exists()
    assert list(tmp_path.iterdir()) == ([out] if old else [])  # temp file removed
    assert digest(big_input) == before


@pytest.mark.slow
@pytest.mark.parametrize("old", [False, True])
def test_sigkill_mid_write(tmp_path, tiny_model, big_input, old):
    out = tmp_path / "out.tif"
    if old:
        out.write_bytes(b"old result")
    proc = _start(big_input, out, tiny_model, *(["--overwrite"] if old else []))
    _wait_for_partial(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    if old:
        assert out.read_bytes() == b"old result"
    else:
        assert not out.exists()
    for p in tmp_path.iterdir():  # leftovers never carry the final name
        assert p == out or p.name.startswith(f".{out.name}.partial-")
