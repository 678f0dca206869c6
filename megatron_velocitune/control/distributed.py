"""One weight update across tensor-, pipeline-, context- and data-parallel ranks.

Every rank of the world calls :func:`synchronize_update` at the same iteration. Three collectives,
whatever the layout:

1. **Reduce** (last pipeline stage only): all-reduce the float64 ``DomainSums`` vector (loss,
   tokens, per-sequence moments) over the data-parallel group *with* context parallelism. TP
   ranks of the last stage hold the same losses (the vocab-parallel cross entropy already agreed
   on them), so each TP rank's DP group reduces independently and all end with the same global
   sums.
2. **Decide and broadcast**: the *decider* (last stage, TP/CP/DP rank 0: the lowest such global
   rank, found once) applies the pure policy to the reduced mean losses and broadcasts
   ``[status, weights..., sums...]`` to the whole world, so ranks without a
   dataset (TP > 0, middle stages) hold the blend too. A non-finite reduced loss makes the
   decider keep the weights (status "skipped"); an exception in the policy is broadcast as an
   error so every rank raises instead of hanging in the next collective.
3. **Agree**: one world max-all-reduce of ``[v, -v, bad]`` with ``v = [previous weights...,
   new weights..., iteration, consumed_samples]`` and ``bad`` = this rank saw a non-finite
   local or reduced loss. Equal max and min of every entry means every rank held and now holds
   bit-identical float64 weights and applies them at the same iteration and sample; anything
   else raises :class:`WeightMismatchError` on every rank. ``bad`` anywhere (a NaN on a TP rank
   the decider does not see) turns the update into a skip on every rank.

No collective runs inside the per-micro-batch loss function (see
:mod:`megatron_velocitune.control.evaluation`); this module is the only place the losses move.
"""

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_velocitune.control.sync import (
    UpdateDecision,
    UpdateStatus,
    WeightMismatchError,
    decide,
    make_decision,
    raise_policy_error,
)
from megatron_velocitune.core.sums import DomainSums
from megatron_velocitune.device import compute_device

__all__ = [
    "DistributedSync",
    "UpdateDecision",
    "UpdateGroups",
    "UpdateStatus",
    "WeightMismatchError",
    "reduce_domain_sums",
    "shared_run_id",
    "synchronize_update",
]


@dataclass
class UpdateGroups:
    """The process groups and ranks one update uses (built once, on every rank).

    Attributes:
        is_last_stage (bool): this rank holds losses (last pipeline stage).
        dp_cp_group (Optional[ProcessGroup]): data-parallel group with context parallelism.
        dp_cp_size (int): its size.
        decider_rank (int): global rank that applies the policy and broadcasts.
        rank (int): this global rank.
        world_size (int): number of processes.
        device (torch.device): where collective buffers live (CUDA for NCCL, CPU for gloo).
    """

    is_last_stage: bool
    dp_cp_group: Optional[object]
    dp_cp_size: int
    decider_rank: int
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_decider(self) -> bool:
        return self.rank == self.decider_rank

    @classmethod
    def single_process(cls) -> "UpdateGroups":
        """Groups for a run without torch.distributed (one process holds everything)."""
        return cls(True, None, 1, 0, 0, 1, torch.device("cpu"))

    @classmethod
    def from_parallel_state(cls) -> "UpdateGroups":
        """Read megatron-core's parallel state and find the decider (one world min-reduce).

        The decider is the lowest global rank that is on the last pipeline stage with
        tensor-, context- and data-parallel rank 0. Finding it with a collective keeps this
        independent of megatron-core's rank order (``tp-cp-ep-dp-pp`` or any other).
        """
        if not dist.is_initialized():
            return cls.single_process()
        ps = parallel_state
        device = compute_device()
        rank, world = dist.get_rank(), dist.get_world_size()
        is_last = ps.is_pipeline_last_stage()
        candidate = (
            is_last
            and ps.get_tensor_model_parallel_rank() == 0
            and ps.get_context_parallel_rank() == 0
            and ps.get_data_parallel_rank() == 0
        )
        t = torch.tensor([rank if candidate else world], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        decider = int(t.item())
        if decider >= world:
            raise RuntimeError("no rank is last-stage TP/CP/DP rank 0: parallel state is broken")
        return cls(
            is_last_stage=is_last,
            dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True),
            dp_cp_size=ps.get_data_parallel_world_size(with_context_parallel=True),
            decider_rank=decider,
            rank=rank,
            world_size=world,
            device=device,
        )


def reduce_domain_sums(local: DomainSums, groups: UpdateGroups) -> DomainSums:
    """Sum per-domain (loss, tokens) over the data(+context)-parallel group (last stage only).

    Args:
        local (DomainSums): this rank's local sums.
        groups (UpdateGroups): process groups.

    Returns:
        DomainSums: global sums (one all-reduce of ``DomainSums.FIELDS * k`` float64 values).
    """
    vec = torch.from_numpy(local.to_vector()).to(groups.device)
    if groups.dp_cp_size > 1:
        dist.all_reduce(vec, op=dist.ReduceOp.SUM, group=groups.dp_cp_group)
    return DomainSums.from_vector(vec.cpu().numpy())


