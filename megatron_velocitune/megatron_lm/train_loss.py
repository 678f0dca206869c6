"""``--velocitune-loss-source train`` inside Megatron-LM: the domains of the training stream.

Megatron-LM's ``pretrain_gpt.py`` drops each sample's ``dataset_id`` before the loss function
(from core_v0.18 ``get_batch`` returns a fixed key list, ``BATCH_KEYS``; before, ``loss_func`` got
the loss mask only). The adapter does not need it there: it wraps the ``forward_step_func`` that
``train()`` receives. Each training call reads the micro-batch through :class:`DomainTap`, a view
of the data iterator that keeps the ``dataset_id`` of every sample it hands out, and the loss
function the step returns is wrapped to add the per-token losses into a
:class:`~megatron_velocitune.control.train_stream.DomainLossAccumulator` under those ids, exactly
as the project's own megatron-core loop does (no collective, no host synchronisation; one DP(+CP)
reduction per update).

Which ranks see what, as in Megatron-LM's ``get_batch``: tensor-parallel rank 0 of the first and
last pipeline stages reads the data iterator; the loss function runs on the last stage. So the
last stage's TP rank 0 accumulates, and the update's decider (last stage, TP/CP/DP rank 0, see
:class:`~megatron_velocitune.control.distributed.UpdateGroups`) reduces over its DP(+CP) group,
which is all of them. Other ranks' windows stay empty and are never read.

The loss mask: the one Megatron-LM's loss function takes, i.e. ``pretrain_gpt.py``'s
``partial(loss_func, loss_mask, model=model)`` (this rank's part of the sequence under context
parallelism); for a step whose loss function is not such a partial, the sample's own
``loss_mask`` from the iterator (context parallelism then cannot be matched: refused with one
line at the first micro-batch).

Evaluation (Megatron-LM's ``evaluate`` calls the same forward step with the model in eval mode)
is not part of the training stream and is left alone.
"""

import functools
from typing import Any, Callable, List, Optional

import torch

from megatron_velocitune.control.train_stream import DomainLossAccumulator, TrainStreamEvaluator

__all__ = [
    "DomainTap",
    "TrainLossTap",
    "loss_mask_of",
    "stream_evaluator",
]


class DomainTap:
    """The data iterator as the forward step sees it, keeping each batch's ``dataset_id``.

    Args:
        iterator: Megatron-LM's data iterator (a ``RerunDataIterator``); any other attribute is
            read from it.
    """

    def __init__(self, iterator: Any) -> None:
        self._iterator = iterator
        self.domain_ids: List[torch.Tensor] = []
        self.loss_masks: List[Optional[torch.Tensor]] = []

    def __iter__(self) -> "DomainTap":
        return self

    def __next__(self) -> Any:
        batch = next(self._iterator)
        if isinstance(batch, dict) and batch.get("dataset_id") is not None:
            self.domain_ids.append(torch.as_tensor(batch["dataset_id"]).reshape(-1))
            mask = batch.get("loss_mask")
            self.loss_masks.append(None if mask is None else torch.as_tensor(mask))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


def loss_mask_of(loss_func: Callable, output_tensor: torch.Tensor) -> Optional[torch.Tensor]:
    """The loss mask bound into Megatron-LM's loss function, when it is one.

    ``pretrain_gpt.py`` (every release) returns ``functools.partial(loss_func, loss_mask, ...)``;
    its first bound argument is the mask when it has as many elements as the losses.

    Args:
        loss_func (Callable): what the forward step returned.
        output_tensor (torch.Tensor): the per-token losses it is called with.

    Returns:
        Optional[torch.Tensor]: the mask, or None.
    """
    while isinstance(loss_func, functools.partial):
        if loss_func.args and isinstance(loss_func.args[0], torch.Tensor):
            mask = loss_func.args[0]
            return mask if mask.numel() == output_tensor.numel() else None
        loss_func = loss_func.func
    return None


