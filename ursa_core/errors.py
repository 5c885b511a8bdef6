"""Exceptions with messages a ComfyUI user can act on."""


class URSAError(ValueError):
    """Base class for every error ursa_core raises on purpose."""


class CheckpointError(URSAError):
    """A model folder is missing a file or key, or a tensor has the wrong shape.

    The message always names the folder, the file and (where relevant) the key and the expected vs found shape.
    """


class InputError(URSAError):
    """A generation argument is out of range (frames, size, dtype, schedule...).

    The message names the argument, the bad value and what is allowed.
    """


class OutputError(URSAError):
    """Writing a result failed (disk full, permissions, encoder error); the existing file at the path is untouched.

    The message names the path and the cause. The CLI exits 1 (an I/O failure), not 2 (bad input).
    """


class LaunchError(URSAError):
    """The ranks of a torchrun launch could not meet (no store at MASTER_ADDR:MASTER_PORT) or lost each other.

    The CLI exits 1.
    """
