"""The Cross-Domain D-CPT Law: shared-parameter recovery on synthetic domains, a held-out
domain predicted from its K alone, and K's estimation from early losses.
"""

import numpy as np
import pytest

from megatron_velocitune.laws.cross_domain_law import (
    CoefficientError,
    DomainPoints,
    EarlyLosses,
    early_losses,
    fit_cross_domain,
)
from megatron_velocitune.laws.dcpt_law import DEFAULT_EPS, choose_blend
from megatron_velocitune.laws.scaling_law import TooFewPointsError

TRUE = dict(E=0.6, B=300.0, eta=0.3, beta=0.35, C=0.25, gamma=0.5, F=1.2, mu=1.0)
W1, W2 = 6.0, 2.0  # K = W1 / k1 + W2 * k2
WINDOW = 4e6
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
TOKENS = np.geomspace(8e6, 4e8, 12)
# (k1, k2) of six domains: initial losses and early declines that spread K over ~1.5x.
FEATURES = {
    "code": (9.0, 0.40),
    "math": (7.0, 0.25),
    "law": (11.0, 0.45),
    "chem": (8.0, 0.20),
    "music": (10.0, 0.30),
    "medical": (6.5, 0.35),
}


def coefficient(k1, k2):
    return W1 / k1 + W2 * k2


def law(d, r, k, E, B, eta, beta, C, gamma, F, mu, eps=DEFAULT_EPS):
    r = np.asarray(r, dtype=np.float64)
    return E + B * r**eta / np.asarray(d) ** beta + C / (r + eps) ** gamma + F / k**mu


def domain(name, seed, noise=5e-4):
    rng = np.random.default_rng(seed)
    k1, k2 = FEATURES[name]
    d = np.tile(TOKENS, len(RATIOS))
    r = np.repeat(RATIOS, TOKENS.size)
    y = law(d, r, coefficient(k1, k2), **TRUE) * np.exp(rng.normal(0.0, noise, d.size))
    early = EarlyLosses(k1=k1, k2=k2, window_tokens=WINDOW, loss_at_window=k1 * (1 - k2))
    return DomainPoints(tokens=d, ratios=r, losses=y, early=early)


def test_recovers_shared_parameters_and_k_weights():
    fit = fit_cross_domain({n: domain(n, i) for i, n in enumerate(FEATURES)})
    for k, v in TRUE.items():
        if k != "F":
            assert getattr(fit, k) == pytest.approx(v, rel=0.03), k
    # Only the balance of w1 and w2 is identified: F absorbs their common scale c, so F is
    # compared in the true K's units (F_true = F * c^mu with K_true = c K).
    assert fit.w2 / fit.w1 == pytest.approx(W2 / W1, rel=0.03)
    scale = W1 / fit.w1
    assert fit.F * scale**fit.mu == pytest.approx(TRUE["F"], rel=0.03)
    for n, (k1, k2) in FEATURES.items():
        assert fit.coefficients[n] * scale == pytest.approx(coefficient(k1, k2), rel=0.03)
    assert fit.r2 > 0.999 and fit.num_points == len(FEATURES) * len(RATIOS) * TOKENS.size
    assert fit.domains == tuple(FEATURES) and fit.window_tokens == WINDOW


def test_held_out_domain_predicted_from_its_k():
    held = "music"
    train = {n: domain(n, i) for i, n in enumerate(FEATURES) if n != held}
    fit = fit_cross_domain(train)
    k1, k2 = FEATURES[held]
    k = fit.coefficient(EarlyLosses(k1, k2, WINDOW, k1 * (1 - k2)))
    d = np.repeat(TOKENS[[0, -1]], len(RATIOS))
    r = np.tile(RATIOS, 2)
    true = law(d, r, coefficient(k1, k2), **TRUE)
    pred = fit.predict(d, r, k)
    assert np.max(np.abs(pred - true)) < 0.01  # nats, on losses of 1.5-3.5
    # Without K (the mean offset of the training domains) the miss is far larger: K carries it.
    mean_k = float(np.mean(list(fit.coefficients.values())))
    assert np.max(np.abs(fit.predict(d, r, mean_k) - true)) > 5 * np.max(np.abs(pred - true))


def test_domain_law_feeds_the_blend_choice():
    train = {n: domain(n, i) for i, n in enumerate(FEATURES) if n != "music"}
    fit = fit_cross_domain(train)
    k1, k2 = FEATURES["music"]
    music = fit.domain_law(fit.coefficient(EarlyLosses(k1, k2, WINDOW, 0.0)))
    code = fit.domain_law(fit.coefficients["code"])
    assert float(music.predict(1e8, 0.4)) == pytest.approx(
        float(fit.predict(1e8, 0.4, fit.coefficient(EarlyLosses(k1, k2, WINDOW, 0.0))))
    )
    choice = choose_blend({"code": code, "music": music}, 1e8)
    assert choice.weights.sum() == pytest.approx(1.0) and choice.feasible


def test_coefficient_refuses_another_window():
    fit = fit_cross_domain({n: domain(n, i) for i, n in enumerate(list(FEATURES)[:3])})
    with pytest.raises(ValueError, match="window|tokens"):
        fit.coefficient(EarlyLosses(9.0, 0.4, 2 * WINDOW, 5.0))


def test_too_few_domains_and_points():
    with pytest.raises(TooFewPointsError, match="2 or more training domains"):
        fit_cross_domain({"code": domain("code", 0)})
    one_ratio = domain("math", 1)
    keep = one_ratio.ratios == 0.5
    flat = DomainPoints(
        one_ratio.tokens[keep], one_ratio.ratios[keep], one_ratio.losses[keep], one_ratio.early
    )
    with pytest.raises(TooFewPointsError, match="'math'.*1 ratios"):
        fit_cross_domain({"code": domain("code", 0), "math": flat})


def test_early_losses_reads_the_window():
    d = np.array([1e6, 2e6, 3e6, 4e6, 6e6])
    y = np.array([9.0, 8.0, 7.5, 7.0, 6.5])
    e = early_losses(d, y, 10.0, 3.5e6)
    assert e.k1 == 10.0 and e.loss_at_window == pytest.approx(7.25)
    assert e.k2 == pytest.approx(0.275)
    # Between D = 0 and the first evaluation the curve runs from the initial loss.
    assert early_losses(d, y, 10.0, 5e5).loss_at_window == pytest.approx(9.5)


@pytest.mark.parametrize(
    "losses, match",
    [
        ([10.0, 10.0, 10.0], "flat or rising"),
        ([10.2, 10.5, 10.9], "flat or rising"),
    ],
)
def test_early_losses_refuses_flat_or_rising(losses, match):
    with pytest.raises(CoefficientError, match=match):
        early_losses([1e6, 2e6, 3e6], losses, 10.0, 3e6)


def test_early_losses_needs_the_window_reached():
    with pytest.raises(CoefficientError, match="before the K window"):
        early_losses([1e6, 2e6], [9.0, 8.0], 10.0, 3e6)
