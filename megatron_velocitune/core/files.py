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

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Optional

from megatron_velocitune.core.errors import CheckpointError, WriteError

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


#: What an OSError means when the place cannot be written (the environment, not a bug).
_UNWRITABLE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for this filesystem",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of its path is a file, not a folder",
}


def _unwritable(exc: Optional[BaseException]) -> Optional[OSError]:
    """The OSError of an unwritable place in ``exc`` or the exceptions it was raised from.

    ``torch.save`` reports a full disk as a ``RuntimeError`` (``[enforce fail at
    inline_container.cc]``) raised while the file object's ``OSError`` was being handled, so
    the chain is searched, not only ``exc``.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _write_error(path: str, e: OSError) -> WriteError:
    return WriteError(
        f"cannot write {path}: {_UNWRITABLE[e.errno]} ({errno.errorcode[e.errno]}); "
        "it is left as it was"
    )


@contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    Args:
        path (str): the destination; its folder is created.
        mode (str): ``"w"`` (text, UTF-8) or ``"wb"``.

    Yields:
        IO: the open temporary file. On an exception it is removed and ``path`` is untouched.

    Raises:
        WriteError: ``path`` cannot be written (a full disk, a read-only filesystem, ``path``
            a folder, a file in its folder's path), whatever the writer raised for it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    problem = _blocking_file(folder)
    if problem:
        raise WriteError(f"cannot write {path}: {problem}")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        if e.errno in _UNWRITABLE:
            raise _write_error(path, e) from None
        raise
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        cause = _unwritable(exc)
        if cause is not None:
            raise _write_error(path, cause) from None
        raise
    _fsync_dir(folder)


def _blocking_file(folder: str) -> Optional[str]:
    """A file where ``folder`` or one of its parents must be a folder, named; else None."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    if os.path.isdir(probe):
        return None
    return f"{probe} is a file, not a folder"


def folder_problem(folder: str) -> Optional[str]:
    """Why files cannot be written in ``folder`` (created when missing), or None.

    A real write is tried (a temporary file, removed): ``os.access`` says yes to root on a
    folder it cannot write and knows nothing of a full disk's quota.

    Args:
        folder (str): the folder.

    Returns:
        Optional[str]: the problem, naming the folder (``"cannot write in /x (the filesystem
        is read-only)"``), or None.
    """
    problem = _blocking_file(folder)
    if problem:
        return problem
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return f"cannot create {folder} ({_UNWRITABLE.get(e.errno, e.strerror)})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".velocitune-probe.", dir=folder)
    except OSError as e:
        return f"cannot write in {folder} ({_UNWRITABLE.get(e.errno, e.strerror)})"
    os.close(fd)
    os.unlink(probe)
    return None


def output_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as an output file (checked before any work), or None.

    Args:
        path (str): the file a tool will write.

    Returns:
        Optional[str]: the problem (a folder at ``path``, or :func:`folder_problem` of its
        folder), or None.
    """
    if os.path.isdir(path):
        return "is a directory (give the file to write)"
    return folder_problem(os.path.dirname(os.path.abspath(path)))


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
