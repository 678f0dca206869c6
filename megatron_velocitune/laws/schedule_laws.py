"""Loss laws that know the learning-rate schedule (targets for continual pre-training).

Three laws beside the Chinchilla data term of :mod:`megatron_velocitune.laws.scaling_law`, each a
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
  (:func:`cpt_law`);
* the multi-power law of Luo et al. (2025), arXiv:2503.12811: a power law in the LR sum minus a
  loss reduction per LR drop (:func:`multi_power_law`).

The schedule itself is :class:`LrSchedule`, megatron-core's ``OptimizerParamScheduler`` as a
pure function; a trajectory header records it under ``lr_schedule`` and
:func:`trajectory_schedule` reads it (else the records' ``lr``).

The annealing coefficient ``C`` is identifiable only where the learning rate decays inside the
fitted window. A constant-LR proxy (``S2 == 0`` throughout) cannot tell it, and the fits then fix
it (``fixed_c``, default 0: no annealing bonus), which is what the tool does; a non-zero ``C``
has to come from elsewhere, e.g. the annealing law fitted to the base model's own decaying-LR
curve (``fit_base_decay`` in :mod:`megatron_velocitune.laws.target_report`) or to a short
cooldown branch of the proxy, and is passed in as ``fixed_c`` (per unit of absolute LR area).
With ``C = 0`` and a constant LR the annealing law is the Chinchilla data term in steps instead
of tokens.

Pure numpy/scipy, no I/O, no torch.
"""

