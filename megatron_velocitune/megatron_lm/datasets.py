"""The train blend becomes a VelocityBlendedDataset inside Megatron-LM's own dataset provider.

``pretrain_gpt.py``'s provider builds ``BlendedMegatronDatasetBuilder(GPTDataset, sizes,
is_dataset_built_on_rank, config).build()``. While Megatron-LM's
``build_train_valid_test_datasets`` runs that provider, the adapter swaps the builder's ``build``
for :func:`velocity_build`, which returns

- train: :func:`megatron_velocitune.data.builder.build_velocity_datasets`'
  ``VelocityBlendedDataset`` over each domain's train split (sized per domain, replaying epochs
  when a weight outgrows its share), with the provider's own config, sizes and rank predicate;
- validation and test: exactly what megatron-core would have built (the same static blends of the
  same splits at the same sizes): the original ``build`` runs with the train split switched off,
  so Megatron-LM's ``--eval-interval`` validation is unchanged;

and records the per-domain held-out sets (each domain's validation split, one epoch) for the
controller. Other builders (a user's own, the per-domain builds inside) are left alone.
"""

import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from megatron_velocitune.data.builder import VelocityDatasets, build_velocity_datasets
from megatron_velocitune.megatron_lm.checks import check_dataset_config

__all__ = ["BuildRequest", "DatasetRegistry", "velocity_build"]


@dataclass
class BuildRequest:
    """What the train blend needs beyond the dataset config.

    Attributes:
        update_window (int): samples between two updates (``m * global_batch_size``); sizes the
            blend's lazily built index.
    """

    update_window: Optional[int]


class DatasetRegistry:
    """The datasets :func:`velocity_build` made in this process (one build per run).

    Attributes:
        request (Optional[BuildRequest]): set while Megatron-LM builds its datasets; the
            builder is substituted only then.
        data (Optional[VelocityDatasets]): the last Velocitune build (every rank has one; ranks
            that hold no data have ``train is None`` and ``valid`` entries None).
    """

    def __init__(self) -> None:
        self.request: Optional[BuildRequest] = None
        self.data: Optional[VelocityDatasets] = None
        self._inner = threading.local()

    @property
    def building(self) -> bool:
        """Inside :func:`velocity_build`'s own per-domain builds (leave those alone)."""
        return getattr(self._inner, "active", False)

    def held_out(self) -> Optional[List[Any]]:
        """The per-domain held-out sets on ranks that hold data, else None."""
        if self.data is None or any(d is None for d in self.data.valid):
            return None
        return list(self.data.valid)


def velocity_build(builder: Any, original_build: Callable, registry: DatasetRegistry) -> List:
    """``BlendedMegatronDatasetBuilder.build`` with the train split as a Velocitune blend.

    Args:
        builder: the ``BlendedMegatronDatasetBuilder`` (its ``cls``, ``sizes``,
            ``is_built_on_rank`` and ``config``).
        original_build (Callable): megatron-core's ``build``.
        registry (DatasetRegistry): where the result is recorded.

    Returns:
        List: ``[train, valid, test]`` as megatron-core's ``build`` returns them.

    Raises:
        VelocituneConfigError: a build the blend cannot replace (see
            :func:`~megatron_velocitune.megatron_lm.checks.check_dataset_config`).
    """
    if registry.request is None or registry.building:
        return original_build(builder)
    config = builder.config
    check_dataset_config(builder.cls, config)

    # Megatron-LM's validation and test sets, as megatron-core builds them: the same builder
    # with the train split switched off (split_matrix is derived in __post_init__, so it is set
    # on a shallow copy rather than through dataclasses.replace).
    eval_config = copy.copy(config)
    eval_config.split_matrix = [None] + list(config.split_matrix[1:])
    eval_builder = copy.copy(builder)
    eval_builder.config = eval_config
    _, valid, test = original_build(eval_builder)

    registry._inner.active = True
    try:
        data = build_velocity_datasets(
            config,
            train_samples=int(builder.sizes[0]),
            valid_samples=None,  # one epoch of each domain's held-out documents
            test_samples=None,
            update_window=registry.request.update_window,
            is_built_on_rank=builder.is_built_on_rank,
        )
    finally:
        registry._inner.active = False
    registry.data = data
    return [data.train, valid, test]
