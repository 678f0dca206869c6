"""Megatron consumed-samples order; data iterators rebuilt at an update, with worker processes."""

import json

import numpy as np
import pytest
import torch

from megatron_velocitune.data.builder import (
    DatasetTokenizer,
    build_velocity_datasets,
    gpt_dataset_config,
)
from megatron_velocitune.data.loader import (
    MegatronPretrainingSampler,
    RebuildableDataIterator,
    build_data_iterator,
    close_data_iterator,
)

MBS, DP, MICRO = 4, 2, 2  # micro-batch size, data-parallel size, micro-batches per step
GBS = MBS * DP * MICRO
TRAIN = 4_000
OLD, NEW = [0.96, 0.02, 0.02], [0.02, 0.02, 0.96]


def megatron_lm_order(total, consumed, mbs, rank, dp, drop_last=True):
    """Megatron-LM's MegatronPretrainingSampler, stated as its loop: collect consecutive global
    samples from `consumed`; every mbs*dp of them, rank r takes the r-th mbs-slice.
    """
    batch, out = [], []
    for idx in range(consumed, total):
        batch.append(idx)
        if len(batch) == mbs * dp:
            out.append(batch[rank * mbs : (rank + 1) * mbs])
            batch = []
    if batch and not drop_last and batch[rank * mbs : (rank + 1) * mbs]:
        out.append(batch[rank * mbs : (rank + 1) * mbs])
    return out


@pytest.mark.parametrize(
    "total, consumed, mbs, dp", [(100, 0, 4, 2), (101, 16, 3, 4), (50, 49, 1, 1), (37, 5, 2, 3)]
)
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_is_megatron_lm_consumed_samples_order(total, consumed, mbs, dp, drop_last):
    for rank in range(dp):
        got = list(MegatronPretrainingSampler(total, consumed, mbs, rank, dp, drop_last))
        assert got == megatron_lm_order(total, consumed, mbs, rank, dp, drop_last)
    # Together the ranks walk the global order without gaps or repeats.
    per_rank = [list(MegatronPretrainingSampler(total, consumed, mbs, r, dp)) for r in range(dp)]
    steps = zip(*per_rank)
    flat = [i for step in steps for mb in step for i in mb]
    assert flat == list(range(consumed, consumed + len(flat)))


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no samples left"):
        MegatronPretrainingSampler(10, 10, 1, 0, 1)
    with pytest.raises(ValueError, match="data_parallel_rank"):
        MegatronPretrainingSampler(10, 0, 1, 2, 2)


@pytest.fixture
def dataset(corpus, tmp_path):
    tokenizer = DatasetTokenizer(corpus.vocab_size, corpus.eod_id)
    config = gpt_dataset_config(
        (list(corpus.prefixes), OLD),
        "90,10,0",
        32,
        1234,
        tokenizer,
        path_to_cache=str(tmp_path / "cache"),
    )
    return build_velocity_datasets(config, TRAIN, update_window=10 * GBS).train


def reference(ds, state):
    """A fresh dataset with the final weight history, every index materialised."""
    ref = build_velocity_datasets(ds.config, TRAIN, update_window=10 * GBS).train
    ref.load_state_dict(json.loads(json.dumps(state)))
    ref._index.materialize_all()
    return ref


def run_steps(iterators, steps):
    """Pull `steps` training steps (MICRO micro-batches per DP rank) from each rank's iterator."""
    return [[next(it) for _ in range(steps * MICRO)] for it in iterators]


def check_batches(batches_per_rank, first_consumed, ref):
    for rank, batches in enumerate(batches_per_rank):
        sampler = MegatronPretrainingSampler(TRAIN, first_consumed, MBS, rank, DP)
        for batch, positions in zip(batches, sampler):
            assert batch["dataset_id"].tolist() == ref.dataset_index[positions].tolist()
            want = torch.stack([ref[p]["tokens"] for p in positions])
            assert torch.equal(batch["tokens"], want)


def train_with_update(dataset, num_workers, prefetch_factor=None):
    """Five steps with OLD weights, an update at the consumed position, five steps with NEW."""
    kwargs = dict(num_workers=num_workers, prefetch_factor=prefetch_factor)
    its = [RebuildableDataIterator(dataset, 0, MBS, r, DP, **kwargs) for r in range(DP)]
    before = run_steps(its, 5)
    consumed = 5 * GBS
    if num_workers:
        # The workers have prefetched past the update position with the old weights.
        stale = [next(it) for it in its]
    dataset.update_weights(NEW, consumed)
    for it in its:
        it.rebuild(consumed)
    after = run_steps(its, 5)
    for it in its:
        it.close()
    return before, after, consumed, (stale if num_workers else None)


def check_run(dataset, before, after, consumed):
    ref = reference(dataset, dataset.state_dict())
    check_batches(before, 0, ref)
    check_batches(after, consumed, ref)

    # The very first sample after the update on every rank is drawn with the new weights.
    def ids(batches_per_rank):
        return np.concatenate([b["dataset_id"].numpy() for r in batches_per_rank for b in r])

    new_ids, old_ids = ids(after), ids(before)
    assert np.mean(new_ids == 2) > 0.9 and np.mean(old_ids == 0) > 0.9
    for rank in range(DP):
        assert ref.weights_at(consumed + rank * MBS).tolist() == pytest.approx(NEW)
    return ref


def test_rebuild_at_update_in_process(dataset):
    before, after, consumed, _ = train_with_update(dataset, num_workers=0)
    check_run(dataset, before, after, consumed)


@pytest.mark.slow
def test_rebuild_at_update_with_two_prefetching_workers(dataset):
    before, after, consumed, stale = train_with_update(dataset, num_workers=2, prefetch_factor=4)
    ref = check_run(dataset, before, after, consumed)
    # What the old workers would have handed out next was drawn with the old weights: the
    # rebuild is what makes the switch exact.
    for rank, batch in enumerate(stale):
        positions = list(range(consumed + rank * MBS, consumed + (rank + 1) * MBS))
        assert batch["dataset_id"].tolist() != ref.dataset_index[positions].tolist()


@pytest.mark.slow
def test_resume_at_consumed_samples_continues_the_same_stream(dataset):
    before, after, consumed, _ = train_with_update(dataset, num_workers=2, prefetch_factor=2)
    resume_at = consumed + 3 * GBS
    resumed_ds = build_velocity_datasets(dataset.config, TRAIN, update_window=10 * GBS).train
    resumed_ds.load_state_dict(json.loads(json.dumps(dataset.state_dict())))
    its = [build_data_iterator(resumed_ds, resume_at, MBS, r, DP, num_workers=2) for r in range(DP)]
    resumed = run_steps(its, 2)
    for it in its:
        close_data_iterator(it)
    for rank in range(DP):
        for got, want in zip(resumed[rank], after[rank][3 * MICRO :]):
            assert torch.equal(got["dataset_id"], want["dataset_id"])
            assert torch.equal(got["tokens"], want["tokens"])
