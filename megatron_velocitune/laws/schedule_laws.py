"""Loss laws that know the learning-rate schedule (targets for continual pre-training).

Two laws beside the Chinchilla data term of :mod:`megatron_velocitune.laws.scaling_law`, each a
short function fitted with :func:`megatron_velocitune.laws.fitting.fit_huber_log` (Huber loss on
log-loss residuals, L-BFGS-B from a grid of starts):

* the learning-rate annealing law of Tissue et al. (2024), "Scaling Law with Learning Rate
  Annealing" (arXiv:2408.11029), Eq. 1: ``L(s) = L0 + A * S1^-alpha - C * S2``, ``S1`` the
  forward area (the sum of the learning rates of steps ``1..s``) and ``S2`` the annealing area
  ``S2 = sum_{i<=s} m_i``, ``m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i)``, with the momentum's
  decay factor ``lambda`` (the paper's default 0.999); see :func:`lr_areas`;
* the continual pre-training law of Wang et al. (2025), "Learning Dynamics in Continual
  Pre-Training for Large Language Models" (ICML 2025, arXiv:2505.07796): the hidden
  pre-training curve continued over the CPT steps plus a distribution-shift term,
  ``L(s) = L0 + A * (S1_pt + S1)^-alpha - C * S2 + B * (1 - (1 + E * S1)^-beta)``, ``S1`` the
  CPT's own forward area and ``S1_pt`` the pre-training's; ``B > 0`` for a replay domain whose
  loss rises, ``B < 0`` for a new domain. Here ``L0`` is not free: the law is anchored at the
  measured starting loss, ``L(0) = L_init``, so ``L0 = L_init - A * S1_pt^-alpha``
  (:func:`cpt_law`).

The annealing coefficient ``C`` is identifiable only where the learning rate decays inside the
fitted window. A constant-LR proxy (``S2 == 0`` throughout) cannot tell it, and the fits then fix
it (``fixed_c``, default 0: no annealing bonus), which is what the tool does; a non-zero ``C``
has to come from elsewhere, e.g. the annealing law fitted to the base model's own decaying-LR
curve or to a short cooldown branch of the proxy, and is passed in as ``fixed_c``. With ``C = 0``
and a constant LR the annealing law is the Chinchilla data term in steps instead of tokens.

Pure numpy/scipy, no I/O, no torch.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import InputError, TooFewPointsError
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.fitting import (
    DEFAULT_HUBER_DELTA,
    fit_huber_log,
    huber_log_loss,
    r_squared,
    start_grid,
)

__all__ = [
    "ANNEALING_ALPHA_BOUNDS",
    "DEFAULT_ANNEALING_DECAY",
    "LawFit",
    "ScheduleInputs",
    "annealing_law",
    "cpt_law",
    "fit_annealing_law",
    "fit_cpt_law",
    "MissingLearningRateError",
    "lr_areas",
    "trajectory_schedule",
]

#: Tissue et al.'s default decay factor of the annealing momentum.
DEFAULT_ANNEALING_DECAY = 0.999

# As Chinchilla's beta: exclude the degenerate ends (a second constant; a step).
ANNEALING_ALPHA_BOUNDS: Tuple[float, float] = (0.01, 2.0)

# A relative width under which a parameter counts as sitting on its bound.
_AT_BOUND_RTOL = 1e-4


def lr_areas(lrs: Sequence[float], decay: float = DEFAULT_ANNEALING_DECAY):
    """Forward area ``S1`` and annealing area ``S2`` after every step of a schedule.

    Tissue et al. (2024), Eq. 1 and its definitions: ``S1_s = sum_{i=1..s} eta_i`` and
    ``S2_s = sum_{i=1..s} m_i`` with ``m_i = decay * m_{i-1} + (eta_{i-1} - eta_i)``, ``m_0 = 0``
    and ``eta_0 = eta_1``. The paper's schedules anneal from their peak; here a rise of the
    learning rate (a warm-up, a re-warming) counts as no annealing, ``max(eta_{i-1} - eta_i, 0)``,
    so a warm-up adds to ``S1`` only.

    Args:
        lrs (Sequence[float]): the learning rate of steps ``1..n``.
        decay (float): the momentum's decay factor ``lambda`` in [0, 1).

    Returns:
        Tuple[np.ndarray, np.ndarray]: ``S1`` and ``S2`` after each step, shape (n,) each.
    """
    eta = np.asarray(lrs, dtype=np.float64)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"annealing decay {decay} must be in [0, 1)")
    drop = np.maximum(np.concatenate([[0.0], eta[:-1] - eta[1:]]), 0.0)
    m = np.empty_like(eta)
    acc = 0.0
    for i, d in enumerate(drop):
        acc = decay * acc + d
        m[i] = acc
    return np.cumsum(eta), np.cumsum(m)


@dataclass(frozen=True)
class ScheduleInputs:
    """Where a law is evaluated: tokens and the schedule's areas at each point.

    Attributes:
        tokens (np.ndarray): training tokens so far (the Chinchilla law's clock).
        s1 (np.ndarray): forward area ``S1`` (sum of learning rates so far).
        s2 (np.ndarray): annealing area ``S2``.
    """

    tokens: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    def take(self, mask: np.ndarray) -> "ScheduleInputs":
        """The points where ``mask`` holds."""
        return ScheduleInputs(self.tokens[mask], self.s1[mask], self.s2[mask])


@dataclass(frozen=True)
class LawFit:
    """A fitted schedule-aware law.

    Attributes:
        law (str): ``annealing`` or ``cpt``.
        params (Dict[str, float]): the law's parameters (areas in the fit's units; ``S1``
            normalised by ``scale``).
        scale (float): the forward area the fit normalised ``S1`` (and ``S2``) by.
        initial (Optional[float]): the anchor ``L(0)`` of the CPT law.
        huber_loss (float): mean Huber loss of the log residuals on the fitted points.
        r2 (float): R^2 of the fitted points.
        num_points (int): points fitted.
        converged (bool): whether the best start converged.
        at_bound (List[str]): free parameters that ended on a bound.
        notes (List[str]): what the fit fixed and why.
    """

    law: str
    params: Dict[str, float]
    scale: float
    initial: Optional[float]
    huber_loss: float
    r2: float
    num_points: int
    converged: bool
    at_bound: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def predict(self, x: ScheduleInputs) -> np.ndarray:
        """The law's loss at ``x``."""
        s1 = np.asarray(x.s1, np.float64) / self.scale
        s2 = np.asarray(x.s2, np.float64) / self.scale
        p = self.params
        if self.law == "annealing":
            return annealing_law(p["L0"], p["A"], p["alpha"], p["C"], s1, s2)
        return cpt_law(
            self.initial, p["A"], p["alpha"], p["C"], p["B"], p["E"], p["beta"], p["S1_pt"], s1, s2
        )