import math
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
    "loss_reduction",
    "DecayTerm",
    "MULTI_POWER_PARAMS",
    "fit_annealing_law",
    "fit_cpt_law",
    "fit_cpt_multi_power_law",
    "fit_multi_power_law",
    "multi_power_law",
    "MissingLearningRateError",
    "LR_DECAY_STYLES",
    "LR_SCHEDULE_KEY",
    "LrSchedule",
    "WSD_DECAY_STYLES",
    "lr_areas",
    "schedule_curve",
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
        steps (Optional[np.ndarray]): steps done at each point (the multi-power law's clock).
        lrs (Optional[np.ndarray]): the learning rate of every step ``1..n`` of the schedule
            the points lie on (shared by all points; the multi-power law reads it).
    """

    tokens: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    steps: Optional[np.ndarray] = None
    lrs: Optional[np.ndarray] = None

    def take(self, mask: np.ndarray) -> "ScheduleInputs":
        """The points where ``mask`` holds."""
        steps = None if self.steps is None else self.steps[mask]
        return ScheduleInputs(self.tokens[mask], self.s1[mask], self.s2[mask], steps, self.lrs)


@dataclass(frozen=True)
class DecayTerm:
    """The multi-power law's loss-reduction parameters, in absolute units (LRs, LR sums).

    Attributes:
        B (float): its scale (loss per unit of LR drop).
        C (float): ``G``'s rate.
        beta (float): ``G``'s exponent.
        gamma (float): the exponent of the LR in ``G``'s argument.
    """

    B: float
    C: float
    beta: float
    gamma: float


@dataclass(frozen=True)
class LawFit:
    """A fitted schedule-aware law.

    Attributes:
        law (str): ``annealing``, ``cpt``, ``multi-power`` or ``cpt-multi-power``.
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
        lr_scale (float): the learning rate the multi-power fit normalised the LRs by.
        decay (Optional[DecayTerm]): the ``cpt-multi-power`` law's loss-reduction term, fixed
            (absolute units; None: no loss reduction).
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
    lr_scale: float = 1.0
    decay: Optional[DecayTerm] = None

    @classmethod
    def measured(
        cls,
        law: str,
        names: Sequence[str],
        values: Sequence[float],
        pred: np.ndarray,
        y: np.ndarray,
        delta: float,
        **fields,
    ) -> "LawFit":
        """A fit with its goodness measured on the fitted points (one place for every law).

        Args:
            law (str): the law's name.
            names (Sequence[str]): its parameters' names, in ``values``' order.
            values (Sequence[float]): the fitted parameters.
            pred (np.ndarray): the law's loss at the fitted points.
            y (np.ndarray): the fitted losses.
            delta (float): the Huber threshold of the fit.
            **fields: the other attributes (``scale``, ``initial``, ``converged``, ...);
                ``notes`` may hold empty strings, which are dropped.

        Returns:
            LawFit: the fit.
        """
        fields["notes"] = [n for n in fields.get("notes", ()) if n]
        return cls(
            law=law,
            params=dict(zip(names, (float(v) for v in values))),
            huber_loss=huber_log_loss(pred, y, delta),
            r2=r_squared(pred, y),
            num_points=int(y.size),
            **fields,
        )

    def predict(self, x: ScheduleInputs) -> np.ndarray:
        """The law's loss at ``x``."""
        p = self.params
        if self.law == "multi-power":
            if x.lrs is None or x.steps is None:
                raise ValueError("the multi-power law needs the schedule's steps and LRs")
            eta = np.asarray(x.lrs, np.float64) / self.lr_scale
            values = [p[n] for n in MULTI_POWER_PARAMS]
            return _multi_power(values, eta, x.steps, self.lr_scale / self.scale, False)[0]
        s1 = np.asarray(x.s1, np.float64) / self.scale
        s2 = np.asarray(x.s2, np.float64) / self.scale
        if self.law == "cpt-multi-power":
            shift = cpt_law(
                self.initial, p["A"], p["alpha"], 0.0, p["B"], p["E"], p["beta"], p["S1_pt"], s1, 0
            )
            return shift - loss_reduction(self.decay, x)
        if self.law == "annealing":
            return annealing_law(p["L0"], p["A"], p["alpha"], p["C"], s1, s2)
        return cpt_law(
            self.initial, p["A"], p["alpha"], p["C"], p["B"], p["E"], p["beta"], p["S1_pt"], s1, s2
        )

    def annealing_c(self) -> float:
        """The annealing or CPT law's ``C`` per unit of (absolute) annealing area."""
        return self.params["C"] / self.scale

    def decay_term(self) -> DecayTerm:
        """The multi-power law's loss-reduction parameters in absolute units."""
        p, gamma = self.params, self.params["gamma"]
        return DecayTerm(
            B=p["B"] / self.lr_scale,
            C=p["C"] * self.lr_scale**gamma / self.scale,
            beta=p["beta"],
            gamma=gamma,
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


def _c_bounds(s2, fixed_c: Optional[float], y: np.ndarray, scale: float, source: str = "given"):
    """C's bounds (in the fit's units): fixed where the window has no annealing or as given.

    ``fixed_c`` is per unit of absolute annealing area; the fit's areas are divided by
    ``scale``, so its ``C`` is ``fixed_c * scale``.
    """
    if fixed_c is not None:
        return (fixed_c * scale, fixed_c * scale), f"C fixed at {fixed_c:.4g} ({source})"
    if float(np.max(np.abs(s2))) <= 1e-12:
        return (0.0, 0.0), "C fixed at 0: no annealing in the fit window (constant LR)"
    return (0.0, 1e3 * float(y.max())), ""


def _at_bound(names, params, bounds, free) -> List[str]:
    """The free parameters on a bound: within ``_AT_BOUND_RTOL`` of the bound's own size.

    Relative to the bound, not to the box's width: a wide box (``C`` in [0, 1e3 * max loss])
    would otherwise call every small value "at bound".
    """
    out = []
    for n, v, (lo, hi), f in zip(names, params, bounds, free):
        if not f:
            continue
        width = max(abs(hi - lo), 1e-12)
        near = [abs(v - b) <= max(_AT_BOUND_RTOL * abs(b), 1e-9 * width) for b in (lo, hi)]
        if any(near):
            out.append(n)
    return out


def fit_annealing_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    decay_note: str = "",
    fixed_c: Optional[float] = None,
    delta: float = DEFAULT_HUBER_DELTA,
    c_source: str = "given",
) -> LawFit:
    """Fit ``L = L0 + A * S1^-alpha - C * S2`` (Tissue et al., 2024) to one domain's points.

    Args:
        x (ScheduleInputs): the points' forward and annealing areas.
        losses (Sequence[float]): their losses.
        decay_note (str): a note on how the areas were made (kept in ``notes``).
        fixed_c (Optional[float]): fix ``C``, per unit of absolute annealing area (e.g.
            :meth:`LawFit.annealing_c` of a fit on the base model's decaying-LR curve); None
            fits it, or fixes it at 0 where the window has no annealing.
        delta (float): Huber threshold.
        c_source (str): where a fixed ``C`` came from (in ``notes``).

    Returns:
        LawFit: the best fit.

    Raises:
        TooFewPointsError: fewer than 5 points or 3 distinct areas.
    """
    y = np.asarray(losses, np.float64)
    _check(x, y, 5, "annealing")
    scale = float(np.max(x.s1))
    s1, s2 = x.s1 / scale, x.s2 / scale
    c_bounds, c_note = _c_bounds(s2, fixed_c, y, scale, c_source)

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
    return LawFit.measured(
        "annealing",
        names,
        out.params,
        pred,
        y,
        delta,
        scale=scale,
        initial=None,
        converged=out.converged,
        at_bound=_at_bound(names, out.params, bounds, free),
        notes=[c_note, decay_note],
    )


def fit_cpt_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    initial: float,
    s1_pt: Optional[float] = None,
    fixed_c: Optional[float] = None,
    delta: float = DEFAULT_HUBER_DELTA,
    c_source: str = "given",
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
        c_source (str): where a fixed ``C`` came from (in ``notes``).

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
    c_bounds, c_note = _c_bounds(s2, fixed_c, y, scale, c_source)
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
    return LawFit.measured(
        "cpt",
        names,
        out.params,
        pred,
        y,
        delta,
        scale=scale,
        initial=float(initial),
        converged=out.converged,
        at_bound=at_bound,
        notes=[c_note],
    )


def loss_reduction(decay: Optional[DecayTerm], x: ScheduleInputs) -> np.ndarray:
    """The multi-power law's loss reduction ``LD(t)`` (:func:`multi_power_law`) at ``x``'s steps,
    with ``decay``'s absolute parameters; 0 everywhere for ``decay`` None.

    Raises:
        ValueError: ``x`` without the schedule's steps and LRs.
    """
    if decay is None:
        return np.zeros(np.shape(x.s1))
    if x.lrs is None or x.steps is None:
        raise ValueError("the loss reduction needs the schedule's steps and LRs")
    d = decay
    return -multi_power_law(0.0, 0.0, 0.0, d.B, d.C, d.beta, d.gamma, x.lrs, x.steps)


def fit_cpt_multi_power_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    initial: float,
    decay: Optional[DecayTerm],
    s1_pt: Optional[float] = None,
    delta: float = DEFAULT_HUBER_DELTA,
    decay_source: str = "given",
) -> LawFit:
    """The CPT law with the multi-power law's loss reduction as its annealing term.

    ``L = L_init + A * ((S1_pt + S1)^-alpha - S1_pt^-alpha) + B * (1 - (1 + E * S1)^-beta)
    - LD(t)``: Wang et al. (2025)'s distribution-shift form (:func:`cpt_law`) with Luo et al.
    (2025)'s ``LD(t)`` (:func:`multi_power_law`) in place of Tissue et al.'s ``C * S2``, ``LD``
    fixed from the base model's own decaying-LR curve (its multi-power fit's ``B, C, beta,
    gamma``). Under a constant LR ``LD = 0`` and this is the CPT law.

    Args:
        x (ScheduleInputs): the points' CPT areas, steps and LRs.
        losses (Sequence[float]): their losses.
        initial (float): the measured loss at the start of the CPT.
        decay (Optional[DecayTerm]): the loss-reduction term (None: none, said in the notes).
        s1_pt (Optional[float]): as :func:`fit_cpt_law`.
        delta (float): Huber threshold.
        decay_source (str): where ``decay`` came from (in ``notes``).

    Returns:
        LawFit: the fit (``law`` ``cpt-multi-power``, ``decay`` kept for its predictions).

    Raises:
        TooFewPointsError: as :func:`fit_cpt_law`.
    """
    y = np.asarray(losses, np.float64)
    ld = loss_reduction(decay, x)
    no_annealing = ScheduleInputs(x.tokens, x.s1, np.zeros_like(x.s1), x.steps, x.lrs)
    # The shift form is fitted to what the loss would be without the annealing's reduction.
    shift = fit_cpt_law(no_annealing, y + ld, initial, s1_pt=s1_pt, fixed_c=0.0, delta=delta)
    names = [n for n in shift.params if n != "C"]
    return LawFit.measured(
        "cpt-multi-power",
        names,
        [shift.params[n] for n in names],
        shift.predict(no_annealing) - ld,
        y,
        delta,
        scale=shift.scale,
        initial=shift.initial,
        converged=shift.converged,
        at_bound=list(shift.at_bound),
        notes=[
            f"loss reduction fixed ({decay_source}: B={decay.B:.4g} C={decay.C:.4g} "
            f"beta={decay.beta:.3g} gamma={decay.gamma:.3g})"
            if decay is not None
            else "no loss reduction (no base decay term): the CPT law without annealing"
        ],
        decay=decay,
    )


