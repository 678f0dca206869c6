"""Target losses from the Chinchilla data term ``L(D) = E + B / D^beta`` (Velocitune step 2).

A proxy run with the default (token-proportional) weights records each domain's held-out loss at
its evaluations; fitting ``L(D)`` per domain on the points up to a fraction of the budget (the
paper: half) and evaluating it at the full budget gives ``L_target``. ``D`` is the number of
training tokens seen so far (the trajectory's ``consumed_tokens``). The later points, left out of
the fit, measure how well the law extrapolates (the paper reports mean absolute errors of 2.4e-3
and 1.84e-3).

The fit (see :mod:`megatron_velocitune.laws.fitting`) is a Huber loss on log-loss residuals
minimised by L-BFGS-B from a grid of starts, inside bounds ``E > 0``, ``B >= 0`` and ``beta`` in
``[0.01, 2]``. ``B >= 0`` is deliberate: the law describes learning, so a rising curve (a replay
domain that forgets) fits as flat, ``B ~ 0`` and ``E ~`` its mean loss, and its predicted target
lands at or above the initial loss. :func:`resolve_target` turns that into a clear error, or, on
request, into one of the rising-domain rules of :mod:`megatron_velocitune.core.policy` (a forgetting
budget, a tolerance, or *hold-initial*: ``L_target = L_init * (1 - margin)``).

Pure numpy/scipy, no I/O.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import (
    TargetAboveInitialError,
    TargetRuleError,
    TooFewPointsError,
)
from megatron_velocitune.core.policy import (
    DEFAULT_TARGET_MARGIN,
    RISING_RULES,
    Tolerance,
    resolve_targets,
)
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.fitting import (
    DEFAULT_HUBER_DELTA,
    fit_huber_log,
    huber_log_loss,
    r_squared,
    start_grid,
)

__all__ = [
    "BETA_BOUNDS",
    "DEFAULT_TARGET_MARGIN",
    "MIN_FIT_POINTS",
    "TARGET_RULES",
    "ChinchillaFit",
    "HeldOutError",
    "LossPoints",
    "TargetAboveInitialError",
    "TargetDecision",
    "TooFewPointsError",
    "fit_chinchilla",
    "header_budget",
    "held_out_error",
    "common_footing",
    "initial_losses",
    "loss_points",
    "resolve_target",
]

# Data exponents reported for LMs sit around 0.1-0.5; the bounds leave room either side while
# excluding the degenerate ends (beta -> 0 makes B / D^beta a second constant that trades
# freely with E; a huge beta makes the curve a step).
BETA_BOUNDS: Tuple[float, float] = (0.01, 2.0)

# Three parameters: at least one more point than parameters, so the fit is over-determined.
MIN_FIT_POINTS = 4

# "refuse": a target at or above the initial loss is an error; the other rules are those of
# :func:`megatron_velocitune.core.policy.resolve_targets`, the one home of the rules.
TARGET_RULES = RISING_RULES


@dataclass(frozen=True)
class ChinchillaFit:
    """A fitted ``L(D) = E + B / D^beta``.

    ``B`` is in raw token units and can be large; predictions use the numerically tame form
    ``E + b * (D / scale)^-beta`` with ``b = B / scale^beta``.

    Attributes:
        E (float): irreducible loss (the asymptote), > 0.
        B (float): data-term coefficient, >= 0.
        beta (float): data exponent, in :data:`BETA_BOUNDS`.
        scale (float): token count the fit was normalised by (the largest fitted ``D``).
        huber_loss (float): mean Huber loss of the log residuals on the fitted points.
        r2 (float): R^2 of the losses on the fitted points.
        num_points (int): points fitted.
        max_tokens (float): largest ``D`` fitted (beyond it is extrapolation).
        converged (bool): whether the best L-BFGS-B start reported success.
    """

    E: float
    B: float
    beta: float
    scale: float
    huber_loss: float
    r2: float
    num_points: int
    max_tokens: float
    converged: bool

    def predict(self, tokens) -> np.ndarray:
        """Predicted loss after ``tokens`` training tokens.

        Args:
            tokens (array-like): token counts, > 0.

        Returns:
            np.ndarray: ``E + B / tokens^beta`` (a 0-d array for a scalar input).
        """
        x = np.asarray(tokens, dtype=np.float64) / self.scale
        b = self.B / self.scale**self.beta
        return self.E + b * x ** (-self.beta)


@dataclass(frozen=True)
class HeldOutError:
    """How well a fit on the early points predicts the later ones.

    Attributes:
        fit (ChinchillaFit): the law fitted on points with ``tokens <= cutoff_tokens``.
        cutoff_tokens (float): the last token count allowed into the fit.
        tokens (np.ndarray): the held-out token counts (``> cutoff_tokens``).
        observed (np.ndarray): their observed losses.
        predicted (np.ndarray): the fit's predictions there.
        mae (float): mean absolute error over the held-out points (``nan`` if none).
        final_error (float): absolute error at the last held-out point (``nan`` if none).
    """

    fit: ChinchillaFit
    cutoff_tokens: float
    tokens: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    mae: float
    final_error: float


@dataclass(frozen=True)
class TargetDecision:
    """The target loss a domain gets, and why.

    Attributes:
        target (float): the target to use (``< initial`` whenever ``initial`` is known).
        predicted (float): the law's prediction at the budget.
        initial (Optional[float]): the domain's initial loss, if known.
        rule_applied (bool): whether a rising-domain rule set the target (not Algorithm 1's
            plain prediction below ``L_init``).
        note (str): one line for the user ("" when the prediction is used as is).
        rule (str): ``progress``, ``hold-initial``, ``budget`` or ``tolerance``.
    """

    target: float
    predicted: float
    initial: Optional[float]
    rule_applied: bool
    note: str
    rule: str = "progress"


def _model(params: np.ndarray, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    e, b, beta = params
    xp = x ** (-beta)
    pred = e + b * xp
    jac = np.stack([np.ones_like(x), xp, -b * xp * np.log(x)], axis=1)
    return pred, jac


def fit_chinchilla(
    tokens: Sequence[float],
    losses: Sequence[float],
    delta: float = DEFAULT_HUBER_DELTA,
    beta_bounds: Tuple[float, float] = BETA_BOUNDS,
    rising: bool = False,
) -> ChinchillaFit:
    """Fit ``L(D) = E + B / D^beta`` to one domain's (tokens, loss) points.

    Args:
        tokens (Sequence[float]): training tokens seen at each evaluation, > 0.
        losses (Sequence[float]): held-out loss at each evaluation, > 0.
        delta (float): Huber threshold on log-loss residuals.
        beta_bounds (Tuple[float, float]): bounds of ``beta``.
        rising (bool): fit the mirrored law of a domain that forgets, ``B <= 0`` and ``E``
            at or above the highest loss: the curve rises and levels off at ``E`` (the
            forgetting-budget rule's prediction); ``B >= 0`` otherwise.

    Returns:
        ChinchillaFit: the best fit over the start grid.

    Raises:
        TooFewPointsError: fewer than :data:`MIN_FIT_POINTS` points, or fewer than 3 distinct
            token counts.
        ValueError: mismatched lengths, non-positive tokens, non-finite or non-positive losses.
    """
    d = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError(f"tokens {d.shape} and losses {y.shape} must be vectors of one length")
    if d.size < MIN_FIT_POINTS or np.unique(d).size < 3:
        raise TooFewPointsError(
            f"need at least {MIN_FIT_POINTS} points at 3+ distinct token counts to fit "
            f"E + B/D^beta, got {d.size} ({np.unique(d).size} distinct)"
        )
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError("token counts must be finite and positive")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("losses must be finite and positive")

    scale = float(d.max())
    x = d / scale
    y_min, y_max, y_last = float(y.min()), float(y.max()), float(y[np.argmax(d)])
    # Starts: asymptotes from well below to just under the lowest loss; b so that the curve
    # passes near the last observed point (the prediction at x = 1 is E + b).
    starts = []
    if rising:
        # Mirrored: asymptotes from just over the highest loss up; b < 0 through the last point.
        for frac, beta in start_grid((1.001, 1.03, 1.15), (0.1, 0.3, 0.8)):
            e0 = frac * y_max
            starts.append(np.array([e0, min(y_last - e0, -1e-3 * y_max), beta]))
        bounds = [(y_min, 10.0 * y_max), (-1e3 * y_max, 0.0), beta_bounds]
    else:
        for frac, beta in start_grid((0.5, 0.85, 0.97), (0.1, 0.3, 0.8)):
            e0 = frac * y_min
            starts.append(np.array([e0, max(y_last - e0, 1e-3 * y_min), beta]))
        bounds = [(1e-6, y_max), (0.0, 1e3 * y_max), beta_bounds]
    outcome = fit_huber_log(_model, x, y, starts, bounds, delta=delta)
    e, b, beta = (float(v) for v in outcome.params)
    pred, _ = _model(outcome.params, x)
    return ChinchillaFit(
        E=e,
        B=b * scale**beta,
        beta=beta,
        scale=scale,
        huber_loss=huber_log_loss(pred, y, delta),
        r2=r_squared(pred, y),
        num_points=int(d.size),
        max_tokens=scale,
        converged=outcome.converged,
    )


def held_out_error(
    tokens: Sequence[float],
    losses: Sequence[float],
    cutoff_tokens: float,
    delta: float = DEFAULT_HUBER_DELTA,
    rising: bool = False,
) -> HeldOutError:
    """Fit on the points up to ``cutoff_tokens`` and measure the error on the later ones.

    Args:
        tokens (Sequence[float]): training tokens at each evaluation.
        losses (Sequence[float]): held-out loss at each evaluation.
        cutoff_tokens (float): points with ``tokens <= cutoff_tokens`` are fitted, the rest
            held out (the paper: half the budget).
        delta (float): Huber threshold.
        rising (bool): fit the mirrored law of a forgetting domain (see :func:`fit_chinchilla`).

    Returns:
        HeldOutError: the fit and its absolute errors on the held-out points.

    Raises:
        TooFewPointsError: too few points at or before the cutoff.
    """
    d = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    early = d <= cutoff_tokens
    try:
        fit = fit_chinchilla(d[early], y[early], delta=delta, rising=rising)
    except TooFewPointsError as e:
        raise TooFewPointsError(f"{e} at or before {cutoff_tokens:.4g} tokens") from None
    order = np.argsort(d[~early], kind="stable")
    late_d, late_y = d[~early][order], y[~early][order]
    pred = fit.predict(late_d)
    err = np.abs(pred - late_y)
    return HeldOutError(
        fit=fit,
        cutoff_tokens=float(cutoff_tokens),
        tokens=late_d,
        observed=late_y,
        predicted=np.asarray(pred, dtype=np.float64),
        mae=float(err.mean()) if err.size else float("nan"),
        final_error=float(err[-1]) if err.size else float("nan"),
    )


def resolve_target(
    predicted: float,
    initial: Optional[float],
    rule: str = "refuse",
    margin: float = DEFAULT_TARGET_MARGIN,
    name: str = "",
    tolerance: Optional[Tolerance] = None,
) -> TargetDecision:
    """One domain's target under a rising-domain rule, with a note for the user.

    The rules are :func:`megatron_velocitune.core.policy.resolve_targets`'s: a prediction below the
    initial loss is kept (``hold-initial`` caps it at ``L_init * (1 - margin)``); one at or
    above it is kept as a forgetting budget (``budget``), replaced by ``L_init + tolerance``
    (``tolerance``) or by ``L_init * (1 - margin)`` (``hold-initial``), or refused.

    Args:
        predicted (float): the law's loss at the full budget.
        initial (Optional[float]): the domain's initial loss; None skips the rule.
        rule (str): one of :data:`TARGET_RULES`.
        margin (float): hold-initial's relative margin below ``initial``, in (0, 1).
        name (str): domain name for messages.
        tolerance (Optional[Tolerance]): the tolerance rule's budget.

    Returns:
        TargetDecision: the target and a note.

    Raises:
        TargetAboveInitialError: the rule cannot take the prediction (``refuse`` and a
            prediction at or above ``initial``, or ``budget`` and one equal to it).
        ValueError: an unknown rule, a bad margin or tolerance, or a non-finite prediction.
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"target rule {rule!r} must be one of {TARGET_RULES}")
    if not 0.0 < margin < 1.0:
        raise ValueError(f"target margin {margin} must be in (0, 1)")
    predicted = float(predicted)
    if not math.isfinite(predicted):
        raise ValueError(f"domain {name!r}: predicted target {predicted} is not finite")
    if initial is None:
        return TargetDecision(
            predicted,
            predicted,
            None,
            False,
            "initial loss unknown: the target is not checked against it (give the initial loss)",
        )
    initial = float(initial)
    try:
        resolved = resolve_targets([initial], [predicted], rule, margin, tolerance, [name])
    except TargetRuleError as e:
        if rule in ("refuse", "budget", "budget-hold") and predicted >= initial:
            raise TargetAboveInitialError(str(e)) from None
        raise ValueError(str(e)) from None
    target, applied = resolved.targets[0], resolved.rules[0]
    if applied == "progress":
        note = ""
        if predicted > initial * (1.0 - margin):
            note = (
                f"target {predicted:.4f} is within {margin:g} of the initial loss "
                f"{initial:.4f}: velocity will be sensitive to eval noise"
            )
        return TargetDecision(target, predicted, initial, False, note)
    notes = {
        "hold-initial": f"hold-initial: predicted {predicted:.4f} is not {margin:g} below the "
        f"initial loss {initial:.4f}; target set to {target:.4f}",
        "budget": f"budget: predicted {predicted:.4f} is above the initial loss "
        f"{initial:.4f}; kept as a forgetting budget of {target - initial:.4f} nats",
        "budget-hold": f"budget-hold: predicted {predicted:.4f} is above the initial loss "
        f"{initial:.4f}; kept as a forgetting budget of {target - initial:.4f} nats to hold",
        "tolerance": f"tolerance: predicted {predicted:.4f} is not below the initial loss "
        f"{initial:.4f}; target set to {target:.4f} (+{tolerance})",
    }
    return TargetDecision(target, predicted, initial, True, notes[applied], applied)