def annealing_law(L0, A, alpha, C, s1, s2) -> np.ndarray:
    """Tissue et al. (2024), Eq. 1: ``L = L0 + A * S1^-alpha - C * S2``."""
    return L0 + A * np.asarray(s1, np.float64) ** (-alpha) - C * np.asarray(s2, np.float64)


def cpt_law(L_init, A, alpha, C, B, E, beta, s1_pt, s1, s2) -> np.ndarray:
    """Wang et al. (2025)'s CPT law, anchored at the measured starting loss.

    ``L = L0 + A * (S1_pt + S1)^-alpha - C * S2 + B * (1 - (1 + E * S1)^-beta)`` with
    ``L0 = L_init - A * S1_pt^-alpha`` (so ``L(0) = L_init``; ``S2`` counts the CPT's own
    annealing).
    """
    s1 = np.asarray(s1, np.float64)
    base = A * ((s1_pt + s1) ** (-alpha) - s1_pt ** (-alpha))
    shift = B * (1.0 - (1.0 + E * s1) ** (-beta))
    return L_init + base - C * np.asarray(s2, np.float64) + shift


def _check(x: ScheduleInputs, y: np.ndarray, min_points: int, law: str) -> None:
    if y.size < min_points or np.unique(x.s1).size < 3:
        raise TooFewPointsError(
            f"need at least {min_points} points at 3+ distinct forward areas to fit the {law} "
            f"law, got {y.size}"
        )
    if not np.all(np.isfinite(y)) or np.any(y <= 0) or np.any(x.s1 <= 0):
        raise ValueError("losses and forward areas must be finite and positive")


def _c_bounds(s2: np.ndarray, fixed_c: Optional[float], y: np.ndarray):
    """C's bounds: fixed where the window has no annealing (or the caller fixes it)."""
    if fixed_c is not None:
        return (fixed_c, fixed_c), f"C fixed at {fixed_c:g} (given)"
    if float(np.max(np.abs(s2))) <= 1e-12:
        return (0.0, 0.0), "C fixed at 0: no annealing in the fit window (constant LR)"
    return (0.0, 1e3 * float(y.max())), ""


def _at_bound(names, params, bounds, free) -> List[str]:
    out = []
    for n, v, (lo, hi), f in zip(names, params, bounds, free):
        if not f:
            continue
        width = max(abs(hi - lo), 1e-12)
        if abs(v - lo) <= _AT_BOUND_RTOL * width or abs(hi - v) <= _AT_BOUND_RTOL * width:
            out.append(n)
    return out


