"""Launch a function in N local processes as a torch.distributed job (gloo on CPU).

    results = run_distributed(worker, world_size=8, args=(path, 3), timeout=120)

``worker(rank, world_size, *args)`` must be importable by name (a module-level function). The
children come from a *forkserver* that has imported torch and megatron-core once (importing
megatron-core costs ~4 s of CPU per process, the bulk of a small job on 2 cores) but initialised
nothing, so megatron-core's globals start clean in each child, as with spawn. Each child
gets the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` on a free port), one intra-op thread (the CI machines have 2 cores), and writes
its return value (pickled) or its traceback to a file; the parent returns the values by rank or
raises with every failing rank's traceback. Children still running at ``timeout`` (a hang in a
collective) are killed, and the error says which ranks hung.
"""

import os
import pickle
import socket
import tempfile
import time
import traceback
from typing import Any, Callable, List, Sequence

import torch.multiprocessing as mp

__all__ = ["PRELOAD", "MultiprocessError", "free_port", "run_distributed"]

# Imported once by the forkserver; its children inherit them (import side effects only).
PRELOAD = [
    "torch",
    "torch.distributed",
    "numpy",
    "megatron.core",
    "megatron.core.models.gpt",
    "megatron.core.pipeline_parallel",
    "megatron.core.datasets.gpt_dataset",
    "megatron_velocitune.control.controller",
    "megatron_velocitune.training",
]
_CTX = None


def _context():
    """The forkserver context, with the preload list set before the server starts."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


class MultiprocessError(RuntimeError):
    """One or more ranks failed or hung; the message holds their tracebacks."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable, rank: int, world_size: int, port: int, out_dir: str, args: Sequence):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}")
    try:
        result = fn(rank, world_size, *args)
        with open(path + ".tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(path + ".tmp", path + ".pkl")
    except BaseException:  # noqa: BLE001 - report everything to the parent, then fail
        with open(path + ".err", "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1) from None
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - teardown after a failure must not hide it
            pass


def run_distributed(
    fn: Callable, world_size: int, args: Sequence[Any] = (), timeout: float = 180.0
) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes.

    Args:
        fn (Callable): a module-level function (picklable by reference).
        world_size (int): number of processes.
        args (Sequence[Any]): picklable extra arguments (paths, numbers; not fixtures).
        timeout (float): seconds for the whole job before the remaining ranks are killed.

    Returns:
        List[Any]: each rank's return value, by rank.

    Raises:
        MultiprocessError: a rank raised, exited non-zero or hung.
    """
    ctx = _context()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="velocitune-mp-") as out_dir:
        procs = []
        for rank in range(world_size):
            p = ctx.Process(target=_child, args=(fn, rank, world_size, port, out_dir, tuple(args)))
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout
        failed_early = False
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            # A failed rank leaves its peers blocked in a collective: stop waiting for them.
            if any(p.exitcode not in (None, 0) for p in procs):
                failed_early = True
                time.sleep(1.0)  # let the others write their own errors, if they can
                break
            time.sleep(0.05)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        errors = []
        for rank, p in enumerate(procs):
            err = os.path.join(out_dir, f"rank{rank}.err")
            if os.path.exists(err):
                with open(err, encoding="utf-8") as f:
                    errors.append(f"--- rank {rank} ---\n{f.read()}")
            elif p.exitcode != 0 and rank not in hung:
                errors.append(f"--- rank {rank} --- exit code {p.exitcode}")
        if errors or hung:
            what = (
                ""
                if not hung
                else (
                    f"ranks {hung} killed after "
                    + ("a peer failed" if failed_early else f"{timeout:.0f} s (hang?)")
                    + "\n"
                )
            )
            raise MultiprocessError(what + "\n".join(errors))
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results
