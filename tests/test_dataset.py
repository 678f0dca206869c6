"""VelocityBlendedDataset and its builder on real Megatron .bin/.idx data (the corpus fixture)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from megatron.core.datasets import helpers
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.utils import Split

from megatron_velocitune.data.builder import (
    DatasetTokenizer,
    blend_from_data_path,
    build_velocity_datasets,
    gpt_dataset_config,
)
from megatron_velocitune.data.dataset import VelocityBlendedDataset

SEQ = 32
SEED = 1234
WEIGHTS = [0.5, 0.3, 0.2]
TRAIN = 30_000
UPDATES = [(2_048, [0.1, 0.2, 0.7]), (6_144, [0.6, 0.2, 0.2]), (6_400, [0.25, 0.5, 0.25])]


def make_config(corpus, tmp_path, weights=WEIGHTS, split="90,10,0", **kwargs):
    tokenizer = DatasetTokenizer(corpus.vocab_size, corpus.eod_id, name=corpus.tokenizer_path)
    return gpt_dataset_config(
        (list(corpus.prefixes), list(weights)),
        split,
        SEQ,
        SEED,
        tokenizer,
        path_to_cache=str(tmp_path / "cache"),
        **kwargs,
    )


@pytest.fixture
def built(corpus, tmp_path):
    return build_velocity_datasets(make_config(corpus, tmp_path), TRAIN, update_window=1024)


def apply_updates(ds, updates=UPDATES, read_ahead=300):
    """Read up to (and past, as prefetch does) each update position, then update."""
    for start, w in updates:
        for i in range(max(0, start - read_ahead), min(len(ds), start + read_ahead)):
            ds[i]
        ds.update_weights(w, start)


def static_config(config):
    """megatron-core's static BlendedDataset only skips torch.distributed without a cache path."""
    return dataclasses.replace(config, path_to_cache=None)


def same_item(a, b):
    assert int(a["dataset_id"]) == int(b["dataset_id"])
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        assert torch.equal(a[key], b[key]), key


def test_builder_gives_train_blend_and_per_domain_held_out_sets(corpus, tmp_path, built):
    assert isinstance(built.train, VelocityBlendedDataset) and len(built.train) == TRAIN
    assert built.train.datasets == built.train_per_domain
    assert all(isinstance(d, GPTDataset) and d.index_split == Split.valid for d in built.valid)
    assert built.test == [None, None, None]  # "90,10,0"
    # Held-out documents are exactly the ones megatron-core's own static build holds out, in
    # blend order, and none of them is trained on.
    config = static_config(make_config(corpus, tmp_path))
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [TRAIN, 100, 0], lambda: True, config)
    static = builder.build()
    for mine, theirs, train in zip(built.valid, static[1].datasets, built.train_per_domain):
        assert mine.dataset_path == theirs.dataset_path
        assert np.array_equal(mine.indices, theirs.indices)
        assert not set(mine.indices.tolist()) & set(train.indices.tolist())
    # A Megatron-LM --data-path list works as the blend.
    prefixes, weights = blend_from_data_path(["0.5", corpus.prefixes[0], "0.5", corpus.prefixes[1]])
    assert prefixes == corpus.prefixes[:2] and weights == [0.5, 0.5]
    # A prefix without its files is one error naming the flag and the file.
    missing = str(tmp_path / "no_such_domain")
    with pytest.raises(FileNotFoundError, match=f"--data-path {missing}: no {missing}.bin or "):
        blend_from_data_path(["0.5", corpus.prefixes[0], "0.5", missing])


def test_no_update_matches_megatron_static_blended_dataset(corpus, tmp_path, built):
    ds = built.train
    static = BlendedDataset(built.train_per_domain, WEIGHTS, TRAIN, static_config(ds.config))
    for i in range(0, 3000):
        same_item(ds[i], static[i])
    ds._index.materialize_all()
    assert np.array_equal(ds.dataset_index, static.dataset_index)
    assert np.array_equal(ds.dataset_sample_index, static.dataset_sample_index)


