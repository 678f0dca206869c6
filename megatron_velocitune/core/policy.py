"""Domain reweighting rules: Velocitune (Algorithm 1), its baselines and ablations.

Pure numpy, no torch.distributed, no I/O: every function takes the current weight vector and
per-domain losses (float64 arrays of length k, one entry per domain, in blend order) and returns
a new weight vector on the probability simplex.

    velocity(L_t, L_init, L_target) = clamp((L_t - L_target) / (L_init - L_target), 0, 1)
    forgetting_velocity(L_t, L_init, L_target) = clamp((L_t - L_init) / (L_target - L_init), 0, 1)
    domain_velocity:  each domain by its rule (target below L_init: Algorithm 1; above: the
                      forgetting budget), the headroom |L_init - L_target| floored
    held_budget_velocity: a budget domain at its budget keeps pace with the others
    noise_headroom:   the headroom floor, max(min_headroom, noise_multiple * stderr)
    velocity_update:  w <- normalize(w * exp(V))                      (Velocitune, Algorithm 1)
    unresponsive:     domains above their initial share whose loss did not fall over a window
    brake:            those domains' shares stop growing and move back towards the initial blend
    cap:              no share above a multiple of its initial one (a runaway guard to compare)
    dbl_update:       w <- normalize(w * exp(max(L_t - L_target, 0))) (Sheared LLaMA's DBL)
    ratio_update:     w <- normalize(w * exp(L_t / L_init))           ("without target loss")
    static_update:    w <- w                                          (CPT baseline)

Targets for domains with little or negative headroom (a replay domain whose proxy loss rose) come
from one of :data:`RISING_RULES` (:func:`resolve_targets`): ``hold-initial`` (the target is
``L_init * (1 - margin)``, below the start), ``budget`` (the fit's prediction above ``L_init`` is
kept: a forgetting budget; ``budget-hold`` holds the domain at it), ``tolerance``
(``L_init + tolerance``, a budget the user gives) or ``refuse``. Only ``budget``, ``budget-hold``
and ``tolerance`` accept a target above ``L_init``; the velocity of such a domain is the share
of its forgetting budget used so far.

With ``min_weight == 0`` (the default of these functions) the results are the formulas above to
the last bit. A positive ``min_weight`` mixes the result towards uniform just enough that every
domain keeps at least ``min_weight``: ``w <- (1 - k * min_weight) * w + min_weight``.

Two policies read the velocity (:data:`POLICIES`): ``paper`` is Algorithm 1 exactly as the paper
writes it (:func:`velocity_update` with no headroom floor and no brake); ``velocity``, the
default, adds the two guards a small evaluation needs: a headroom never below the evaluation's
own noise (:func:`noise_headroom`) and the brake (:func:`unresponsive`, :func:`brake`), so that
a domain whose loss does not fall when it gets more data cannot keep compounding its weight.

One more policy, ``schedule`` (:data:`SCHEDULE_POLICY`), reads no loss: its blend changes at
given iterations (:mod:`megatron_velocitune.core.schedule`), the phased blend a reactive rule
must beat.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from megatron_velocitune.core.errors import TargetRuleError

__all__ = [
    "DEFAULT_BRAKE_PULLBACK",
    "DEFAULT_BRAKE_WINDOW",
    "DEFAULT_CAP_RATIO",
    "DEFAULT_NOISE_MULTIPLE",
    "DEFAULT_RUNAWAY_GUARD",
    "DEFAULT_RISING_RULE",
    "DEFAULT_TARGET_MARGIN",
    "POLICIES",
    "POLICY_NAMES",
    "RISING_RULES",
    "RUNAWAY_GUARDS",
    "SCHEDULE_POLICY",
    "VELOCITY_POLICIES",
    "Guards",
    "ResolvedTargets",
    "TargetRuleError",
    "Tolerance",
    "apply_floor",
    "cap",
    "brake",
    "dbl_update",
    "domain_velocity",
    "forgetting_velocity",
    "held_budget_velocity",
    "hold_initial_target",
    "noise_headroom",
    "resolve_targets",
    "tolerance_target",
    "normalize",
    "ratio_update",
    "static_update",
    "unresponsive",
    "update_weights",
    "velocity",
    "velocity_update",
]


def normalize(weights: np.ndarray) -> np.ndarray:
    """Scale non-negative weights to sum to one.

    Args:
        weights (np.ndarray): non-negative weights, at least one positive.

    Returns:
        np.ndarray: ``weights / weights.sum()`` as float64.
    """
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def apply_floor(weights: np.ndarray, min_weight: float) -> np.ndarray:
    """Mix normalised weights towards uniform so each is at least ``min_weight``.

    The mixture ``(1 - k * min_weight) * w + min_weight`` keeps the order of the weights and
    their sum, and is the identity at ``min_weight == 0``.

    Args:
        weights (np.ndarray): weights on the simplex.
        min_weight (float): the floor, in ``[0, 1 / k)``.

    Returns:
        np.ndarray: floored weights on the simplex.
    """
    if min_weight == 0.0:
        return weights
    k = weights.shape[0]
    if not 0.0 <= min_weight * k < 1.0:
        raise ValueError(f"min_weight {min_weight} must be in [0, 1/{k}) for {k} domains")
    return (1.0 - k * min_weight) * weights + min_weight


def velocity(current: np.ndarray, initial: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Learning velocity of each domain (Velocitune, Algorithm 1).

    ``V = 1`` means no progress yet from the initial loss towards the target (or forgetting:
    the loss rose above its initial value); ``V = 0`` means the target is reached.

    Args:
        current (np.ndarray): held-out loss now, ``L_t``.
        initial (np.ndarray): held-out loss of the base model, ``L_init``.
        target (np.ndarray): predicted loss at the full budget, ``L_target`` (< ``L_init``).

    Returns:
        np.ndarray: ``clamp((L_t - L_target) / (L_init - L_target), 0, 1)``.
    """
    current, initial, target = (np.asarray(a, dtype=np.float64) for a in (current, initial, target))
    return np.clip((current - target) / (initial - target), 0.0, 1.0)


