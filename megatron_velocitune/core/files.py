"""One home for what the project writes to disk: the atomic write and the checkpoint layout.

Megatron-LM's checkpoint layout, which this project's own driver writes too and the sidecar
lives in::

    <save>/latest_checkpointed_iteration.txt          the tracker: the newest complete iteration
    <save>/iter_0000200/mp_rank_00_000/model_optim_rng.pt
    <save>/iter_0000200/velocitune_state.json         the Velocitune sidecar

Every file is written by :func:`atomic_write`: a temporary name unique to this process and call
in the destination folder, fsync, ``os.replace``, then an fsync of the folder. A reader (or a run
killed mid-write and restarted) sees either the old file or the new one, never a prefix; two
writers never share a temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Optional

TRACKER_NAME = "latest_checkpointed_iteration.txt"
SIDECAR_NAME = "velocitune_state.json"
MODEL_FILE_NAME = "model_optim_rng.pt"


def iteration_dir(root: str, iteration: int) -> str:
    """``<root>/iter_XXXXXXX``, Megatron-LM's folder for the checkpoint of ``iteration``."""
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_dir(root: str, iteration: int, tp_rank: int, pp_rank: int, pipeline: bool) -> str:
    """``<root>/iter_XXXXXXX/mp_rank_TT[_PPP]``: one model-parallel rank's folder.

    Args:
        root (str): the checkpoint root (``--save`` / ``--load``).
        iteration (int): the iteration.
        tp_rank (int): tensor-parallel rank.
        pp_rank (int): pipeline-parallel rank.
        pipeline (bool): whether the run is pipelined (PP > 1); Megatron-LM then adds ``_PPP``.
            This project always writes ``_PPP`` (``pipeline=True``).

    Returns:
        str: the folder.
    """
    name = f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pipeline else "")
    return os.path.join(iteration_dir(root, iteration), name)


def tracker_path(root: str) -> str:
    """``<root>/latest_checkpointed_iteration.txt``."""
    return os.path.join(root, TRACKER_NAME)


def sidecar_path(root: str, iteration: int) -> str:
    """``<root>/iter_XXXXXXX/velocitune_state.json``."""
    return os.path.join(iteration_dir(root, iteration), SIDECAR_NAME)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    Args:
        path (str): the destination; its folder is created.
        mode (str): ``"w"`` (text, UTF-8) or ``"wb"``.

    Yields:
        IO: the open temporary file. On an exception it is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def save_figure(fig: Any, path: str, **kwargs: Any) -> None:
    """Save a matplotlib figure to ``path`` atomically (:func:`atomic_write`).

    The format comes from ``path``'s extension, not from the temporary name (which ends in
    ``.tmp``), so the caller passes, and reports, the final file only.

    Args:
        fig (Any): a ``matplotlib.figure.Figure`` (not imported here: this module is pure).
        path (str): the destination; its folder is created.
        **kwargs (Any): passed to ``fig.savefig`` (``dpi``, ...).
    """
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=ext or None, **kwargs)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str, payload: Any, indent: Optional[int] = 1, allow_nan: bool = False) -> None:
    """Write ``payload`` as strict JSON atomically; a NaN or infinity is an error, not ``NaN``.

    Args:
        path (str): the destination.
        payload (Any): JSON-able data.
        indent (Optional[int]): ``json.dumps``'s indent.
        allow_nan (bool): write non-finite floats as ``NaN``/``Infinity`` (not strict JSON).

    Raises:
        ValueError: ``payload`` holds a non-finite float (a bug of the caller: strict JSON has
            no NaN, and a file with one is unreadable to other tools).
    """
    text = json.dumps(payload, indent=indent, allow_nan=allow_nan)
    write_text(path, text + "\n")


def save_with(path: str, save: Callable[[IO[bytes]], None]) -> None:
    """Write a binary file atomically with ``save(file)``, e.g. ``lambda f: torch.save(obj, f)``."""
    with atomic_write(path, "wb") as f:
        save(f)


def read_tracker(root: str, flag: str = "--load") -> Optional[int]:
    """The iteration named in ``root``'s tracker file, or None when there is none.

    Raises:
        CheckpointError: the tracker holds something else than an iteration (named with
            ``flag``).
    """
    path = tracker_path(root)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        return int(text)
    except ValueError:
        from megatron_velocitune.core.errors import CheckpointError

        raise CheckpointError(
            f"{flag} {root}: {TRACKER_NAME} holds {text!r}, not an iteration"
        ) from None


def last_checkpoint_before(root: str, first_bad: int) -> Optional[int]:
    """The newest complete checkpoint in ``root`` at an iteration below ``first_bad``.

    A checkpoint is complete when its sidecar exists (written after every shard) and the
    tracker has reached it (written last).

    Args:
        root (str): the checkpoint folder (``--save``).
        first_bad (int): the first iteration whose weights are known bad (a non-finite loss).

    Returns:
        Optional[int]: its iteration, or None when there is none.
    """
    newest = read_tracker(root, flag="--save")
    if newest is None or not os.path.isdir(root):
        return None
    found = None
    for name in os.listdir(root):
        if not (name.startswith("iter_") and name[5:].isdigit()):
            continue
        iteration = int(name[5:])
        if (
            iteration < first_bad
            and iteration <= newest
            and os.path.isfile(sidecar_path(root, iteration))
        ):
            found = iteration if found is None else max(found, iteration)
    return found


def write_tracker(root: str, iteration: int) -> None:
    """Name ``iteration`` as ``root``'s newest complete checkpoint (written last, atomically)."""
    write_text(tracker_path(root), str(iteration))
