"""The controller's state as a sidecar file next to a Megatron checkpoint.

Megatron-LM's checkpoints have no hook for plugin state, so the controller's
:meth:`~megatron_velocitune.control.controller.VelocituneController.state_dict` (blend, initial and
target losses, weight history) is written as JSON beside the checkpoint of the same iteration::

    <save>/iter_0000150/velocitune_state.json

after ``save_checkpoint`` returns. Writes are atomic (temporary file, fsync, rename), so a run
killed mid-write leaves the previous sidecar intact. Every rank holds the same state; one rank
writes it (global rank 0 by default), every rank reads it.
"""

import json
from typing import Any, Dict, Optional

import torch.distributed as dist

from megatron_velocitune.core import files
from megatron_velocitune.core.errors import CheckpointError
from megatron_velocitune.core.files import SIDECAR_NAME
from megatron_velocitune.core.strict_json import nan_from_null, strict

__all__ = [
    "SIDECAR_NAME",
    "load_controller_state",
    "load_state",
    "save_controller_state",
    "save_state",
    "sidecar_path",
]


def sidecar_path(checkpoint_dir: str, iteration: Optional[int] = None) -> str:
    """Path of the sidecar for ``iteration`` in a Megatron checkpoint directory.

    Args:
        checkpoint_dir (str): Megatron's ``--save`` / ``--load`` directory.
        iteration (Optional[int]): checkpoint iteration; None reads Megatron's
            ``latest_checkpointed_iteration.txt``.

    Returns:
        str: ``<checkpoint_dir>/iter_<iteration:07d>/velocitune_state.json``.
    """
    if iteration is None:
        iteration = files.read_tracker(checkpoint_dir)
        if iteration is None:
            raise FileNotFoundError(f"{files.tracker_path(checkpoint_dir)}: no such file")
    return files.sidecar_path(checkpoint_dir, iteration)


def save_state(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` as strict JSON atomically (tmp file + fsync + rename + directory fsync).

    A non-finite loss (a skipped update's) is written as ``null``; :func:`load_state` reads it
    back as NaN.

    Args:
        path (str): destination file; its folder is created.
        state (Dict[str, Any]): JSON-able data.
    """
    files.write_json(path, strict(state))


def load_state(path: str) -> Dict[str, Any]:
    """Read a state written by :func:`save_state`.

    Raises:
        FileNotFoundError: no sidecar at ``path``.
        CheckpointError: the file is empty, not UTF-8 or not a JSON object (the file named).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: the Velocitune sidecar is not a text file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: the Velocitune sidecar is a directory") from None
    if not text.strip():
        raise CheckpointError(f"{path}: the Velocitune sidecar is empty")
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the Velocitune sidecar is not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the Velocitune sidecar is not a JSON object")
    return nan_from_null(state)


def save_controller_state(
    controller, checkpoint_dir: str, iteration: int, writer_rank: int = 0
) -> Optional[str]:
    """Save ``controller.state_dict()`` beside the checkpoint of ``iteration`` (one rank writes).

    Args:
        controller (VelocituneController): the controller.
        checkpoint_dir (str): Megatron's ``--save`` directory.
        iteration (int): the iteration just checkpointed.
        writer_rank (int): the global rank that writes.

    Returns:
        Optional[str]: the path written, on the writing rank; None elsewhere.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank != writer_rank:
        return None
    path = sidecar_path(checkpoint_dir, iteration)
    save_state(path, controller.state_dict())
    return path


def load_controller_state(
    controller, checkpoint_dir: str, iteration: Optional[int] = None, required: bool = False
) -> bool:
    """Restore the controller from the sidecar of a checkpoint (call on every rank).

    Args:
        controller (VelocituneController): the controller.
        checkpoint_dir (str): Megatron's ``--load`` directory.
        iteration (Optional[int]): checkpoint iteration; None: Megatron's latest.
        required (bool): raise when there is no sidecar instead of returning False.

    Returns:
        bool: whether a state was loaded.
    """
    try:
        path = sidecar_path(checkpoint_dir, iteration)
        state = load_state(path)
    except FileNotFoundError:
        if required:
            raise
        return False
    controller.load_state_dict(state)
    return True
