"""A lock on ``--save``: two live runs never write one checkpoint directory.

The lock is ``<save>/.velocitune.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local and
NFSv3+ filesystems) and holding the owner's host, pid and process start time as JSON. A second
run finds it and stops with one line naming the owner. A lock whose owner is gone (same host,
and no process with that pid and start time: a run that was killed) is stale: it is taken over
and the log says so. A lock from another host cannot be checked and is never taken over. The
owner removes the lock at exit. No torch.
"""

import json
import logging
import os
import socket
from typing import Any, Dict, Optional

from megatron_velocitune.core.errors import RunLockError
from megatron_velocitune.core.processes import owner_gone, owner_record

__all__ = ["LOCK_NAME", "RunLock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".velocitune.lock"


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
                owner = self._read()
                if owner is None:
                    continue  # released meanwhile: try again
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
                logger.warning(
                    "velocitune: took over the stale lock %s of pid %s (started %s), which is "
                    "no longer running",
                    self.path,
                    self.took_over.get("pid"),
                    self.took_over.get("started"),
                )
            return self
        raise RunLockError(f"{self.flag} {self.folder}: cannot take the lock {self.path}")

    def _stale(self, owner: Dict[str, Any]) -> bool:
        if not owner:
            return False  # unreadable (being written, or not ours): never remove it
        return owner_gone(owner) is not None

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if not self.held:
            return
        self.held = False
        owner = self._read()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
