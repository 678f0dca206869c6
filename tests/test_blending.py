"""The piecewise greedy blend index: pure index maths against megatron-core's own greedy helper."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_velocitune.core.blending import BlendIndex, check_blend_weights, greedy_blend

BIG = 10**12  # a domain length nothing wraps around


def static_greedy(weights, n):
    """megatron-core's static BlendedDataset index for ``weights`` over ``n`` samples."""
    w = check_blend_weights(weights, len(weights))
    di, dsi = np.zeros(n, np.int16), np.zeros(n, np.int64)
    greedy_blend(di, dsi, w)
    return di, dsi


def read_all(index, order=None):
    """Read every position through the lazy path, as __getitem__ does."""
    for i in order if order is not None else range(index.size):
        if not index.lo <= i < index.hi:
            index.ensure(i)
    return index.dataset_index.copy(), index.dataset_sample_index.copy()


def recount(di, lengths, k):
    """The run-global draw number of every position, wrapped by the domain lengths."""
    out = np.empty(di.shape[0], np.int64)
    seen = np.zeros(k, np.int64)
    for i, d in enumerate(di):
        out[i] = seen[d] % lengths[d]
        seen[d] += 1
    return out


weights_st = st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5)


def test_no_update_is_megatron_static_blend_bit_for_bit():
    w = [0.5, 0.26, 0.19, 0.03, 0.02]
    di, dsi = static_greedy(w, 20_000)
    index = BlendIndex(w, 20_000, [BIG] * 5, update_window=777)
    got_di, got_dsi = read_all(index)
    assert np.array_equal(got_di, di) and np.array_equal(got_dsi, dsi)


def test_greedy_blend_refuses_arrays_the_helper_would_copy():
    w = np.array([0.5, 0.5])
    with pytest.raises(TypeError, match="int16"):
        greedy_blend(np.zeros(8, np.int32), np.zeros(8, np.int64), w)
    with pytest.raises(TypeError, match="int64"):
        greedy_blend(np.zeros(8, np.int16), np.zeros(16, np.int64)[::2], w)


@settings(max_examples=25, deadline=None)
@given(
    first=weights_st,
    data=st.data(),
    window=st.integers(1, 3000),
)
def test_segments_follow_the_static_greedy_and_carry_counts(first, data, window):
    k = len(first)
    size = 5_000
    index = BlendIndex(first, size, [BIG] * k, update_window=window)
    n_updates = data.draw(st.integers(1, 4))
    positions = st.integers(1, size - 1)
    starts = sorted(
        data.draw(st.lists(positions, min_size=n_updates, max_size=n_updates, unique=True))
    )
    history = [(0, first)]
    for s in starts:
        w = data.draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k))
        # Reads up to the update position come first, as in training.
        read_all(index, range(history[-1][0], s))
        if index.update(w, s):  # unchanged weights record no segment
            history.append((s, w))
    di, dsi = read_all(index)
    bounds = [s for s, _ in history] + [size]
    for (s, w), e in zip(history, bounds[1:]):
        # Per segment: exactly the domains megatron-core's static greedy draws for these
        # weights over this many samples (no catch-up burst for the past).
        ref_di, _ = static_greedy(w, e - s)
        assert np.array_equal(di[s:e], ref_di)
    # Run-global per-domain order: the j-th draw of domain d is its sample j.
    assert np.array_equal(dsi, recount(di, [BIG] * k, k))
    index.verify()


def test_prefix_stability_across_updates():
    size = 30_000
    index = BlendIndex([0.6, 0.3, 0.1], size, [BIG] * 3, update_window=1000)
    snapshots = []
    updates = [
        (1500, [0.1, 0.1, 0.8]),
        (4000, [0.2, 0.7, 0.1]),
        (4001, [0.3, 0.3, 0.4]),
        (12345, [0.9, 0.05, 0.05]),
    ]
    for p, w in updates:
        read_all(index, range(index.segments[-1].start, p + 50))  # prefetch past p, as workers do
        snapshots.append((p, index.dataset_index[:p].copy(), index.dataset_sample_index[:p].copy()))
        index.update(w, p)
    index.materialize_all()
    for p, di, dsi in snapshots:
        assert np.array_equal(index.dataset_index[:p], di)
        assert np.array_equal(index.dataset_sample_index[:p], dsi)


def test_epoch_wrap_around_for_any_weight():
    lengths = [7, 1000, 13]
    index = BlendIndex([0.01, 0.98, 0.01], 5000, lengths, update_window=100)
    read_all(index, range(0, 1000))
    index.update([0.98, 0.01, 0.01], 1000)  # domain 0 (7 samples) now takes ~98%
    di, dsi = read_all(index)
    assert np.array_equal(dsi, recount(di, lengths, 3))
    assert dsi.max() < max(lengths) and np.all(dsi < np.asarray(lengths)[di])
    assert np.bincount(di[1000:], minlength=3)[0] > 100 * lengths[0]


def test_counts_at_carries_and_sums_to_position():
    index = BlendIndex([0.5, 0.5], 10_000, [BIG, BIG], update_window=500)
    index.update([0.9, 0.1], 2000)
    index.update([0.2, 0.8], 6000)
    for p in (0, 1, 1999, 2000, 2001, 5999, 6000, 9999, 10_000):
        c = index.counts_at(p)
        assert c.sum() == p
        assert np.array_equal(c, np.bincount(read_all(index)[0][:p], minlength=2))


