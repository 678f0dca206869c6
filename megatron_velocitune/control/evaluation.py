"""Per-domain held-out evaluation through megatron-core's own pipeline schedule.

Velocitune needs each domain's held-out loss every ``m`` iterations. :class:`DomainEvaluator`
runs the model forward-only on every domain's held-out ``GPTDataset`` with
``get_forward_backward_func()(..., forward_only=True)``, so tensor-, pipeline- and
context-parallel layouts work exactly as in training, and returns this rank's **local** sums
``(loss_sum, token_count)`` per domain in float64. Summing them over the data-parallel group is
:mod:`megatron_velocitune.control.distributed`'s job: one reduction per update, never a
collective in the per-micro-batch loss function.

Which samples (a plan, identical on every rank):

- *subset* mode (every update): the fixed subset ``S'_eval,i`` of ``eval_iters`` micro-batches
  per data-parallel rank. Global sample ``j`` of domain ``i``'s held-out set (GPTDataset's own
  shuffled order) goes to DP rank ``(j // mbs) % dp`` in micro-batch ``j // (mbs * dp)``, the
  layout of Megatron's pretraining sampler. Together the DP ranks cover samples
  ``0 .. eval_iters * mbs * dp - 1``, disjointly, and the same ones at every update. A held-out
  set smaller than that is wrapped around (samples repeat).
- *full* mode (the initial loss): every sample of every held-out set exactly once, split the
  same way; the last micro-batches are padded with masked-out samples.

Where data lives (as in Megatron-LM): datasets exist only on tensor-parallel rank 0 of the first
and last pipeline stages. The batch is broadcast over the tensor-parallel group there (and
sliced per context-parallel rank like Megatron-LM's ``get_batch``), middle stages read nothing,
and only the last stage computes losses (other ranks return zeros).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_velocitune.core.errors import InputError
from megatron_velocitune.core.sums import DomainSums
from megatron_velocitune.data.batch import BATCH_KEYS, broadcast_batch, gpt_forward
from megatron_velocitune.device import compute_device

__all__ = [
    "DomainEvaluator",
    "EvalPlan",
    "full_plan",
    "subset_plan",
]


@dataclass(frozen=True)
class EvalPlan:
    """Which held-out samples this data-parallel rank evaluates, micro-batch by micro-batch.

    The plan is a pure function of its fields, so every rank (with or without datasets) knows
    the micro-batch count per domain without communication.

    Attributes:
        num_microbatches (Tuple[int, ...]): micro-batches per domain on every DP rank.
        micro_batch_size (int): samples per micro-batch.
        dp_rank (int): this rank's data-parallel rank.
        dp_size (int): data-parallel size.
        num_samples (Tuple[Optional[int], ...]): per domain, the number of real samples in
            *full* mode (indices at or past it are padding); None in *subset* mode (indices
            wrap around the held-out set).
    """

    num_microbatches: Tuple[int, ...]
    micro_batch_size: int
    dp_rank: int
    dp_size: int
    num_samples: Tuple[Optional[int], ...] = field(default=())

    @property
    def total_microbatches(self) -> int:
        return int(sum(self.num_microbatches))

    def sample_indices(self, domain: int, microbatch: int) -> np.ndarray:
        """Global held-out sample indices of one micro-batch (-1: padding in full mode).

        Args:
            domain (int): domain index.
            microbatch (int): micro-batch index within the domain on this DP rank.

        Returns:
            np.ndarray: ``micro_batch_size`` int64 indices, not yet wrapped.
        """
        mbs = self.micro_batch_size
        start = (microbatch * self.dp_size + self.dp_rank) * mbs
        idx = np.arange(start, start + mbs, dtype=np.int64)
        limit = self.num_samples[domain] if self.num_samples else None
        if limit is not None:
            idx[idx >= limit] = -1
        return idx


def subset_plan(
    num_domains: int, eval_iters: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> EvalPlan:
    """The fixed per-update subset: ``eval_iters`` micro-batches per domain and DP rank.

    Returns:
        EvalPlan: covers global samples ``0 .. eval_iters * micro_batch_size * dp_size - 1``.
    """
    return EvalPlan((eval_iters,) * num_domains, micro_batch_size, dp_rank, dp_size)


def full_plan(
    dataset_lengths: Sequence[int], micro_batch_size: int, dp_rank: int, dp_size: int
) -> EvalPlan:
    """Every held-out sample once (the initial-loss measurement).

    Args:
        dataset_lengths (Sequence[int]): samples in each domain's held-out set.
        micro_batch_size (int): samples per micro-batch.
        dp_rank (int): this rank's data-parallel index.
        dp_size (int): the data-parallel world size.

    Returns:
        EvalPlan: ``ceil(len / (mbs * dp))`` micro-batches per domain, padding masked out.
    """
    per_step = micro_batch_size * dp_size
    counts = tuple(int(math.ceil(n / per_step)) for n in dataset_lengths)
    lengths = tuple(int(n) for n in dataset_lengths)
    return EvalPlan(counts, micro_batch_size, dp_rank, dp_size, lengths)


def _as_list(model: Union[torch.nn.Module, Sequence[torch.nn.Module]]) -> List[torch.nn.Module]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


class DomainEvaluator:
    """Forward-only per-domain evaluation of a (TP/PP/DP-parallel) megatron-core GPT model.

    Construct it on every rank (all ranks run the pipeline schedule); pass the held-out datasets
    on ranks that hold data (tensor-parallel rank 0 of the first and last pipeline stages) and
    None elsewhere.

    Args:
        model (Union[nn.Module, Sequence[nn.Module]]): this rank's model chunk(s).
        datasets (Optional[Sequence[Dataset]]): per-domain held-out datasets yielding
            megatron-core GPT samples (``tokens``, ``labels``, ``loss_mask``, ``position_ids``),
            or None on ranks that hold no data.
        num_domains (int): number of domains (needed where ``datasets`` is None).
        seq_length (int): tokens per sample.
        micro_batch_size (int): samples per micro-batch.
        eval_iters (int): micro-batches per domain and DP rank in *subset* mode.
    """

    def __init__(
        self,
        model: Union[torch.nn.Module, Sequence[torch.nn.Module]],
        datasets: Optional[Sequence[Any]],
        num_domains: int,
        seq_length: int,
        micro_batch_size: int,
        eval_iters: int,
    ) -> None:
        if datasets is not None and len(datasets) != num_domains:
            raise ValueError(f"{len(datasets)} held-out datasets for {num_domains} domains")
        self.model = _as_list(model)
        self.datasets = list(datasets) if datasets is not None else None
        self.num_domains = num_domains
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.eval_iters = eval_iters
        self._full_lengths: Optional[Tuple[int, ...]] = None
        self.device = compute_device()

    # ---------------------------------------------------------------- plans
    def subset_plan(self) -> EvalPlan:
        """This rank's plan for the per-update fixed subset."""
        return subset_plan(
            self.num_domains,
            self.eval_iters,
            self.micro_batch_size,
            parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
        )

    def full_lengths(self) -> Tuple[int, ...]:
        """Held-out set sizes per domain, known on every rank.

        Only data-holding ranks have the datasets, so the sizes are max-reduced over the world
        once (ranks without data contribute zeros) and cached.
        """
        if self._full_lengths is None:
            if self.datasets is not None:
                local = [len(d) for d in self.datasets]
            else:
                local = [0] * self.num_domains
            t = torch.tensor(local, dtype=torch.int64, device=self.device)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
            self._full_lengths = tuple(int(x) for x in t.tolist())
            if min(self._full_lengths) <= 0:
                raise InputError(f"a held-out set is empty (sizes {self._full_lengths})")
        return self._full_lengths

    def full_plan(self) -> EvalPlan:
        """This rank's plan for the full held-out sets."""
        return full_plan(
            self.full_lengths(),
            self.micro_batch_size,
            parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
        )

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, full: bool = False, plan: Optional[EvalPlan] = None) -> DomainSums:
        """Run forward-only evaluation of every domain and return this rank's local sums.

        Args:
            full (bool): evaluate the full held-out sets instead of the fixed subset.
            plan (Optional[EvalPlan]): an explicit plan (overrides ``full``).

        Returns:
            DomainSums: local float64 sums on the last pipeline stage; zeros on other stages.
            Not reduced over data-parallel ranks.
        """
        plan = plan or (self.full_plan() if full else self.subset_plan())
        modes = [m.training for m in self.model]
        for m in self.model:
            m.eval()
        try:
            with torch.no_grad():
                store = get_forward_backward_func()(
                    forward_step_func=self._forward_step,
                    data_iterator=self._batches(plan),
                    model=self.model if len(self.model) > 1 else self.model[0],
                    num_microbatches=plan.total_microbatches,
                    seq_length=self.seq_length,
                    micro_batch_size=self.micro_batch_size,
                    forward_only=True,
                )
        finally:
            for m, mode in zip(self.model, modes):
                m.train(mode)
        sums = DomainSums.zeros(self.num_domains)
        if parallel_state.is_pipeline_last_stage() and store:
            # One host transfer for the whole evaluation, not one per micro-batch.
            per_sequence = torch.stack([s["sequences"] for s in store]).cpu().numpy()
            for s, (seq_loss, seq_tokens) in zip(store, per_sequence):
                sums.add_sequences(int(s["domain"]), seq_loss, seq_tokens)
        return sums

    # ---------------------------------------------------------------- internals
    def _read_batch(self, domain: int, indices: np.ndarray) -> Dict[str, torch.Tensor]:
        """Stack held-out samples into a micro-batch (data-holding ranks only)."""
        dataset = self.datasets[domain]
        n = len(dataset)
        rows: Dict[str, List[np.ndarray]] = {k: [] for k in BATCH_KEYS}
        for j in indices:
            sample = dataset[int(j) % n]
            for k in BATCH_KEYS:
                v = sample[k]
                rows[k].append(v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            if j < 0:  # full-mode padding: keep the shapes, drop the tokens from the loss
                rows["loss_mask"][-1] = np.zeros_like(rows["loss_mask"][-1])
        return {
            "tokens": torch.from_numpy(np.stack(rows["tokens"]).astype(np.int64)),
            "labels": torch.from_numpy(np.stack(rows["labels"]).astype(np.int64)),
            "loss_mask": torch.from_numpy(np.stack(rows["loss_mask"]).astype(np.float32)),
            "position_ids": torch.from_numpy(np.stack(rows["position_ids"]).astype(np.int64)),
        }

    def _batches(self, plan: EvalPlan) -> Iterator[Tuple[int, Optional[Dict[str, torch.Tensor]]]]:
        """Yield ``(domain, batch)`` per micro-batch; batch is None on middle pipeline stages."""
        ps = parallel_state
        needs_data = ps.is_pipeline_first_stage() or ps.is_pipeline_last_stage()
        reads = needs_data and ps.get_tensor_model_parallel_rank() == 0
        if reads and self.datasets is None:
            raise RuntimeError(
                "DomainEvaluator: TP rank 0 of the first/last pipeline stage needs the held-out "
                "datasets"
            )
        for domain, count in enumerate(plan.num_microbatches):
            for mb in range(count):
                if not needs_data:
                    yield domain, None
                    continue
                batch = self._read_batch(domain, plan.sample_indices(domain, mb)) if reads else None
                yield domain, broadcast_batch(batch, self.micro_batch_size, self.seq_length)

    def _forward_step(self, data_iterator, model):
        """megatron-core forward_step_func: run the stage, return its loss function."""
        domain, batch = next(data_iterator)
        output = gpt_forward(model, batch)
        mask = batch["loss_mask"] if parallel_state.is_pipeline_last_stage() else None
        return output, lambda output_tensor: self._loss(domain, mask, output_tensor)

    @staticmethod
    def _loss(domain: int, loss_mask: torch.Tensor, output_tensor: torch.Tensor):
        """Per-micro-batch loss: local float64 sums only, no collective (reduced once later).

        Each sequence's (loss sum, tokens) is kept for the standard error; under context
        parallelism a sequence's shard on this rank counts as a sequence of its own.
        """
        mask = loss_mask.reshape(loss_mask.shape[0], -1).double()
        seq_loss = (output_tensor.reshape(mask.shape).double() * mask).sum(1)
        seq_tokens = mask.sum(1)
        loss_sum = seq_loss.sum()
        # The schedule divides the first element in place: hand it a copy.
        return (
            loss_sum.clone(),
            seq_tokens.sum().to(torch.int),
            {"domain": domain, "sequences": torch.stack([seq_loss, seq_tokens])},
        )