#: The multi-power law's parameter names, in the fit's order.
MULTI_POWER_PARAMS = ("L0", "A", "alpha", "B", "C", "beta", "gamma")


def _decay_drops(eta: np.ndarray) -> np.ndarray:
    """``eta_{k-1} - eta_k`` of each step after the warm-up; 0 up to the schedule's first peak.

    Luo et al. index the steps after the warm-up from 1 with ``eta_0`` the peak it ends at; the
    steps up to the first maximum of the LR count as the warm-up (their sum is ``S_W``).
    """
    d = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    d[: int(np.argmax(eta)) + 1] = 0.0
    return d


def _multi_power(params, eta, steps, area_unit: float, jac: bool):
    """The multi-power law (and its Jacobian) at ``steps`` of a schedule ``eta``.

    Areas are ``cumsum(eta) * area_unit`` (the fit normalises LRs and areas separately).
    """
    L0, A, alpha, B, C, beta, gamma = (float(v) for v in params)
    t = np.asarray(steps).astype(np.int64)
    cum = np.cumsum(eta) * area_unit
    total = cum[t - 1]  # S1(t) + S_W: every step's LR so far
    d = _decay_drops(eta)
    ks = np.nonzero(d)[0]
    # S_k(t) = sum_{tau=k..t} eta_tau for the steps k <= t with a drop.
    mask = ks[None, :] < t[:, None]
    S = np.where(mask, total[:, None] - (cum[ks] - eta[ks] * area_unit)[None, :], 0.0)
    eta_k = np.maximum(eta[ks], 1e-12 * float(np.max(eta)))
    x = eta_k[None, :] ** (-gamma) * S
    u = C * x + 1.0
    ub = u ** (-beta)
    wd = np.where(mask, d[ks][None, :], 0.0)
    G = 1.0 - ub
    ld = B * np.sum(wd * G, axis=1)
    power = total ** (-alpha)
    pred = L0 + A * power - ld
    if not jac:
        return pred, None
    dG_dx = C * beta * ub / u
    cols = [
        np.ones_like(total),
        power,
        -A * power * np.log(total),
        -np.sum(wd * G, axis=1),
        -B * np.sum(wd * beta * x * ub / u, axis=1),
        -B * np.sum(wd * ub * np.log(u), axis=1),
        B * np.sum(wd * dG_dx * x * np.log(eta_k)[None, :], axis=1),
    ]
    return pred, np.stack(cols, axis=1)


