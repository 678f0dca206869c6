"""From a Megatron blend and split to the train VelocityBlendedDataset and the held-out sets.

megatron-core's ``BlendedMegatronDatasetBuilder`` sizes each domain's train ``GPTDataset`` at
``ceil(N * w_d * 1.005)`` samples and its static ``BlendedDataset`` raises ``IndexError`` when
the blend asks for more: under dynamic weights a domain routinely does. So the builder here runs
megatron-core's own builder once per domain, as a single-prefix blend with the same split
string (``BlendedMegatronDatasetBuilder([prefix], split).build()`` returns that prefix's train,
valid and test ``GPTDataset``s, with megatron-core's split arithmetic, on-disk index cache,
``is_built_on_rank`` and rank-0-first synchronisation), choosing each domain's train size
itself, and blends the train splits with :class:`VelocityBlendedDataset`. The valid splits are
the per-domain held-out sets, in blend order: the same documents Megatron-LM's ``--split``
holds out for its (blended) validation set.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megatron_velocitune.core.blending import check_blend_weights
from megatron_velocitune.core.errors import InputError
from megatron_velocitune.data.datafiles import check_data_file, parse_data_path
from megatron_velocitune.data.dataset import VelocityBlendedDataset

__all__ = [
    "DatasetTokenizer",
    "build_heldout_datasets",
    "VelocityDatasets",
    "blend_from_data_path",
    "build_velocity_datasets",
    "domain_train_samples",
    "gpt_dataset_config",
]


class DatasetTokenizer:
    """The least a ``GPTDatasetConfig`` needs of a tokenizer, for pre-tokenized ``.bin`` data.

    megatron-core's ``GPTDataset`` reads ``vocab_size`` (token dtype), ``eod`` (masks and
    position ids), ``pad`` when there is one, and ``unique_identifiers`` (its index cache key);
    it never tokenizes. Any real megatron-core tokenizer works in its place.

    Args:
        vocab_size (int): the vocabulary size the ``.bin`` files were written with.
        eod_id (int): the end-of-document token id.
        pad_id (Optional[int]): the padding token id, if the tokenizer has one.
        name (str): identifies the tokenizer in the cache key (e.g. its path).
    """

    def __init__(
        self, vocab_size: int, eod_id: int, pad_id: Optional[int] = None, name: str = ""
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.eod = int(eod_id)
        self._pad = None if pad_id is None else int(pad_id)
        self.unique_identifiers = OrderedDict(
            [
                ("class", type(self).__name__),
                ("name", name),
                ("vocab_size", self.vocab_size),
                ("eod", self.eod),
            ]
        )

    @property
    def pad(self) -> int:
        # megatron-core falls back to its own pad id (-1) when this raises.
        if self._pad is None:
            raise AttributeError("no pad token")
        return self._pad


def gpt_dataset_config(
    blend: Tuple[List[str], Optional[List[float]]],
    split: str,
    seq_length: int,
    seed: int,
    tokenizer,
    path_to_cache: Optional[str] = None,
    **kwargs,
) -> GPTDatasetConfig:
    """A ``GPTDatasetConfig`` with Megatron-LM's defaults for the flags it leaves implicit.

    Args:
        blend (Tuple[List[str], Optional[List[float]]]): ``(prefixes, weights)``.
        split (str): e.g. ``"98,2,0"``.
        seq_length (int): the sequence length.
        seed (int): the dataset seed (``--seed``).
        tokenizer: a megatron-core tokenizer or a :class:`DatasetTokenizer`.
        path_to_cache (Optional[str]): megatron-core's index cache folder (default: next to
            each prefix, as megatron-core does).
        **kwargs: any other ``GPTDatasetConfig`` field.

    Returns:
        GPTDatasetConfig: the config.
    """
    options = dict(reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False)
    options.update(kwargs)
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=split,
        path_to_cache=path_to_cache,
        tokenizer=tokenizer,
        **options,
    )


def blend_from_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Megatron-LM's ``--data-path w1 p1 w2 p2 ...`` (or ``p1 p2 ...``) as (prefixes, weights).

    Raises:
        DataError: a weight that is not a finite number > 0, or a prefix whose ``.bin``/``.idx``
            is missing, truncated or empty (checked here, before any model is built, so the
            run stops with one line instead of deep in megatron-core).
    """
    prefixes, weights = parse_data_path(data_path)
    for prefix in prefixes:
        check_data_file(prefix, hash_index=False)
    return prefixes, weights


def domain_train_samples(weights: Sequence[float], train_samples: int, surplus: float) -> List[int]:
    """Each domain's train ``GPTDataset`` size: its static share with megatron-core's surplus.

    ``GPTDataset`` rounds any request up to whole epochs of the domain (at least one), and
    :class:`VelocityBlendedDataset` replays those epochs when a dynamic weight outgrows them,
    so this sizing only decides how many distinct shuffles a domain gets before it repeats.

    Returns:
        List[int]: ``ceil(ceil(N * w_d) * (1 + surplus))`` per domain.
    """
    return [int(math.ceil(math.ceil(train_samples * w) * (1.0 + surplus))) for w in weights]


@dataclass
class VelocityDatasets:
    """What :func:`build_velocity_datasets` returns (None on ranks that hold no data).

    Attributes:
        train (Optional[VelocityBlendedDataset]): the dynamic train blend.
        valid (List[Optional[GPTDataset]]): each domain's held-out set, in blend order.
        test (List[Optional[GPTDataset]]): each domain's test set, in blend order.
        prefixes (List[str]): the domains' data prefixes.
        weights (List[float]): the starting blend, normalised.
        train_per_domain (List[Optional[GPTDataset]]): the train datasets blended.
    """

    train: Optional[VelocityBlendedDataset]
    valid: List[Optional[GPTDataset]]
    test: List[Optional[GPTDataset]]
    prefixes: List[str]
    weights: List[float]
    train_per_domain: List[Optional[GPTDataset]] = field(default_factory=list)