@dataclass(frozen=True)
class LossPoints:
    """Per-domain held-out losses of one run, by training tokens (from its trajectory).

    Attributes:
        domains (List[str]): domain names, in the order of the ``losses`` columns.
        tokens (np.ndarray): ``consumed_tokens`` of each evaluation, shape (n,).
        losses (np.ndarray): ``eval_loss`` per evaluation and domain, shape (n, k); NaN where a
            record has no loss for the domain.
    """

    domains: List[str]
    tokens: np.ndarray
    losses: np.ndarray

    def domain(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """The (tokens, losses) of one domain with positive tokens and a finite loss."""
        col = self.losses[:, self.domains.index(name)]
        keep = (self.tokens > 0) & np.isfinite(col)
        return self.tokens[keep], col[keep]

    def at_zero(self, name: str) -> Optional[float]:
        """The domain's loss recorded before any training token (an initial loss), if any."""
        col = self.losses[:, self.domains.index(name)]
        keep = (self.tokens == 0) & np.isfinite(col)
        return float(col[keep][-1]) if np.any(keep) else None


def loss_points(trajectory: Trajectory, domains: Optional[Sequence[str]] = None) -> LossPoints:
    """Collect ``(consumed_tokens, eval_loss)`` from a trajectory's update records.

    Args:
        trajectory (Trajectory): a parsed trajectory (:mod:`megatron_velocitune.core.trajectory`).
        domains (Optional[Sequence[str]]): names to pick, in this order (default: the run's).

    Returns:
        LossPoints: one row per update record that carries ``eval_loss``.

    Raises:
        ValueError: a requested domain is not in the run, or a record's losses have the wrong
            length.
    """
    run = trajectory.domains
    names = list(run if domains is None else domains)
    missing = [n for n in names if n not in run]
    if missing:
        raise ValueError(f"domains {missing} are not in the run (it has {run})")
    cols = [run.index(n) for n in names]
    tokens, rows = [], []
    for rec in trajectory.updates:
        losses = rec.get("eval_loss")
        if losses is None or rec.get("consumed_tokens") is None:
            continue
        if len(losses) != len(run):
            raise ValueError(
                f"iteration {rec.get('iteration')}: {len(losses)} losses for {len(run)} domains"
            )
        tokens.append(float(rec["consumed_tokens"]))
        rows.append([np.nan if losses[c] is None else float(losses[c]) for c in cols])
    return LossPoints(
        domains=names,
        tokens=np.asarray(tokens, dtype=np.float64),
        losses=np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names)),
    )