def multi_power_law(L0, A, alpha, B, C, beta, gamma, lrs, steps) -> np.ndarray:
    """Luo et al. (2025), the multi-power law (arXiv:2503.12811, Sec. 3, the law it proposes).

    ``L(t) = L0 + A * (S1(t) + S_W)^-alpha - LD(t)`` with
    ``LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k^-gamma * S_k(t))``,
    ``S_k(t) = sum_{tau=k..t} eta_tau``, ``G(x) = 1 - (C*x + 1)^-beta``; ``S1`` the LR sum after
    the warm-up, ``S_W`` the warm-up's, the steps ``k`` counted from the end of the warm-up
    (``eta_0`` its peak; see :func:`_decay_drops`). During the warm-up ``LD = 0``.

    Args:
        L0 (float): the loss floor.
        A (float): the power law's scale.
        alpha (float): its exponent.
        B (float): the loss reduction's scale (per unit of LR drop).
        C (float): ``G``'s rate.
        beta (float): ``G``'s exponent.
        gamma (float): the exponent of the LR in ``G``'s argument.
        lrs (Sequence[float]): the learning rate of every step ``1..n``.
        steps (Sequence[int]): steps done (1..n) at which to evaluate it.

    Returns:
        np.ndarray: the loss at each of ``steps``.
    """
    params = (L0, A, alpha, B, C, beta, gamma)
    return _multi_power(params, np.asarray(lrs, np.float64), steps, 1.0, jac=False)[0]