def fit_annealing_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    decay_note: str = "",
    fixed_c: Optional[float] = None,
    delta: float = DEFAULT_HUBER_DELTA,
) -> LawFit:
    """Fit ``L = L0 + A * S1^-alpha - C * S2`` (Tissue et al., 2024) to one domain's points.

    Args:
        x (ScheduleInputs): the points' forward and annealing areas.
        losses (Sequence[float]): their losses.
        decay_note (str): a note on how the areas were made (kept in ``notes``).
        fixed_c (Optional[float]): fix ``C`` (e.g. from the base model's decaying-LR curve);
            None fits it, or fixes it at 0 where the window has no annealing.
        delta (float): Huber threshold.

    Returns:
        LawFit: the best fit.

    Raises:
        TooFewPointsError: fewer than 5 points or 3 distinct areas.
    """
    y = np.asarray(losses, np.float64)
    _check(x, y, 5, "annealing")
    scale = float(np.max(x.s1))
    s1, s2 = x.s1 / scale, x.s2 / scale
    c_bounds, c_note = _c_bounds(s2, fixed_c, y)

    def model(p, _):
        l0, a, alpha, c = p
        xp = s1 ** (-alpha)
        pred = l0 + a * xp - c * s2
        jac = np.stack([np.ones_like(s1), xp, -a * xp * np.log(s1), -s2], axis=1)
        return pred, jac

    y_min, y_last = float(y.min()), float(y[np.argmax(s1)])
    starts = [
        np.array([f * y_min, max(y_last - f * y_min, 1e-3), al, c])
        for f, al, c in start_grid((0.5, 0.85, 0.97), (0.1, 0.3, 0.8), (c_bounds[0],))
    ]
    bounds = [(1e-6, float(y.max())), (0.0, 1e3 * float(y.max())), ANNEALING_ALPHA_BOUNDS, c_bounds]
    out = fit_huber_log(model, None, y, starts, bounds, delta=delta)
    pred, _ = model(out.params, None)
    names = ["L0", "A", "alpha", "C"]
    free = [True, True, True, c_bounds[0] != c_bounds[1]]
    return LawFit(
        law="annealing",
        params=dict(zip(names, (float(v) for v in out.params))),
        scale=scale,
        initial=None,
        huber_loss=huber_log_loss(pred, y, delta),
        r2=r_squared(pred, y),
        num_points=int(y.size),
        converged=out.converged,
        at_bound=_at_bound(names, out.params, bounds, free),
        notes=[n for n in (c_note, decay_note) if n],
    )


def fit_cpt_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    initial: float,
    s1_pt: Optional[float] = None,
    fixed_c: Optional[float] = None,
    delta: float = DEFAULT_HUBER_DELTA,
) -> LawFit:
    """Fit Wang et al. (2025)'s CPT law, anchored at ``L(0) = initial``, to one domain.

    Args:
        x (ScheduleInputs): the points' CPT forward and annealing areas.
        losses (Sequence[float]): their losses.
        initial (float): the measured loss at the start of the CPT.
        s1_pt (Optional[float]): the pre-training's forward area in the same units as ``x.s1``
            (from the base model's schedule); None fits it (within 0.05x-50x the window's area).
        fixed_c (Optional[float]): fix ``C``; None as :func:`fit_annealing_law`.
        delta (float): Huber threshold.

    Returns:
        LawFit: the best fit (``params['S1_pt']`` normalised like ``S1``).

    Raises:
        TooFewPointsError: fewer than 7 points or 3 distinct areas.
    """
    y = np.asarray(losses, np.float64)
    _check(x, y, 7, "CPT")
    if not np.isfinite(initial) or initial <= 0:
        raise ValueError(f"the CPT law needs a positive starting loss, got {initial}")
    scale = float(np.max(x.s1))
    s1, s2 = x.s1 / scale, x.s2 / scale
    c_bounds, c_note = _c_bounds(s2, fixed_c, y)
    sp_bounds = (0.05, 50.0) if s1_pt is None else (s1_pt / scale,) * 2

    def model(p, _):
        a, alpha, c, b, e, beta, sp = p
        t, t0 = (sp + s1) ** (-alpha), sp ** (-alpha)
        g = (1.0 + e * s1) ** (-beta)
        pred = initial + a * (t - t0) - c * s2 + b * (1.0 - g)
        jac = np.stack(
            [
                t - t0,
                -a * (t * np.log(sp + s1) - t0 * np.log(sp)),
                -s2,
                1.0 - g,
                b * beta * s1 * (1.0 + e * s1) ** (-beta - 1.0),
                b * g * np.log1p(e * s1),
                -a * alpha * ((sp + s1) ** (-alpha - 1.0) - sp ** (-alpha - 1.0)),
            ],
            axis=1,
        )
        return pred, jac

    span = float(y.max() - y.min()) + 1e-3
    starts = []
    for b_sign, e0, beta0, a0 in start_grid((1.0, -1.0), (3.0, 30.0), (0.5, 1.5), (0.0, span)):
        sp0 = float(np.clip(1.0, *sp_bounds))
        # Both signs of the shift: up for a replay domain, down for a new one.
        starts.append(np.array([a0, 0.5, c_bounds[0], b_sign * span, e0, beta0, sp0]))
    bounds = [
        (0.0, 1e3 * float(y.max())),
        ANNEALING_ALPHA_BOUNDS,
        c_bounds,
        (-float(y.max()), float(y.max())),
        (1e-3, 1e4),
        (0.05, 5.0),
        sp_bounds,
    ]
    out = fit_huber_log(model, None, y, starts, bounds, delta=delta)
    pred, _ = model(out.params, None)
    names = ["A", "alpha", "C", "B", "E", "beta", "S1_pt"]
    free = [True, True, c_bounds[0] != c_bounds[1], True, True, True, s1_pt is None]
    at_bound = _at_bound(names, out.params, bounds, free)
    # A = 0 is a legitimate "no hidden PT progress" (the shift term alone), not a failure.
    at_bound = [n for n in at_bound if n != "A"]
    return LawFit(
        law="cpt",
        params=dict(zip(names, (float(v) for v in out.params))),
        scale=scale,
        initial=float(initial),
        huber_loss=huber_log_loss(pred, y, delta),
        r2=r_squared(pred, y),
        num_points=int(y.size),
        converged=out.converged,
        at_bound=at_bound,
        notes=[n for n in (c_note,) if n],
    )


