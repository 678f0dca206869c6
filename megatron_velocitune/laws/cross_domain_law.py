"""The Cross-Domain D-CPT Law: a new domain's law from a short run, through a coefficient K.

Que et al. 2024, "D-CPT Law: Domain-specific Continual Pre-Training Scaling Law for Large
Language Models" (arXiv:2406.01375), extend the D-CPT Law (:mod:`megatron_velocitune.laws.dcpt_law`)
to domains that have no ratio runs with a Domain-specific Learnable Coefficient ``K``:

    L(N, D, r, K) = E + A / N^alpha + B * r^eta / D^beta + C / (r + eps)^gamma + F / K^mu

Every parameter but ``K`` is shared by the domains and fitted on the ratio runs of several
training domains; ``K`` is computed per domain from its early losses, so a new domain needs only
a short run (the paper: about 1% of a normal run's cost) to get its whole law.

**The definition of K, and where it comes from.** The primary text of the paper could not be
retrieved here (the search tools returned its abstract only). The definition used is the one a
secondary summary of the paper gives (paper notes in a public GitHub repository, summarising
the PDF of arXiv 2406.01375, section "Cross-Domain D-CPT Law"):

    "K = w1/k1 + w2 x k2 (k1 = initial val loss, k2 = rate of decline)", the representation
    the paper selects among several it compares ("K3").

That is: ``k1`` is the domain's validation loss before continual pre-training, ``k2`` the rate
at which it declines at the start of training, ``w1`` and ``w2`` fitted weights. A larger ``K``
(low initial loss, fast decline) means an easier domain and a lower ``F / K^mu``. What the
summary does not say, and this module therefore assumes:

* ``k2`` is the *relative* decline over a fixed early window of ``W`` tokens,
  ``k2 = (k1 - L(W)) / k1``, with ``L(W)`` read off the short run's evaluations (linear
  interpolation between the evaluations around ``W``, the initial loss at ``D = 0``). The
  window must be the same for every domain, training and new, so it is stored in the fit;
* ``F`` and ``(w1, w2)`` share a common scale (``F / (c K)^mu = (F / c^mu) / K^mu``), so only
  the balance of the two is fitted: ``K = (1 - lam) * (1/k1) / m1 + lam * k2 / m2`` with
  ``lam`` in ``[0, 1]`` and ``m1``, ``m2`` the training domains' means of ``1/k1`` and ``k2``
  (which keeps ``K`` near 1); the reported ``w1 = (1 - lam) / m1``, ``w2 = lam / m2``;
* one model size (the ``A / N^alpha`` term folds into ``E``), the same fixed ``eps``, bounds
  and Huber-on-log-loss fit as the standard law, ``F`` and ``mu`` non-negative
  (``mu`` in ``[0.01, 3]``).

With few training domains the ``F / K^mu`` term is poorly determined: each training domain
gives one constant offset, against the three parameters ``F``, ``mu`` and ``lam`` (and ``E``).
With two training domains the fit cannot separate them, and a new domain's offset is an
extrapolation the data do not pin down; :class:`CrossDomainFit` records how many domains it saw.

Pure numpy/scipy, no I/O.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import CoefficientError, TooFewPointsError
from megatron_velocitune.laws.dcpt_law import DEFAULT_EPS, ETA_BOUNDS, DcptFit
from megatron_velocitune.laws.fitting import (
    DEFAULT_HUBER_DELTA,
    fit_huber_log,
    huber_log_loss,
    r_squared,
    start_grid,
)

__all__ = [
    "DEFAULT_MIN_DECLINE",
    "CoefficientError",
    "CrossDomainFit",
    "DomainPoints",
    "EarlyLosses",
    "early_losses",
    "fit_cross_domain",
    "points_by_domain",
]

#: The smallest relative decline over the window from which K is estimated: a curve that falls
#: less than this (flat, or rising) says nothing about how learnable the domain is.
DEFAULT_MIN_DECLINE = 1e-3

# Bounds of mu (the exponent of K) and of the other cross-domain parameters.
_MU_BOUNDS = (0.01, 3.0)

_NUM_PARAMS = 9  # E, B, eta, beta, C, gamma, F, mu, lam


@dataclass(frozen=True)
class EarlyLosses:
    """The two features of a domain's early loss curve that define its K.

    Attributes:
        k1 (float): the validation loss before continual pre-training (``D = 0``).
        k2 (float): the relative decline over the window, ``(k1 - L(window)) / k1``.
        window_tokens (float): the window ``W`` the decline is measured over.
        loss_at_window (float): ``L(W)``.
    """

    k1: float
    k2: float
    window_tokens: float
    loss_at_window: float


def early_losses(
    tokens: Sequence[float],
    losses: Sequence[float],
    initial_loss: float,
    window_tokens: float,
    min_decline: float = DEFAULT_MIN_DECLINE,
) -> EarlyLosses:
    """``k1`` and ``k2`` of a domain from its evaluations in a short run.

    Args:
        tokens (Sequence[float]): training tokens of the evaluations (> 0).
        losses (Sequence[float]): the domain's held-out loss at each.
        initial_loss (float): the loss before training (``k1``, the curve's value at ``D = 0``).
        window_tokens (float): the window ``W`` (> 0); the evaluations must reach it.
        min_decline (float): the smallest relative decline accepted.

    Returns:
        EarlyLosses: ``k1``, ``k2`` and the loss read at the window.

    Raises:
        CoefficientError: no evaluation at or beyond ``W``, or a decline below ``min_decline``
            (a flat or rising early curve).
        ValueError: bad values.
    """
    d = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError(f"tokens {d.shape} and losses {y.shape} must be matching vectors")
    if not (np.isfinite(initial_loss) and initial_loss > 0):
        raise ValueError(f"initial loss {initial_loss} must be finite and positive")
    if not (np.isfinite(window_tokens) and window_tokens > 0):
        raise ValueError(f"window {window_tokens} must be a positive token count")
    keep = np.isfinite(y) & (d > 0)
    d, y = d[keep], y[keep]
    order = np.argsort(d)
    d, y = d[order], y[order]
    if d.size == 0 or d[-1] < window_tokens * (1 - 1e-9):
        reach = f"end at {d[-1]:.6g} tokens" if d.size else "are missing"
        raise CoefficientError(
            f"its evaluations {reach}, before the K window of {window_tokens:.6g} tokens"
        )
    at = float(
        np.interp(window_tokens, np.concatenate([[0.0], d]), np.concatenate([[initial_loss], y]))
    )
    k2 = (initial_loss - at) / initial_loss
    if k2 < min_decline:
        raise CoefficientError(
            f"its loss went from {initial_loss:.4f} to {at:.4f} over the first "
            f"{window_tokens:.6g} tokens (relative decline {k2:.2e} < {min_decline:g}): K cannot "
            "be estimated from a flat or rising early curve"
        )
    return EarlyLosses(
        k1=float(initial_loss), k2=float(k2), window_tokens=float(window_tokens), loss_at_window=at
    )


@dataclass(frozen=True)
class DomainPoints:
    """One training domain's points for the cross-domain fit.

    Attributes:
        tokens (np.ndarray): training tokens ``D`` of each point.
        ratios (np.ndarray): the domain's share ``r`` in that point's run.
        losses (np.ndarray): its held-out loss at each point.
        early (EarlyLosses): its K features, all domains over the same window.
    """

    tokens: np.ndarray
    ratios: np.ndarray
    losses: np.ndarray
    early: EarlyLosses


@dataclass(frozen=True)
class CrossDomainFit:
    """A fitted Cross-Domain D-CPT Law (shared parameters, and K's weights).

    Attributes:
        E (float): constant (absorbs ``A / N^alpha``: one model size).
        B (float): data-term coefficient, raw token units.
        eta (float): ratio exponent of the data term.
        beta (float): data exponent.
        C (float): ratio-term coefficient.
        gamma (float): ratio exponent.
        F (float): coefficient of the K term.
        mu (float): exponent of K.
        w1 (float): weight of ``1 / k1`` in K.
        w2 (float): weight of ``k2`` in K.
        eps (float): the fixed ratio offset.
        window_tokens (float): the window every K's ``k2`` is measured over.
        token_scale (float): largest fitted ``D``.
        domains (Tuple[str, ...]): the training domains.
        coefficients (Dict[str, float]): each training domain's K.
        huber_loss (float): mean Huber loss of the log residuals on the fitted points.
        r2 (float): R^2 of the losses on the fitted points.
        num_points (int): points fitted.
        converged (bool): whether the best L-BFGS-B start reported success.
    """

    E: float
    B: float
    eta: float
    beta: float
    C: float
    gamma: float
    F: float
    mu: float
    w1: float
    w2: float
    eps: float
    window_tokens: float
    token_scale: float
    domains: Tuple[str, ...]
    coefficients: Dict[str, float]
    huber_loss: float
    r2: float
    num_points: int
    converged: bool

    def coefficient(self, early: EarlyLosses) -> float:
        """A domain's K from its early losses (measured over this fit's window).

        Args:
            early (EarlyLosses): ``k1`` and ``k2`` of the domain.

        Returns:
            float: ``K = w1 / k1 + w2 * k2``.

        Raises:
            ValueError: ``early`` was measured over another window.
        """
        if not np.isclose(early.window_tokens, self.window_tokens, rtol=1e-9, atol=0):
            raise ValueError(
                f"k2 measured over {early.window_tokens:.6g} tokens; this law's K uses "
                f"{self.window_tokens:.6g}"
            )
        return self.w1 / early.k1 + self.w2 * early.k2

    def predict(self, tokens, ratio, coefficient: float) -> np.ndarray:
        """Predicted loss of a domain with coefficient ``K`` after ``tokens`` at share ``ratio``.

        Args:
            tokens (array-like): training tokens ``D`` (> 0).
            ratio (array-like): the domain's share ``r``; broadcasts with tokens.
            coefficient (float): the domain's K (> 0).

        Returns:
            np.ndarray: ``L(D, r, K)``.
        """
        return self.domain_law(coefficient).predict(tokens, ratio)

    def domain_law(self, coefficient: float) -> DcptFit:
        """The standard D-CPT Law of a domain with coefficient ``K`` (``E + F / K^mu`` as E).

        The blend and ratio choices of :mod:`megatron_velocitune.laws.dcpt_law` take it as is.

        Args:
            coefficient (float): the domain's K (> 0).

        Returns:
            DcptFit: the law, with this fit's quality figures.
        """
        if not (np.isfinite(coefficient) and coefficient > 0):
            raise ValueError(f"K {coefficient} must be finite and positive")
        return DcptFit(
            E=self.E + self.F * coefficient ** (-self.mu),
            A=0.0,
            alpha=0.0,
            B=self.B,
            eta=self.eta,
            beta=self.beta,
            C=self.C,
            gamma=self.gamma,
            eps=self.eps,
            token_scale=self.token_scale,
            size_scale=1.0,
            huber_loss=self.huber_loss,
            r2=self.r2,
            num_points=self.num_points,
            converged=self.converged,
        )


def _model(params: np.ndarray, inputs):
    x, r, u, v, log_r, log_x, log_re = inputs
    e, b, eta, beta, c, gamma, f, mu, lam = params
    data_base = np.exp(eta * log_r - beta * log_x)
    if eta > 0:
        data_base = np.where(r > 0, data_base, 0.0)
    ratio_base = np.exp(-gamma * log_re)
    k = (1.0 - lam) * u + lam * v
    log_k = np.log(k)
    k_base = np.exp(-mu * log_k)
    data, ratio, kterm = b * data_base, c * ratio_base, f * k_base
    pred = e + data + ratio + kterm
    cols = [
        np.ones_like(x),
        data_base,
        data * log_r,
        -data * log_x,
        ratio_base,
        -ratio * log_re,
        k_base,
        -kterm * log_k,
        -mu * kterm / k * (v - u),
    ]
    return pred, np.stack(cols, axis=1)


def fit_cross_domain(
    domains: Mapping[str, DomainPoints],
    eps: float = DEFAULT_EPS,
    delta: float = DEFAULT_HUBER_DELTA,
    eta_bounds: Tuple[float, float] = ETA_BOUNDS,
) -> CrossDomainFit:
    """Fit the shared parameters of the Cross-Domain D-CPT Law on several domains' ratio runs.

    Args:
        domains (Mapping[str, DomainPoints]): each training domain's points and K features
            (all over the same window).
        eps (float): the fixed ratio offset.
        delta (float): Huber threshold on log-loss residuals.
        eta_bounds (Tuple[float, float]): bounds of ``eta`` (see :func:`fit_dcpt`).

    Returns:
        CrossDomainFit: the best fit over the start grid.

    Raises:
        TooFewPointsError: fewer than 2 domains, a domain with fewer than 2 ratios or 3 token
            counts, or fewer than ``2 * 9`` points in all.
        ValueError: bad shapes or values, or windows that differ between domains.
    """
    names = list(domains)
    if len(names) < 2:
        raise TooFewPointsError(
            f"the cross-domain law needs 2 or more training domains, got {len(names)} {names}"
        )
    windows = {n: domains[n].early.window_tokens for n in names}
    if len({round(w, 6) for w in windows.values()}) != 1:
        raise ValueError(f"every domain's K must use the same window, got {windows}")
    ds, rs, ys, us, vs = [], [], [], [], []
    for n in names:
        p = domains[n]
        d = np.asarray(p.tokens, dtype=np.float64)
        r = np.asarray(p.ratios, dtype=np.float64)
        y = np.asarray(p.losses, dtype=np.float64)
        if not (d.shape == r.shape == y.shape) or d.ndim != 1:
            raise ValueError(f"domain {n!r}: tokens, ratios and losses must be matching vectors")
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            raise ValueError(f"domain {n!r}: token counts must be finite and positive")
        if not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r > 1):
            raise ValueError(f"domain {n!r}: ratios must lie in [0, 1]")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError(f"domain {n!r}: losses must be finite and positive")
        if np.unique(r).size < 2 or np.unique(d).size < 3:
            raise TooFewPointsError(
                f"domain {n!r}: the cross-domain law needs each training domain at 2+ ratios "
                f"and 3+ token counts; got {np.unique(r).size} ratios, {np.unique(d).size} "
                "token counts"
            )
        if not (p.early.k1 > 0 and p.early.k2 > 0):
            raise ValueError(f"domain {n!r}: k1 {p.early.k1} and k2 {p.early.k2} must be > 0")
        ds.append(d)
        rs.append(r)
        ys.append(y)
        us.append(np.full(d.size, 1.0 / p.early.k1))
        vs.append(np.full(d.size, p.early.k2))
    d, r, y = np.concatenate(ds), np.concatenate(rs), np.concatenate(ys)
    if d.size < 2 * _NUM_PARAMS:
        raise TooFewPointsError(
            f"the cross-domain law needs {2 * _NUM_PARAMS}+ points, got {d.size}"
        )
    if eps <= 0:
        raise ValueError(f"eps {eps} must be > 0")
    if eta_bounds[0] < 0 and np.any(r == 0):
        raise ValueError("a negative eta needs every ratio > 0 (r^eta is infinite at r = 0)")
    # K's two features normalised by their means, so that K stays near 1 whatever lam is.
    m1 = float(np.mean([1.0 / domains[n].early.k1 for n in names]))
    m2 = float(np.mean([domains[n].early.k2 for n in names]))
    u, v = np.concatenate(us) / m1, np.concatenate(vs) / m2
    token_scale = float(d.max())
    x = d / token_scale
    y_min, y_max = float(y.min()), float(y.max())
    log_r = np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), 0.0)
    inputs = (x, r, u, v, log_r, np.log(x), np.log(r + eps))

    starts = []
    for e_frac, beta0, eta0, gamma0, mu0, lam0 in start_grid(
        (0.3, 0.8), (0.2, 0.6), (0.1, 0.6), (0.2, 0.5), (0.5, 1.5), (0.3, 0.7)
    ):
        # The constant part of the smallest loss split between E and F / K^mu.
        e0, f0 = 0.5 * e_frac * y_min, 0.5 * e_frac * y_min
        rest = max(float(y.mean()) - e0 - f0, 1e-3)
        c0 = 0.5 * rest / float(np.mean((r + eps) ** (-gamma0)))
        b0 = 0.5 * rest / max(float(np.mean(r**eta0 * x ** (-beta0))), 1e-12)
        starts.append(np.array([e0, b0, eta0, beta0, c0, gamma0, f0, mu0, lam0]))
    bounds = [
        (0.0, y_max),
        (0.0, 1e3 * y_max),
        tuple(eta_bounds),
        (0.01, 2.0),
        (0.0, y_max),
        (0.0, 3.0),
        (0.0, y_max),
        _MU_BOUNDS,
        (0.0, 1.0),
    ]
    outcome = fit_huber_log(_model, inputs, y, starts, bounds, delta=delta)
    p = outcome.params
    pred, _ = _model(p, inputs)
    lam = float(p[8])
    w1, w2 = (1.0 - lam) / m1, lam / m2
    coefficients = {n: w1 / domains[n].early.k1 + w2 * domains[n].early.k2 for n in names}
    return CrossDomainFit(
        E=float(p[0]),
        B=float(p[1]) * token_scale ** float(p[3]),
        eta=float(p[2]),
        beta=float(p[3]),
        C=float(p[4]),
        gamma=float(p[5]),
        F=float(p[6]),
        mu=float(p[7]),
        w1=float(w1),
        w2=float(w2),
        eps=float(eps),
        window_tokens=float(next(iter(windows.values()))),
        token_scale=token_scale,
        domains=tuple(names),
        coefficients=coefficients,
        huber_loss=huber_log_loss(pred, y, delta),
        r2=r_squared(pred, y),
        num_points=int(d.size),
        converged=outcome.converged,
    )


def points_by_domain(
    names: Sequence[str],
    ratios: np.ndarray,
    points: Sequence[Mapping[str, Tuple[np.ndarray, np.ndarray]]],
    early: Mapping[str, EarlyLosses],
    runs: Optional[Sequence[int]] = None,
) -> Dict[str, DomainPoints]:
    """:class:`DomainPoints` per domain from ratio runs' per-domain curves.

    Args:
        names (Sequence[str]): the training domains (a subset of the runs' domains).
        ratios (np.ndarray): each run's blend (runs x the runs' domains, ``points``' order).
        points (Sequence[Mapping[str, Tuple[np.ndarray, np.ndarray]]]): each run's
            ``{domain: (tokens, losses)}`` in the runs' domain order.
        early (Mapping[str, EarlyLosses]): each training domain's K features.
        runs (Optional[Sequence[int]]): the runs to use (default: all).

    Returns:
        Dict[str, DomainPoints]: one entry per name.
    """
    runs = range(len(points)) if runs is None else runs
    order = list(points[0])
    out = {}
    for n in names:
        j = order.index(n)
        d = np.concatenate([points[i][n][0] for i in runs])
        y = np.concatenate([points[i][n][1] for i in runs])
        r = np.concatenate([np.full(points[i][n][0].size, ratios[i, j]) for i in runs])
        out[n] = DomainPoints(tokens=d, ratios=r, losses=y, early=early[n])
    return out
