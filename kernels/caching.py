"""Where the kernels' Numba cache lives: outside the installed package.

Numba's default for ``cache=True`` is a ``__pycache__`` folder next to the source. For a regular
install that is ``site-packages/unet_deploy/kernels/__pycache__``, which pip does not remove on
uninstall (the cache files are not in the wheel's RECORD): the leftover ``unet_deploy`` folder
then shadows a later editable install as a namespace package, and ``from unet_deploy.kernels
import ...`` fails. So, unless the user set ``NUMBA_CACHE_DIR`` (respected as is), the kernels
are compiled with ``numba.config.CACHE_DIR`` pointing at a per-user cache folder while their
modules are imported -- Numba picks a function's cache location when it is decorated -- and
the setting is restored afterwards, so other Numba code in the process is unaffected. Numba keys
the cache by the source folder and checks the source's timestamp, so several installs share
the folder safely.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


def kernel_cache_dir() -> Path:
    """``$UNET_DEPLOY_CACHE/numba``, else the platform's per-user cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux) ``/unet-deploy/numba``; a folder in the
    temporary directory when that one is not writable."""
    if os.environ.get("UNET_DEPLOY_CACHE"):
        base = Path(os.environ["UNET_DEPLOY_CACHE"])
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local",
                    "unet-deploy")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "unet-deploy"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "unet-deploy")
    folder = base / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return folder
    except OSError:
        user = getattr(os, "getuid", lambda: "user")()
        return Path(tempfile.gettempdir()) / f"unet-deploy-numba-{user}"


@contextlib.contextmanager
def cache_outside_package():
    """While active, ``@njit(cache=True)`` functions cache into ``kernel_cache_dir()``."""
    import numba

    if os.environ.get("NUMBA_CACHE_DIR"):
        yield
        return
    before = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(kernel_cache_dir())
    try:
        yield
    finally:
        numba.config.CACHE_DIR = before
