"""The optimizer step, on megatron-core's own DDP and optimizer on GPU and an equivalent on CPU.

megatron-core's ``DistributedDataParallel`` allocates its gradient buffers on the current CUDA
device, so it cannot run on a CPU-only machine. :func:`build_optimizer` therefore returns:

- on GPU: the model wrapped in megatron-core's DDP, ``get_megatron_optimizer`` (Adam), and
  ``finalize_model_grads`` installed as the schedule's end-of-backward hook, exactly as
  Megatron-LM does;
- on CPU: the bare model and :class:`CpuOptimizer`, which does what those pieces do for a
  float32 model: average gradients over the data-parallel group (one flat all-reduce), sum the
  tied embedding's gradient between the first and last pipeline stages, clip by the global
  norm over all model-parallel ranks (tensor-parallel duplicates and shared weights counted
  once, as megatron-core does) and take an AdamW step (no weight decay on biases and norms).

Both expose ``zero_grad()``, ``step() -> (ok, grad_norm)``, ``state_dict()`` and
``load_state_dict()``, and ``param_groups`` for megatron-core's ``OptimizerParamScheduler``.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared

__all__ = ["OptimizerSettings", "CpuOptimizer", "build_optimizer"]


@dataclass
class OptimizerSettings:
    """Adam hyper-parameters (Megatron-LM flag names without ``--``)."""

    lr: float
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


def _param_groups(model: torch.nn.Module) -> List[Dict]:
    # Megatron-LM's default: no weight decay on biases and 1-D (norm) parameters.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() == 1 else decay).append(p)
    return [
        {"params": decay, "wd_mult": 1.0, "lr_mult": 1.0},
        {"params": no_decay, "wd_mult": 0.0, "lr_mult": 1.0},
    ]


class CpuOptimizer:
    """Data-parallel AdamW for a float32 megatron-core model on CPU (gloo).

    Args:
        model (torch.nn.Module): this rank's (unwrapped) GPTModel stage.
        settings (OptimizerSettings): hyper-parameters.
    """

    def __init__(self, model: torch.nn.Module, settings: OptimizerSettings) -> None:
        self.model = model
        self.settings = settings
        self.optimizer = torch.optim.AdamW(
            _param_groups(model),
            lr=settings.lr,
            betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_eps,
            weight_decay=settings.weight_decay,
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def param_groups(self) -> List[Dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _allreduce_grads(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dp = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
        if dp > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])
            dist.all_reduce(
                flat, group=parallel_state.get_data_parallel_group(with_context_parallel=True)
            )
            flat /= dp
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p))
                offset += n
        shared = getattr(self.model, "share_embeddings_and_output_weights", False)
        if shared and parallel_state.get_pipeline_model_parallel_world_size() > 1:
            if parallel_state.is_rank_in_embedding_group():
                weight = self.model.shared_embedding_or_output_weight()
                dist.all_reduce(weight.grad, group=parallel_state.get_embedding_group())

    def _grad_norm(self) -> float:
        sq = torch.zeros(1, dtype=torch.float64)
        for p in self.params:
            if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p):
                sq += p.grad.double().pow(2).sum()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sq, group=parallel_state.get_model_parallel_group())
        return math.sqrt(float(sq))

    def step(self) -> Tuple[bool, float]:
        """Reduce gradients, clip, step.

        Returns:
            Tuple[bool, float]: (whether the step was taken, the global grad norm). A non-finite
            norm skips the step on every rank (the norm is the same everywhere).
        """
        self._allreduce_grads()
        norm = self._grad_norm()
        if not math.isfinite(norm):
            return False, norm
        if self.settings.clip_grad > 0 and norm > self.settings.clip_grad:
            scale = self.settings.clip_grad / (norm + 1e-6)
            for p in self.params:
                p.grad.mul_(scale)
        self.optimizer.step()
        return True, norm

    def state_dict(self) -> Dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.optimizer.load_state_dict(state)


class _MegatronOptimizer:
    """megatron-core's DDP + optimizer behind the same four methods (GPU)."""

    def __init__(self, ddp_model, optimizer) -> None:
        self.model = ddp_model
        self.optimizer = optimizer

    @property
    def param_groups(self) -> List[Dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def step(self) -> Tuple[bool, float]:
        ok, norm, _ = self.optimizer.step()
        return bool(ok), float(norm if norm is not None else float("nan"))

    def state_dict(self) -> Dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.optimizer.load_state_dict(state)


def build_optimizer(model: torch.nn.Module, settings: OptimizerSettings):
    """Wrap the model for data parallelism and build its optimizer.

    Args:
        model (torch.nn.Module): this rank's GPTModel stage.
        settings (OptimizerSettings): hyper-parameters.

    Returns:
        Tuple[torch.nn.Module, optimizer]: the module the schedule runs (DDP on GPU, the
        model itself on CPU) and the optimizer.
    """
    if not torch.cuda.is_available():
        return model, CpuOptimizer(model, settings)

    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = model.config
    ddp = DistributedDataParallel(
        config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=settings.lr,
            min_lr=settings.min_lr,
            weight_decay=settings.weight_decay,
            adam_beta1=settings.adam_beta1,
            adam_beta2=settings.adam_beta2,
            adam_eps=settings.adam_eps,
            clip_grad=settings.clip_grad,
            bf16=False,
            fp16=False,
        ),
        [ddp],
    )
    config.finalize_model_grads_func = finalize_model_grads
    return ddp, _MegatronOptimizer(ddp, optimizer)
