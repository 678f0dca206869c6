"""The D-CPT Law: each domain's loss as a function of data size and mixture ratio.

Que et al. 2024, "D-CPT Law: Domain-specific Continual Pre-Training Scaling Law for Large
Language Models" (arXiv:2406.01375) fit, separately for the domain-corpus loss and the
general-corpus loss, their preferred parameterisation

    L(N, D, r) = E + A / N^alpha + B * r^eta / D^beta + C / (r + eps)^gamma

where ``N`` is the model size, ``D`` the number of continual pre-training tokens and ``r`` the
share of *that loss's own corpus* in the training mixture (``r_d`` for the domain loss, ``r_g``
for the general loss). The ``C`` term makes a loss fall as its corpus's share grows (and stay
finite at ``r = 0`` thanks to ``eps``); the ``B`` term is the data term, whose coefficient grows
with ``r`` (``eta >= 0``) so that a larger share makes the loss fall faster with ``D``. With one
model size the ``A / N^alpha`` term is a constant and folds into ``E``, which is what this module
fits unless the points carry two or more model sizes.

Assumptions where the paper could not be checked here: ``eps`` is a fixed constant (default
:data:`DEFAULT_EPS`), not fitted; the fit is the same Huber-on-log-loss, L-BFGS-B, grid-of-starts
procedure as the Chinchilla target fit (:mod:`megatron_velocitune.laws.fitting`), as the paper
describes for its own fit; bounds keep every coefficient non-negative, ``beta`` and ``alpha`` in
``[0.01, 2]``, ``eta`` in ``[0, 2]`` and ``gamma`` in ``[0, 3]``.

Multi-domain reading of ``r`` (blends of more than two corpora): each domain's loss is fitted
with ``r`` = that domain's weight in the blend, and the general (replay) loss with ``r`` = the
replay domain's weight, exactly as the two-corpus law with the general share ``r_g = 1 - r_d``.
This assumes a domain's loss depends on the rest of the blend only through its own share (no
transfer between the new domains is modelled); when several replay domains are present each is
a domain of its own with its own share, and the general-loss constraint applies to each.

Pure numpy/scipy, no I/O.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import minimize

from megatron_velocitune.core.errors import InputError
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.fitting import (
    DEFAULT_HUBER_DELTA,
    fit_huber_log,
    huber_log_loss,
    r_squared,
    single_threaded_blas,
    start_grid,
)
from megatron_velocitune.laws.scaling_law import TooFewPointsError, loss_points

__all__ = [
    "DEFAULT_EPS",
    "ETA_BOUNDS",
    "BlendChoice",
    "DcptFit",
    "RatioChoice",
    "choose_blend",
    "choose_ratio",
    "fit_dcpt",
    "format_data_path",
    "ratio_for_limited_domain",
]

# Keeps C / (r + eps)^gamma finite for a corpus absent from the mixture (r = 0), e.g. the
# general loss of a run without replay.
DEFAULT_EPS = 0.01

# eta >= 0 is the paper's implicit trend: a larger share makes the loss fall faster with D
# (d^2 L / dD dr < 0).
ETA_BOUNDS: Tuple[float, float] = (0.0, 2.0)

_RATIO_GRID = np.linspace(0.001, 0.999, 999)


@dataclass(frozen=True)
class DcptFit:
    """A fitted D-CPT Law for one loss (a domain's or the general/replay loss).

    Attributes:
        E (float): constant (absorbs ``A / N^alpha`` when one model size was fitted).
        A (float): model-size coefficient (0 with one model size).
        alpha (float): model-size exponent (0 with one model size).
        B (float): data-term coefficient, raw token units.
        eta (float): ratio exponent of the data term.
        beta (float): data exponent.
        C (float): ratio-term coefficient.
        gamma (float): ratio exponent.
        eps (float): the fixed ratio offset.
        token_scale (float): largest fitted ``D`` (predictions beyond it extrapolate).
        size_scale (float): largest fitted ``N`` (1.0 with one model size).
        huber_loss (float): mean Huber loss of the log residuals on the fitted points.
        r2 (float): R^2 of the losses on the fitted points.
        num_points (int): points fitted.
        converged (bool): whether the best L-BFGS-B start reported success.
    """

    E: float
    A: float
    alpha: float
    B: float
    eta: float
    beta: float
    C: float
    gamma: float
    eps: float
    token_scale: float
    size_scale: float
    huber_loss: float
    r2: float
    num_points: int
    converged: bool

    def predict(self, tokens, ratio, model_size=None) -> np.ndarray:
        """Predicted loss after ``tokens`` tokens of a mixture with this corpus at ``ratio``.

        Args:
            tokens (array-like): training tokens ``D`` (> 0).
            ratio (array-like): this loss's corpus share ``r`` in [0, 1]; broadcasts with tokens.
            model_size (array-like, optional): ``N``; needed only if several sizes were fitted.

        Returns:
            np.ndarray: ``L(N, D, r)``.
        """
        d = np.asarray(tokens, dtype=np.float64)
        r = np.asarray(ratio, dtype=np.float64)
        out = (
            self.E
            + (self.B / self.token_scale**self.beta)
            * r**self.eta
            * (d / self.token_scale) ** (-self.beta)
            + self.C * (r + self.eps) ** (-self.gamma)
        )
        if self.A > 0.0:
            if model_size is None:
                raise ValueError("this law was fitted on several model sizes: give model_size")
            n = np.asarray(model_size, dtype=np.float64) / self.size_scale
            out = out + (self.A / self.size_scale**self.alpha) * n ** (-self.alpha)
        return out


def _terms(r: np.ndarray, x: np.ndarray, eps: float):
    # ln r is only needed where r > 0: at r = 0 the data term r^eta is 0 (eta > 0) or 1 (eta = 0)
    # and its eta-derivative is 0 either way.
    log_r = np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), 0.0)
    return log_r, np.log(x), np.log(r + eps)


def _make_model(eps: float, with_size: bool):
    def model(params: np.ndarray, inputs: Tuple[np.ndarray, ...]):
        # The logs of the inputs are computed once per fit, not once per evaluation.
        x, r, n, log_r, log_x, log_re, log_n = inputs
        e, b, eta, beta, c, gamma = params[:6]
        data_base = np.exp(eta * log_r - beta * log_x)
        if eta > 0:
            data_base = np.where(r > 0, data_base, 0.0)
        ratio_base = np.exp(-gamma * log_re)
        data, ratio = b * data_base, c * ratio_base
        pred = e + data + ratio
        # Columns: d pred / d (E, b, eta, beta, C, gamma).
        cols = [
            np.ones_like(x),
            data_base,
            data * log_r,
            -data * log_x,
            ratio_base,
            -ratio * log_re,
        ]
        if with_size:
            a, alpha = params[6:8]
            size_base = np.exp(-alpha * log_n)
            size = a * size_base
            pred = pred + size
            cols += [size_base, -size * log_n]
        return pred, np.stack(cols, axis=1)

    return model


def fit_dcpt(
    tokens: Sequence[float],
    ratios: Sequence[float],
    losses: Sequence[float],
    model_sizes: Optional[Sequence[float]] = None,
    eps: float = DEFAULT_EPS,
    delta: float = DEFAULT_HUBER_DELTA,
    eta_bounds: Tuple[float, float] = ETA_BOUNDS,
) -> DcptFit:
    """Fit the D-CPT Law to one loss's points from runs at several ratios.

    Args:
        tokens (Sequence[float]): training tokens ``D`` at each point (> 0).
        ratios (Sequence[float]): the share ``r`` of this loss's corpus in that run's blend.
        losses (Sequence[float]): the held-out loss at each point (> 0).
        model_sizes (Optional[Sequence[float]]): ``N`` per point; the ``A / N^alpha`` term is
            fitted only with two or more distinct sizes.
        eps (float): the fixed ratio offset.
        delta (float): Huber threshold on log-loss residuals.
        eta_bounds (Tuple[float, float]): bounds of ``eta``; a negative lower bound lets a
            larger share slow the data term (the "effective tokens r * D" reading), which the
            paper's form excludes; it needs every ratio > 0.

    Returns:
        DcptFit: the best fit over the start grid.

    Raises:
        TooFewPointsError: fewer than 2 distinct ratios, 3 distinct token counts, or fewer
            points than twice the number of parameters.
        ValueError: bad shapes or values.
    """
    d = np.asarray(tokens, dtype=np.float64)
    r = np.asarray(ratios, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if not (d.shape == r.shape == y.shape) or d.ndim != 1:
        raise ValueError(f"tokens {d.shape}, ratios {r.shape}, losses {y.shape} must match")
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("token counts must be finite and positive")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r > 1):
        raise ValueError("ratios must lie in [0, 1]")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("losses must be finite and positive")
    if eps <= 0:
        raise ValueError(f"eps {eps} must be > 0")
    if eta_bounds[0] < 0 and np.any(r == 0):
        raise ValueError("a negative eta needs every ratio > 0 (r^eta is infinite at r = 0)")
    n = np.ones_like(d) if model_sizes is None else np.asarray(model_sizes, dtype=np.float64)
    with_size = np.unique(n).size >= 2
    num_params = 8 if with_size else 6
    if np.unique(r).size < 2 or np.unique(d).size < 3 or d.size < 2 * num_params:
        raise TooFewPointsError(
            f"the D-CPT Law needs runs at 2+ ratios, 3+ token counts and {2 * num_params}+ "
            f"points; got {np.unique(r).size} ratios, {np.unique(d).size} token counts, "
            f"{d.size} points"
        )
    token_scale = float(d.max())
    size_scale = float(n.max())
    x = d / token_scale
    ns = n / size_scale
    y_min, y_max = float(y.min()), float(y.max())

    starts = []
    for e_frac, beta0, eta0, gamma0 in start_grid((0.5, 0.9), (0.2, 0.6), (0.1, 0.6), (0.1, 0.5)):
        e0 = e_frac * y_min
        rest = max(float(y.mean()) - e0, 1e-3)
        c0 = 0.5 * rest / float(np.mean((r + eps) ** (-gamma0)))
        b0 = 0.5 * rest / max(float(np.mean(r**eta0 * x ** (-beta0))), 1e-12)
        p = [e0, b0, eta0, beta0, c0, gamma0]
        if with_size:
            p += [0.1 * rest, 0.3]
        starts.append(np.array(p))
    bounds = [
        (1e-6, y_max),
        (0.0, 1e3 * y_max),
        tuple(eta_bounds),
        (0.01, 2.0),
        (0.0, y_max),
        (0.0, 3.0),
    ]
    if with_size:
        bounds += [(0.0, 1e3 * y_max), (0.01, 2.0)]
    model = _make_model(eps, with_size)
    inputs = (x, r, ns) + _terms(r, x, eps) + (np.log(ns),)
    outcome = fit_huber_log(model, inputs, y, starts, bounds, delta=delta)
    p = outcome.params
    pred, _ = model(p, inputs)
    a, alpha = (float(p[6]), float(p[7])) if with_size else (0.0, 0.0)
    return DcptFit(
        E=float(p[0]),
        A=a * size_scale**alpha,
        alpha=alpha,
        B=float(p[1]) * token_scale ** float(p[3]),
        eta=float(p[2]),
        beta=float(p[3]),
        C=float(p[4]),
        gamma=float(p[5]),
        eps=float(eps),
        token_scale=token_scale,
        size_scale=size_scale,
        huber_loss=huber_log_loss(pred, y, delta),
        r2=r_squared(pred, y),
        num_points=int(d.size),
        converged=outcome.converged,
    )


@dataclass(frozen=True)
class RatioChoice:
    """A chosen two-corpus mixture ratio and what the laws predict for it.

    Attributes:
        ratio (float): the domain corpus's share ``r_d`` (the general share is ``1 - ratio``).
        tokens (float): total training tokens ``D`` at which the losses are predicted.
        domain_loss (float): predicted domain loss.
        general_loss (Optional[float]): predicted general loss (None without a general law).
        general_limit (Optional[float]): the general loss allowed by the tolerance.
        feasible (bool): whether some ratio met the general-loss limit (if not, ``ratio`` is
            the one with the lowest general loss).
    """

    ratio: float
    tokens: float
    domain_loss: float
    general_loss: Optional[float]
    general_limit: Optional[float]
    feasible: bool


def _general_ok(general, general_initial, tolerance, tokens, ratio):
    if general is None:
        return None, None, np.ones_like(ratio, dtype=bool)
    if general_initial is None:
        raise ValueError("a general-loss constraint needs the general domain's initial loss")
    limit = float(general_initial) * (1.0 + tolerance)
    g = general.predict(tokens, 1.0 - ratio)
    return g, limit, g <= limit


def _pick(domain_loss, general_loss, ok, ratios, tokens, limit) -> RatioChoice:
    if np.any(ok):
        i = int(np.argmin(np.where(ok, domain_loss, np.inf)))
    else:
        i = int(np.argmin(general_loss))
    tok = float(np.broadcast_to(tokens, ratios.shape)[i])
    return RatioChoice(
        ratio=float(ratios[i]),
        tokens=tok,
        domain_loss=float(domain_loss[i]),
        general_loss=None if general_loss is None else float(general_loss[i]),
        general_limit=limit,
        feasible=bool(np.any(ok)),
    )


def choose_ratio(
    domain: DcptFit,
    general: Optional[DcptFit],
    tokens: float,
    general_initial: Optional[float] = None,
    tolerance: float = 0.01,
    ratios: Optional[np.ndarray] = None,
) -> RatioChoice:
    """The domain share minimising the domain loss at ``tokens`` with the general loss kept.

    The paper's first usage: the general loss, predicted with ``r_g = 1 - r``, must stay at or
    below ``general_initial * (1 + tolerance)``.

    Args:
        domain (DcptFit): the domain loss's law (``r`` = domain share).
        general (Optional[DcptFit]): the general loss's law (``r`` = general share); None
            drops the constraint.
        tokens (float): total training tokens.
        general_initial (Optional[float]): the general loss before continual pre-training.
        tolerance (float): relative increase of the general loss allowed.
        ratios (Optional[np.ndarray]): candidate domain shares (default: 0.001 .. 0.999).

    Returns:
        RatioChoice: the best feasible ratio (or the least-forgetting one if none is feasible).
    """
    ratios = _RATIO_GRID if ratios is None else np.asarray(ratios, dtype=np.float64)
    g, limit, ok = _general_ok(general, general_initial, tolerance, tokens, ratios)
    return _pick(domain.predict(tokens, ratios), g, ok, ratios, tokens, limit)


def ratio_for_limited_domain(
    domain: DcptFit,
    domain_tokens: float,
    general: Optional[DcptFit] = None,
    general_initial: Optional[float] = None,
    tolerance: float = 0.01,
    max_tokens: Optional[float] = None,
    ratios: Optional[np.ndarray] = None,
) -> RatioChoice:
    """The domain share for a domain with only ``domain_tokens`` of data (used once).

    The paper's data-limited usage: every domain token is seen once, so a share ``r`` means a
    run of ``D = domain_tokens / r`` tokens, the rest general data. A small share buys more
    general data (and a longer run); the law finds where the domain loss is lowest.

    Args:
        domain (DcptFit): the domain loss's law.
        domain_tokens (float): tokens of domain data available.
        general (Optional[DcptFit]): the general loss's law, for the optional constraint.
        general_initial (Optional[float]): the general loss before continual pre-training.
        tolerance (float): relative increase of the general loss allowed.
        max_tokens (Optional[float]): a compute cap on ``D`` (forces ``r >= domain_tokens /
            max_tokens``).
        ratios (Optional[np.ndarray]): candidate domain shares.

    Returns:
        RatioChoice: the chosen share, with ``tokens = domain_tokens / ratio``.
    """
    if domain_tokens <= 0:
        raise ValueError(f"domain_tokens {domain_tokens} must be > 0")
    ratios = _RATIO_GRID if ratios is None else np.asarray(ratios, dtype=np.float64)
    if max_tokens is not None:
        ratios = ratios[ratios >= domain_tokens / max_tokens]
        if ratios.size == 0:
            raise ValueError(
                f"max_tokens {max_tokens:.4g} is below domain_tokens {domain_tokens:.4g}"
            )
    tokens = domain_tokens / ratios
    g, limit, ok = _general_ok(general, general_initial, tolerance, tokens, ratios)
    return _pick(domain.predict(tokens, ratios), g, ok, ratios, tokens, limit)


@dataclass
class BlendChoice:
    """A blend over several domains chosen with the per-domain laws.

    Attributes:
        names (List[str]): domains in blend order.
        weights (np.ndarray): the blend (sums to 1).
        tokens (float): budget the losses are predicted at.
        losses (Dict[str, float]): predicted loss per domain at ``tokens`` with ``weights``.
        limits (Dict[str, float]): the general-loss limit of each replay domain.
        feasible (bool): whether every replay domain meets its limit.
        objective (float): mean of ``loss / reference`` over the non-replay domains.
    """

    names: List[str]
    weights: np.ndarray
    tokens: float
    losses: Dict[str, float] = field(default_factory=dict)
    limits: Dict[str, float] = field(default_factory=dict)
    feasible: bool = True
    objective: float = float("nan")


def choose_blend(
    laws: Dict[str, DcptFit],
    tokens: float,
    replay: Sequence[str] = (),
    initial: Optional[Dict[str, float]] = None,
    tolerance: float = 0.01,
    min_weight: float = 0.01,
    start: Optional[Sequence[float]] = None,
) -> BlendChoice:
    """A blend for more than two domains (the multi-domain reading of ``r``).

    Domain ``i``'s loss is ``laws[i].predict(tokens, w_i)``. Minimises the mean over the
    non-replay domains of ``loss / initial`` (relative, so no domain dominates by its scale;
    raw losses when ``initial`` is not given) subject to ``sum(w) = 1``, ``w >= min_weight`` and,
    for each replay domain ``j``, ``L_j <= initial_j * (1 + tolerance)``. SLSQP from the given
    start, the uniform blend and blends leaning on each domain; the best feasible result wins.

    Args:
        laws (Dict[str, DcptFit]): one law per domain, in blend order.
        tokens (float): total training tokens.
        replay (Sequence[str]): names of the replay (general) domains.
        initial (Optional[Dict[str, float]]): initial loss per domain (required for replay ones).
        tolerance (float): relative increase allowed for each replay domain's loss.
        min_weight (float): floor of every weight.
        start (Optional[Sequence[float]]): an extra starting blend (e.g. the default one).

    Returns:
        BlendChoice: the blend and its predicted losses.
    """
    names = list(laws)
    k = len(names)
    if k < 2:
        raise ValueError("a blend needs at least two domains")
    if not 0.0 <= min_weight * k < 1.0:
        raise ValueError(f"min_weight {min_weight} must be in [0, 1/{k})")
    unknown = [n for n in replay if n not in laws]
    if unknown:
        raise ValueError(f"replay domains {unknown} have no law (domains: {names})")
    initial = dict(initial or {})
    missing = [n for n in replay if n not in initial]
    if missing:
        raise ValueError(f"replay domains {missing} need an initial loss for the constraint")
    learn = [i for i, n in enumerate(names) if n not in replay]
    if not learn:
        raise ValueError("every domain is a replay domain: nothing to optimise")
    ref = np.array([initial.get(names[i], 1.0) for i in learn])
    rep = [i for i, n in enumerate(names) if n in replay]
    limits = {names[j]: initial[names[j]] * (1.0 + tolerance) for j in rep}

    def losses(w: np.ndarray) -> np.ndarray:
        return np.array([float(laws[n].predict(tokens, w[i])) for i, n in enumerate(names)])

    def objective(w: np.ndarray) -> float:
        return float(np.mean(losses(w)[learn] / ref))

    constraints = [{"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0)}]
    for j in rep:
        lim = limits[names[j]]
        # Scaled by the limit so SLSQP sees constraints of comparable size.
        constraints.append(
            {"type": "ineq", "fun": lambda w, j=j, lim=lim: (lim - losses(w)[j]) / lim}
        )
    starts = [np.full(k, 1.0 / k)]
    if start is not None:
        starts.append(np.asarray(start, dtype=np.float64) / np.sum(start))
    for i in range(k):
        lean = np.full(k, 0.5 / (k - 1))
        lean[i] = 0.5
        starts.append(lean)

    best: Optional[Tuple[bool, float, np.ndarray]] = None
    for w0 in starts:
        with single_threaded_blas():
            res = minimize(
                objective,
                np.clip(w0, min_weight, 1.0),
                method="SLSQP",
                bounds=[(min_weight, 1.0)] * k,
                constraints=constraints,
                options={"maxiter": 200, "ftol": 1e-10},
            )
        w = np.clip(res.x, min_weight, 1.0)
        w = w / w.sum()
        ls = losses(w)
        feasible = all(ls[j] <= limits[names[j]] * (1 + 1e-6) for j in rep)
        key = (
            not feasible,
            objective(w)
            if feasible
            else max((ls[j] - limits[names[j]]) / limits[names[j]] for j in rep),
        )
        if best is None or key < (not best[0], best[1]):
            best = (feasible, key[1], w)
    feasible, _, w = best
    ls = losses(w)
    return BlendChoice(
        names=names,
        weights=w,
        tokens=float(tokens),
        losses={n: float(ls[i]) for i, n in enumerate(names)},
        limits=limits,
        feasible=feasible,
        objective=objective(w),
    )


def format_data_path(prefixes: Sequence[str], weights: Sequence[float], digits: int = 4) -> str:
    """A ``--data-path`` blend string, ``"w1 prefix1 w2 prefix2 ..."``, weights summing to 1.

    Weights are rounded to ``digits`` decimals and the rounding remainder goes to the largest
    one, so the printed weights sum to exactly one at that precision (the blend check accepts
    1e-6).

    Args:
        prefixes (Sequence[str]): data prefixes in blend order.
        weights (Sequence[float]): positive weights (normalised here).
        digits (int): decimals printed.

    Returns:
        str: the blend string.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(prefixes) != w.size or w.size == 0 or np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"need one positive weight per prefix, got {list(w)} for {prefixes}")
    w = w / w.sum()
    scale = 10**digits
    units = np.floor(w * scale + 0.5).astype(np.int64)
    units = np.maximum(units, 1)
    units[int(np.argmax(units))] += scale - int(units.sum())
    return " ".join(f"{u / scale:.{digits}f} {p}" for u, p in zip(units, prefixes))


