"""Error hierarchy. Each error subclasses the standard-library error a caller would expect,
so ``except FileNotFoundError`` still works, and carries the CLI exit code it maps to."""


class UnetDeployError(Exception):
    """Base of every error unet-deploy raises on purpose."""

    exit_code = 1


class InputError(UnetDeployError, ValueError):
    """The input image cannot be segmented as it is (format, shape, dtype, size)."""

    exit_code = 3


class InputNotFoundError(InputError, FileNotFoundError):
    """The input file does not exist (exit code 3, like any unusable input)."""


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


class OptionError(UnetDeployError, ValueError):
    """An option value that cannot work for this model or input (e.g. a tile size the network
    cannot take); the message names the values that would. Exit code 2, like a usage error."""

    exit_code = 2


class MissingExtraError(UnetDeployError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the
    extra to install (``pip install "unet-deploy[train]"``)."""

    exit_code = 7


class ClusterError(UnetDeployError, ConnectionError):
    """The Dask cluster of ``--workers``/``--scheduler`` cannot be reached, has no workers, or
    was lost mid-run (``distributed.segment_distributed``); nothing is left under the output
    name. Exit code 8."""

    exit_code = 8


class Cancelled(UnetDeployError):
    exit_code = 130


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: please report it with the traceback, UNET_DEPLOY_DEBUG=1)",
    2: "usage: unknown option, invalid or missing value, or an option value the model cannot "
       "take (e.g. --tile)",
    3: "input not found or unusable (format, shape, dtype, size)",
    4: "model not found or unusable",
    5: "output cannot be written",
    6: "backend failure",
    7: "an optional extra is not installed (the message names it)",
    8: "the Dask cluster (--workers/--scheduler) cannot be reached, has no workers or was lost",
    130: "interrupted (SIGINT/SIGTERM); no output left behind",
}
