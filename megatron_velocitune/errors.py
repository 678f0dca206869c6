"""The project's error types: what the entry and the tools turn into one line.

A :class:`VelocituneError` is a problem with the user's input, files or environment (a flag, a
data file, a checkpoint, a lock): the entry prints ``prog: error: <message>`` and exits with
:attr:`VelocituneError.exit_code`. Anything else (a ``ValueError`` or ``TypeError`` from deep in
the code) is a bug and keeps its traceback.
"""

__all__ = [
    "CheckpointError",
    "DataError",
    "NonFiniteLossError",
    "RunLockError",
    "VelocituneError",
]


class VelocituneError(Exception):
    """A user-facing error; the message is one line naming the flag or file and the value.

    Attributes:
        exit_code (int): the process exit status the entry returns (2, as argparse).
    """

    exit_code = 2


class CheckpointError(VelocituneError):
    """A checkpoint or its sidecar cannot be loaded, or does not match this run."""


class DataError(VelocituneError):
    """A ``--data-path`` file (``.bin``/``.idx``) is missing, truncated or empty."""


class RunLockError(VelocituneError):
    """Another live run holds the ``--save`` directory."""


class NonFiniteLossError(VelocituneError):
    """The training loss became NaN or infinite; the run stopped without saving."""

    exit_code = 1