def test_prefix_stability_across_updates(built):
    ds = built.train
    seen = {}
    for start, w in UPDATES:
        for i in range(max(0, start - 300), start):
            seen[i] = ds[i]
        for i in range(start, start + 300):
            ds[i]  # prefetched with the old weights, then redrawn
        ds.update_weights(w, start)
    for i, item in seen.items():
        same_item(ds[i], item)


def test_per_segment_proportions_match_static_greedy(built):
    ds = built.train
    apply_updates(ds)
    ds._index.materialize_all()
    bounds = [0] + [s for s, _ in UPDATES] + [TRAIN]
    for (s, e), w in zip(zip(bounds[:-1], bounds[1:]), [WEIGHTS] + [w for _, w in UPDATES]):
        # What megatron-core's static BlendedDataset draws for these weights and this length
        # (its own helper: the static dataset itself would raise IndexError on the small
        # per-domain datasets here, which is the point of sizing them ourselves).
        static_index = np.zeros(e - s, np.int16)
        w = np.asarray(w, np.float64) / np.sum(w)
        helpers.build_blending_indices(static_index, np.zeros(e - s, np.int64), w, 3, e - s, False)
        got = np.bincount(ds.dataset_index[s:e], minlength=3)
        assert np.array_equal(got, np.bincount(static_index, minlength=3))
        assert np.array_equal(ds.dataset_index[s:e], static_index)
        assert np.all(np.abs(got - w * (e - s)) <= 1.5)


def test_jth_draw_of_a_domain_is_its_jth_sample(built):
    ds = built.train
    apply_updates(ds)
    seen = [0, 0, 0]
    for i in range(8_000):
        item = ds[i]
        d = int(item["dataset_id"])
        same_item(item, {"dataset_id": d, **ds.datasets[d][seen[d] % len(ds.datasets[d])]})
        seen[d] += 1
    assert np.array_equal(ds.domain_counts(8_000), seen)


def test_determinism_across_two_builds(corpus, tmp_path):
    a = build_velocity_datasets(make_config(corpus, tmp_path), TRAIN, update_window=1024).train
    b = build_velocity_datasets(make_config(corpus, tmp_path), TRAIN, update_window=4096).train
    apply_updates(a, read_ahead=50)
    apply_updates(b, read_ahead=500)
    for i in range(0, TRAIN, 97):
        same_item(a[i], b[i])
    for ds in (a, b):
        ds._index.materialize_all()
    assert np.array_equal(a.dataset_index, b.dataset_index)
    assert np.array_equal(a.dataset_sample_index, b.dataset_sample_index)


def test_state_round_trip_reproduces_every_index(corpus, tmp_path, built):
    live = built.train
    apply_updates(live)
    state = json.loads(json.dumps(live.state_dict()))
    fresh = build_velocity_datasets(make_config(corpus, tmp_path), TRAIN, update_window=1024).train
    fresh.load_state_dict(state)
    assert np.allclose(fresh.weights, UPDATES[-1][1] / np.sum(UPDATES[-1][1]))
    for i in (6_400, 6_401, 29_999, 0, 2_047, 2_048, 6_143):
        same_item(fresh[i], live[i])
    live._index.materialize_all()
    fresh._index.materialize_all()
    assert np.array_equal(fresh.dataset_index, live.dataset_index)
    assert np.array_equal(fresh.dataset_sample_index, live.dataset_sample_index)
    # The resumed run continues identically through a further update.
    live.update_weights([0.3, 0.3, 0.4], 20_000)
    fresh.update_weights([0.3, 0.3, 0.4], 20_000)
    for i in range(20_000, 20_200):
        same_item(fresh[i], live[i])