#: Footings whose header ``initial_loss`` was measured on the same samples as the updates.
MEASURED_FOOTINGS = ("subset", "stream")


def common_footing(
    trajectories: Sequence[Trajectory], names: Sequence[str]
) -> Tuple[List[LossPoints], Optional[List[float]]]:
    """Every run's loss points on one level: each run's change from its own initial loss.

    A run on the ``subset`` (or ``stream``) footing measured ``L_init`` on the very samples its
    updates evaluate, so its curve carries the subset's fixed offset from the full held-out set
    (a different one per data seed). Pooling such runs as they are fits one band per seed; here
    each run is shifted by ``reference - L_init(run)``, the reference being the runs' mean
    ``L_init``, so only their changes are pooled. A consumer of the fit then applies the
    predicted change (``target - reference``) to its own ``L_init``.

    Args:
        trajectories (Sequence[Trajectory]): parsed proxy runs.
        names (Sequence[str]): domains, in the order wanted.

    Returns:
        Tuple[List[LossPoints], Optional[List[float]]]: the (shifted) points per run, and the
        reference initial loss per domain; ``None`` (points as they are) when the runs are on the
        ``full`` footing (older runs, policy ``paper``).

    Raises:
        ValueError: the runs mix footings, or a measured-footing run has no initial loss.
    """
    footings = {t.header.get("footing", "full") for t in trajectories}
    points = [loss_points(t, names) for t in trajectories]
    if footings <= {"full"}:
        return points, None
    if len(footings) > 1:
        raise ValueError(f"the runs mix footings {sorted(footings)}: fit each footing apart")
    initial = []
    for t in trajectories:
        init = t.header.get("initial_loss")
        if init is None or any(init[t.domains.index(n)] is None for n in names):
            raise ValueError(f"a run on the {footings.pop()} footing has no initial_loss")
        initial.append([float(init[t.domains.index(n)]) for n in names])
    initial = np.asarray(initial, np.float64)
    reference = initial.mean(axis=0)
    shifted = [
        LossPoints(p.domains, p.tokens, p.losses + (reference - own)[None, :])
        for p, own in zip(points, initial)
    ]
    return shifted, reference.tolist()


