"""Run megatron-core on CPU (gloo) where it assumes CUDA: for tests, the demo and laptops.

megatron-core 0.14-0.16 allocates a few tensors on the current CUDA device even when the model
itself lives on the CPU (``TransformerConfig(use_cpu_initialization=True)``). Four spots matter
for a GPT model with the local layer spec and the real pipeline schedules:

- ``megatron.core.utils.GlobalMemoryBuffer.get_tensor`` (the local DotProductAttention's scratch
  buffer) allocates on ``torch.cuda.current_device()``;
- the tensor-parallel RNG tracker (``get_cuda_rng_tracker().fork()`` around dropout, and
  ``model_parallel_cuda_manual_seed``) saves and restores CUDA generator states;
- ``pipeline_parallel/schedules.py`` and ``p2p_communication.py`` create their token counters
  and receive buffers with ``device="cuda"`` / ``torch.cuda.current_device()`` and call
  ``torch.cuda.synchronize()``;
- ``transformer/utils.py`` builds the default causal mask (used when no attention mask is
  passed) with ``device="cuda"``.

:func:`apply_cpu_shim` redirects exactly those, and only when no CUDA device is present: on a
GPU machine it does nothing, so the same code path runs unchanged with NCCL. Those three
modules see a thin proxy of ``torch`` in their own namespace (``module.torch``), so nothing
else (user code, other megatron-core modules) is affected. Applying it twice is a no-op.
"""

import contextlib
import logging
import types
from typing import Any

import torch
from megatron.core.tensor_parallel.random import _MODEL_PARALLEL_RNG_TRACKER_NAME
from megatron.core.tensor_parallel.random import CudaRNGStatesTracker as _CudaRNGStatesTracker

__all__ = ["CpuRNGStatesTracker", "apply_cpu_shim", "cpu_shim_applied"]

logger = logging.getLogger(__name__)

_APPLIED = False


def _cpu_device(device: Any) -> Any:
    """Map a CUDA device spec (``"cuda"``, ``"cuda:0"``, an int, a cuda ``torch.device``) to CPU."""
    if device is None:
        return None
    if isinstance(device, int) or "cuda" in str(device):
        return torch.device("cpu")
    return device


class _CudaOnCpu:
    """The parts of ``torch.cuda`` the pipeline code calls, answered for the CPU."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device: Any = None) -> None:
        # CPU collectives on gloo are synchronous once waited on: nothing to flush.
        return None

    @staticmethod
    def is_available() -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """A view of ``torch`` whose factory functions turn ``device="cuda"`` into the CPU.

    Installed as ``torch`` in the namespace of megatron-core's pipeline modules only; every
    other attribute is the real ``torch`` one.
    """

    cuda = _CudaOnCpu()

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def _wrap(factory):
        def call(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device(kwargs["device"])
            return factory(*args, **kwargs)

        return call


for _name in ("zeros", "ones", "empty", "full", "tensor", "zeros_like", "empty_like", "arange"):
    setattr(_TorchOnCpu, _name, staticmethod(_TorchOnCpu._wrap(getattr(torch, _name))))


class CpuRNGStatesTracker(_CudaRNGStatesTracker):
    """megatron-core's RNG tracker with CPU generator states in place of CUDA ones.

    Each named state (data-parallel, model-parallel, expert-parallel) is a snapshot of the
    CPU default generator; ``fork`` swaps it in and out, exactly as the CUDA tracker does
    with the device generator, so dropout inside tensor-parallel regions draws per-TP-rank
    streams and the default stream stays untouched.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.pop("use_cudagraphable_rng", None)
        super().__init__(*args, use_cudagraphable_rng=False, **kwargs)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        orig_name = self._current_state_name
        if orig_name != "default-rng":
            self.states_[orig_name] = orig
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if orig_name != "default-rng":
                orig = self.states_[orig_name]
            torch.set_rng_state(orig)
            self._current_state_name = orig_name


def _get_tensor_on_cpu(self, tensor_shape, dtype, name, mem_alloc_context=None):
    """``GlobalMemoryBuffer.get_tensor`` allocating on the CPU."""
    required = 1
    for d in tensor_shape:
        required *= d
    buf = self.buffer.get((name, dtype))
    if buf is None or buf.numel() < required:
        buf = torch.empty(required, dtype=dtype, device="cpu", requires_grad=False)
        self.buffer[(name, dtype)] = buf
    return buf[0:required].view(*tensor_shape)


def cpu_shim_applied() -> bool:
    """Whether :func:`apply_cpu_shim` has patched megatron-core in this process."""
    return _APPLIED


def apply_cpu_shim(force: bool = False) -> bool:
    """Redirect megatron-core's CUDA-only allocations and RNG handling to the CPU.

    Call it before building the model (and before ``model_parallel_cuda_manual_seed``); it is
    idempotent.

    Args:
        force (bool): patch even when CUDA is available (tests of the shim itself only).

    Returns:
        bool: True when the shim is (now or already) in place, False on a CUDA machine.
    """
    global _APPLIED
    if _APPLIED:
        return True
    if torch.cuda.is_available() and not force:
        return False

    from megatron.core import utils as mc_utils
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core.tensor_parallel import random as mc_random
    from megatron.core.transformer import utils as mc_transformer_utils

    mc_utils.GlobalMemoryBuffer.get_tensor = _get_tensor_on_cpu

    # The tracker class is looked up as a module global when the tracker is (re)created, so
    # replacing the name makes initialize_rng_tracker and model_parallel_cuda_manual_seed build
    # a CPU tracker; model_parallel_cuda_manual_seed's own torch.cuda.manual_seed is a lazy,
    # harmless call on a CPU build.
    mc_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    mc_random._CUDA_RNG_STATE_TRACKER = None
    mc_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = False

    cpu_torch = _TorchOnCpu()
    for module in (schedules, p2p_communication, mc_transformer_utils):
        module.torch = cpu_torch

    _APPLIED = True
    logger.info("megatron-core CPU shim applied (no CUDA device)")
    return True
