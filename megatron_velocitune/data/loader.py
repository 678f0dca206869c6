"""Megatron's consumed-samples order and a data iterator that can be rebuilt at any position.

Megatron-LM's ``--dataloader-type single`` walks global samples ``consumed_samples,
consumed_samples + 1, ...`` in order and hands each data-parallel rank its contiguous
micro-batch slice of every ``micro_batch_size * data_parallel_size`` consecutive samples.
``megatron.training`` is not in the megatron-core 0.16 wheel, so :class:`MegatronPretrainingSampler`
here is an equivalent of Megatron-LM's (same arguments, same order), which makes the global
sample position of every item equal to Megatron's consumed-samples count.

DataLoader workers fork with a copy of the dataset and prefetch ahead, so after
``dataset.update_weights(w, consumed_samples)`` the old iterator would still hand out samples
drawn with the old weights. :func:`build_data_iterator` (re)creates the loader at the consumed
position: the new workers fork from the updated dataset, whatever the old ones had prefetched is
dropped, and the very next sample on every DP rank is global sample ``consumed_samples + rank *
micro_batch_size``, drawn with the new weights. Rebuilding costs one worker start-up per update
(every ``m`` steps), nothing per step.
"""

from typing import Iterator, List, Optional

import torch

from megatron_velocitune.core.errors import InputError

__all__ = [
    "MegatronPretrainingSampler",
    "RebuildableDataIterator",
    "build_data_iterator",
    "build_pretraining_data_loader",
    "close_data_iterator",
]


class MegatronPretrainingSampler:
    """Batch sampler in Megatron-LM's consumed-samples order (``--dataloader-type single``).

    Args:
        total_samples (int): the dataset's length.
        consumed_samples (int): global samples already consumed by training.
        micro_batch_size (int): samples per micro-batch per rank.
        data_parallel_rank (int): this rank in the data-parallel group.
        data_parallel_size (int): the data-parallel group size.
        drop_last (bool): drop a last incomplete ``micro_batch_size * data_parallel_size``
            group (Megatron-LM's default).
    """

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        drop_last: bool = True,
    ) -> None:
        if total_samples <= 0:
            raise ValueError(f"no sample to consume: total_samples={total_samples}")
        if not 0 <= consumed_samples < total_samples:
            raise InputError(f"no samples left to consume: {consumed_samples} of {total_samples}")
        if micro_batch_size <= 0 or data_parallel_size <= 0:
            raise ValueError(
                f"micro_batch_size {micro_batch_size} and data_parallel_size "
                f"{data_parallel_size} must be > 0"
            )
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(
                f"data_parallel_rank {data_parallel_rank} not in [0, {data_parallel_size})"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.micro_batch_times_data_parallel_size = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.total_samples

    def get_start_end_idx(self):
        """This rank's slice of each ``micro_batch_size * data_parallel_size`` group."""
        start_idx = self.data_parallel_rank * self.micro_batch_size
        return start_idx, start_idx + self.micro_batch_size

    def __iter__(self) -> Iterator[List[int]]:
        start, end = self.get_start_end_idx()
        group = self.micro_batch_times_data_parallel_size
        # Same order as Megatron-LM's loop over range(consumed, total), one group at a time.
        first = self.consumed_samples
        while first + group <= self.total_samples:
            yield list(range(first + start, first + end))
            first += group
        if first < self.total_samples and not self.drop_last:
            batch = list(range(first, self.total_samples))
            if batch[start:end]:
                yield batch[start:end]


def build_pretraining_data_loader(
    dataset,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 2,
    pin_memory: Optional[bool] = None,
    prefetch_factor: Optional[int] = None,
) -> Optional[torch.utils.data.DataLoader]:
    """Megatron-LM's train DataLoader (``single`` type) over ``dataset`` from ``consumed_samples``.

    Args:
        dataset: the dataset (None on ranks that hold no data: returns None).
        consumed_samples (int): where to start, in global samples.
        micro_batch_size (int): samples per micro-batch.
        data_parallel_rank (int): this rank in the data-parallel group.
        data_parallel_size (int): the data-parallel group size.
        num_workers (int): DataLoader worker processes (Megatron-LM default 2).
        pin_memory (Optional[bool]): default: when CUDA is available (Megatron-LM pins).
        prefetch_factor (Optional[int]): batches prefetched per worker (PyTorch default 2).

    Returns:
        Optional[torch.utils.data.DataLoader]: the loader.
    """
    if dataset is None:
        return None
    sampler = MegatronPretrainingSampler(
        len(dataset), consumed_samples, micro_batch_size, data_parallel_rank, data_parallel_size
    )
    kwargs = {}
    if num_workers > 0 and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        # Not persistent: a rebuild must fork fresh workers from the updated dataset.
        persistent_workers=False,
        # Its own generator: creating an iterator draws the workers' base seed, which must not
        # consume the global torch RNG (dropout), or a resumed run would diverge from an
        # uninterrupted one that rebuilt its iterator at other iterations.
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def build_data_iterator(
    dataset,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 2,
    pin_memory: Optional[bool] = None,
    prefetch_factor: Optional[int] = None,
) -> Optional[Iterator]:
    """(Re)build the train data iterator at ``consumed_samples``.

    Call it after every ``dataset.update_weights(w, consumed_samples)`` (and at resume), and
    drop the previous iterator (:func:`close_data_iterator` stops its workers at once). The
    first micro-batch it yields on rank ``r`` is global samples ``consumed_samples + r * mbs``
    onwards, drawn with the weights in force there. For Megatron-LM's ``RerunDataIterator``,
    assign the result to its ``.iterable``.

    Returns:
        Optional[Iterator]: an iterator over collated micro-batches (None without a dataset).
    """
    loader = build_pretraining_data_loader(
        dataset,
        consumed_samples,
        micro_batch_size,
        data_parallel_rank,
        data_parallel_size,
        num_workers,
        pin_memory,
        prefetch_factor,
    )
    return None if loader is None else iter(loader)


def close_data_iterator(iterator: Optional[Iterator]) -> None:
    """Stop a data iterator's worker processes now (garbage collection would, later)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class RebuildableDataIterator:
    """A train data iterator that a weight update rebuilds at the consumed position.

    Args:
        dataset: the (Velocity)BlendedDataset.
        consumed_samples (int): where to start.
        micro_batch_size (int): samples per micro-batch.
        data_parallel_rank (int): this rank in the data-parallel group.
        data_parallel_size (int): the data-parallel group size.
        num_workers (int): DataLoader workers.
        **loader_kwargs: ``pin_memory``, ``prefetch_factor``.
    """

    def __init__(
        self,
        dataset,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        num_workers: int = 2,
        **loader_kwargs,
    ) -> None:
        self.dataset = dataset
        self._args = (micro_batch_size, data_parallel_rank, data_parallel_size, num_workers)
        self._loader_kwargs = loader_kwargs
        self._iterator = None
        self.rebuild(consumed_samples)

    def rebuild(self, consumed_samples: int) -> None:
        """Drop the current iterator (and what it prefetched); restart at ``consumed_samples``."""
        close_data_iterator(self._iterator)
        self._iterator = build_data_iterator(
            self.dataset, consumed_samples, *self._args, **self._loader_kwargs
        )

    def close(self) -> None:
        """Stop the workers."""
        close_data_iterator(self._iterator)
        self._iterator = None

    def __iter__(self) -> "RebuildableDataIterator":
        return self

    def __next__(self):
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)