def header_budget(trajectories: Sequence[Trajectory]) -> Optional[float]:
    """The largest ``train_iters * global_batch_size * seq_length`` among the runs' headers.

    Args:
        trajectories (Sequence[Trajectory]): parsed runs.

    Returns:
        Optional[float]: the token budget, or None when no header has the three keys.
    """
    budgets = []
    for t in trajectories:
        h = t.header
        if all(h.get(k) for k in ("train_iters", "global_batch_size", "seq_length")):
            budgets.append(float(h["train_iters"]) * h["global_batch_size"] * h["seq_length"])
    return max(budgets) if budgets else None


def initial_losses(
    trajectories: Sequence[Trajectory], names: Sequence[str]
) -> List[Optional[float]]:
    """Each domain's initial loss as the runs recorded it.

    The first header with an ``initial_loss`` for the domain wins; else an evaluation at 0
    tokens (the training entry measures the initial loss at iteration 0 when no file is given).

    Args:
        trajectories (Sequence[Trajectory]): parsed runs.
        names (Sequence[str]): domains, in the order wanted.

    Returns:
        List[Optional[float]]: one loss per name, None where no run recorded one.
    """
    out: List[Optional[float]] = [None] * len(names)
    for t in trajectories:
        init = t.header.get("initial_loss")
        if init is None:
            continue
        for i, n in enumerate(names):
            if out[i] is None and n in t.domains and init[t.domains.index(n)] is not None:
                out[i] = float(init[t.domains.index(n)])
    for t in trajectories:
        present = [n for n in names if n in t.domains]
        pts = loss_points(t, present)
        for i, n in enumerate(names):
            if out[i] is None and n in present:
                out[i] = pts.at_zero(n)
    return out