def fit_multi_power_law(
    x: ScheduleInputs,
    losses: Sequence[float],
    fixed_decay: Optional[DecayTerm] = None,
    delta: float = DEFAULT_HUBER_DELTA,
    decay_source: Optional[str] = None,
) -> LawFit:
    """Fit Luo et al. (2025)'s multi-power law (:func:`multi_power_law`) to one domain's points.

    The fit divides the LRs by their peak and the areas by the window's largest ``S1``
    (``params`` are in those units; :meth:`LawFit.decay_term` converts back). Where the LR does
    not fall after its warm-up inside the window (a constant-LR proxy), ``LD = 0`` and ``B``,
    ``C``, ``beta``, ``gamma`` cannot be told: ``B`` is fixed at 0 (the law is then
    ``L0 + A * S1^-alpha``) and ``notes`` says so, as the annealing law does with ``C``.

    Args:
        x (ScheduleInputs): the points, with ``steps`` and the schedule's ``lrs``.
        losses (Sequence[float]): their losses.
        fixed_decay (Optional[DecayTerm]): fix the loss-reduction term (absolute units, e.g.
            :meth:`LawFit.decay_term` of a fit on the base model's curve); None fits it.
        delta (float): Huber threshold.
        decay_source (Optional[str]): where a fixed decay term came from (in ``notes``).

    Returns:
        LawFit: the best fit.

    Raises:
        TooFewPointsError: fewer than 5 points or 3 distinct areas.
        ValueError: ``x`` without ``steps`` or ``lrs``.
    """
    y = np.asarray(losses, np.float64)
    _check(x, y, 5, "multi-power")
    if x.lrs is None or x.steps is None:
        raise ValueError("the multi-power law needs the schedule's steps and LRs")
    lr_scale = float(np.max(x.lrs))
    scale = float(np.max(x.s1))
    eta = np.asarray(x.lrs, np.float64) / lr_scale
    unit = lr_scale / scale
    steps = np.asarray(x.steps).astype(np.int64)
    drops = _decay_drops(eta)[: int(steps.max())]
    decays = bool(np.any(np.abs(drops) > 1e-12))

    def model(p, _):
        # C is fitted as log C: its plausible range spans decades.
        q = np.array(p, np.float64)
        q[4] = np.exp(q[4])
        pred, jac = _multi_power(q, eta, steps, unit, jac=True)
        jac[:, 4] *= q[4]
        return pred, jac

    y_min, y_last = float(y.min()), float(y[np.argmax(x.s1)])
    span = max(float(y.max() - y.min()), 1e-3)
    top = float(y.max())
    base_bounds = [(1e-6, top), (0.0, 1e3 * top), ANNEALING_ALPHA_BOUNDS]
    if fixed_decay is not None:
        fixed = (
            fixed_decay.B * lr_scale,
            fixed_decay.C * lr_scale ** (-fixed_decay.gamma) * scale,
            fixed_decay.beta,
            fixed_decay.gamma,
        )
        fixed = (fixed[0], math.log(fixed[1]), fixed[2], fixed[3])
        decay_bounds = [(v, v) for v in fixed]
        note = (
            f"B, C, beta, gamma fixed ({decay_source or 'given'}: B={fixed_decay.B:.4g} "
            f"C={fixed_decay.C:.4g} beta={fixed_decay.beta:.4g} gamma={fixed_decay.gamma:.4g})"
        )
        decay_starts = [fixed]
    elif not decays:
        decay_bounds = [(0.0, 0.0), (0.0, 0.0), (0.5, 0.5), (0.5, 0.5)]
        note = "B fixed at 0: no LR decay in the fit window (B, C, beta, gamma unidentifiable)"
        decay_starts = [(0.0, 0.0, 0.5, 0.5)]
    else:
        decay_bounds = [(0.0, 10.0 * top), (math.log(1e-4), math.log(1e4)), (0.01, 5.0), (0.0, 3.0)]
        note = ""
        decay_starts = [(span, math.log(c), 0.5, 0.5) for c in (1.0, 100.0)]
    starts = [
        np.array([f * y_min, max(y_last - f * y_min, 1e-3), al, *dec])
        for f in (0.5, 0.9)
        for al in (0.3, 0.8)
        for dec in decay_starts
    ]
    bounds = base_bounds + decay_bounds
    out = fit_huber_log(model, None, y, starts, bounds, delta=delta)
    pred, _ = model(out.params, None)
    free = [lo != hi for lo, hi in bounds]
    values = np.array(out.params, np.float64)
    at_bound = _at_bound(MULTI_POWER_PARAMS, values, bounds, free)
    values[4] = np.exp(values[4])
    return LawFit.measured(
        "multi-power",
        MULTI_POWER_PARAMS,
        values,
        pred,
        y,
        delta,
        scale=scale,
        initial=None,
        converged=out.converged,
        at_bound=at_bound,
        notes=[note],
        lr_scale=lr_scale,
    )


#: Megatron-core's ``lr_decay_style`` values (``OptimizerParamScheduler.get_lr``).
LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
#: Its ``lr_wsd_decay_style`` values.
WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
#: The trajectory header's key of the schedule (:meth:`LrSchedule.to_header`).
LR_SCHEDULE_KEY = "lr_schedule"
# The records' ``lr`` against the header's schedule: a larger relative gap means the header lies.
_LR_MISMATCH_RTOL = 1e-6


