"""Process groups for the compact megatron-core driver: torch.distributed + model parallel.

``initialize_parallel`` reads the torchrun environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; a plain ``python`` run without them gets a free
port, and a port in use is one line, :class:`~megatron_velocitune.core.errors.PortInUseError`),
starts torch.distributed with NCCL on a GPU
machine and gloo on the CPU (applying :mod:`megatron_velocitune.training.cpu` there), builds
megatron-core's tensor/pipeline/data-parallel groups and seeds every generator the way
Megatron-LM does (``seed + 100 * pp_rank`` for the default stream, megatron-core's tracker for
the tensor-parallel one).
"""

import datetime
import os
import random
import socket
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_velocitune.core.errors import PortInUseError
from megatron_velocitune.training.cpu import apply_cpu_shim

__all__ = [
    "ParallelConfig",
    "ParallelInfo",
    "destroy_parallel",
    "initialize_parallel",
    "parallel_info",
    "set_seeds",
]


@dataclass
class ParallelConfig:
    """How the world is split.

    Attributes:
        tensor_model_parallel_size (int): TP degree.
        pipeline_model_parallel_size (int): PP degree.
        context_parallel_size (int): CP degree.
        backend (Optional[str]): ``nccl`` / ``gloo``; None picks nccl with CUDA, gloo without.
        timeout_minutes (int): collective timeout (a hang fails instead of waiting forever).
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    backend: Optional[str] = None
    timeout_minutes: int = 10


@dataclass(frozen=True)
class ParallelInfo:
    """This rank's place in the parallel layout (read from megatron-core's parallel_state).

    Attributes:
        rank (int): global rank.
        world_size (int): number of processes.
        tp_rank / tp_size, pp_rank / pp_size, dp_rank / dp_size, cp_rank / cp_size (int):
            position and size of each parallel dimension (dp excludes cp).
        is_first_stage (bool): first pipeline stage (holds the embedding, reads tokens).
        is_last_stage (bool): last pipeline stage (holds the output layer and the losses).
        holds_data (bool): whether Megatron builds datasets here: TP rank 0 of the first or
            last pipeline stage.
    """

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    cp_rank: int
    cp_size: int
    is_first_stage: bool
    is_last_stage: bool

    @property
    def holds_data(self) -> bool:
        return self.tp_rank == 0 and (self.is_first_stage or self.is_last_stage)


def parallel_info() -> ParallelInfo:
    """Describe this rank (after :func:`initialize_parallel`).

    Returns:
        ParallelInfo: ranks and sizes of every parallel dimension.
    """
    ps = parallel_state
    return ParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        is_first_stage=ps.is_pipeline_first_stage(),
        is_last_stage=ps.is_pipeline_last_stage(),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def set_seeds(seed: int) -> None:
    """Seed Python, numpy, torch and megatron-core's tensor-parallel RNG tracker.

    As in Megatron-LM, each pipeline stage gets ``seed + 100 * pp_rank`` so stages do not share
    dropout streams, while data-parallel replicas share one.

    Args:
        seed (int): the run's seed.
    """
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def initialize_parallel(config: ParallelConfig, seed: int = 1234) -> ParallelInfo:
    """Start torch.distributed from the torchrun environment and build megatron-core's groups.

    Idempotent for torch.distributed (an existing default group is reused); megatron-core's
    groups are (re)built with the given sizes.

    Args:
        config (ParallelConfig): TP / PP / CP sizes and backend.
        seed (int): seed passed to :func:`set_seeds`.

    Returns:
        ParallelInfo: this rank's position.
    """
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        apply_cpu_shim()
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "RANK" not in os.environ and "MASTER_PORT" not in os.environ:
            # A plain one-process run (no torchrun): its store needs a port nobody else holds,
            # so two such runs never collide on a fixed default (the --save lock decides).
            os.environ["MASTER_PORT"] = str(_free_port())
        os.environ.setdefault("MASTER_PORT", "29500")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(
                backend=config.backend or ("nccl" if use_cuda else "gloo"),
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(minutes=config.timeout_minutes),
            )
        except dist.DistNetworkError as e:
            error = PortInUseError.from_exception(e, os.environ["MASTER_PORT"])
            if error is None:
                raise
            raise error from None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        context_parallel_size=config.context_parallel_size,
        distributed_timeout_minutes=config.timeout_minutes,
    )
    set_seeds(seed)
    return parallel_info()


def destroy_parallel() -> None:
    """Tear down megatron-core's groups and the default process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
