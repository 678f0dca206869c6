"""Start-up checks of the training entry: what can fail later is checked before training.

Each check raises a :class:`~megatron_velocitune.core.errors.VelocituneError` with one line; the
collective ones (:func:`take_save_lock`, :func:`agree`) make every rank raise the same error, so
no rank is left waiting in a collective while another has stopped.
"""

import os
from typing import Callable, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from megatron_velocitune.core.errors import RunLockError, VelocituneError
from megatron_velocitune.training.runlock import RunLock

__all__ = ["agree", "check_heldout", "raise_together", "take_save_lock"]

T = TypeVar("T")


def agree(fn: Callable[[], T], root: int = 0) -> T:
    """Run ``fn`` on rank ``root`` and share its result, or the error it raised, with every rank.

    Args:
        fn (Callable[[], T]): the work (a check that touches the file system once).
        root (int): the rank that runs it.

    Returns:
        T: ``fn()``'s result on ``root``; on other ranks None (they only learn that it passed).

    Raises:
        VelocituneError: on every rank, when ``fn`` raised one on ``root``.
    """
    result, message = None, None
    if dist.get_rank() == root:
        try:
            result = fn()
        except VelocituneError as e:
            message = [type(e).__name__, str(e)]
    box = [message]
    dist.broadcast_object_list(box, src=root)
    if box[0] is not None:
        _reraise(*box[0])
    return result


def _reraise(kind: str, text: str) -> None:
    for cls in VelocituneError.__subclasses__() + [VelocituneError]:
        if cls.__name__ == kind:
            raise cls(text)
    raise VelocituneError(text)


def raise_together(error: Optional[VelocituneError]) -> None:
    """Every rank raises the first rank's error when any rank has one (a world collective).

    A rank whose own step failed (a shard that cannot be written) would otherwise stop alone
    and leave the others in the next collective until it times out.

    Args:
        error (Optional[VelocituneError]): this rank's error, or None.

    Raises:
        VelocituneError: on every rank, the error of the lowest rank that had one.
    """
    mine = None if error is None else [type(error).__name__, str(error)]
    found: List[Optional[List[str]]] = [None] * dist.get_world_size()
    dist.all_gather_object(found, mine)
    first = next((x for x in found if x is not None), None)
    if first is not None:
        _reraise(*first)


def take_save_lock(save: Optional[str]) -> Optional[RunLock]:
    """Create ``--save`` if needed and take its lock on global rank 0 (call on every rank).

    Returns:
        Optional[RunLock]: the lock on rank 0, None elsewhere (and without ``--save``).

    Raises:
        RunLockError: another live run holds ``--save``, or it cannot be created or written.
    """
    if not save:
        return None

    def take() -> RunLock:
        if os.path.exists(save) and not os.path.isdir(save):
            raise RunLockError(f"--save {save}: is a file, not a directory")
        lock = RunLock(save).acquire()
        if not os.access(save, os.W_OK):
            lock.release()
            raise RunLockError(f"--save {save}: not writable")
        return lock

    return agree(take)


def check_heldout(
    valid: Optional[Sequence],
    names: List[str],
    split: str,
    per_step: int,
    eval_counts: Sequence[tuple],
    num_domains: int,
    prefixes: Optional[Sequence[str]] = None,
) -> None:
    """Every domain has a held-out set, and each evaluation fits in the smallest (collective).

    Args:
        valid (Optional[Sequence]): the held-out datasets (None on ranks without data).
        names (List[str]): domain names.
        split (str): ``--split``, for the error line.
        per_step (int): samples one evaluation micro-batch step reads (micro-batch x DP).
        eval_counts (Sequence[tuple]): ``(flag, micro-batches per domain)`` of each evaluation.
        num_domains (int): the domain count (known on every rank).
        prefixes (Optional[Sequence[str]]): the domains' data prefixes, for the error lines.

    Raises:
        VelocituneError: a domain without held-out documents, a held-out set smaller than one
            evaluation step (every evaluation would repeat its few samples: a loss with no
            spread), or an evaluation larger than a held-out set (it would repeat samples and
            run for hours).
    """
    local = [-1] * num_domains
    if valid is not None:
        local = [-2 if d is None else len(d) for d in valid]
    # The minimum over the data-holding ranks (ranks without data send a large number), so a
    # missing set (-2) wins over any size; on the device NCCL reduces.
    device = (
        torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else None
    )
    t = torch.tensor(local, dtype=torch.int64, device=device)
    t = torch.where(t == -1, torch.full_like(t, 2**62), t)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    sizes = t.tolist()
    for name, n in zip(names, sizes):
        if n == 2**62:
            continue
        if n <= 0:
            raise VelocituneError(
                f"--split {split}: domain {name!r} gets no held-out documents, and the "
                "per-domain held-out sets are needed (the policy's losses with "
                "--velocitune-loss-source eval, the validation and the final loss table): "
                "give the validation split a share, e.g. --split 98,2,0"
            )
    for i, (name, n) in enumerate(zip(names, sizes)):
        if n != 2**62 and n < per_step:
            where = f" ({prefixes[i]})" if prefixes else ""
            raise VelocituneError(
                f"--split {split}: domain {name!r}{where} holds {n} held-out sample(s), fewer "
                f"than one evaluation step reads ({per_step}: micro-batch x data-parallel): "
                "give the validation split a larger share or the domain more documents"
            )
    smallest = min((n, name) for name, n in zip(names, sizes) if n != 2**62)
    for flag, iters in eval_counts:
        if iters > max(smallest[0] // per_step, 1):
            raise VelocituneError(
                f"{flag} {iters}: {iters} x {per_step} samples (micro-batch x data-parallel) "
                f"per domain, but domain {smallest[1]!r} holds {smallest[0]} held-out samples "
                f"(--split {split}): at most {max(smallest[0] // per_step, 1)}"
            )