@dataclass(frozen=True)
class LrSchedule:
    """Megatron-core's learning-rate schedule (``OptimizerParamScheduler``) as a pure function.

    Megatron-LM steps its scheduler by the global batch size (its ``--lr-warmup-samples`` and
    ``--lr-decay-samples`` count samples), this project's entry by 1 per iteration;
    ``steps_per_iteration`` converts the iterations a trajectory counts into scheduler steps.

    Attributes:
        max_lr (float): the peak learning rate.
        min_lr (float): the floor the decay ends at.
        warmup_steps (int): scheduler steps of the linear warm-up from ``init_lr``.
        decay_steps (int): the scheduler step the decay ends at (warm-up included).
        decay_style (str): one of :data:`LR_DECAY_STYLES`.
        init_lr (float): the warm-up's starting learning rate.
        wsd_decay_steps (Optional[int]): WSD: the steps of the final decay.
        wsd_decay_style (Optional[str]): WSD: one of :data:`WSD_DECAY_STYLES`.
        steps_per_iteration (int): scheduler steps per training iteration.
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    decay_style: str
    init_lr: float = 0.0
    wsd_decay_steps: Optional[int] = None
    wsd_decay_style: Optional[str] = None
    steps_per_iteration: int = 1

    def __post_init__(self) -> None:
        problems = [
            why
            for bad, why in (
                (self.decay_style not in LR_DECAY_STYLES, f"decay style {self.decay_style!r}"),
                (not 0.0 <= self.min_lr <= self.max_lr, f"min_lr {self.min_lr} > max_lr"),
                (not 0.0 <= self.init_lr <= self.max_lr, f"init_lr {self.init_lr} > max_lr"),
                (self.decay_steps <= 0, f"decay_steps {self.decay_steps} <= 0"),
                (
                    not 0 <= self.warmup_steps < self.decay_steps,
                    f"warmup_steps {self.warmup_steps} not in [0, decay_steps)",
                ),
                (self.steps_per_iteration <= 0, "steps_per_iteration <= 0"),
                (
                    self.decay_style == "WSD"
                    and (
                        self.wsd_decay_style not in WSD_DECAY_STYLES
                        or not self.wsd_decay_steps
                        or self.wsd_decay_steps < 0
                    ),
                    f"WSD needs wsd_decay_steps > 0 and a style in {WSD_DECAY_STYLES}",
                ),
            )
            if bad
        ]
        if problems:
            raise ValueError("bad learning-rate schedule: " + "; ".join(problems))

    def lr(self, iterations) -> np.ndarray:
        """The learning rate after ``iterations`` iterations (what the next iteration runs at).

        ``OptimizerParamScheduler.get_lr`` at ``num_steps = iterations * steps_per_iteration``,
        operation for operation: the value the optimizer holds after that many ``step`` calls,
        the same convention as an update record's ``lr``.

        Args:
            iterations: iteration counts (array-like, >= 0).

        Returns:
            np.ndarray: the learning rate at each, float64.
        """
        n = np.asarray(iterations, dtype=np.float64) * float(self.steps_per_iteration)
        max_lr, min_lr, warm = float(self.max_lr), float(self.min_lr), float(self.warmup_steps)
        delta = max_lr - min_lr
        if self.decay_style == "constant":
            decayed = np.full_like(n, max_lr)
        elif self.decay_style == "inverse-square-root":
            decayed = np.maximum(min_lr, max_lr * max(warm, 1.0) ** 0.5 / np.maximum(n, 1.0) ** 0.5)
        else:
            ratio = np.clip((n - warm) / (float(self.decay_steps) - warm), 0.0, 1.0)
            if self.decay_style == "linear":
                coeff = 1.0 - ratio
            elif self.decay_style == "cosine":
                coeff = 0.5 * (np.cos(np.pi * ratio) + 1.0)
            else:  # WSD: flat, then the final wsd_decay_steps anneal
                start = float(self.decay_steps - self.wsd_decay_steps)
                r = np.clip((n - start) / float(self.wsd_decay_steps), 0.0, 1.0)
                coeff = {
                    "linear": lambda: 1.0 - r,
                    "cosine": lambda: 0.5 * (np.cos(np.pi * r) + 1.0),
                    "exponential": lambda: 2.0 * np.power(0.5, r) - 1.0,
                    "minus_sqrt": lambda: 1.0 - np.sqrt(r),
                }[self.wsd_decay_style]()
                coeff = np.where(n <= start, 1.0, coeff)
            decayed = min_lr + coeff * delta
        if self.decay_style != "constant":
            decayed = np.where(n > self.decay_steps, min_lr, decayed)
        if self.warmup_steps > 0:
            ramp = self.init_lr + (max_lr - self.init_lr) * n / warm
            decayed = np.where(n <= warm, ramp, decayed)
        return decayed

    def to_header(self) -> Dict[str, object]:
        """The trajectory header's ``lr_schedule`` value (JSON-ready)."""
        return {
            "max_lr": float(self.max_lr),
            "min_lr": float(self.min_lr),
            "init_lr": float(self.init_lr),
            "warmup_steps": int(self.warmup_steps),
            "decay_steps": int(self.decay_steps),
            "decay_style": self.decay_style,
            "wsd_decay_steps": None if self.wsd_decay_steps is None else int(self.wsd_decay_steps),
            "wsd_decay_style": self.wsd_decay_style,
            "steps_per_iteration": int(self.steps_per_iteration),
        }

    @classmethod
    def from_header(cls, fields: object, path: str) -> "LrSchedule":
        """The schedule a trajectory header records (:meth:`to_header`'s dict).

        Args:
            fields (object): the header's ``lr_schedule`` value.
            path (str): the trajectory file, named in the error.

        Returns:
            LrSchedule: the schedule.

        Raises:
            InputError: a malformed value (one line naming the file).
        """
        try:
            if not isinstance(fields, dict):
                raise ValueError(f"not an object: {fields!r}")
            f = dict(fields)
            return cls(
                max_lr=float(f["max_lr"]),
                min_lr=float(f["min_lr"]),
                init_lr=float(f.get("init_lr", 0.0)),
                warmup_steps=int(f["warmup_steps"]),
                decay_steps=int(f["decay_steps"]),
                decay_style=str(f["decay_style"]),
                wsd_decay_steps=(
                    None if f.get("wsd_decay_steps") is None else int(f["wsd_decay_steps"])
                ),
                wsd_decay_style=f.get("wsd_decay_style"),
                steps_per_iteration=int(f.get("steps_per_iteration", 1)),
            )
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise InputError(f"{path}: malformed header {LR_SCHEDULE_KEY!r}: {what}") from None

    @classmethod
    def from_scheduler(cls, scheduler: object, steps_per_iteration: int = 1) -> "LrSchedule":
        """The schedule of a megatron-core ``OptimizerParamScheduler`` (read by attribute).

        Args:
            scheduler (object): the scheduler (``max_lr``, ``min_lr``, ``init_lr``,
                ``lr_warmup_steps``, ``lr_decay_steps``, ``lr_decay_style``,
                ``wsd_decay_steps``, ``lr_wsd_decay_style``).
            steps_per_iteration (int): its steps per iteration (Megatron-LM: the global batch
                size; this project's entry: 1).

        Returns:
            LrSchedule: the schedule.
        """
        return cls(
            max_lr=float(scheduler.max_lr),
            min_lr=float(scheduler.min_lr),
            init_lr=float(scheduler.init_lr),
            warmup_steps=int(scheduler.lr_warmup_steps),
            decay_steps=int(scheduler.lr_decay_steps),
            decay_style=str(scheduler.lr_decay_style),
            wsd_decay_steps=getattr(scheduler, "wsd_decay_steps", None),
            wsd_decay_style=getattr(scheduler, "lr_wsd_decay_style", None),
            steps_per_iteration=int(steps_per_iteration),
        )

    @classmethod
    def from_spec(cls, spec: str, flag: str) -> "LrSchedule":
        """A schedule from ``STYLE:MAX_LR:MIN_LR:WARMUP:DECAY[:WSD_STEPS:WSD_STYLE]``.

        Iterations as steps, warm-up from 0 (as the entry's and Megatron-LM's defaults), e.g.
        ``cosine:2e-3:1e-4:80:800`` or ``WSD:1e-3:1e-4:10:200:40:linear``.

        Args:
            spec (str): the value.
            flag (str): the flag, named in the error.

        Returns:
            LrSchedule: the schedule.

        Raises:
            InputError: a malformed value (one line naming the flag).
        """
        parts = spec.split(":")
        try:
            if len(parts) not in (5, 7):
                raise ValueError("expected STYLE:MAX_LR:MIN_LR:WARMUP:DECAY[:WSD_STEPS:WSD_STYLE]")
            warmup = int(parts[3])
            return cls(
                decay_style=parts[0],
                max_lr=float(parts[1]),
                min_lr=float(parts[2]),
                warmup_steps=warmup,
                decay_steps=int(parts[4]),
                init_lr=0.0 if warmup else float(parts[1]),
                wsd_decay_steps=int(parts[5]) if len(parts) == 7 else None,
                wsd_decay_style=parts[6] if len(parts) == 7 else None,
            )
        except ValueError as e:
            raise InputError(f"{flag} {spec!r}: {e}") from None


