"""Policy functions against hand-computed values and their invariants (hypothesis)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_velocitune.core import policy as P


def test_velocity_hand_computed():
    # (L_t - L_target) / (L_init - L_target) for a half-way, a finished, a forgetting domain.
    v = P.velocity([2.5, 1.9, 3.2], [3.0, 2.0, 3.0], [2.0, 1.95, 2.5])
    assert v.tolist() == [0.5, 0.0, 1.0]


def test_velocity_update_hand_computed():
    w = np.array([0.5, 0.3, 0.2])
    new = P.velocity_update(w, [2.5, 1.9, 3.2], [3.0, 2.0, 3.0], [2.0, 1.95, 2.5])
    raw = [0.5 * math.exp(0.5), 0.3 * math.exp(0.0), 0.2 * math.exp(1.0)]
    assert new.tolist() == [r / sum(raw) for r in raw]


def test_dbl_update_hand_computed():
    w = np.array([0.25, 0.75])
    new = P.dbl_update(w, [2.4, 1.0], [2.0, 1.5])
    raw = [0.25 * math.exp(2.4 - 2.0), 0.75 * math.exp(0.0)]
    np.testing.assert_array_equal(new, np.array(raw) / sum(raw))


def test_ratio_update_hand_computed():
    w = np.array([0.6, 0.4])
    new = P.ratio_update(w, [1.5, 2.0], [3.0, 2.0])
    raw = [0.6 * math.exp(0.5), 0.4 * math.exp(1.0)]
    np.testing.assert_array_equal(new, np.array(raw) / sum(raw))


def test_static_is_identity_copy():
    w = np.array([0.1, 0.9])
    out = P.static_update(w)
    assert out is not w and out.tolist() == w.tolist()


def test_floor_zero_is_exact_and_positive_floor_lifts():
    w = np.array([0.999, 0.001, 0.0])
    assert P.apply_floor(w, 0.0) is w
    floored = P.apply_floor(w, 0.01)
    assert floored.min() >= 0.01 - 1e-15 and math.isclose(floored.sum(), 1.0)
    with pytest.raises(ValueError, match="min_weight"):
        P.apply_floor(w, 0.5)


def test_update_weights_dispatch_and_unknown():
    w, cur, ini, tgt = np.array([0.5, 0.5]), [2.0, 3.0], [3.0, 3.5], [1.0, 2.0]
    assert (
        P.update_weights("velocity", w, cur, ini, tgt).tolist()
        == P.velocity_update(w, cur, ini, tgt).tolist()
    )
    assert P.update_weights("dbl", w, cur, None, tgt).tolist() == P.dbl_update(w, cur, tgt).tolist()
    assert (
        P.update_weights("ratio", w, cur, ini, None).tolist()
        == P.ratio_update(w, cur, ini).tolist()
    )
    with pytest.raises(ValueError, match="unknown policy 'doremi'"):
        P.update_weights("doremi", w, cur, ini, tgt)


# --- invariants -----------------------------------------------------------------------------

K = st.integers(min_value=1, max_value=8)
FINITE = dict(allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw):
    k = draw(K)
    raw = draw(st.lists(st.floats(0.01, 1.0, **FINITE), min_size=k, max_size=k))
    weights = np.array(raw) / sum(raw)
    target = np.array(draw(st.lists(st.floats(0.5, 3.0, **FINITE), min_size=k, max_size=k)))
    gap = np.array(draw(st.lists(st.floats(0.01, 2.0, **FINITE), min_size=k, max_size=k)))
    current = np.array(draw(st.lists(st.floats(0.1, 6.0, **FINITE), min_size=k, max_size=k)))
    return weights, current, target + gap, target


ALL = ["velocity", "dbl", "ratio", "static"]


@settings(max_examples=200, deadline=None)
@given(problems(), st.sampled_from(ALL), st.sampled_from([0.0, 1e-3, 0.05]))
def test_output_on_simplex_and_floor_respected(problem, policy, floor):
    w, cur, ini, tgt = problem
    floor = min(floor, 0.5 / len(w))
    out = P.update_weights(policy, w, cur, ini, tgt, floor if policy != "static" else 0.0)
    assert out.shape == w.shape and np.all(np.isfinite(out))
    assert abs(out.sum() - 1.0) < 1e-12
    if policy != "static":
        assert out.min() >= floor - 1e-15


@settings(max_examples=200, deadline=None)
@given(problems(), st.sampled_from(ALL), st.randoms(use_true_random=False))
def test_permutation_equivariant(problem, policy, rnd):
    w, cur, ini, tgt = problem
    perm = list(range(len(w)))
    rnd.shuffle(perm)
    out = P.update_weights(policy, w, cur, ini, tgt)
    out_p = P.update_weights(policy, w[perm], cur[perm], ini[perm], tgt[perm])
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-12, atol=0)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_faster_domain_never_gains_relative_to_slower(problem):
    w, cur, ini, tgt = problem
    v = P.velocity(cur, ini, tgt)
    growth = P.velocity_update(w, cur, ini, tgt) / w
    for i in range(len(w)):
        for j in range(len(w)):
            # exp() cannot resolve velocity differences near the float64 epsilon (a V of 1e-16
            # is e^V == 1.0 exactly): those count as equal velocities.
            if v[i] - v[j] > 1e-12:
                assert growth[i] > growth[j]
            elif abs(v[i] - v[j]) <= 1e-15:
                assert math.isclose(growth[i], growth[j], rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_static_idempotent(problem):
    w, cur, ini, tgt = problem
    once = P.update_weights("static", w, cur, ini, tgt)
    twice = P.update_weights("static", once, cur * 2, ini, tgt)
    assert once.tolist() == w.tolist() == twice.tolist()


@settings(max_examples=200, deadline=None)
@given(problems())
def test_velocity_in_unit_interval(problem):
    _, cur, ini, tgt = problem
    v = P.velocity(cur, ini, tgt)
    assert np.all((v >= 0) & (v <= 1))
