"""VelocityBlendedDataset: megatron-core's BlendedDataset with weights that change mid-run.

Constructed exactly like ``megatron.core.datasets.blended_dataset.BlendedDataset`` (``datasets,
weights, size, config``) and returning the same items (``{"dataset_id": d, **datasets[d][j]}``),
so every megatron-core and Megatron-LM consumer of a ``BlendedDataset`` keeps working. What
changes is that :meth:`VelocityBlendedDataset.update_weights` redraws the blend from a global
sample on, leaving every earlier sample untouched. The index maths is in
:mod:`megatron_velocitune.core.blending`; see there for the segment rule, the carried per-domain
counts and the epoch wrap-around.

Data-loader workers hold a fork-time copy of the dataset: after an update, rebuild the data
iterator at the consumed position (:func:`megatron_velocitune.data.loader.build_data_iterator`).
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.utils import log_single_rank

from megatron_velocitune.core.blending import BlendIndex, Segment
from megatron_velocitune.core.errors import InputError

__all__ = ["VelocityBlendedDataset"]

logger = logging.getLogger(__name__)


#: The config options (and their Megatron-LM flags) that read a prebuilt static blend index from
#: ``path_to_cache``, which cannot describe a blend whose weights change during the run.
STATIC_INDEX_OPTIONS = {
    "fast_cache_load": "--dataloader-fast-cache-load",
    "defer_npy_index_mmap": "--dataloader-defer-npy-index-mmap",
}


def static_index_refusals(is_set: Callable[[str], Any]) -> List[str]:
    """One line per static-index option that is on (the one home of this refusal).

    Args:
        is_set (Callable[[str], Any]): the value of a ``STATIC_INDEX_OPTIONS`` key (the config
            attribute; Megatron-LM's args carry it as ``dataloader_<key>``).

    Returns:
        List[str]: the refusals (empty when none is on).
    """
    return [
        f"{flag} (config.{option}): it reads the static blend's cached indices; the Velocitune "
        f"blend's index depends on the weight history and is never cached on disk (drop the "
        f"flag; --data-cache-path alone is fine)"
        for option, flag in STATIC_INDEX_OPTIONS.items()
        if is_set(option)
    ]


class VelocityBlendedDataset(BlendedDataset):
    """A blend of MegatronDatasets whose weights may change at any global sample.

    The domain and domain-sample of global sample ``s`` depend only on the per-domain datasets,
    the weight history and ``s``: segment by segment, megatron-core's own greedy blend, with
    per-domain draws counted from the start of the run (the j-th draw of domain ``d`` is
    ``datasets[d][j % len(datasets[d])]``; the modulo replays the domain's shuffled epochs when
    a weight outgrows the domain, never an ``IndexError``). Until the first update the index is
    megatron-core's static ``BlendedDataset`` index, bit for bit (when no domain wraps).

    Args:
        datasets (List[MegatronDataset]): the per-domain datasets, e.g. ``GPTDataset``s.
        weights (List[Union[int, float]]): the starting blend (normalised here).
        size (int): the number of global samples (the train samples of the run).
        config (BlendedMegatronDatasetConfig): the config megatron-core passes; its on-disk
            index cache is not used (it keys on the weights, which change).
        update_window (Optional[int]): samples between two expected weight updates (``m`` x
            the global batch size); sizes the lazily built index ahead of the reads.
    """

    def __init__(
        self,
        datasets: List[MegatronDataset],
        weights: List[Union[int, float]],
        size: int,
        config: BlendedMegatronDatasetConfig,
        update_window: Optional[int] = None,
    ) -> None:
        if size is None:
            raise ValueError(
                "VelocityBlendedDataset needs a size (the run's train samples); megatron-core's "
                "exhaustive mode (size=None) has no room for changing weights"
            )
        refused = static_index_refusals(lambda option: getattr(config, option, False))
        if refused:
            raise InputError(refused[0])
        self._update_window = update_window
        super().__init__(datasets, [float(w) for w in weights], size, config)

    # ----------------------------------------------------------------------------------------
    # megatron-core overrides

    def _build_indices(self):
        """Allocate the lazily built index (replaces megatron-core's static build and cache).

        Returns:
            Tuple[numpy.ndarray, numpy.ndarray]: the dataset index (int16) and dataset sample
            index (int64), one entry per global sample like the static blend's; entries are
            valid once materialised, which ``__getitem__`` does on demand.
        """
        log_single_rank(
            logger,
            logging.INFO,
            f"Build the {type(self).__name__} {self.split.name} index lazily "
            f"(size={self.size}, no on-disk cache)",
        )
        lengths = [len(d) for d in self.datasets]
        self._index = BlendIndex(self.weights, self.size, lengths, self._update_window)
        return self._index.dataset_index, self._index.dataset_sample_index

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> Dict[str, Union[int, numpy.ndarray]]:
        index = self._index
        # Fast path: one range check beyond the static blend's lookup.
        if not index.lo <= idx < index.hi:
            idx = index.ensure(idx)
        dataset_id = self.dataset_index[idx]
        dataset_sample_id = self.dataset_sample_index[idx]
        return {"dataset_id": dataset_id, **self.datasets[dataset_id][dataset_sample_id]}

    # ----------------------------------------------------------------------------------------
    # Dynamic weights

    def update_weights(self, weights: Sequence[float], start_sample: int) -> bool:
        """Draw every global sample from ``start_sample`` on with ``weights``.

        Samples before ``start_sample`` never change. Call it with the consumed-samples
        position of the first step the new weights apply to, then rebuild the data iterator
        there (workers hold the old weights). Passing the weights already in force records
        nothing. Costs O(samples since the last update + the next update window).

        Args:
            weights (Sequence[float]): the new blend, one finite weight > 0 per domain
                (normalised here).
            start_sample (int): global sample position, not before the last update's.

        Returns:
            bool: whether the blend changed.

        Raises:
            ValueError: bad weights, or a position before the last update (the past).
        """
        changed = self._index.update(weights, start_sample)
        self.weights = self._index.weights.tolist()
        return changed

    @property
    def segments(self) -> List[Segment]:
        """The weight history: one :class:`~megatron_velocitune.core.blending.Segment` per blend."""
        return self._index.segments

    def weights_at(self, sample: int) -> numpy.ndarray:
        """The blend that draws global sample ``sample``."""
        return self._index.weights_at(sample)

    def domain_counts(self, position: int) -> numpy.ndarray:
        """Samples drawn per domain over global samples ``[0, position)`` (int64, carried)."""
        return self._index.counts_at(position)

    # ----------------------------------------------------------------------------------------
    # Checkpointing

    def state_dict(self) -> Dict[str, Any]:
        """The weight history as plain JSON-able data (see ``BlendIndex.state_dict``)."""
        return self._index.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a weight history; the index then matches the saving run's bit for bit.

        Args:
            state (Dict[str, Any]): a :meth:`state_dict` of a dataset over the same per-domain
                datasets and size.
        """
        self._index.load_state_dict(state)
        self.weights = self._index.weights.tolist()
