"""A GPT micro-batch on every rank that needs it, and the model call on it.

As in Megatron-LM's ``get_batch``: only tensor-parallel rank 0 of the first and last pipeline
stages reads data; it broadcasts ``tokens``, ``labels``, ``loss_mask`` and ``position_ids`` to
the other ranks of its tensor-parallel group. Middle pipeline stages read nothing (their input
comes from the previous stage). Used by training and by the held-out evaluation alike.
"""

import inspect
from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.utils import get_batch_on_this_cp_rank

from megatron_velocitune.device import compute_device

__all__ = ["BATCH_KEYS", "broadcast_batch", "gpt_forward"]

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
_DTYPES = {
    "tokens": torch.int64,
    "labels": torch.int64,
    "loss_mask": torch.float32,
    "position_ids": torch.int64,
}


def broadcast_batch(
    batch: Optional[Dict[str, torch.Tensor]],
    micro_batch_size: int,
    seq_length: int,
    with_domain: bool = False,
) -> Optional[Dict[str, torch.Tensor]]:
    """Share a micro-batch from tensor-parallel rank 0 with its tensor-parallel group.

    Args:
        batch (Optional[Dict[str, torch.Tensor]]): the micro-batch on TP rank 0 of the first
            and last pipeline stages (other keys are dropped), None on other ranks.
        micro_batch_size (int): samples per micro-batch.
        seq_length (int): tokens per sample.
        with_domain (bool): also share ``dataset_id`` (``[micro_batch_size]``, each sample's
            domain: the training-stream loss estimate needs it on the last stage).

    Returns:
        Optional[Dict[str, torch.Tensor]]: the batch on the device (this context-parallel rank's
        part of the sequence), on first/last-stage ranks; None on middle pipeline stages.
    """
    if not (parallel_state.is_pipeline_first_stage() or parallel_state.is_pipeline_last_stage()):
        return None
    device = compute_device()
    keys = BATCH_KEYS + (("dataset_id",) if with_domain else ())
    if batch is None:
        shape = (micro_batch_size, seq_length)
        batch = {k: torch.empty(shape, dtype=_DTYPES[k], device=device) for k in BATCH_KEYS}
        if with_domain:
            batch["dataset_id"] = torch.empty(micro_batch_size, dtype=torch.int64, device=device)
    else:
        batch = {
            k: torch.as_tensor(batch[k]).to(device=device, dtype=_DTYPES.get(k, torch.int64))
            for k in keys
        }
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        src = parallel_state.get_tensor_model_parallel_src_rank()
        group = parallel_state.get_tensor_model_parallel_group()
        for k in keys:
            dist.broadcast(batch[k], src, group=group)
    # Context parallelism: this rank's two sequence chunks, as Megatron-LM's get_batch (a no-op
    # at CP=1; reductions over the DP+CP group then add up the chunks' sums).
    domain = batch.pop("dataset_id", None)  # per sample, not per token: not sliced
    if parallel_state.get_context_parallel_world_size() > 1:
        batch = _this_cp_rank(batch)
    if domain is not None:
        batch["dataset_id"] = domain
    return batch


def _this_cp_rank(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # megatron-core 0.19 made is_hybrid_cp a required argument (hybrid CP regroups samples; this
    # project's batches are plain CP).
    if "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters:
        return get_batch_on_this_cp_rank(batch, is_hybrid_cp=False)
    return get_batch_on_this_cp_rank(batch)


def gpt_forward(model: torch.nn.Module, batch: Optional[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """Run this rank's pipeline stage: per-token losses on the last stage, hidden states elsewhere.

    The causal mask is built inside megatron-core's attention (no mask tensor is passed).
    """
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    return model(
        batch["tokens"] if first else None,
        batch["position_ids"] if first else None,
        None,
        labels=batch["labels"] if last else None,
    )
