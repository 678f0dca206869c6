"""Checkpoints in Megatron-LM's legacy layout, with the Velocitune state as a sidecar.

::

    <save>/latest_checkpointed_iteration.txt
    <save>/iter_0000200/mp_rank_00_000/model_optim_rng.pt   (one per TP x PP rank)
    <save>/iter_0000200/velocitune_state.json               (weight history, L_init, L_target)

Data-parallel rank 0 of each (TP, PP) position writes its shard; the global rank 0 writes the
sidecar and, last of all and after a barrier, the ``latest`` tracker, so a run killed while
saving resumes from the previous complete checkpoint.
"""

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_velocitune.control.run_folder import raise_together
from megatron_velocitune.core.errors import CheckpointError, WriteError
from megatron_velocitune.core.files import (
    MODEL_FILE_NAME,
    TRACKER_NAME,
    iteration_dir,
    rank_dir,
    read_tracker,
    save_with,
    write_tracker,
)
from megatron_velocitune.training.safe_load import load_checkpoint_file

__all__ = [
    "LoadedCheckpoint",
    "checkpoint_dir",
    "latest_iteration",
    "load_checkpoint",
    "save_checkpoint",
]

checkpoint_dir = iteration_dir
latest_iteration = read_tracker


def _shard_path(root: str, iteration: int) -> str:
    tp = parallel_state.get_tensor_model_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_rank()
    return os.path.join(rank_dir(root, iteration, tp, pp, pipeline=True), MODEL_FILE_NAME)


def _rng_state() -> Dict[str, Any]:
    # numpy's state as plain values (name, keys as a list, ...), so the file loads with
    # ``weights_only=True`` without numpy types; ``np.random.set_state`` takes it back as is.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "random": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["random"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _first_mismatch(error: RuntimeError) -> str:
    """The ``load_state_dict`` error as one line: its heading and the first mismatch.

    torch writes ``Error(s) in loading state_dict for GPTModel:`` and then one indented line
    per mismatch (``size mismatch for decoder...: copying a param with shape ...``); the
    heading alone names no cause.
    """
    lines = [x.strip() for x in str(error).strip().splitlines() if x.strip()]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _atomic_torch_save(obj: Any, path: str) -> None:
    save_with(path, lambda f: torch.save(obj, f))


def _written(write: Any, *args: Any) -> Optional[WriteError]:
    """``write(*args)``; the WriteError of a file that cannot be written, else None."""
    try:
        write(*args)
    except WriteError as e:
        return e
    return None


# A test hook: ``VELOCITUNE_TEST_PAUSE_IN_SAVE=<iteration>`` stops every rank in the save of that
# iteration after its shards are written and before the sidecar and the tracker, so a test can
# kill the run "during a save" deterministically (tests/test_reliability.py).
_PAUSE_ENV = "VELOCITUNE_TEST_PAUSE_IN_SAVE"


def _test_pause(root: str, iteration: int) -> None:
    if os.environ.get(_PAUSE_ENV) != str(iteration):
        return
    import time

    if dist.get_rank() == 0:
        open(os.path.join(root, ".paused_in_save"), "w").close()
    while True:
        time.sleep(1.0)


