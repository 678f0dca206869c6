"""The D-CPT Law: parameter recovery, held-out ratio prediction, and the blend choices."""

import numpy as np
import pytest

from megatron_velocitune.laws.dcpt_law import (
    DEFAULT_EPS,
    DcptFit,
    choose_blend,
    choose_ratio,
    fit_dcpt,
    format_data_path,
    ratio_for_limited_domain,
)
from megatron_velocitune.laws.scaling_law import TooFewPointsError

TRUE = dict(E=1.5, B=300.0, eta=0.4, beta=0.35, C=0.25, gamma=0.5)
RATIOS = (0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
TOKENS = np.geomspace(2e6, 5e8, 16)

# Relative tolerance per recovered parameter at 0.1% noise: the asymptote and the exponents are
# well determined; C trades off against E and gamma through the ratio axis only.
TOL = dict(E=0.02, B=0.05, eta=0.05, beta=0.03, C=0.08, gamma=0.06)


def law(d, r, E, B, eta, beta, C, gamma, eps=DEFAULT_EPS):
    return E + B * np.asarray(r) ** eta / np.asarray(d) ** beta + C / (np.asarray(r) + eps) ** gamma


def points(ratios, seed, noise=0.001, params=TRUE):
    rng = np.random.default_rng(seed)
    d = np.tile(TOKENS, len(ratios))
    r = np.repeat(ratios, TOKENS.size)
    y = law(d, r, **params) * np.exp(rng.normal(0.0, noise, d.size))
    return d, r, y


def make(**kw) -> DcptFit:
    base = dict(
        A=0.0,
        alpha=0.0,
        eps=DEFAULT_EPS,
        token_scale=1.0,
        size_scale=1.0,
        huber_loss=0.0,
        r2=1.0,
        num_points=0,
        converged=True,
    )
    base.update(kw)
    return DcptFit(**base)


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_recovers_parameters(seed):
    fit = fit_dcpt(*points(RATIOS, seed))
    for k, tol in TOL.items():
        assert getattr(fit, k) == pytest.approx(TRUE[k], rel=tol), k
    assert fit.A == 0.0 and fit.r2 > 0.999 and fit.num_points == len(RATIOS) * TOKENS.size


def test_fit_predicts_a_held_out_ratio():
    # Leave r = 0.5 out of the fit; the law predicts that run's losses within 0.5%.
    fit = fit_dcpt(*points([r for r in RATIOS if r != 0.5], 3))
    truth = law(TOKENS, 0.5, **TRUE)
    rel = np.abs(fit.predict(TOKENS, 0.5) - truth) / truth
    assert rel.max() < 5e-3
    # And at a larger budget than any run saw (extrapolation in D).
    assert float(fit.predict(2e9, 0.5)) == pytest.approx(float(law(2e9, 0.5, **TRUE)), rel=0.01)


def test_fit_with_several_model_sizes_fits_the_N_term():
    # Three sizes: with two, A / N^alpha is a line through two points and alpha is free.
    rng = np.random.default_rng(5)
    d, r, _ = points(RATIOS[::2], 0)
    d, r = np.tile(d, 3), np.tile(r, 3)
    n = np.repeat([1e8, 4e8, 1.6e9], d.size // 3)
    y = (law(d, r, **TRUE) + 2.0 * (n / 1e8) ** -0.3) * np.exp(rng.normal(0, 5e-4, d.size))
    fit = fit_dcpt(d, r, y, model_sizes=n)
    assert fit.A > 0 and fit.alpha > 0
    pred = fit.predict(TOKENS, 0.5, model_size=2e8)
    truth = law(TOKENS, 0.5, **TRUE) + 2.0 * 2.0**-0.3
    assert np.max(np.abs(pred - truth) / truth) < 0.01
    with pytest.raises(ValueError, match="model_size"):
        fit.predict(TOKENS, 0.5)


def test_fit_handles_a_run_without_general_data():
    # The general loss of a run with no replay (r_g = 0) is finite thanks to eps.
    d, r, y = points((0.0, 0.3, 0.6, 0.9), 2)
    fit = fit_dcpt(d, r, y)
    assert np.isfinite(fit.predict(1e8, 0.0))
    with pytest.raises(ValueError, match="negative eta"):
        fit_dcpt(d, r, y, eta_bounds=(-1.0, 2.0))


def test_too_few_runs_or_points():
    d, r, y = points((0.5,), 0)
    with pytest.raises(TooFewPointsError, match="2\\+ ratios"):
        fit_dcpt(d, r, y)
    with pytest.raises(TooFewPointsError):
        fit_dcpt([1e6, 2e6, 3e6, 1e6], [0.2, 0.2, 0.2, 0.5], [3.0, 2.9, 2.8, 3.1])
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        fit_dcpt([1e6] * 12, [1.5] * 12, [3.0] * 12)


# --------------------------------------------------------------------------- practical usages

DOMAIN = make(E=1.5, B=300.0, eta=0.4, beta=0.35, C=0.25, gamma=0.5)
GENERAL = make(E=2.4, B=50.0, eta=0.3, beta=0.3, C=0.08, gamma=0.6)


def test_choose_ratio_meets_the_general_limit_at_its_edge():
    c = choose_ratio(DOMAIN, GENERAL, 1e9, general_initial=2.75, tolerance=0.01)
    assert c.feasible and c.general_loss <= c.general_limit == pytest.approx(2.7775)
    # Minimal domain loss: the next larger share on the grid would break the limit.
    assert float(GENERAL.predict(1e9, 1 - (c.ratio + 0.001))) > c.general_limit
    assert c.domain_loss == pytest.approx(float(DOMAIN.predict(1e9, c.ratio)))
    # Without the constraint the domain takes (nearly) everything.
    assert choose_ratio(DOMAIN, None, 1e9).ratio > c.ratio


def test_choose_ratio_infeasible_returns_least_forgetting():
    c = choose_ratio(DOMAIN, GENERAL, 1e9, general_initial=2.0, tolerance=0.0)
    assert not c.feasible and c.ratio == pytest.approx(0.001)
    with pytest.raises(ValueError, match="initial"):
        choose_ratio(DOMAIN, GENERAL, 1e9)


def test_ratio_for_limited_domain_is_an_interior_optimum():
    c = ratio_for_limited_domain(DOMAIN, 1e8)
    assert 0.05 < c.ratio < 0.95 and c.tokens == pytest.approx(1e8 / c.ratio)
    grid = np.linspace(0.001, 0.999, 999)
    assert c.domain_loss == pytest.approx(DOMAIN.predict(1e8 / grid, grid).min())
    capped = ratio_for_limited_domain(DOMAIN, 1e8, max_tokens=1.25e8)
    assert capped.ratio >= 0.8 - 1e-9
    with pytest.raises(ValueError, match="max_tokens"):
        ratio_for_limited_domain(DOMAIN, 1e8, max_tokens=5e7)


def test_choose_blend_three_domains_with_replay_constraint():
    other = make(E=1.2, B=100.0, eta=0.2, beta=0.3, C=0.1, gamma=0.4)
    laws = {"code": DOMAIN, "math": other, "web": GENERAL}
    init = {"code": 3.0, "math": 2.5, "web": 2.75}
    b = choose_blend(laws, 1e9, replay=["web"], initial=init, tolerance=0.01, min_weight=0.02)
    assert b.feasible and b.weights.sum() == pytest.approx(1.0) and b.weights.min() >= 0.02 - 1e-9
    assert b.losses["web"] <= b.limits["web"] * (1 + 1e-6)
    # Better for the new domains than the uniform blend, which also keeps web within its limit.
    uniform = np.full(3, 1 / 3)
    assert float(GENERAL.predict(1e9, 1 / 3)) <= b.limits["web"]
    uni_obj = np.mean(
        [float(DOMAIN.predict(1e9, 1 / 3)) / 3.0, float(other.predict(1e9, 1 / 3)) / 2.5]
    )
    assert b.objective < uni_obj
    assert b.names == ["code", "math", "web"] and uniform.size == 3
    with pytest.raises(ValueError, match="initial loss"):
        choose_blend(laws, 1e9, replay=["web"])
    with pytest.raises(ValueError, match="no law"):
        choose_blend(laws, 1e9, replay=["stack"], initial=init)


def test_format_data_path_sums_to_one():
    s = format_data_path(["a", "b", "c"], [1.0, 1.0, 1.0])
    parts = s.split()
    assert parts[1::2] == ["a", "b", "c"]
    assert sum(float(w) for w in parts[0::2]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError):
        format_data_path(["a"], [0.0])