def forgetting_velocity(current: np.ndarray, initial: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Share of a forgetting budget used so far (a domain whose target lies above ``L_init``).

    ``V = 0`` at the start (no forgetting yet), ``V = 1`` once the domain has forgotten as much
    as the budget allows (``L_t >= L_target``, e.g. what the static blend forgets by the end).

    Args:
        current (np.ndarray): held-out loss now, ``L_t``.
        initial (np.ndarray): held-out loss of the base model, ``L_init``.
        target (np.ndarray): the budget's loss, ``L_target`` (> ``L_init``).

    Returns:
        np.ndarray: ``clamp((L_t - L_init) / (L_target - L_init), 0, 1)``.
    """
    current, initial, target = (np.asarray(a, dtype=np.float64) for a in (current, initial, target))
    return np.clip((current - initial) / (target - initial), 0.0, 1.0)


def domain_velocity(
    current: np.ndarray, initial: np.ndarray, target: np.ndarray, min_headroom: float = 0.0
) -> np.ndarray:
    """Each domain's velocity under its rule, with a floor on the headroom.

    A domain whose target lies below ``L_init`` gets Algorithm 1's :func:`velocity`; one whose
    target lies above (a forgetting budget) gets :func:`forgetting_velocity`. Either divides by
    the headroom ``|L_init - L_target|``, taken no smaller than ``min_headroom``: a gap within
    the evaluation's noise would otherwise turn noise into ``V = 0`` or ``V = 1``. With
    ``min_headroom == 0`` and every target below ``L_init`` this is :func:`velocity` to the bit.

    Args:
        current (np.ndarray): held-out loss now, ``L_t``.
        initial (np.ndarray): ``L_init``.
        target (np.ndarray): ``L_target`` (never equal to ``L_init``).
        min_headroom (float): smallest headroom the velocity divides by, in nats (>= 0).

    Returns:
        np.ndarray: velocities in ``[0, 1]``.
    """
    current, initial, target = (np.asarray(a, dtype=np.float64) for a in (current, initial, target))
    falling = target < initial
    headroom = np.maximum(np.abs(initial - target), min_headroom)
    start = np.where(falling, target, initial)
    return np.clip((current - start) / headroom, 0.0, 1.0)


def held_budget_velocity(
    current: np.ndarray,
    initial: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    min_headroom: float = 0.0,
) -> np.ndarray:
    """Velocities that hold each forgetting-budget domain at its budget (rule ``budget-hold``).

    Domains whose target lies below ``L_init`` get Algorithm 1's velocity. A domain whose target
    lies above it (a budget) gets the blend-weighted mean velocity of those domains, its *pace*,
    plus how far it is past its budget in units of the budget:
    ``clamp(pace + (L_t - L_target) / (L_target - L_init), 0, 1)``. Exactly at its budget its
    weight keeps pace with the others (``V`` equals their mean); below the budget it gives weight
    away, and at the start (``L_t = L_init``) it reads ``pace - 1``, so the new domains go first.
    The budget rule's ``V = 1`` at the budget would instead raise its weight at every update for
    as long as it stays there, which under continual pre-training is from the first spike on.

    Args:
        current (np.ndarray): ``L_t``.
        initial (np.ndarray): ``L_init``.
        target (np.ndarray): ``L_target`` (above ``L_init`` for budget domains).
        weights (np.ndarray): the blend in force (weights the pace).
        min_headroom (float): floor of every headroom ``|L_init - L_target|`` (nats).

    Returns:
        np.ndarray: velocities in ``[0, 1]``.
    """
    current, initial, target, weights = (
        np.asarray(a, dtype=np.float64) for a in (current, initial, target, weights)
    )
    v = domain_velocity(current, initial, target, min_headroom)
    budget = target > initial
    if not budget.any() or budget.all():
        return v
    pace = float(np.sum(weights[~budget] * v[~budget]) / np.sum(weights[~budget]))
    # Only the budget domains' headroom is read (elsewhere 1 keeps the division finite).
    headroom = np.where(budget, np.maximum(target - initial, min_headroom), 1.0)
    past = (current - target) / headroom
    return np.where(budget, np.clip(pace + past, 0.0, 1.0), v)


def noise_headroom(
    min_headroom: float, stderr: Optional[np.ndarray], noise_multiple: float
) -> np.ndarray:
    """Each domain's headroom floor: the stated floor, or the evaluation's noise if larger.

    A headroom ``|L_init - L_target|`` within a few standard errors of the evaluation is noise:
    dividing by it would turn that noise into ``V = 0`` or ``V = 1``.

    Args:
        min_headroom (float): the stated floor in nats (>= 0).
        stderr (Optional[np.ndarray]): each domain's standard error of ``L_t`` (NaN: unknown).
        noise_multiple (float): how many standard errors the headroom is at least (>= 0).

    Returns:
        np.ndarray: ``max(min_headroom, noise_multiple * stderr)`` per domain (``min_headroom``
        where the standard error is unknown).
    """
    if stderr is None:
        return np.asarray(min_headroom, np.float64)
    noise = np.nan_to_num(noise_multiple * np.asarray(stderr, np.float64), nan=0.0)
    return np.maximum(min_headroom, noise)


def velocity_update(
    weights: np.ndarray,
    current: np.ndarray,
    initial: np.ndarray,
    target: np.ndarray,
    min_weight: float = 0.0,
    min_headroom: float = 0.0,
    hold_budget: bool = False,
) -> np.ndarray:
    """Velocitune's update: slow domains (large velocity) gain weight.

    Returns:
        np.ndarray: ``normalize(w * exp(V))``, floored, with ``V`` from :func:`domain_velocity`
        (Algorithm 1's :func:`velocity` when every target is below ``L_init`` and
        ``min_headroom == 0``), or from :func:`held_budget_velocity` with ``hold_budget``.
    """
    if hold_budget:
        v = held_budget_velocity(current, initial, target, weights, min_headroom)
    else:
        v = domain_velocity(current, initial, target, min_headroom)
    return apply_floor(normalize(np.asarray(weights, dtype=np.float64) * np.exp(v)), min_weight)


#: The brake's window (updates): a domain above its initial share must have lowered its loss over
#: this many updates to keep gaining weight.
DEFAULT_BRAKE_WINDOW = 3

#: Share of a braked domain's excess over its initial share given back at each update.
DEFAULT_BRAKE_PULLBACK = 0.5

#: The velocity's headroom is at least this many standard errors of the evaluation.
DEFAULT_NOISE_MULTIPLE = 2.0

#: How the default policy keeps a domain's weight from compounding when more of it buys no lower
#: loss: ``brake`` (:func:`brake`, on the domains :func:`unresponsive` finds), ``cap`` (no share
#: above :data:`DEFAULT_CAP_RATIO` times its initial one, :func:`cap`) or ``anchored`` (the update
#: starts from the initial blend, not the last one: ``w <- normalize(w_0 * exp(V))``, which cannot
#: compound).
RUNAWAY_GUARDS = ("brake", "cap", "anchored")
DEFAULT_RUNAWAY_GUARD = "brake"

#: The ``cap`` guard's bound: a share at most this multiple of the domain's initial share.
DEFAULT_CAP_RATIO = 2.0


def unresponsive(
    current: np.ndarray,
    earlier: np.ndarray,
    weights: np.ndarray,
    initial_weights: np.ndarray,
) -> np.ndarray:
    """Domains holding more than their initial share whose loss did not fall over the window.

    More weight that buys no lower loss (a saturated, repeated or already-learned domain, or one
    whose velocity only reads noise) is weight the other domains could have used.

    Args:
        current (np.ndarray): ``L_t`` now.
        earlier (np.ndarray): the same domains' loss at the start of the window (same footing).
        weights (np.ndarray): the blend in force.
        initial_weights (np.ndarray): the run's starting blend.

    Returns:
        np.ndarray: a boolean mask, True where ``w > w_0`` and ``L_t >= L_earlier``.
    """
    current, earlier, weights, initial_weights = (
        np.asarray(a, dtype=np.float64) for a in (current, earlier, weights, initial_weights)
    )
    return (weights > initial_weights) & ~(current < earlier)


def brake(
    candidate: np.ndarray,
    weights: np.ndarray,
    initial_weights: np.ndarray,
    braked: np.ndarray,
    pullback: float = DEFAULT_BRAKE_PULLBACK,
) -> np.ndarray:
    """Hold back the braked domains: their share moves towards the initial one, never up.

    A braked domain gets ``min(candidate, w_0 + (1 - pullback) * (w - w_0))``; the other domains
    share the rest in the candidate's proportions. With no domain braked this is ``candidate``.

    Args:
        candidate (np.ndarray): the rule's new blend (on the simplex).
        weights (np.ndarray): the blend in force.
        initial_weights (np.ndarray): the run's starting blend.
        braked (np.ndarray): boolean mask of the braked domains (see :func:`unresponsive`).
        pullback (float): share of the excess ``w - w_0`` given back per update, in [0, 1].

    Returns:
        np.ndarray: the braked blend, on the simplex.
    """
    candidate, weights, initial_weights = (
        np.asarray(a, dtype=np.float64) for a in (candidate, weights, initial_weights)
    )
    braked = np.asarray(braked, dtype=bool)
    if not braked.any():
        return candidate
    held = np.where(
        braked,
        np.minimum(candidate, initial_weights + (1.0 - pullback) * (weights - initial_weights)),
        candidate,
    )
    free = ~braked
    rest = candidate[free].sum()
    if not free.any() or rest <= 0.0:
        return normalize(held)
    held[free] = candidate[free] * (1.0 - held[braked].sum()) / rest
    return held


def cap(candidate: np.ndarray, initial_weights: np.ndarray, ratio: float = DEFAULT_CAP_RATIO):
    """No share above ``ratio`` times its initial share; the excess goes to the other domains in
    the candidate's proportions (repeated until none is over its bound).

    Args:
        candidate (np.ndarray): the rule's new blend (on the simplex).
        initial_weights (np.ndarray): the run's starting blend.
        ratio (float): the bound, >= 1 (so the bounds add up to at least 1).

    Returns:
        np.ndarray: the capped blend, on the simplex.
    """
    candidate = np.asarray(candidate, dtype=np.float64)
    bound = ratio * np.asarray(initial_weights, dtype=np.float64)
    held = candidate.copy()
    capped = np.zeros(candidate.shape, dtype=bool)
    while True:
        over = ~capped & (held > bound)
        if not over.any():
            return held
        capped |= over
        held[capped] = bound[capped]
        rest = candidate[~capped].sum()
        if rest <= 0.0:
            return normalize(held)
        held[~capped] = candidate[~capped] * (1.0 - held[capped].sum()) / rest


def dbl_update(
    weights: np.ndarray, current: np.ndarray, target: np.ndarray, min_weight: float = 0.0
) -> np.ndarray:
    """Dynamic Batch Loading (Xia et al. 2023, Sheared LLaMA), the paper's DBL baseline.

    Returns:
        np.ndarray: ``normalize(w * exp(max(L_t - L_target, 0)))``, floored.
    """
    gap = np.maximum(np.asarray(current, np.float64) - np.asarray(target, np.float64), 0.0)
    return apply_floor(normalize(np.asarray(weights, np.float64) * np.exp(gap)), min_weight)


def ratio_update(
    weights: np.ndarray, current: np.ndarray, initial: np.ndarray, min_weight: float = 0.0
) -> np.ndarray:
    """The "without target loss" ablation (Velocitune section 3.5): ``delta = L_t / L_init``.

    Returns:
        np.ndarray: ``normalize(w * exp(L_t / L_init))``, floored.
    """
    ratio = np.asarray(current, np.float64) / np.asarray(initial, np.float64)
    return apply_floor(normalize(np.asarray(weights, np.float64) * np.exp(ratio)), min_weight)


def static_update(weights: np.ndarray) -> np.ndarray:
    """The CPT baseline: the blend never changes.

    Returns:
        np.ndarray: a float64 copy of ``weights``.
    """
    return np.array(weights, dtype=np.float64)


@dataclass(frozen=True)
class Guards:
    """What the default ``velocity`` policy adds to Algorithm 1 (``paper`` reads none of it).

    Attributes:
        headroom (float | np.ndarray): the headroom floor per domain (:func:`noise_headroom`).
        hold_budget (bool): budget domains held at their budget (the ``budget-hold`` rule).
        braked (Optional[np.ndarray]): the domains to brake (:func:`unresponsive`); None: none.
        initial_weights (Optional[np.ndarray]): the starting blend (the brake pulls back to it,
            the cap is relative to it, the anchored update starts from it).
        pullback (float): the brake's pull-back per update.
        runaway (str): the runaway guard, one of :data:`RUNAWAY_GUARDS`.
        cap_ratio (float): the ``cap`` guard's bound.
    """

    headroom: Union[float, np.ndarray] = 0.0
    hold_budget: bool = False
    braked: Optional[np.ndarray] = None
    initial_weights: Optional[np.ndarray] = None
    pullback: float = DEFAULT_BRAKE_PULLBACK
    runaway: str = DEFAULT_RUNAWAY_GUARD
    cap_ratio: float = DEFAULT_CAP_RATIO


def _guarded_velocity_update(w, cur, ini, tgt, floor: float, guards: Guards) -> np.ndarray:
    start = guards.initial_weights if guards.runaway == "anchored" else w
    new = velocity_update(start, cur, ini, tgt, 0.0, guards.headroom, guards.hold_budget)
    if guards.runaway == "cap":
        new = cap(new, guards.initial_weights, guards.cap_ratio)
    elif guards.braked is not None:
        new = brake(new, w, guards.initial_weights, guards.braked, guards.pullback)
    return apply_floor(new, floor)


# Each policy in one signature, so callers pick a rule by name without caring which losses it reads.
POLICIES: Dict[str, Callable[..., np.ndarray]] = {
    "velocity": lambda w, cur, ini, tgt, f, g: _guarded_velocity_update(w, cur, ini, tgt, f, g),
    "paper": lambda w, cur, ini, tgt, f, g: velocity_update(w, cur, ini, tgt, f),
    "dbl": lambda w, cur, ini, tgt, f, g: dbl_update(w, cur, tgt, f),
    "ratio": lambda w, cur, ini, tgt, f, g: ratio_update(w, cur, ini, f),
    "static": lambda w, cur, ini, tgt, f, g: static_update(w),
}

#: The policies that read a velocity, hence targets and an initial loss.
VELOCITY_POLICIES = ("velocity", "paper")

#: A phased blend: the blend changes at given iterations whatever the losses say
#: (:class:`~megatron_velocitune.core.schedule.BlendSchedule`), so it is no rule of the losses.
SCHEDULE_POLICY = "schedule"

#: Every ``--velocitune-policy``.
POLICY_NAMES = (*POLICIES, SCHEDULE_POLICY)


def update_weights(
    policy: str,
    weights: np.ndarray,
    current: np.ndarray,
    initial: Optional[np.ndarray],
    target: Optional[np.ndarray],
    min_weight: float = 0.0,
    guards: Optional[Guards] = None,
) -> np.ndarray:
    """Apply the named policy (one of :data:`POLICIES`).

    Args:
        policy (str): ``velocity``, ``paper``, ``dbl``, ``ratio`` or ``static``.
        weights (np.ndarray): the current blend.
        current (np.ndarray): held-out loss now.
        initial (Optional[np.ndarray]): initial loss (``velocity``, ``paper``, ``ratio``).
        target (Optional[np.ndarray]): target loss (``velocity``, ``paper``, ``dbl``).
        min_weight (float): weight floor.
        guards (Optional[Guards]): the ``velocity`` policy's headroom floor, budget hold and
            brake (default: none of them, which is ``paper``'s rule).

    Returns:
        np.ndarray: the new blend.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[policy](weights, current, initial, target, min_weight, guards or Guards())


# ----------------------------------------------------------------------------- target rules

#: What a domain whose predicted target is not below its initial loss (a replay domain that
#: forgets under the static proxy) gets; see :func:`resolve_targets`.
RISING_RULES = ("budget", "budget-hold", "tolerance", "hold-initial", "refuse")

#: The rule the policy comparison favours (docs/results.md).
DEFAULT_RISING_RULE = "budget-hold"

#: hold-initial's default margin: the target sits 1% below the initial loss.
DEFAULT_TARGET_MARGIN = 0.01


@dataclass(frozen=True)
class Tolerance:
    """How much a domain may forget, in nats or relative to its initial loss.

    Attributes:
        value (float): the tolerance, > 0 (a fraction when ``relative``).
        relative (bool): ``value`` is a fraction of ``L_init`` (written ``2%`` on the command line).
    """

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> "Tolerance":
        """``"0.05"`` (nats) or ``"2%"`` (of the initial loss).

        Raises:
            ValueError: not a number, or not finite and positive.
        """
        text = str(text).strip()
        relative = text.endswith("%")
        try:
            value = float(text[:-1] if relative else text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of nats or a percentage") from None
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(f"{text!r} must be finite and > 0")
        return cls(value / 100.0 if relative else value, relative)

    def nats(self, initial: float) -> float:
        """The tolerance in nats for a domain starting at ``initial``."""
        return self.value * initial if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def hold_initial_target(initial: float, margin: float = DEFAULT_TARGET_MARGIN) -> float:
    """hold-initial: the target ``L_init * (1 - margin)``; any forgetting reads ``V = 1``."""
    return initial * (1.0 - margin)


def tolerance_target(initial: float, tolerance: Tolerance) -> float:
    """tolerance: the forgetting budget ``L_init + tolerance`` the user gives."""
    return initial + tolerance.nats(initial)


@dataclass(frozen=True)
class ResolvedTargets:
    """Each domain's target and the rule that set it.

    Attributes:
        targets (List[float]): the targets the velocity uses (never equal to ``L_init``;
            above it only under ``budget`` and ``tolerance``).
        rules (List[str]): per domain, ``progress`` (the prediction, below ``L_init``:
            Algorithm 1), ``hold-initial``, ``budget`` or ``tolerance``.
    """

    targets: List[float]
    rules: List[str]


def resolve_targets(
    initial: Sequence[float],
    predicted: Sequence[float],
    rule: str = DEFAULT_RISING_RULE,
    margin: float = DEFAULT_TARGET_MARGIN,
    tolerance: Optional[Tolerance] = None,
    names: Optional[Sequence[str]] = None,
) -> ResolvedTargets:
    """Apply a rising-domain rule to predicted targets.

    A domain whose prediction lies below its initial loss keeps it (``progress``), except under
    ``hold-initial``, which lifts no target but caps every one at ``L_init * (1 - margin)``. A
    domain whose prediction is not below ``L_init`` gets, by ``rule``:

    - ``budget``: the prediction itself, a forgetting budget (refused if equal to ``L_init``);
    - ``budget-hold``: the same target, its velocity from :func:`held_budget_velocity`;
    - ``tolerance``: ``L_init + tolerance``;
    - ``hold-initial``: ``L_init * (1 - margin)``;
    - ``refuse``: an error.

    The result does not depend on whether ``predicted`` was already resolved by the same rule,
    except that a target already held by ``hold-initial`` reads as ``progress``.

    Args:
        initial (Sequence[float]): ``L_init`` per domain.
        predicted (Sequence[float]): the fit's loss at the budget per domain.
        rule (str): one of :data:`RISING_RULES`.
        margin (float): hold-initial's relative margin, in (0, 1).
        tolerance (Optional[Tolerance]): the ``tolerance`` rule's budget.
        names (Optional[Sequence[str]]): domain names, for messages.

    Returns:
        ResolvedTargets: the targets and each domain's rule.

    Raises:
        TargetRuleError: an unknown rule, a bad margin or tolerance, a non-finite prediction, or
            a prediction the rule cannot take (one line naming the domain and the values).
    """
    if rule not in RISING_RULES:
        raise TargetRuleError(f"rule {rule!r} is not one of {list(RISING_RULES)}")
    if rule == "hold-initial" and not 0.0 < margin < 1.0:
        raise TargetRuleError(f"hold-initial margin {margin} must be in (0, 1)")
    if rule == "tolerance" and tolerance is None:
        raise TargetRuleError("the tolerance rule needs a tolerance (nats, or % of L_init)")
    targets, rules = [], []
    for i, (ini, pred) in enumerate(zip(initial, predicted)):
        ini, pred = float(ini), float(pred)
        name = names[i] if names else str(i)
        if not math.isfinite(pred):
            raise TargetRuleError(f"target {pred} for domain {name!r} is not finite")
        if rule == "hold-initial":
            held = hold_initial_target(ini, margin)
            targets.append(min(pred, held))
            rules.append("hold-initial" if pred > held else "progress")
        elif pred < ini:
            targets.append(pred)
            rules.append("progress")
        elif rule in ("budget", "budget-hold"):
            if pred == ini:
                raise TargetRuleError(
                    f"target {pred} for domain {name!r} equals its initial loss: no headroom "
                    f"either way (rule {rule}; try tolerance)"
                )
            targets.append(pred)
            rules.append(rule)
        elif rule == "tolerance":
            targets.append(tolerance_target(ini, tolerance))
            rules.append("tolerance")
        else:
            raise TargetRuleError(
                f"target {pred} for domain {name!r} is not below the initial loss {ini} "
                f"(rule refuse; budget, tolerance or hold-initial accept it)"
            )
    return ResolvedTargets(targets, rules)
