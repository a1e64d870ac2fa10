"""README "Errors and exit codes": output is written to ``.NAME.partial-XXXX``, fsynced, and
renamed only when complete -- so after a crash or power loss a file under the final name is
always whole. Checked at the moment of the rename: the temporary file is closed, its complete
contents were fsynced (nothing written after the fsync), and it already reads back as the
whole image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from unet_deploy import io as uio
from unet_deploy.io import TiffBandWriter


def _open_fds_to(path: Path) -> list[str]:
    """File descriptors of this process open on ``path`` (Linux /proc)."""
    target = os.path.realpath(path)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                found.append(fd)
        except OSError:
            pass
    return found


def test_rename_happens_after_close_and_fsync_of_the_complete_file(tmp_path, monkeypatch):
    data = np.random.default_rng(0).integers(0, 4, (2, 70, 50), dtype=np.uint8)
    out = tmp_path / "labels.tif"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        real_fsync(fd)
        events.append(("fsync", st.st_ino, st.st_size))

    def replace(src, dst):
        src, dst = Path(src), Path(dst)
        st = os.stat(src)
        events.append(("replace", st.st_ino, st.st_size))
        assert src.parent == dst.parent and src.name.startswith(f".{dst.name}.partial-")
        assert not _open_fds_to(src), "renamed while the temporary file is still open"
        np.testing.assert_array_equal(tifffile.imread(src), data)  # already whole
        real_replace(src, dst)

    monkeypatch.setattr(uio.os, "fsync", fsync)
    monkeypatch.setattr(uio.os, "replace", replace)
    with TiffBandWriter(out, (2,), 70, 50, 1, np.uint8, tile=16) as w:
        for plane in data:
            for y0 in range(0, 70, 9):
                w.write_band(plane[y0 : y0 + 9])
        assert not out.exists()
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1
    _, inode, size = renames[0]
    i = events.index(renames[0])
    synced = [e for e in events[:i] if e[0] == "fsync" and e[1] == inode]
    assert synced, "the temporary file was never fsynced before the rename"
    assert synced[-1][2] == size, "data was written after the last fsync"
    np.testing.assert_array_equal(tifffile.imread(out), data)
    assert not list(tmp_path.glob(".labels.tif.partial-*"))


def test_aborted_write_closes_and_removes_the_temporary_file(tmp_path):
    """An exception inside the ``with`` block: the temporary file is closed (no descriptor left
    on it, not even on the deleted file) and removed; the final name never appears."""
    import pytest

    out = tmp_path / "labels.tif"
    with pytest.raises(RuntimeError, match="camera unplugged"):
        with TiffBandWriter(out, (), 64, 40, 1, np.uint8, tile=16) as w:
            w.write_band(np.ones((20, 40), np.uint8))
            tmp = w.tmp_path
            assert tmp is not None and _open_fds_to(tmp)
            raise RuntimeError("camera unplugged")
    assert not out.exists() and not tmp.exists()
    leaked = [fd for fd in os.listdir("/proc/self/fd")
              if ".labels.tif.partial-" in _readlink(f"/proc/self/fd/{fd}")]
    assert not leaked, "descriptor left open on the temporary file"


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_temporary_file_that_cannot_be_created_is_an_output_error(tmp_path, monkeypatch):
    import errno

    import pytest

    from unet_deploy.errors import OutputError

    real_open = os.open

    def refuse(path, *a, **k):
        if ".partial-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(uio.os, "open", refuse)
    with pytest.raises(OutputError, match="cannot create temporary file .*Permission denied"):
        with TiffBandWriter(tmp_path / "x.tif", (), 8, 8, 1, np.uint8, tile=16):
            pass
    assert not list(tmp_path.iterdir())
