"""The Chinchilla target-loss fit, the shared fitting machinery and the rising-domain rule."""

import numpy as np
import pytest

from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws import fitting
from megatron_velocitune.laws.scaling_law import (
    BETA_BOUNDS,
    TargetAboveInitialError,
    TooFewPointsError,
    fit_chinchilla,
    header_budget,
    held_out_error,
    initial_losses,
    loss_points,
    resolve_target,
)

E_TRUE, B_TRUE, BETA_TRUE = 1.8, 60.0, 0.3


def curve(tokens, e=E_TRUE, b=B_TRUE, beta=BETA_TRUE):
    return e + b * np.asarray(tokens, dtype=np.float64) ** (-beta)


def noisy(tokens, seed, rel_noise=0.001, **kw):
    rng = np.random.default_rng(seed)
    return curve(tokens, **kw) * np.exp(rng.normal(0.0, rel_noise, np.size(tokens)))


# ---------------------------------------------------------------------------- fitting machinery


def test_huber_is_quadratic_then_linear_and_continuous():
    d = 0.5
    r = np.array([0.0, 0.25, 0.5, 1.0, -2.0])
    np.testing.assert_allclose(fitting.huber(r, d), [0.0, 0.03125, 0.125, 0.375, 0.875])


def test_r_squared_perfect_and_constant():
    y = np.array([1.0, 2.0, 3.0])
    assert fitting.r_squared(y, y) == 1.0
    assert np.isnan(fitting.r_squared(y, np.ones(3)))


def test_fit_huber_log_ignores_an_outlier():
    # A line y = 2 + x fitted on log residuals; one point is 30% off. Huber keeps the fit on the
    # other points (least squares would tilt towards the outlier).
    x = np.linspace(0.0, 1.0, 20)
    y = 2.0 + x
    y[7] *= 1.3

    def model(p, x):
        return p[0] + p[1] * x, np.stack([np.ones_like(x), x], axis=1)

    out = fitting.fit_huber_log(
        model, x, y, fitting.start_grid((1.0, 3.0), (0.0, 2.0)), [(0.1, 10.0), (-5.0, 5.0)]
    )
    np.testing.assert_allclose(out.params, [2.0, 1.0], atol=1e-3)
    assert out.starts == 4 and out.converged


def test_fit_huber_log_rejects_bad_observations():
    def model(p, x):
        return p[0] + 0 * x, np.ones((x.size, 1))

    with pytest.raises(ValueError, match="positive"):
        fitting.fit_huber_log(
            model, np.ones(3), np.array([1.0, -1.0, 2.0]), [np.ones(1)], [(0.0, 5.0)]
        )


# ------------------------------------------------------------------------------ Chinchilla fit


@pytest.mark.parametrize("seed", range(4))
def test_fit_recovers_E_within_one_percent(seed):
    # The acceptance test: known (E, B, beta), 0.1% multiplicative noise, 40
    # evaluations over three decades of tokens.
    d = np.geomspace(1e6, 1e9, 40)
    fit = fit_chinchilla(d, noisy(d, seed))
    assert abs(fit.E - E_TRUE) / E_TRUE < 0.01
    assert abs(fit.beta - BETA_TRUE) < 0.03
    assert abs(fit.B - B_TRUE) / B_TRUE < 0.25
    assert fit.r2 > 0.999 and fit.num_points == 40 and fit.max_tokens == d.max()


def test_fit_is_exact_without_noise_and_predicts_scalars_and_arrays():
    d = np.geomspace(1e5, 1e8, 25)
    fit = fit_chinchilla(d, curve(d))
    assert fit.E == pytest.approx(E_TRUE, rel=1e-4)
    assert fit.beta == pytest.approx(BETA_TRUE, rel=1e-4)
    assert float(fit.predict(3e9)) == pytest.approx(float(curve(3e9)), rel=1e-5)
    assert fit.predict([1e6, 1e7]).shape == (2,)


def test_fit_on_first_half_predicts_the_second_half():
    # The paper's protocol: fit up to half the budget, measure the error on the rest.
    budget = 4e8
    d = np.linspace(budget / 40, budget, 40)
    y = noisy(d, 7)
    held = held_out_error(d, y, 0.5 * budget)
    assert held.fit.num_points == 20 and held.tokens.size == 20
    assert np.all(held.tokens > 0.5 * budget)
    assert held.mae < 5e-3 and held.final_error < 1e-2
    assert float(held.fit.predict(budget)) == pytest.approx(float(curve(budget)), abs=1e-2)


def test_fit_respects_bounds_on_a_rising_curve():
    # A replay domain that forgets: the law cannot rise (B >= 0), so it goes flat.
    d = np.geomspace(1e6, 1e8, 12)
    y = 3.0 + 0.05 * np.log10(d / 1e6)
    fit = fit_chinchilla(d, y)
    assert fit.E > 0 and fit.B >= 0 and BETA_BOUNDS[0] <= fit.beta <= BETA_BOUNDS[1]
    assert float(fit.predict(1e9)) >= y.min()


