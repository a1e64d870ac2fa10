"""Error hierarchy. Each error subclasses the standard-library error a caller would expect,
so ``except FileNotFoundError`` still works, and carries the CLI exit code it maps to."""


class UnetDeployError(Exception):
    """Base of every error unet-deploy raises on purpose."""

    exit_code = 1


class InputError(UnetDeployError, ValueError):
    """The input image cannot be segmented as it is (format, shape, dtype, size)."""

    exit_code = 3


class InputNotFoundError(InputError, FileNotFoundError):
    exit_code = 2


class ObjectTooLargeError(InputError):
    """Streaming instances: an object (with its nearest-seed context) is larger than
    ``--max-object`` allows; rerun with a larger ``--max-object``."""


class ModelError(UnetDeployError, ValueError):
    """A model file is unusable (corrupt, wrong metadata, incompatible geometry)."""

    exit_code = 4


class ModelNotFoundError(ModelError, FileNotFoundError):
    exit_code = 4


class OutputError(UnetDeployError, OSError):
    """The output cannot be written (exists, same as input, unwritable, disk full)."""

    exit_code = 5


class BackendError(UnetDeployError, RuntimeError):
    """An inference backend failed or is not available on this machine."""

    exit_code = 6


class Cancelled(UnetDeployError):
    exit_code = 130


EXIT_CODES = {
    0: "success",
    1: "unexpected unet-deploy error",
    2: "input file not found",
    3: "input unusable (format, shape, dtype, size)",
    4: "model not found or unusable",
    5: "output cannot be written",
    6: "backend failure",
    130: "interrupted (SIGINT/SIGTERM); no output left behind",
}
