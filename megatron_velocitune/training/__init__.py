"""A compact megatron-core training driver: process groups, model, (issue 5) the loop.

- :mod:`megatron_velocitune.training.parallel`: torch.distributed (gloo on CPU, NCCL on GPU),
  megatron-core's TP/PP/DP groups and seeds.
- :mod:`megatron_velocitune.training.model`: a GPTModel (local layer spec) from a small config.
"""

from megatron_velocitune.training.model import (
    GPTConfig,
    build_gpt_model,
    initialize_layout_invariant_,
    padded_vocab_size,
    transformer_config,
)
from megatron_velocitune.training.parallel import (
    ParallelConfig,
    ParallelInfo,
    destroy_parallel,
    initialize_parallel,
    parallel_info,
    set_seeds,
)

__all__ = [
    "GPTConfig",
    "ParallelConfig",
    "ParallelInfo",
    "build_gpt_model",
    "destroy_parallel",
    "initialize_layout_invariant_",
    "initialize_parallel",
    "padded_vocab_size",
    "parallel_info",
    "set_seeds",
    "transformer_config",
]