def test_too_few_points_is_a_clear_error():
    with pytest.raises(TooFewPointsError, match="at least 4 points"):
        fit_chinchilla([1e6, 2e6, 3e6], [3.0, 2.9, 2.8])
    with pytest.raises(TooFewPointsError, match="distinct"):
        fit_chinchilla([1e6, 1e6, 2e6, 2e6], [3.0, 2.9, 2.8, 2.7])
    d = np.linspace(1e6, 1e7, 10)
    with pytest.raises(TooFewPointsError, match="at or before"):
        held_out_error(d, curve(d), cutoff_tokens=2.5e6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        fit_chinchilla([0.0, 1.0, 2.0, 3.0], [3.0, 2.9, 2.8, 2.7])
    with pytest.raises(ValueError, match="one length"):
        fit_chinchilla([1.0, 2.0, 3.0, 4.0], [3.0, 2.9])


# ------------------------------------------------------------------------------ target rule


def test_refuse_rejects_a_target_at_or_above_initial():
    with pytest.raises(TargetAboveInitialError, match="not below the initial loss"):
        resolve_target(3.1, 3.0, "refuse", name="web")
    with pytest.raises(TargetAboveInitialError):
        resolve_target(3.0, 3.0, "refuse")


def test_refuse_passes_a_good_target_and_flags_a_marginal_one():
    ok = resolve_target(2.5, 3.0)
    assert ok.target == 2.5 and not ok.rule_applied and ok.note == ""
    marginal = resolve_target(2.99, 3.0)
    assert marginal.target == 2.99 and "sensitive" in marginal.note


def test_hold_initial_keeps_targets_strictly_below_initial():
    d = resolve_target(3.2, 3.0, "hold-initial", margin=0.02)
    assert d.rule_applied and d.target == pytest.approx(2.94) and d.predicted == 3.2
    assert "hold-initial" in d.note
    # A prediction already margin below the initial loss is kept as is.
    assert resolve_target(2.5, 3.0, "hold-initial").target == 2.5


def test_hold_initial_makes_forgetting_raise_velocity_to_one():
    # The DESIGN trap: with the hold-initial target, a replay domain whose loss rose has V = 1.
    from megatron_velocitune.core.policy import velocity

    target = resolve_target(3.2, 3.0, "hold-initial").target
    v = velocity([3.1, 3.0, 2.985, 2.96], [3.0] * 4, [target] * 4)
    assert v[0] == 1.0 and v[1] == 1.0 and 0.0 < v[2] < 1.0 and v[3] == 0.0


def test_resolve_target_without_initial_and_bad_args():
    assert resolve_target(2.0, None).note.startswith("initial loss unknown")
    with pytest.raises(ValueError, match="rule"):
        resolve_target(2.0, 3.0, "clamp")
    with pytest.raises(ValueError, match="margin"):
        resolve_target(2.0, 3.0, "hold-initial", margin=0.0)
    with pytest.raises(ValueError, match="finite"):
        resolve_target(float("nan"), 3.0)


# ------------------------------------------------------------------------ trajectory helpers


def _trajectory(initial=None, zero=None):
    header = dict(
        type="header",
        domains=["a", "b"],
        weights=[0.5, 0.5],
        initial_loss=initial,
        train_iters=10,
        global_batch_size=4,
        seq_length=8,
    )
    updates = []
    if zero is not None:
        updates.append(dict(type="update", iteration=0, consumed_tokens=0, eval_loss=zero))
    for it in (2, 4, 6):
        updates.append(
            dict(
                type="update",
                iteration=it,
                consumed_tokens=it * 32,
                eval_loss=[3.0 - 0.1 * it, None],
            )
        )
    updates.append(dict(type="update", iteration=8, consumed_tokens=256, eval_loss=None))
    return Trajectory(header, updates)


def test_loss_points_budget_and_initial():
    t = _trajectory(zero=[3.5, 4.0])
    pts = loss_points(t)
    assert pts.tokens.tolist() == [0, 64, 128, 192] and pts.losses.shape == (4, 2)
    d, y = pts.domain("a")
    assert d.tolist() == [64, 128, 192] and y.tolist() == pytest.approx([2.8, 2.6, 2.4])
    assert pts.domain("b")[0].size == 0
    assert header_budget([t]) == 320.0
    assert initial_losses([t], ["b", "a"]) == [4.0, 3.5]
    assert initial_losses([_trajectory(initial=[3.3, 3.4], zero=[9.0, 9.0])], ["a"]) == [3.3]
    assert initial_losses([_trajectory()], ["a"]) == [None]
    with pytest.raises(ValueError, match="not in the run"):
        loss_points(t, ["c"])
