"""Per-domain loss from the training stream itself: velocity at zero extra forward passes.

The training batches already carry each sample's domain (``BlendedDataset`` returns
``dataset_id``) and their per-token losses are computed anyway. :class:`DomainLossAccumulator`
adds each micro-batch's per-domain (loss sum, token count) into a small on-device tensor inside
the loss function (an ``index_add_``: no collective, no host synchronisation), and
:class:`TrainStreamEvaluator` hands the window's sums to the controller in place of a held-out
evaluation, so the one DP(+CP) reduction of an update stays the only communication.

The estimate is the token-weighted mean training loss of each domain over the ``m`` iterations
since the last update. Two differences from the held-out loss, and how they are handled:

- *Lag*: the window mean describes the model on average ``m / 2`` iterations ago, so it reads
  slightly high while the loss falls; the held-out loss measures the model now.
- *Footing*: each training sample is scored before the model trains on it, but a domain the
  base model was trained on (the replay domain) or one repeated for several epochs reads lower
  on its training stream than on held-out data (memorisation). So every number the velocity
  divides must be on the stream's footing: the initial loss is the base model's loss on the
  first samples the stream draws from each domain (measured at iteration 0), and the targets are
  fitted on a proxy run with the same ``--velocitune-loss-source train``.

A domain that drew no sample in a window keeps its previous estimate (the controller passes it
as the fallback of :func:`~megatron_velocitune.control.distributed.synchronize_update`).
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

from megatron_velocitune.core.errors import CheckpointError
from megatron_velocitune.core.sums import DomainSums

__all__ = [
    "DomainLossAccumulator",
    "TrainStreamEvaluator",
    "WindowLayout",
    "gather_windows",
    "restore_window",
]


class DomainLossAccumulator:
    """Per-domain (loss sum, token count) of the training micro-batches since the last take.

    Args:
        num_domains (int): number of domains.
        device (Optional[torch.device]): where the sums live (the losses' device).
    """

    def __init__(self, num_domains: int, device: Optional[torch.device] = None) -> None:
        self.num_domains = num_domains
        self.device = device
        self._sums: Optional[torch.Tensor] = None

    def add(
        self, domain_ids: torch.Tensor, per_token_loss: torch.Tensor, loss_mask: torch.Tensor
    ) -> None:
        """Add one micro-batch (call on the last pipeline stage, inside the loss function).

        Args:
            domain_ids (torch.Tensor): ``[b]`` domain of each sample.
            per_token_loss (torch.Tensor): ``[b, s]`` per-token losses.
            loss_mask (torch.Tensor): ``[b, s]`` 1 for tokens that count.
        """
        mask = loss_mask.detach().reshape(per_token_loss.shape[0], -1).double()
        losses = per_token_loss.detach().reshape(mask.shape).double()
        per_sample = torch.stack([(losses * mask).sum(1), mask.sum(1)])
        if self._sums is None:
            self._sums = torch.zeros(
                2, self.num_domains, dtype=torch.float64, device=per_sample.device
            )
        self._sums.index_add_(1, domain_ids.to(per_sample.device).long(), per_sample)

    def state(self) -> torch.Tensor:
        """This rank's window so far, ``[2, k]`` float64 on the CPU (checkpointed per rank)."""
        if self._sums is None:
            return torch.zeros(2, self.num_domains, dtype=torch.float64)
        return self._sums.detach().cpu().clone()

    def load_state(self, state: torch.Tensor) -> None:
        """Continue a window saved by :meth:`state` (a resumed run reads the same estimate)."""
        self._sums = state.to(dtype=torch.float64, device=self.device).clone()

    def take(self) -> DomainSums:
        """The sums since the last take (zeros if none), and start a new window."""
        if self._sums is None:
            return DomainSums.zeros(self.num_domains)
        # One host transfer per update; a copy, since on the CPU .numpy() shares the memory.
        sums = self._sums.cpu().numpy().copy()
        self._sums.zero_()
        return DomainSums(sums[0], sums[1])


class TrainStreamEvaluator:
    """The controller's evaluator for ``--velocitune-loss-source train``.

    Updates read the training window; the initial loss (``full=True``, once, at iteration 0)
    is the base model's loss on the first samples the stream will draw from each domain.

    Args:
        first_draws: a :class:`~megatron_velocitune.control.evaluation.DomainEvaluator` over the
            per-domain *training* datasets (its fixed subset is their first samples).
        accumulator (DomainLossAccumulator): fed by the training loss function.
    """

    def __init__(self, first_draws, accumulator: DomainLossAccumulator) -> None:
        self.first_draws = first_draws
        self.accumulator = accumulator

    def evaluate(self, full: bool = False) -> DomainSums:
        """This rank's local sums: the stream's first draws (``full``) or the training window."""
        if full:
            return self.first_draws.evaluate(full=False)
        return self.accumulator.take()


@dataclass(frozen=True)
class WindowLayout:
    """Which of a checkpoint's saved training-stream windows is this rank's.

    A checkpoint between two updates holds every rank's open window (the losses of the
    iterations since the last update); a resumed run continues them and so reads the same
    estimate at its next update. The two drivers keep them differently: the megatron-core entry
    one per data-parallel rank in its checkpoint shards, and refuses another data-parallel size
    (the sums of one rank's samples cannot be split exactly); the Megatron-LM adapter one per
    global rank in the sidecar (its checkpoint cannot hold them), restarted under another world
    size.

    Attributes:
        rank (int): this rank's index among the saved windows.
        size (int): how many windows this run keeps.
        refuse_other_size (bool): a checkpoint with another number of windows is refused (True)
            or its windows are dropped and restarted (False).
        what (str): the ranks the windows are per, for the messages.
    """

    rank: int
    size: int
    refuse_other_size: bool
    what: str = "data-parallel"


def restore_window(
    accumulator: Optional[DomainLossAccumulator],
    windows: Optional[Sequence[Any]],
    layout: WindowLayout,
    where: str,
) -> bool:
    """Continue this rank's open window from a checkpoint's saved ones.

    Args:
        accumulator (Optional[DomainLossAccumulator]): this run's (None: it reads no stream).
        windows (Optional[Sequence[Any]]): ``[rank][0 = loss sums | 1 = tokens][domain]`` as
            saved (tensors or nested lists), None when the checkpoint holds none.
        layout (WindowLayout): this rank's place among them.
        where (str): the checkpoint, for the error line.

    Returns:
        bool: whether a window was restored.

    Raises:
        CheckpointError: another number of windows where the layout refuses it.
    """
    if accumulator is None or not windows:
        return False
    if len(windows) != layout.size:
        if layout.refuse_other_size:
            raise CheckpointError(
                f"{where}: the checkpoint's training-stream window is for {layout.what} size "
                f"{len(windows)}, this run has {layout.size}: resume with {len(windows)} "
                f"{layout.what} ranks (or start a new run from it with --finetune)"
            )
        return False  # which rank drew which samples is not known: the window restarts
    accumulator.load_state(torch.as_tensor(windows[layout.rank], dtype=torch.float64))
    return True


def gather_windows(accumulator: Optional[DomainLossAccumulator], group=None) -> Optional[List]:
    """Every rank's open window, for a checkpoint (call on every rank of ``group``).

    Args:
        accumulator (Optional[DomainLossAccumulator]): this rank's (None: no stream read).
        group: the process group the windows are per (None: the world).

    Returns:
        Optional[List]: ``[rank][0 = loss sums | 1 = tokens][domain]`` as lists (None without a
        window).
    """
    if accumulator is None:
        return None
    local = accumulator.state()
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [local.tolist()]
    local = local.to(accumulator.device or torch.device("cpu"))
    windows = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(windows, local, group=group)
    return [w.cpu().tolist() for w in windows]
