"""Who owns a lock or a claim file, and whether that owner is gone.

A file that says "this process holds it" (``--save``'s lock, a ``velocitune-compare`` run's
claim) records its owner's host, pid and process start time (:func:`owner_record`). A pid alone
is not enough: once its process ends, the kernel hands the number to any new process, and a
check of the pid alone would then wait on a stranger forever. On the owner's host,
:func:`owner_gone` compares the start time too; from another host nothing can be checked. No
torch.
"""

import os
import socket
import time
from typing import Any, Dict, Optional

__all__ = ["is_me", "owner_gone", "owner_record", "start_time"]


def start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot, /proc field 22), None if unknown.

    Args:
        pid (int): the process id.

    Returns:
        Optional[str]: the start time as written in ``/proc/<pid>/stat`` (None: no such
        process, or no /proc).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # The command name (field 2) may hold spaces and parentheses: split after its ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def owner_record() -> Dict[str, Any]:
    """This process as the owner of a file: host, pid, start time and when (ISO 8601).

    Returns:
        Dict[str, Any]: ``{"host", "pid", "start_time", "started"}``.
    """
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start_time": start_time(pid),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def is_me(owner: Dict[str, Any]) -> bool:
    """Whether ``owner`` (an :func:`owner_record`) is this very process."""
    me = owner_record()
    return all(owner.get(k) == me[k] for k in ("host", "pid", "start_time"))


def owner_gone(owner: Dict[str, Any]) -> Optional[str]:
    """Why the owner of a file of this host is no longer running, or None while it may be.

    Args:
        owner (Dict[str, Any]): an :func:`owner_record` read back (``start_time`` may be None:
            written where /proc was missing).

    Returns:
        Optional[str]: ``"pid 42 is not running"`` or ``"pid 42 is now another process
        (started at tick X, the owner at Y)"``; None when the owner may still run, or cannot be
        checked (another host, no pid).
    """
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is not running"
    except PermissionError:
        pass  # someone else's live process: the start time still tells
    now, then = start_time(pid), owner.get("start_time")
    if now is not None and then is not None and str(then) != now:
        return f"pid {pid} is now another process (started at tick {now}, the owner at {then})"
    return None