def test_unchanged_weights_record_nothing_and_same_start_replaces():
    index = BlendIndex([0.5, 0.5], 1000, [BIG, BIG])
    assert index.update([1.0, 1.0], 100) is False  # same blend once normalised
    assert len(index.segments) == 1
    assert index.update([0.9, 0.1], 100) is True
    assert index.update([0.1, 0.9], 100) is True
    assert [s.start for s in index.segments] == [0, 100]
    assert np.allclose(index.weights, [0.1, 0.9])


@pytest.mark.parametrize(
    "weights, start, match",
    [
        ([0.5, float("nan")], 10, "finite"),
        ([0.5, 0.0], 10, "finite and > 0"),
        ([0.5, -1.0], 10, "> 0"),
        ([0.5, 0.3, 0.2], 10, "2 numbers"),
        ([0.5, 0.5], 5, "before the last weight change at sample 9"),
        ([0.5, 0.5], 1001, "past the end"),
    ],
)
def test_update_rejects_bad_input(weights, start, match):
    index = BlendIndex([0.3, 0.7], 1000, [BIG, BIG])
    index.update([0.6, 0.4], 9)
    with pytest.raises(ValueError, match=match):
        index.update(weights, start)


def test_update_at_the_end_is_allowed_and_empty():
    index = BlendIndex([0.3, 0.7], 1000, [BIG, BIG])
    index.update([0.6, 0.4], 1000)
    assert index.counts_at(1000).sum() == 1000
    index.verify()


def test_state_round_trips_through_json_bit_for_bit():
    lengths = [50, 400, 3000]
    live = BlendIndex([0.2, 0.3, 0.5], 40_000, lengths, update_window=2000)
    for p, w in [(3000, [0.7, 0.2, 0.1]), (9000, [0.1, 0.1, 0.8]), (15000, [0.34, 0.33, 0.33])]:
        read_all(live, range(live.segments[-1].start, p + 100))
        live.update(w, p)
    state = json.loads(json.dumps(live.state_dict()))
    fresh = BlendIndex([0.2, 0.3, 0.5], 40_000, lengths, update_window=2000)
    fresh.load_state_dict(state)
    # Resume reads from the open segment without rebuilding the past ...
    assert fresh.lo == 15000
    # ... and any position, past included, equals the live run's.
    assert np.array_equal(read_all(fresh, range(39_999, -1, -1))[0], read_all(live)[0])
    assert np.array_equal(fresh.dataset_sample_index, live.dataset_sample_index)
    fresh.verify()


def test_reading_the_past_after_a_resume_reconnects_the_fast_range():
    live = BlendIndex([0.2, 0.8], 10_000, [BIG, BIG], update_window=500)
    for p in (1000, 2000, 3000):
        live.update([p / 1e4, 1 - p / 1e4], p)
    fresh = BlendIndex([0.2, 0.8], 10_000, [BIG, BIG], update_window=500)
    fresh.load_state_dict(live.state_dict())
    assert (fresh.lo, fresh.hi) == (3000, 3625)
    fresh.ensure(1500)  # one slow read builds segments 1 and 2 ...
    assert (fresh.lo, fresh.hi) == (1000, 3625)  # ... and the rest of them are fast reads


def test_replaying_recorded_updates_over_a_restored_history_is_a_no_op():
    calls = [(500, [0.5, 0.5]), (1000, [0.9, 0.1]), (1500, [0.9, 0.1]), (4000, [0.3, 0.7])]
    live = BlendIndex([0.5, 0.5], 10_000, [BIG, BIG], update_window=700)
    for start, w in calls:
        live.update(w, start)
    fresh = BlendIndex([0.5, 0.5], 10_000, [BIG, BIG], update_window=700)
    fresh.load_state_dict(live.state_dict())
    assert not any(fresh.update(w, start) for start, w in calls)
    assert fresh.state_dict() == live.state_dict()
    with pytest.raises(ValueError, match="before the last weight change"):
        fresh.update([0.5, 0.5], 1200)  # not what the history drew there


def test_load_rejects_foreign_or_tampered_state():
    index = BlendIndex([0.2, 0.8], 1000, [10, 10])
    index.update([0.5, 0.5], 100)
    state = index.state_dict()
    other = BlendIndex([0.2, 0.8], 999, [10, 10])
    with pytest.raises(ValueError, match="size"):
        other.load_state_dict(state)
    bad = json.loads(json.dumps(state))
    bad["segments"][1]["counts"] = [50, 49]
    with pytest.raises(ValueError, match="do not sum"):
        BlendIndex([0.2, 0.8], 1000, [10, 10]).load_state_dict(bad)
    bad = json.loads(json.dumps(state))
    bad["segments"][1]["counts"] = [70, 30]  # sums right, but not what the blend drew
    tampered = BlendIndex([0.2, 0.8], 1000, [10, 10])
    tampered.load_state_dict(bad)
    with pytest.raises(ValueError, match="carries counts"):
        tampered.verify()
