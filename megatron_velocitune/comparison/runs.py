"""Run folders under ``--out`` and the child processes that fill them.

A run's folder is ``OUT/runs/<method>/seed<N>``; its ``result.json`` marks it finished. Several
workers may share one ``--out``: a worker :func:`claim` s a folder before running it (the claim
file names its process; a dead holder's claim is taken over), so no run is run twice.
"""

import json
import os
import socket
import subprocess
import time
from typing import List, Optional, Sequence

__all__ = [
    "TRAJECTORY",
    "claim",
    "log",
    "read_traj",
    "result_of",
    "run_command",
    "run_dir",
    "torchrun",
]

#: The trajectory file the training entry writes under a run's ``--tensorboard-dir``.
TRAJECTORY = "velocitune_trajectory.jsonl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_command(cmd: Sequence[str], log_path: str, cwd: Optional[str] = None) -> float:
    """Run ``cmd``, output to ``log_path``; returns the wall time (a failure raises with the
    log's tail: an internal failure of a run, not a user error).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_holder(claim: str) -> int:
    """The process id written in a claim file (0: none, unreadable or gone)."""
    try:
        with open(claim, encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def claim(run_dir: str, wait: bool = True) -> bool:
    """Claim ``run_dir`` for this process; False when its result appeared (or, without
    ``wait``, when another live process holds it). A dead holder's claim is taken over.
    """
    os.makedirs(run_dir, exist_ok=True)
    path, result = os.path.join(run_dir, ".claim"), os.path.join(run_dir, "result.json")
    waited = False
    while True:
        if os.path.exists(result):
            return False
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _claim_holder(path)
            if pid == os.getpid():
                return True
            if pid and _pid_alive(pid):
                if not wait:
                    return False
                if not waited:
                    log(f"waiting for {run_dir} (run by process {pid})")
                    waited = True
                time.sleep(10)
                continue
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True


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