def build_velocity_datasets(
    config: GPTDatasetConfig,
    train_samples: int,
    valid_samples: Optional[int] = None,
    test_samples: Optional[int] = None,
    domain_samples: Optional[Sequence[int]] = None,
    update_window: Optional[int] = None,
    is_built_on_rank: Callable[[], bool] = lambda: True,
) -> VelocityDatasets:
    """Build the train blend and the per-domain held-out sets from ``config.blend``/``split``.

    Distributed-aware like megatron-core's builder: call it on every rank; ranks where
    ``is_built_on_rank()`` is False (and torch.distributed is initialised) get None.

    Args:
        config (GPTDatasetConfig): with ``blend=(prefixes, weights)`` and ``split``.
        train_samples (int): global train samples of the run (the blend's size).
        valid_samples (Optional[int]): samples per domain held-out set; None: one epoch of
            the held-out documents.
        test_samples (Optional[int]): likewise for the test split.
        domain_samples (Optional[Sequence[int]]): each domain's train GPTDataset size;
            default :func:`domain_train_samples` with ``config.mid_level_dataset_surplus``.
        update_window (Optional[int]): samples between weight updates (sizes the lazy index).
        is_built_on_rank (Callable[[], bool]): Megatron-LM's rank predicate.

    Returns:
        VelocityDatasets: the datasets.
    """
    if config.blend is None or config.blend_per_split is not None or config.mock:
        raise InputError(
            "build_velocity_datasets needs config.blend=(prefixes, weights) and config.split"
        )
    prefixes, weights = config.blend
    prefixes = list(prefixes)
    weights = check_blend_weights(
        weights if weights is not None else [1.0] * len(prefixes), len(prefixes)
    ).tolist()
    if domain_samples is None:
        surplus = config.mid_level_dataset_surplus
        domain_samples = domain_train_samples(weights, train_samples, surplus)
    if len(domain_samples) != len(prefixes):
        raise InputError(
            f"domain_samples {list(domain_samples)} must give one size per prefix {prefixes}"
        )

    train, valid, test = [], [], []
    for prefix, n_train in zip(prefixes, domain_samples):
        # One single-prefix blend per domain: megatron-core then builds exactly this prefix's
        # train/valid/test GPTDatasets at the sizes given, with its split and cache logic.
        domain_config = _replace_blend(config, ([prefix], None))
        splits = BlendedMegatronDatasetBuilder(
            GPTDataset, [int(n_train), valid_samples, test_samples], is_built_on_rank, domain_config
        ).build()
        train.append(splits[0])
        valid.append(splits[1])
        test.append(splits[2])

    train_blend = None
    if all(d is not None for d in train) and (
        not torch.distributed.is_initialized() or is_built_on_rank()
    ):
        train_blend = VelocityBlendedDataset(train, weights, train_samples, config, update_window)
    return VelocityDatasets(train_blend, valid, test, prefixes, weights, train)


def _replace_blend(config: GPTDatasetConfig, blend) -> GPTDatasetConfig:
    """A copy of ``config`` with another blend (``dataclasses.replace`` re-runs the checks)."""
    import dataclasses

    return dataclasses.replace(config, blend=blend)


def build_heldout_datasets(
    prefixes: Sequence[str],
    seq_length: int,
    vocab_size: int,
    eod_id: int,
    seed: int = 1234,
    heldout_fraction: float = 0.1,
    path_to_cache: Optional[str] = None,
    max_samples: Optional[int] = None,
) -> List[Any]:
    """One held-out megatron-core ``GPTDataset`` per domain, one epoch each.

    The held-out documents are the last ``heldout_fraction`` of each ``.bin/.idx`` file's
    documents (at least one), the same place ``--split 90,10,0`` takes its validation split
    from. Samples are ``seq_length`` tokens in GPTDataset's shuffled order.

    Args:
        prefixes (Sequence[str]): ``.bin/.idx`` path prefixes, one per domain.
        seq_length (int): tokens per sample.
        vocab_size (int): tokenizer vocabulary size.
        eod_id (int): end-of-document token id.
        seed (int): GPTDataset shuffle seed.
        heldout_fraction (float): share of documents (from the end) held out.
        path_to_cache (Optional[str]): where GPTDataset caches its indices (None: in memory).
        max_samples (Optional[int]): keep only the first ``max_samples`` samples of each
            (GPTDataset's order is shuffled, so this is a random subset of the held-out
            documents' samples); bounds the cost of the full-set initial-loss evaluation.

    Returns:
        List[GPTDataset]: the per-domain held-out datasets, in the order of ``prefixes``
        (wrapped in ``torch.utils.data.Subset`` when capped).
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    config = gpt_dataset_config(
        None,
        None,
        seq_length,
        seed,
        DatasetTokenizer(vocab_size, eod_id),
        path_to_cache=path_to_cache,
        create_attention_mask=False,
    )
    datasets = []
    for prefix in prefixes:
        indexed = IndexedDataset(prefix, multimodal=False, mmap=True)
        n_docs = len(indexed)  # GPT splits by sequence (one per document in a GPT .idx)
        first = min(n_docs - 1, int(round(n_docs * (1.0 - heldout_fraction))))
        indices = np.arange(first, n_docs, dtype=np.int32)
        dataset = GPTDataset(indexed, prefix, indices, None, Split.valid, config)
        if max_samples is not None and len(dataset) > max_samples:
            dataset = torch.utils.data.Subset(dataset, range(max_samples))
        datasets.append(dataset)
    return datasets
