"""A lock on ``--save``: two live runs never write one checkpoint directory.

The lock is ``<save>/.velocitune.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local and
NFSv3+ filesystems) and holding the owner's host, pid and process start time as JSON. A second
run finds it and stops with one line naming the owner. A lock whose owner is gone (same host,
and no process with that pid and start time: a run that was killed) is stale: it is taken over
and the log says so. So is a lock file that stays empty or unreadable (a run killed between
creating it and writing its owner, or a file put there by hand) once it is older than
:data:`UNREADABLE_GRACE_S`: younger, it may be another run's being written, and it is read
again. A lock from another host cannot be checked and is never taken over. The owner removes
the lock at exit. No torch.
"""

import json
import logging
import os
import time
from typing import Any, Dict, Optional

from megatron_velocitune.core.errors import RunLockError
from megatron_velocitune.core.processes import is_me, owner_gone, owner_record

__all__ = ["LOCK_NAME", "UNREADABLE_GRACE_S", "RunLock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".velocitune.lock"

#: Seconds an empty or unreadable lock file is given to be written by its owner (who writes
#: and fsyncs a few dozen bytes right after creating it) before it counts as stale.
UNREADABLE_GRACE_S = 5.0


def _named(owner: Dict[str, Any]) -> bool:
    """Whether a lock record names an owner that can be checked (a host and a pid)."""
    pid = owner.get("pid")
    return (
        isinstance(owner.get("host"), str)
        and isinstance(pid, int)
        and not isinstance(pid, bool)
        and pid > 0
    )


class RunLock:
    """The lock of one ``--save`` directory (take it on one rank, e.g. global rank 0).

    Args:
        folder (str): the ``--save`` directory (created when missing).
        flag (str): the flag that named it, for the error lines.
    """

    def __init__(self, folder: str, flag: str = "--save") -> None:
        self.folder = folder
        self.flag = flag
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False
        self.took_over: Optional[Dict[str, Any]] = None

    def _record(self) -> Dict[str, Any]:
        return owner_record()

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> "RunLock":
        """Take the lock, or take over a stale one.

        Returns:
            RunLock: self.

        Raises:
            RunLockError: another live run holds it, or the folder cannot be written.
        """
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise RunLockError(
                f"{self.flag} {self.folder}: cannot create it ({e.strerror})"
            ) from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if self._mine(owner):
                    # This process's own run (a driver that starts twice in one process, as
                    # the tests do): it holds the folder already.
                    self.held = True
                    return self
                if not self._stale(owner):
                    raise RunLockError(
                        f"{self.flag} {self.folder}: another run holds it (pid "
                        f"{owner.get('pid')} on {owner.get('host')}, started "
                        f"{owner.get('started')}; lock file {self.path}): one run per "
                        "--save directory"
                    ) from None
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                self.took_over = owner
                continue
            except OSError as e:
                raise RunLockError(
                    f"{self.flag} {self.folder}: cannot write there ({e.strerror})"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            if self.took_over is not None:
                if _named(self.took_over):
                    logger.warning(
                        "velocitune: took over the stale lock %s of pid %s (started %s), which "
                        "is no longer running",
                        self.path,
                        self.took_over.get("pid"),
                        self.took_over.get("started"),
                    )
                else:
                    logger.warning(
                        "velocitune: took over the lock %s, which named no owner for %.0f s "
                        "(empty or unreadable: a run killed while taking it)",
                        self.path,
                        UNREADABLE_GRACE_S,
                    )
            return self
        raise RunLockError(f"{self.flag} {self.folder}: cannot take the lock {self.path}")

    def _owner(self) -> Optional[Dict[str, Any]]:
        """The lock's owner record; an unnamed one is read again until it is old enough.

        Returns:
            Optional[Dict[str, Any]]: the record (``{}`` when it names no owner after
            :data:`UNREADABLE_GRACE_S`), None when the lock is gone.
        """
        while True:
            owner = self._read()
            if owner is None or _named(owner):
                return owner
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return None
            if age >= UNREADABLE_GRACE_S:
                return {}
            time.sleep(min(0.2, UNREADABLE_GRACE_S - age))

    @staticmethod
    def _mine(owner: Dict[str, Any]) -> bool:
        return _named(owner) and is_me(owner)

    def _stale(self, owner: Dict[str, Any]) -> bool:
        if not _named(owner):
            return True  # no owner written for the grace period (see _owner)
        return owner_gone(owner) is not None

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if not self.held:
            return
        self.held = False
        owner = self._read()
        if owner and self._mine(owner):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
