"""unet-deploy: paper-faithful U-Net, seamless overlap-tile inference for huge microscopy images.

Importing this package is cheap and never imports torch; heavy modules load on first use.
"""

from .errors import (  # noqa: F401
    BackendError,
    InputError,
    InputNotFoundError,
    ModelError,
    ModelNotFoundError,
    OutputError,
    UnetDeployError,
)

__version__ = "0.1.0"

_LAZY = {
    "Segmenter": ("unet_deploy.segmenter", "Segmenter"),
    "segment_file": ("unet_deploy.pipeline", "segment_file"),
    "segment_array": ("unet_deploy.pipeline", "segment_array"),
    "segment_distributed": ("unet_deploy.distributed", "segment_distributed"),
    "load_model": ("unet_deploy.model_store", "load_model"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'unet_deploy' has no attribute {name!r}")