class MissingLearningRateError(InputError):
    """A trajectory's update records carry no ``lr`` (written before they did)."""


def trajectory_schedule(
    trajectory: Trajectory,
    path: str,
    budget_tokens: float,
    constant_lr: bool = False,
    decay: float = DEFAULT_ANNEALING_DECAY,
) -> Tuple[ScheduleInputs, ScheduleInputs]:
    """The schedule's areas at a trajectory's evaluations and at the budget.

    The records carry the learning rate at each evaluation (``lr``); the steps between two
    records get it linearly interpolated, the steps past the last record (a proxy that stopped
    before the budget) the last one. ``constant_lr`` is for a proxy that ran at a constant LR
    and predates the ``lr`` field: every step gets 1, so ``S1`` is the step count (in units of
    that LR: the tokens are the clock) and ``S2 = 0``.

    Args:
        trajectory (Trajectory): a parsed run; its rows follow
            :func:`megatron_velocitune.laws.scaling_law.loss_points` (records with
            ``eval_loss`` and ``consumed_tokens``).
        path (str): its file, named in the error.
        budget_tokens (float): the budget the target is predicted at.
        constant_lr (bool): take the LR as constant (see above) instead of the records' ``lr``.
        decay (float): the annealing momentum's decay factor.

    Returns:
        Tuple[ScheduleInputs, ScheduleInputs]: the areas at each row, and at the budget.

    Raises:
        MissingLearningRateError: a record without ``lr`` (and ``constant_lr`` not set).
    """
    rows = [
        r
        for r in trajectory.updates
        if r.get("eval_loss") is not None and r.get("consumed_tokens") is not None
    ]
    if not rows:
        raise TooFewPointsError(f"{path}: no update record with eval_loss")
    iters = np.array([float(r["iteration"]) for r in rows])
    tokens = np.array([float(r["consumed_tokens"]) for r in rows])
    per_iter = float(np.median(tokens[iters > 0] / iters[iters > 0]))
    budget_iter = int(round(budget_tokens / per_iter))
    steps = np.arange(1, max(budget_iter, int(iters.max())) + 1, dtype=np.float64)
    if constant_lr:
        lrs = np.ones_like(steps)
    else:
        if any(r.get("lr") is None for r in rows):
            raise MissingLearningRateError(
                f"{path}: its update records have no 'lr' (written before they did): a "
                "schedule-aware law needs it; use --law chinchilla (or --constant-lr for a "
                "constant-LR proxy)"
            )
        lrs = np.interp(steps, iters, np.array([float(r["lr"]) for r in rows]))
    s1, s2 = lr_areas(lrs, decay)
    at = np.clip(iters.astype(int), 1, steps.size) - 1
    b = min(max(budget_iter, 1), steps.size) - 1
    return (
        ScheduleInputs(tokens, s1[at], s2[at]),
        ScheduleInputs(np.array([float(budget_tokens)]), s1[[b]], s2[[b]]),
    )
