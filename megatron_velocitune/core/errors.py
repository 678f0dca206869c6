"""The project's error types: what a user did wrong, told in one line, versus a bug.

A :class:`VelocituneError` is a problem with the user's input, files or environment (a flag, a
data file, a checkpoint, a lock): entries and tools print ``prog: error: <message>`` (the flag or
file and the value named) and exit with :attr:`VelocituneError.exit_code`. Anything else (a
``ValueError`` or ``TypeError`` from deep in the code) is a bug and keeps its traceback.
:class:`InputError` also derives from :class:`ValueError` where a bad value is the cause, so
callers that catch ``ValueError`` keep working.

Every user-facing error class lives here; the modules that raise one import it from here (and
keep it in their ``__all__``, so ``from megatron_velocitune.core.config import
VelocituneConfigError`` and the like keep working). Errors that mean a bug or a broken run
(``FitFailedError``, ``WeightMismatchError``) stay with their code, outside this family.
"""

from typing import Optional

__all__ = [
    "CheckpointError",
    "CoefficientError",
    "ConversionError",
    "DataError",
    "InputError",
    "NonFiniteLossError",
    "PortInUseError",
    "RunLockError",
    "TargetAboveInitialError",
    "TargetRuleError",
    "TooFewPointsError",
    "ToolError",
    "VelocituneConfigError",
    "VelocituneError",
    "WriteError",
]


class VelocituneError(Exception):
    """A user-facing error; the message is one line naming the flag or file and the value.

    Attributes:
        exit_code (int): the process exit status the entry returns (2, as argparse).
    """

    exit_code = 2


class InputError(VelocituneError, ValueError):
    """A bad flag value, file content or combination."""


class VelocituneConfigError(InputError):
    """A configuration value is invalid; the message is one line naming the flag and value."""


class TargetRuleError(InputError):
    """A target rule cannot apply to a domain (the message names the domain and the values)."""


class TooFewPointsError(InputError):
    """Too few (tokens, loss) points to fit the law."""


class TargetAboveInitialError(InputError):
    """The predicted target is not below the initial loss (velocity would be undefined)."""


class CoefficientError(InputError):
    """K cannot be estimated from a domain's early losses (too few, flat or rising)."""


class ConversionError(InputError):
    """A checkpoint or config this mapping cannot convert; the message names the problem."""


class ToolError(VelocituneError):
    """A user-facing, one-line error of a command-line tool or the library behind one."""


class CheckpointError(VelocituneError):
    """A checkpoint or its sidecar cannot be loaded, or does not match this run."""


class DataError(VelocituneError):
    """A ``--data-path`` file (``.bin``/``.idx``) is missing, truncated or empty."""


class WriteError(VelocituneError):
    """A file or folder cannot be written: disk full, read-only, a file where a folder must be."""


class RunLockError(VelocituneError):
    """Another live run holds the ``--save`` directory."""


class PortInUseError(VelocituneError):
    """The rendezvous port (``MASTER_PORT``) is taken: most likely another run on this machine."""

    @classmethod
    def from_exception(cls, exc: BaseException, port: Optional[str]) -> Optional["PortInUseError"]:
        """The one-line error for torch.distributed's ``EADDRINUSE`` failure, else None.

        Args:
            exc (BaseException): what starting the process group raised.
            port (Optional[str]): the port it tried (``MASTER_PORT``).

        Returns:
            Optional[PortInUseError]: the error to raise instead, or None (another failure).
        """
        text = str(exc)
        if "EADDRINUSE" not in text and "address already in use" not in text.lower():
            return None
        return cls(
            f"MASTER_PORT {port}: the port is in use (another run on this machine?): set "
            "MASTER_PORT to a free port (torchrun: --master-port), or wait for that run"
        )


class NonFiniteLossError(VelocituneError):
    """The training loss became NaN or infinite; the run stopped without saving."""

    exit_code = 1