class TrainLossTap:
    """Wraps ``train()``'s forward step so its training micro-batches feed the accumulator.

    Attributes:
        accumulator (Optional[DomainLossAccumulator]): set by the plugin when the run reads the
            training stream (None: the forward step runs untouched).
    """

    def __init__(self) -> None:
        self.accumulator: Optional[DomainLossAccumulator] = None

    def wrap(self, forward_step_func: Callable) -> Callable:
        """The forward step with the tap (its signature, seen by ``inspect``, is the original's).

        Args:
            forward_step_func (Callable): ``forward_step(data_iterator, model, ...)`` returning
                ``(output_tensor, loss_func)``.

        Returns:
            Callable: the wrapped step.
        """

        @functools.wraps(forward_step_func)
        def forward_step(data_iterator, model, *args, **kwargs):
            accumulator = self.accumulator
            if accumulator is None or data_iterator is None or not _training(model):
                return forward_step_func(data_iterator, model, *args, **kwargs)
            tap = DomainTap(data_iterator)
            output, loss_func = forward_step_func(tap, model, *args, **kwargs)
            if not tap.domain_ids or not callable(loss_func):
                return output, loss_func  # a rank that reads no data, or a schedule plan
            return output, self._wrap_loss(loss_func, tap, accumulator)

        return forward_step

    @staticmethod
    def _wrap_loss(loss_func: Callable, tap: DomainTap, accumulator: DomainLossAccumulator):
        domain_ids = torch.cat(tap.domain_ids)

        @functools.wraps(loss_func)
        def loss_with_domains(output_tensor, *args, **kwargs):
            result = loss_func(output_tensor, *args, **kwargs)
            mask = loss_mask_of(loss_func, output_tensor)
            if mask is None:
                raw = tap.loss_masks
                if any(m is None for m in raw) or sum(m.numel() for m in raw) != (
                    output_tensor.numel()
                ):
                    raise RuntimeError(
                        "velocitune: --velocitune-loss-source train cannot match this forward "
                        "step's losses to its samples (its loss function binds no loss mask of "
                        "the losses' shape, and the samples' own masks do not fit: context "
                        "parallelism or packed sequences); use --velocitune-loss-source eval"
                    )
                mask = torch.cat([m.reshape(-1) for m in raw]).to(output_tensor.device)
            samples = domain_ids.numel()
            accumulator.add(
                domain_ids,
                output_tensor.detach().reshape(samples, -1),
                mask.reshape(samples, -1),
            )
            return result

        return loss_with_domains


def _training(model: Any) -> bool:
    """Whether the forward step runs for training (Megatron-LM's evaluate() sets eval mode)."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    return all(getattr(m, "training", True) for m in chunks)


def stream_evaluator(
    tap: TrainLossTap, evaluator_factory: Callable, model: List[Any], data: Any, args: Any, config
) -> TrainStreamEvaluator:
    """The controller's evaluator for ``--velocitune-loss-source train`` (every rank).

    Sets ``tap.accumulator``; the initial loss is the base model's on the first samples the
    stream draws from each domain (each domain's train dataset), as in the megatron-core loop.

    Args:
        tap (TrainLossTap): the forward-step tap that will feed the window.
        evaluator_factory (Callable): builds a held-out style evaluator over datasets.
        model (List[Any]): the model chunks.
        data: the registry's ``VelocityDatasets``.
        args: Megatron-LM's arguments.
        config: the Velocitune config.

    Returns:
        TrainStreamEvaluator: window sums at updates, first draws at iteration 0.
    """
    device = torch.device(
        f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    )
    tap.accumulator = DomainLossAccumulator(len(data.prefixes), device)
    per_domain = list(data.train_per_domain or [])
    first = None if not per_domain or any(d is None for d in per_domain) else per_domain
    first_draws = evaluator_factory(model, first, len(data.prefixes), args, config)
    return TrainStreamEvaluator(first_draws, tap.accumulator)
