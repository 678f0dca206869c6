"""The project's error types: what a user did wrong, told in one line, versus a bug.

Entries and tools catch :class:`VelocituneError` (and a missing file) and print one line naming
the flag or file and the value, exit status 2; anything else is a bug and keeps its traceback.
Each subclass also derives from :class:`ValueError` where a bad value is the cause, so callers
that catch ``ValueError`` keep working.
"""

__all__ = ["InputError", "VelocituneError"]


class VelocituneError(Exception):
    """Base of every error the project raises for bad input, configuration or files."""


class InputError(VelocituneError, ValueError):
    """A bad flag value, file or combination: the message names it and the value."""
