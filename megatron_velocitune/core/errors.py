"""The project's error types: what a user did wrong, told in one line, versus a bug.

A :class:`VelocituneError` is a problem with the user's input, files or environment (a flag, a
data file, a checkpoint, a lock): entries and tools print ``prog: error: <message>`` (the flag or
file and the value named) and exit with :attr:`VelocituneError.exit_code`. Anything else (a
``ValueError`` or ``TypeError`` from deep in the code) is a bug and keeps its traceback.
:class:`InputError` also derives from :class:`ValueError` where a bad value is the cause, so
callers that catch ``ValueError`` keep working.
"""

__all__ = [
    "CheckpointError",
    "DataError",
    "InputError",
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


class InputError(VelocituneError, ValueError):
    """A bad flag value, file content or combination."""


class CheckpointError(VelocituneError):
    """A checkpoint or its sidecar cannot be loaded, or does not match this run."""


class DataError(VelocituneError):
    """A ``--data-path`` file (``.bin``/``.idx``) is missing, truncated or empty."""


class RunLockError(VelocituneError):
    """Another live run holds the ``--save`` directory."""


class NonFiniteLossError(VelocituneError):
    """The training loss became NaN or infinite; the run stopped without saving."""

    exit_code = 1