def test_epoch_wrap_around_tiny_domain_at_weight_near_one(corpus, tmp_path):
    # The tiny domain: a one-epoch train GPTDataset over the first few documents of domain 0.
    config = make_config(corpus, tmp_path)
    low_level = GPTDataset.build_low_level_dataset(corpus.prefixes[0], config)
    documents = np.arange(8, dtype=np.int32)
    tiny = GPTDataset(low_level, corpus.prefixes[0], documents, None, Split.train, config)
    big = build_velocity_datasets(config, 1000).train_per_domain[1:]
    ds = VelocityBlendedDataset([tiny, *big], [0.01, 0.5, 0.49], 20_000, config, update_window=512)
    for i in range(500):
        ds[i]
    ds.update_weights([0.98, 0.01, 0.01], 500)
    n = len(tiny)
    drawn = 0
    for i in range(500, 20_000):
        item = ds[i]  # never IndexError
        if int(item["dataset_id"]) == 0:
            j = int(ds.dataset_sample_index[i])
            assert j < n
            drawn += 1
    assert drawn > 10 * n  # the domain went round its epochs more than ten times
    counts = ds.domain_counts(20_000)
    assert counts[0] == drawn + np.count_nonzero(ds.dataset_index[:500] == 0)
    d, j = int(ds.dataset_index[19_999]), int(ds.dataset_sample_index[19_999])
    same_item(ds[19_999], {"dataset_id": d, **ds.datasets[d][j]})


def test_static_blended_dataset_raises_where_the_dynamic_one_wraps(built):
    # megatron-core's own behaviour on the same per-domain datasets: a blend that outgrows a
    # domain is an IndexError there.
    ds = built.train
    with pytest.raises(IndexError, match="oversamples"):
        BlendedDataset(ds.datasets, [0.1, 0.8, 0.1], TRAIN, static_config(ds.config))
    ds.update_weights([0.1, 0.8, 0.1], 0)
    ds._index.materialize_all()
    lengths = np.array([len(d) for d in ds.datasets])
    assert np.all(ds.dataset_sample_index < lengths[ds.dataset_index])


def test_bad_updates_and_options_are_refused(corpus, tmp_path, built):
    ds = built.train
    ds.update_weights([0.2, 0.2, 0.6], 1000)
    with pytest.raises(ValueError, match="before the last weight change"):
        ds.update_weights([0.3, 0.3, 0.4], 999)
    with pytest.raises(ValueError, match="finite and > 0"):
        ds.update_weights([0.3, 0.0, 0.7], 2000)
    with pytest.raises(ValueError, match="3 numbers"):
        ds.update_weights([0.5, 0.5], 2000)
    with pytest.raises(ValueError, match="needs a size"):
        VelocityBlendedDataset(ds.datasets, WEIGHTS, None, ds.config)
    with pytest.raises(IndexError):
        ds[TRAIN]
    same_item(ds[-1], ds[TRAIN - 1])
    config = make_config(corpus, tmp_path)
    config.defer_npy_index_mmap = True
    with pytest.raises(ValueError, match="defer_npy_index_mmap"):
        VelocityBlendedDataset(ds.datasets, WEIGHTS, TRAIN, config)


def _builder_worker(rank, world_size, prefixes, vocab_size, eod_id, cache):
    """Megatron-LM's layout in miniature: only rank 0 holds data (TP rank 0 of a stage)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tokenizer = DatasetTokenizer(vocab_size, eod_id)
    config = gpt_dataset_config(
        (prefixes, WEIGHTS), "90,10,0", SEQ, SEED, tokenizer, path_to_cache=cache
    )
    data = build_velocity_datasets(
        config, TRAIN, update_window=1024, is_built_on_rank=lambda: dist.get_rank() == 0
    )
    dist.barrier()
    if data.train is None:
        return None
    data.train.update_weights([0.1, 0.1, 0.8], 1000)
    return [data.train.dataset_index[:2000].tolist(), [len(v) for v in data.valid]]


@pytest.mark.slow
def test_builder_under_torch_distributed_builds_only_where_asked(corpus, tmp_path, built):
    from ._multiproc import run_distributed

    args = (list(corpus.prefixes), corpus.vocab_size, corpus.eod_id, str(tmp_path / "mp-cache"))
    results = run_distributed(_builder_worker, 2, args=args, timeout=120)
    assert results[1] is None
    index, valid_lengths = results[0]
    built.train.update_weights([0.1, 0.1, 0.8], 1000)
    built.train[1999]
    assert index == built.train.dataset_index[:2000].tolist()
    assert valid_lengths == [len(v) for v in built.valid]
