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