def schedule_curve(
    at_budget: ScheduleInputs, decay: float = DEFAULT_ANNEALING_DECAY, points: int = 200
) -> ScheduleInputs:
    """The schedule's inputs at ``points`` steps from the first to the budget's (for a plot).

    Args:
        at_budget (ScheduleInputs): :func:`trajectory_schedule`'s budget point (with ``lrs``).
        decay (float): the annealing momentum's decay factor.
        points (int): how many steps (log-spaced, distinct).

    Returns:
        ScheduleInputs: the inputs there, tokens in proportion to the steps.
    """
    last = int(at_budget.steps[0])
    steps = np.unique(np.geomspace(1, last, points).round().astype(np.int64))
    s1, s2 = lr_areas(at_budget.lrs, decay)
    tokens = steps * (float(at_budget.tokens[0]) / last)
    return ScheduleInputs(tokens, s1[steps - 1], s2[steps - 1], steps, at_budget.lrs)


class MissingLearningRateError(InputError):
    """A trajectory's update records carry no ``lr`` (written before they did)."""


def trajectory_schedule(
    trajectory: Trajectory,
    path: str,
    budget_tokens: float,
    constant_lr: bool = False,
    decay: float = DEFAULT_ANNEALING_DECAY,
    schedule: Optional[LrSchedule] = None,
) -> Tuple[ScheduleInputs, ScheduleInputs]:
    """The schedule's areas at a trajectory's evaluations and at the budget.

    Step ``k`` runs at the learning rate set after ``k - 1`` steps. Where that comes from, first
    match: ``constant_lr`` (a constant-LR proxy that predates the ``lr`` field: every step gets
    1, so ``S1`` is the step count and ``S2 = 0``); the header's ``lr_schedule`` (every step up
    to the budget from it, so a proxy that stopped early is evaluated at the full run's
    schedule; the records' ``lr`` must agree with it within 1e-6 relative); ``schedule`` (given
    for a trajectory whose header has none); the records' ``lr`` (linearly interpolated between
    records, the last one held past the last record).

    Args:
        trajectory (Trajectory): a parsed run; its rows follow
            :func:`megatron_velocitune.laws.scaling_law.loss_points` (records with
            ``eval_loss`` and ``consumed_tokens``).
        path (str): its file, named in the error.
        budget_tokens (float): the budget the target is predicted at.
        constant_lr (bool): take the LR as constant (see above).
        decay (float): the annealing momentum's decay factor.
        schedule (Optional[LrSchedule]): the schedule where the header records none.

    Returns:
        Tuple[ScheduleInputs, ScheduleInputs]: the areas at each row, and at the budget.

    Raises:
        MissingLearningRateError: no schedule and a record without ``lr``.
        InputError: a malformed header schedule, or records whose ``lr`` contradicts it.
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
    if LR_SCHEDULE_KEY in trajectory.header and trajectory.header[LR_SCHEDULE_KEY] is not None:
        schedule = LrSchedule.from_header(trajectory.header[LR_SCHEDULE_KEY], path)
        _check_records(trajectory, schedule, path)
    if constant_lr:
        lrs = np.ones_like(steps)
    elif schedule is not None:
        lrs = schedule.lr(steps - 1.0)
    else:
        if any(r.get("lr") is None for r in rows):
            raise MissingLearningRateError(
                f"{path}: its update records have no 'lr' and its header no "
                f"'{LR_SCHEDULE_KEY}' (written before they did): a schedule-aware law needs "
                "one; use --law chinchilla (or --lr-schedule, or --constant-lr for a "
                "constant-LR proxy)"
            )
        lrs = np.interp(steps - 1.0, iters, np.array([float(r["lr"]) for r in rows]))
    s1, s2 = lr_areas(lrs, decay)
    at = np.clip(iters.astype(int), 1, steps.size) - 1
    b = min(max(budget_iter, 1), steps.size) - 1
    return (
        ScheduleInputs(tokens, s1[at], s2[at], at + 1, lrs),
        ScheduleInputs(np.array([float(budget_tokens)]), s1[[b]], s2[[b]], np.array([b + 1]), lrs),
    )


def _check_records(trajectory: Trajectory, schedule: LrSchedule, path: str) -> None:
    """The records' ``lr`` must be the header schedule's at their iteration (else it lies)."""
    for r in trajectory.updates:
        if r.get("lr") is None or r.get("iteration") is None:
            continue
        want = float(schedule.lr(float(r["iteration"])))
        got = float(r["lr"])
        if abs(got - want) > _LR_MISMATCH_RTOL * max(abs(want), abs(got), 1e-30):
            raise InputError(
                f"{path}: the record of iteration {r['iteration']} ran at lr {got:.6g} but the "
                f"header's '{LR_SCHEDULE_KEY}' says {want:.6g}: the header does not describe "
                "this run"
            )
