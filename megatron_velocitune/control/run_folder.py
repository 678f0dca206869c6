"""One run per ``--save`` folder, for both drivers: the lock, and no overwrite of another run.

Two checks on global rank 0 before anything is written there, shared with every rank
(:func:`agree`), so every rank stops with the same one line:

- :func:`check_save_folder`: a folder that already holds checkpoints (a tracker
  ``latest_checkpointed_iteration.txt``) is written only by the run that resumes them (``--load``
  of that folder, without ``--finetune``), or by the same run continued from a copy of its
  checkpoints (the same run id in the sidecars, and the folder's tracker not ahead of where this
  run starts). Any other new run there would overwrite the other run's ``iter_*`` folders and
  move its tracker back.
- the lock (:class:`~megatron_velocitune.control.runlock.RunLock`): two live runs never share
  the folder.

:func:`raise_together` is the same for an error any rank may meet (a checkpoint shard that
cannot be written there).
"""

import json
import os
from typing import Callable, List, Optional, TypeVar

import torch.distributed as dist

from megatron_velocitune.control.runlock import RunLock
from megatron_velocitune.core.errors import RunLockError, VelocituneError
from megatron_velocitune.core.files import read_tracker, sidecar_path

__all__ = ["agree", "check_save_folder", "raise_together", "take_save_lock"]

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
    if not dist.is_initialized():
        return fn()
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


def raise_together(error: Optional[VelocituneError]) -> None:
    """Every rank raises the first rank's error when any rank has one (a world collective).

    A rank whose own step failed (a checkpoint shard that cannot be written) would otherwise
    stop alone and leave the others in the next collective until it times out.

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


def _reraise(kind: str, text: str) -> None:
    """Raise the error class named ``kind`` (a :class:`VelocituneError`) with ``text``."""
    for cls in VelocituneError.__subclasses__() + [VelocituneError]:
        if cls.__name__ == kind:
            raise cls(text)
    raise VelocituneError(text)


def _run_id(root: str, iteration: int) -> Optional[str]:
    """The ``run_id`` of the sidecar of ``iteration`` in ``root`` (None if unreadable)."""
    try:
        with open(sidecar_path(root, iteration), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    run_id = state.get("run_id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) else None


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_save_folder(save: str, load: Optional[str], finetune: bool) -> None:
    """Refuse a ``--save`` that holds another run's checkpoints (call on one rank).

    Args:
        save (str): ``--save``.
        load (Optional[str]): ``--load`` (None: a new run from scratch).
        finetune (bool): ``--finetune`` (a new run from ``--load``'s weights).

    Raises:
        RunLockError: the folder holds checkpoints this run would overwrite, naming the folder,
            its run and its tracker's iteration.
    """
    newest = read_tracker(save, flag="--save")
    if newest is None:
        return
    resumes = bool(load) and not finetune
    if resumes and _same_folder(load, save):
        return  # the run resumes these checkpoints
    theirs = _run_id(save, newest)
    start, mine = 0, None
    if resumes:
        start = read_tracker(load) or 0
        mine = _run_id(load, start)
    if mine is not None and theirs == mine and newest <= start:
        return  # this run's own earlier checkpoints, continued from a copy
    owner = f"run {theirs}" if theirs else "another run"
    if resumes and theirs is not None and theirs == mine:
        what = f"this run's checkpoints up to iteration {newest}, ahead of its start at {start}"
    else:
        what = f"the checkpoints of {owner} (its tracker names iteration {newest})"
    raise RunLockError(
        f"--save {save}: holds {what}, which this run would overwrite: resume that run with "
        f"--load {save}, or save to another folder"
    )


def take_save_lock(
    save: Optional[str], load: Optional[str] = None, finetune: bool = False
) -> Optional[RunLock]:
    """Check ``--save`` and take its lock on global rank 0 (call on every rank).

    The folder is created if needed; it must be a writable directory holding no other run's
    checkpoints (:func:`check_save_folder`).

    Args:
        save (Optional[str]): ``--save`` (None: nothing to check).
        load (Optional[str]): ``--load``.
        finetune (bool): ``--finetune``.

    Returns:
        Optional[RunLock]: the lock on rank 0, None elsewhere (and without ``--save``).

    Raises:
        RunLockError: another live run holds ``--save``, it holds another run's checkpoints,
            or it cannot be created or written.
    """
    if not save:
        return None

    def take() -> RunLock:
        if os.path.exists(save) and not os.path.isdir(save):
            raise RunLockError(f"--save {save}: is a file, not a directory")
        lock = RunLock(save).acquire()
        try:
            if not os.access(save, os.W_OK):
                raise RunLockError(f"--save {save}: not writable")
            check_save_folder(save, load, finetune)
        except BaseException:
            lock.release()
            raise
        return lock

    return agree(take)
