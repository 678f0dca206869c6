"""Megatron-LM's TensorBoard and wandb writers behind the controller's ``add_scalar``.

Megatron-LM creates both writers on the last rank only and logs each metric to TensorBoard twice
(``key`` against iterations, ``key vs samples`` against consumed samples) but to wandb once,
against the iteration (wandb's step must only grow). :class:`MegatronWriters` does the same with
the controller's ``velocitune/...`` scalars.
"""

from typing import Any, Optional

__all__ = ["MegatronWriters", "megatron_writers"]

_VS_SAMPLES = " vs samples"


class MegatronWriters:
    """A ``SummaryWriter``-like fan-out to Megatron-LM's writers.

    Args:
        tensorboard (Optional[Any]): ``get_tensorboard_writer()``.
        wandb (Optional[Any]): ``get_wandb_writer()`` (the ``wandb`` module, ``.log(dict, step)``).
    """

    def __init__(self, tensorboard: Optional[Any], wandb: Optional[Any]) -> None:
        self.tensorboard = tensorboard
        self.wandb = wandb

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Log one scalar: TensorBoard always, wandb only against iterations."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None and not tag.endswith(_VS_SAMPLES):
            self.wandb.log({tag: value}, step)

    def flush(self) -> None:
        """Flush TensorBoard (wandb flushes itself)."""
        if self.tensorboard is not None:
            self.tensorboard.flush()


def megatron_writers() -> Optional[MegatronWriters]:
    """The writers of this rank, or None where Megatron-LM has none (all but the last rank)."""
    from megatron.training.global_vars import get_tensorboard_writer, get_wandb_writer

    tensorboard, wandb = get_tensorboard_writer(), get_wandb_writer()
    if tensorboard is None and wandb is None:
        return None
    return MegatronWriters(tensorboard, wandb)