# ----------------------------------------------------------------------------- ratio runs
def static_points(
    trajectory: Trajectory, names: Sequence[str], min_tokens: float = 0.0
) -> Tuple[np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """A static run's blend and each domain's ``(tokens, losses)`` from ``min_tokens`` on.

    Args:
        trajectory (Trajectory): a parsed static run.
        names (Sequence[str]): domains wanted, in this order (all in the run).
        min_tokens (float): evaluations before this many tokens are dropped.

    Returns:
        Tuple[np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]: the blend in ``names``
        order (normalised over the run's domains) and the per-domain curves.

    Raises:
        ValueError: a domain is missing, the header has no weights, or they change.
    """
    t = trajectory
    missing = [n for n in names if n not in t.domains]
    if missing:
        raise ValueError(f"no domains {missing} (it has {t.domains})")
    w = t.header.get("weights")
    if w is None or len(w) != len(t.domains):
        raise ValueError(f"the header has no weights for its {len(t.domains)} domains")
    w = np.asarray(w, dtype=np.float64)
    for rec in t.updates:
        rw = rec.get("weights")
        if rw is not None and not np.allclose(rw, w, rtol=0, atol=1e-9):
            raise ValueError(
                f"weights change at iteration {rec.get('iteration')}: the law needs static runs"
            )
    w = w / w.sum()
    pts = loss_points(t, names)
    curves = {}
    for n in names:
        d, y = pts.domain(n)
        curves[n] = (d[d >= min_tokens], y[d >= min_tokens])
    return np.array([w[t.domains.index(n)] for n in names]), curves


def gather(
    paths: Sequence[str],
    runs: Sequence[Trajectory],
    names: Sequence[str],
    min_tokens: float = 0.0,
) -> Tuple[np.ndarray, List[Dict[str, Tuple[np.ndarray, np.ndarray]]]]:
    """Ratio runs as the law's points: each run's blend and per-domain curves.

    Args:
        paths (Sequence[str]): the runs' trajectory files (named in errors).
        runs (Sequence[Trajectory]): the parsed runs.
        names (Sequence[str]): domains wanted, in this order.
        min_tokens (float): evaluations before this many tokens are dropped.

    Returns:
        Tuple: the blends (runs x domains, ``names`` order) and each run's
        ``{domain: (tokens, losses)}``.

    Raises:
        InputError: a run that is not static or lacks a domain (its file named).
    """
    ratios, points = [], []
    for path, t in zip(paths, runs):
        try:
            blend, curves = static_points(t, names, min_tokens)
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
        ratios.append(blend)
        points.append(curves)
    return np.array(ratios), points


def fit_domain(
    name: str,
    ratios: np.ndarray,
    points: Sequence[Dict[str, Tuple[np.ndarray, np.ndarray]]],
    runs: Sequence[int],
    eps: float = DEFAULT_EPS,
    eta_bounds: Tuple[float, float] = ETA_BOUNDS,
) -> DcptFit:
    """One domain's law fitted on the ratio runs ``runs`` (indices into ``points``).

    Raises:
        InputError: too few points, or the fit failed (the domain named).
    """
    j = list(points[0]).index(name)
    d = np.concatenate([points[i][name][0] for i in runs])
    y = np.concatenate([points[i][name][1] for i in runs])
    r = np.concatenate([np.full(points[i][name][0].size, ratios[i, j]) for i in runs])
    try:
        return fit_dcpt(d, r, y, eps=eps, eta_bounds=eta_bounds)
    except (TooFewPointsError, ValueError) as e:
        raise InputError(f"domain {name!r}: {e}") from None
