"""Run folders under ``--out`` and the child processes that fill them.

A run's folder is ``OUT/runs/<method>/seed<N>``; its ``result.json`` marks it finished. Several
workers may share one ``--out``: a worker :func:`claim` s a folder before running it, so no run
is run twice. The claim file names its process by host, pid and start time, and the worker
refreshes it while the run goes on; a claim whose owner is gone (a pid no longer running, or
now another process, on this host; no refresh for :data:`CLAIM_TIMEOUT_S` from another host)
is taken over, and the log says so. A child that stops with a one-line error (a bad training
flag after ``--``) stops the comparison with that line.
"""

import json
import os
import re
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.processes import is_me, owner_gone, owner_record

__all__ = [
    "CLAIM_HEARTBEAT_S",
    "CLAIM_TIMEOUT_S",
    "TRAJECTORY",
    "claim",
    "log",
    "read_traj",
    "refresh_claim",
    "result_of",
    "run_command",
    "run_dir",
    "torchrun",
]

#: The trajectory file the training entry writes under a run's ``--tensorboard-dir``.
TRAJECTORY = "velocitune_trajectory.jsonl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# The one-line error of a child (the training entry, a tool): ``prog: error: message``, as
# printed or prefixed by torchrun (``[rank0]: ``).
_CHILD_ERROR = re.compile(r"^(?:\[rank\d+\]:\s*)?\S+: error: (.+)$", re.MULTILINE)


def run_command(
    cmd: Sequence[str], log_path: str, cwd: Optional[str] = None, claimed: Optional[str] = None
) -> float:
    """Run ``cmd`` with its output to ``log_path``; returns the wall time.

    Args:
        cmd (Sequence[str]): the command.
        log_path (str): its log.
        cwd (Optional[str]): its working folder.
        claimed (Optional[str]): the run folder whose claim this worker holds: refreshed every
            :data:`CLAIM_HEARTBEAT_S` while the command runs.

    Returns:
        float: the wall time in seconds.

    Raises:
        ToolError: the command failed with a one-line error of its own (the line, and the log).
        RuntimeError: any other failure, with the log's tail (an internal failure of a run).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    proc.wait(timeout=CLAIM_HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if claimed:
                        refresh_claim(claimed)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.time() - t0
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        lines = _CHILD_ERROR.findall(text)
        if lines:
            raise ToolError(f"a run stopped ({log_path}): {lines[-1]}")
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return wall


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(python: str, nproc: int) -> List[str]:
    """The launcher of one run: ``torch.distributed.run`` of the training entry."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(_free_port()),
        "-m",
        "megatron_velocitune.training.pretrain",
    ]


#: How often a worker refreshes (touches) the claims it holds while their run goes on.
CLAIM_HEARTBEAT_S = 60.0
#: A claim from another host (or an older claim with a pid only) not refreshed for this long
#: is stale: its worker is gone. Same-host claims are checked by pid and start time instead.
CLAIM_TIMEOUT_S = 30 * 60.0


def _read_claim(path: str) -> Optional[Dict[str, Any]]:
    """The owner written in a claim file; None when it vanished, {} when unreadable.

    A claim of an older version holds a bare pid: ``{"pid": N}`` (no host, no start time).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    if text.isdigit():
        return {"pid": int(text)}
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _claim_stale(owner: Dict[str, Any], age: float, timeout: float) -> Optional[str]:
    """Why a claim's owner is gone (it may be taken over), or None while it may still run.

    Args:
        owner (Dict[str, Any]): :func:`_read_claim`'s record.
        age (float): seconds since the claim was written or last refreshed.
        timeout (float): when a claim that cannot be checked is stale.
    """
    if owner.get("host") is not None:
        gone = owner_gone(owner)  # None for another host's: judged by its age below
        if gone:
            return gone
        if owner.get("host") == socket.gethostname():
            return None
    elif isinstance(owner.get("pid"), int):
        # An older, pid-only claim was written on this host: only whether its pid runs tells.
        gone = owner_gone({**owner, "host": socket.gethostname()})
        if gone:
            return gone
    if age > timeout:
        where = f"host {owner.get('host')}" if owner.get("host") else "a pid-only claim"
        return f"{where}, not refreshed for {age / 60:.0f} min (more than {timeout / 60:.0f})"
    return None


def refresh_claim(run_dir: str) -> None:
    """Touch ``run_dir``'s claim: its worker is alive (another host judges it by its age)."""
    try:
        os.utime(os.path.join(run_dir, ".claim"))
    except OSError:
        pass  # gone or unwritable: the next claim check decides


def claim(run_dir: str, wait: bool = True, timeout: float = CLAIM_TIMEOUT_S) -> bool:
    """Claim ``run_dir`` for this process; False when its result appeared (or, without
    ``wait``, when a live worker holds it).

    The claim file records this process's host, pid and start time. A claim whose owner is
    gone (this host: its pid is not running, or runs another process; another host: not
    refreshed for ``timeout`` seconds) is taken over, and the log says so.

    Args:
        run_dir (str): the run's folder (created).
        wait (bool): wait while a live worker holds it.
        timeout (float): the age (seconds since the last refresh) past which a claim that
            cannot be checked (another host's, an older pid-only one) is stale.

    Returns:
        bool: True when this process holds the claim.
    """
    os.makedirs(run_dir, exist_ok=True)
    path, result = os.path.join(run_dir, ".claim"), os.path.join(run_dir, "result.json")
    waited = False
    while True:
        if os.path.exists(result):
            return False
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_claim(path)
            if owner is None:
                continue  # released meanwhile
            if owner and is_me(owner):
                return True
            try:
                age = time.time() - os.path.getmtime(path)
            except FileNotFoundError:
                continue
            # An unreadable claim is being written (or broken): stale only once old.
            reason = _claim_stale(owner, age, timeout) if owner else None
            if reason is None and not owner and age > CLAIM_HEARTBEAT_S:
                reason = "the claim file is unreadable"
            if reason is None:
                if not wait:
                    return False
                if not waited:
                    log(f"waiting for {run_dir} (run by {_describe(owner)})")
                    waited = True
                time.sleep(10)
                continue
            if _read_claim(path) != owner:
                continue  # changed meanwhile (another worker took it over): look again
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            log(f"took over the claim of {run_dir} from {_describe(owner)}: {reason}")
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner_record(), f)
        return True


def _describe(owner: Dict[str, Any]) -> str:
    if not owner:
        return "an unreadable claim"
    host = f" on {owner['host']}" if owner.get("host") else ""
    return f"process {owner.get('pid')}{host}"


def run_dir(out: str, key: str, seed: int) -> str:
    return os.path.join(out, "runs", key, f"seed{seed}")


def result_of(out: str, key: str, seed: int) -> Optional[dict]:
    """A finished run's ``result.json``, or None."""
    path = os.path.join(run_dir(out, key, seed), "result.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_traj(path: str):
    from megatron_velocitune.core.trajectory import read_trajectory

    return read_trajectory(path)