def synchronize_update(
    local: DomainSums,
    weights: np.ndarray,
    decide_weights: Callable[[np.ndarray, np.ndarray], np.ndarray],
    iteration: int,
    consumed_samples: int,
    groups: UpdateGroups,
    fallback: Optional[np.ndarray] = None,
) -> UpdateDecision:
    """Reduce the losses, decide the blend on one rank, broadcast it, check every rank agrees.

    Call on every rank of the world, at the same iteration.

    Args:
        local (DomainSums): this rank's local sums (zeros off the last pipeline stage).
        weights (np.ndarray): the current blend (identical on every rank).
        decide_weights (Callable[[np.ndarray, np.ndarray], np.ndarray]): new weights from the
            reduced mean losses and their standard errors; runs on the decider only (the pure
            policy).
        iteration (int): the training iteration of this update.
        consumed_samples (int): global samples consumed so far (where the new blend starts).
        groups (UpdateGroups): process groups, from :meth:`UpdateGroups.from_parallel_state`.
        fallback (Optional[np.ndarray]): the loss to use for a domain that has no tokens after
            the reduction (the training-stream source keeps the previous estimate of a domain
            absent from the window); identical on every rank. None: such a domain's loss is
            NaN and the update is skipped.

    Returns:
        UpdateDecision: identical on every rank.

    Raises:
        WeightMismatchError: ranks ended with different weights, iterations or positions.
        RuntimeError: the policy raised on the decider (re-raised on every rank).
    """
    weights = np.asarray(weights, dtype=np.float64)
    k = weights.shape[0]
    if local.num_domains != k:
        raise ValueError(f"{local.num_domains} domain losses for a blend of {k} domains")

    # 1. Reduce over DP(+CP) on the last stage.
    reduced = reduce_domain_sums(local, groups) if groups.is_last_stage else None
    locally_bad = reduced is not None and not (
        np.isfinite(local.to_vector()).all() and np.isfinite(reduced.to_vector()).all()
    )

    # 2. Decide on one rank, broadcast to the world.
    payload = torch.zeros(1 + k + DomainSums.FIELDS * k, dtype=torch.float64)
    error = ""
    if groups.is_decider:
        status, new, error = decide(reduced, weights, decide_weights, fallback)
        payload[0] = float(status)
        payload[1 : 1 + k] = torch.from_numpy(new)
        payload[1 + k :] = torch.from_numpy(reduced.to_vector())
    payload = payload.to(groups.device)
    if groups.world_size > 1:
        dist.broadcast(payload, src=groups.decider_rank)
    payload = payload.cpu().numpy()
    status = UpdateStatus(int(payload[0]))
    if status is UpdateStatus.ERROR:
        # Every rank raises (the decider knows why), instead of hanging in the next collective.
        raise_policy_error(groups.decider_rank, iteration, error)
    candidate = payload[1 : 1 + k].copy()
    sums = DomainSums.from_vector(payload[1 + k :])

    # 3. Agree: bit-identical weights, same iteration and position, no bad loss anywhere.
    # The blend each rank held before (a rank resumed from another state, or that missed an
    # update, shows up here) and the one it will hold after.
    v = np.concatenate([weights, candidate, [float(iteration), float(consumed_samples)]])
    n = v.shape[0]
    check = torch.from_numpy(np.concatenate([v, -v, [1.0 if locally_bad else 0.0]])).to(
        groups.device
    )
    if groups.world_size > 1:
        dist.all_reduce(check, op=dist.ReduceOp.MAX)
    check = check.cpu().numpy()
    hi, lo, any_bad = check[:n], -check[n : 2 * n], check[-1] > 0
    if not np.array_equal(hi, lo):
        differ = [i for i in range(n) if hi[i] != lo[i] or np.isnan(hi[i])]
        raise WeightMismatchError(
            f"velocitune: ranks disagree at iteration {iteration} on entries {differ} of "
            f"[previous weights ({k}), new weights ({k}), iteration, consumed_samples]: "
            f"max {hi.tolist()} vs min {lo.tolist()}"
        )

    return make_decision(
        status, weights, candidate, sums, iteration, fallback, bool(any_bad), groups.decider_rank
    )


class DistributedSync:
    """:class:`~megatron_velocitune.control.sync.UpdateSync` over torch.distributed ranks.

    Args:
        groups (UpdateGroups): the process groups (default: from megatron-core's parallel state,
            one world collective; call on every rank).
    """

    def __init__(self, groups: Optional[UpdateGroups] = None) -> None:
        self.groups = groups if groups is not None else UpdateGroups.from_parallel_state()

    @property
    def is_decider(self) -> bool:
        """Whether this rank applies the policy and writes the trajectory."""
        return self.groups.is_decider

    def update(self, local, weights, policy, iteration, consumed_samples, fallback=None):
        """:func:`synchronize_update` with this sync's groups."""
        return synchronize_update(
            local, weights, policy, iteration, consumed_samples, self.groups, fallback
        )

    def reduce(self, local: DomainSums) -> DomainSums:
        """:func:`reduce_domain_sums` with this sync's groups (last stage; others keep zeros)."""
        return reduce_domain_sums(local, self.groups)


def shared_run_id() -> str:
    """A new run's identity for its trajectory, drawn on rank 0 and the same on every rank."""
    box = [f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]