def save_checkpoint(
    root: str,
    iteration: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    consumed_samples: int,
    velocitune_state: Optional[Dict[str, Any]],
    args: Dict[str, Any],
    train_stream: Optional[torch.Tensor] = None,
) -> str:
    """Save every rank's shard, the Velocitune sidecar, then the tracker (call on all ranks).

    Args:
        root (str): ``--save``.
        iteration (int): the iteration just completed.
        model (torch.nn.Module): this rank's model stage (unwrapped).
        optimizer: the optimizer (``state_dict()``).
        scheduler: megatron-core's ``OptimizerParamScheduler``.
        consumed_samples (int): global samples consumed.
        velocitune_state (Optional[Dict[str, Any]]): the controller's ``state_dict()``.
        args (Dict[str, Any]): the run's arguments, stored for reference.
        train_stream (Optional[torch.Tensor]): this rank's open training-stream window
            (``DomainLossAccumulator.state()``); gathered over data-parallel ranks so each
            resumes its own sums exactly.

    Returns:
        str: the checkpoint directory.
    """
    from megatron_velocitune.control.state import save_state, sidecar_path

    streams = None
    if train_stream is not None:
        group = parallel_state.get_data_parallel_group()
        streams = [torch.empty_like(train_stream) for _ in range(dist.get_world_size(group))]
        dist.all_gather(streams, train_stream, group=group)
    error = None  # a file that cannot be written: every rank stops with its one line
    if parallel_state.get_data_parallel_rank() == 0:
        error = _written(
            _atomic_torch_save,
            {
                "iteration": iteration,
                "consumed_train_samples": consumed_samples,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "opt_param_scheduler": scheduler.state_dict(),
                "rng_state": _rng_state(),
                "train_stream": streams,
                "args": args,
            },
            _shard_path(root, iteration),
        )
    _test_pause(root, iteration)
    if dist.get_rank() == 0 and velocitune_state is not None and error is None:
        error = _written(save_state, sidecar_path(root, iteration), velocitune_state)
    raise_together(error)  # also the barrier before the tracker
    if dist.get_rank() == 0:
        error = _written(write_tracker, root, iteration)
    raise_together(error)
    return checkpoint_dir(root, iteration)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` restored, beside the model and optimizer state.

    Attributes:
        iteration (int): the checkpoint's iteration (0 with ``finetune``).
        consumed_samples (int): global samples consumed (0 with ``finetune``).
        state (Optional[Dict[str, Any]]): the Velocitune sidecar, None when there is none.
        train_stream_windows (Optional[List[Any]]): every data-parallel rank's open
            training-stream window, None when the checkpoint holds none.
    """

    iteration: int
    consumed_samples: int
    state: Optional[Dict[str, Any]] = None
    train_stream_windows: Optional[List[Any]] = None


def load_checkpoint(
    root: str,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    finetune: bool = False,
    load_optim: bool = True,
    load_rng: bool = True,
    trust: bool = False,
) -> LoadedCheckpoint:
    """Load the latest checkpoint under ``root`` into this rank's model (and optimizer, ...).

    Args:
        root (str): ``--load``.
        model (torch.nn.Module): this rank's model stage.
        optimizer: the optimizer.
        scheduler: the learning-rate scheduler.
        finetune (bool): weights only; iteration, samples, optimizer, RNG and Velocitune
            state start fresh (continual pre-training from a base model).
        load_optim (bool): restore optimizer and scheduler state.
        load_rng (bool): restore the RNG states.
        trust (bool): ``--trust-checkpoint``: load with ``weights_only=False`` (see
            :mod:`megatron_velocitune.training.safe_load`).

    Returns:
        LoadedCheckpoint: the iteration, consumed samples, sidecar and training-stream windows
        (the run restores those: :meth:`~megatron_velocitune.control.run.VelocituneRun.resume`).
    """
    from megatron_velocitune.control.state import load_state, sidecar_path

    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"--load {root}: no {TRACKER_NAME} (not a checkpoint directory)")
    path = _shard_path(root, iteration)
    if not os.path.isdir(checkpoint_dir(root, iteration)):
        raise CheckpointError(
            f"--load {root}: {TRACKER_NAME} names iteration {iteration}, but "
            f"{checkpoint_dir(root, iteration)} does not exist"
        )
    if not os.path.isfile(path):
        present = sorted(
            n for n in os.listdir(checkpoint_dir(root, iteration)) if n.startswith("mp_rank_")
        )
        raise CheckpointError(
            f"--load {root}: {path} is missing (the checkpoint holds {present or 'no shards'}: "
            "saved with another TP/PP layout, or incomplete)"
        )
    ckpt = load_checkpoint_file(path, trust=trust)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"--load {root}: {path} holds no 'model' state dict")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"--load {root}: {path} does not fit this model ({_first_mismatch(e)})"
        ) from None
    if finetune:
        return LoadedCheckpoint(0, 0)
    if load_optim and "optimizer" not in ckpt:
        raise CheckpointError(
            f"--load {root}: {path} holds model weights only (a converted checkpoint, e.g. "
            "tools/convert_hf_llama.py): start from it with --finetune"
        )
    if load_optim:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["opt_param_scheduler"])
    if load_rng:
        _set_rng_state(ckpt["rng_state"])
    sidecar = sidecar_path(root, iteration)
    state = load_state(sidecar) if os.path.exists(sidecar) else None
    return LoadedCheckpoint(
        int(ckpt["iteration"]),
        int(ckpt["consumed_train_samples"]),
        state,
        ckpt.get("train_stream"),
    )
