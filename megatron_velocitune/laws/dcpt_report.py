"""The D-CPT Law fitted on static ratio runs, and the answers ``velocitune-fit-dcpt`` prints.

:func:`fit_dcpt_runs` fits every domain's law on the runs (up to ``fit_fraction`` of the
budget), scores a run left out of a refit, and answers the practical questions: the blend (one
new domain: the paper's ratio), each domain's loss over ``D`` for it, and the share of a
data-limited domain. :func:`dcpt_targets` turns the laws into target losses at the budget.

Pure: the runs come parsed; reading, printing and writing are the tool's
(:mod:`megatron_velocitune.cli.fit_dcpt_law`).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import InputError, TargetAboveInitialError, ToolError
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE, DEFAULT_TARGET_MARGIN, Tolerance
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.dcpt_law import (
    DEFAULT_EPS,
    ETA_BOUNDS,
    BlendChoice,
    DcptFit,
    RatioChoice,
    choose_blend,
    choose_ratio,
    fit_domain,
    gather,
    ratio_for_limited_domain,
)
from megatron_velocitune.laws.scaling_law import header_budget, initial_losses, resolve_target

__all__ = [
    "CURVE_FRACTIONS",
    "DcptRunsConfig",
    "DcptRunsReport",
    "DcptTargets",
    "LeftOutRun",
    "dcpt_targets",
    "fit_dcpt_runs",
]

#: The budget fractions the loss curve over ``D`` is predicted at.
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)

#: ``--allow-negative-eta``'s bounds of eta (a larger share slows the data term).
NEGATIVE_ETA_BOUNDS = (-2.0, 2.0)


@dataclass(frozen=True)
class DcptRunsConfig:
    """What to fit and ask (the tool's flags).

    Attributes:
        replay (Sequence[str]): replay (general) domains, kept within ``tolerance``.
        tolerance (float): relative rise allowed in each replay domain's loss (>= 0).
        budget_tokens (Optional[float]): the real run's budget (None: the headers').
        min_tokens (float): evaluations before this many tokens are dropped.
        fit_fraction (float): the laws see the evaluations up to this share of the budget.
        held_out_run (int): index of the run left out of the validation refit.
        initial_losses (Optional[Sequence[Optional[float]]]): per domain of the runs (a file's);
            None: what the runs recorded.
        domain_tokens (Sequence[Tuple[str, float]]): data-limited domains and their tokens.
        blend (Dict[str, float]): a given blend (unnormalised) replacing the chosen one for the
            curve and the targets; empty: the chosen one.
        min_weight (float): floor of every weight of the chosen blend.
        eps (float): the law's ratio offset.
        allow_negative_eta (bool): eta down to -2 instead of the paper's eta >= 0.
    """

    replay: Sequence[str] = ()
    tolerance: float = 0.01
    budget_tokens: Optional[float] = None
    min_tokens: float = 0.0
    fit_fraction: float = 1.0
    held_out_run: int = -1
    initial_losses: Optional[Sequence[Optional[float]]] = None
    domain_tokens: Sequence[Tuple[str, float]] = ()
    blend: Dict[str, float] = field(default_factory=dict)
    min_weight: float = 0.01
    eps: float = DEFAULT_EPS
    allow_negative_eta: bool = False


@dataclass
class LeftOutRun:
    """The validation: each domain's law refitted without one run, scored on that run.

    Attributes:
        index (int): the run left out.
        tried (bool): the other runs span 2 or more blends (else no refit was tried).
        errors (Dict[str, Tuple[float, float]]): per domain, the mean absolute error over the
            left-out run's evaluations and the error at its last one.
        refit_failures (Dict[str, str]): domains whose refit failed (too few points without
            the run), with the reason; they have no left-out error.
    """

    index: int
    tried: bool
    errors: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    refit_failures: Dict[str, str] = field(default_factory=dict)


@dataclass
class DcptRunsReport:
    """The fitted laws and the answers.

    Attributes:
        names (List[str]): the domains, in the runs' order.
        ratios (np.ndarray): each run's blend (runs x domains).
        points (List[Dict[str, Tuple[np.ndarray, np.ndarray]]]): each run's curves, every
            evaluation from ``min_tokens`` on.
        budget (float): the token budget.
        cutoff (float): the last token count the laws saw.
        initial (Dict[str, Optional[float]]): initial loss per domain.
        laws (Dict[str, DcptFit]): each domain's law, fitted on every run.
        left_out (LeftOutRun): the validation.
        replay (List[str]): the replay domains; ``learn`` the others.
        learn (List[str]): the domains whose loss the blend minimises.
        ratio_choice (Optional[RatioChoice]): two domains, one replay: the paper's ratio.
        blend_choice (Optional[BlendChoice]): otherwise: the blend.
        chosen (np.ndarray): the chosen blend (``names`` order).
        feasible (bool): the chosen blend keeps every replay domain within the tolerance.
        weights (np.ndarray): the blend of the curve and the targets (``given`` if any).
        given (bool): ``weights`` is the config's blend.
        curve (Dict[str, np.ndarray]): each domain's loss at :data:`CURVE_FRACTIONS` of the
            budget with ``weights``.
        limited (List[Tuple[str, float, RatioChoice]]): each data-limited domain, its tokens
            and its share.
    """

    names: List[str]
    ratios: np.ndarray
    points: List[Dict[str, Tuple[np.ndarray, np.ndarray]]]
    budget: float
    cutoff: float
    initial: Dict[str, Optional[float]]
    laws: Dict[str, DcptFit]
    left_out: LeftOutRun
    replay: List[str]
    learn: List[str]
    ratio_choice: Optional[RatioChoice]
    blend_choice: Optional[BlendChoice]
    chosen: np.ndarray
    feasible: bool
    weights: np.ndarray
    given: bool
    curve: Dict[str, np.ndarray]
    limited: List[Tuple[str, float, RatioChoice]]


def _check(config: DcptRunsConfig, names: Sequence[str]) -> Optional[np.ndarray]:
    """The config's one-line errors; returns the given blend, normalised (or None)."""
    if config.tolerance < 0:
        raise ToolError(f"--tolerance {config.tolerance} must be >= 0")
    if not 0.0 < config.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {config.fit_fraction} must be in (0, 1]")
    unknown = [n for n in config.replay if n not in names]
    if unknown:
        raise ToolError(f"--replay {unknown}: not domains of the runs ({names})")
    for n, _ in config.domain_tokens:
        if n not in names:
            raise ToolError(f"--domain-tokens {n}: not a domain of the runs ({names})")
    if not config.blend:
        return None
    given = dict(config.blend)
    if sorted(given) != sorted(names) or any(v <= 0 for v in given.values()):
        raise ToolError(f"--blend needs one positive weight for each of {names}, got {given}")
    return np.array([given[n] for n in names]) / sum(given.values())


def _left_out(
    names: Sequence[str],
    ratios: np.ndarray,
    points: List[Dict[str, Tuple[np.ndarray, np.ndarray]]],
    fitted: List[Dict[str, Tuple[np.ndarray, np.ndarray]]],
    config: DcptRunsConfig,
    eta: Tuple[float, float],
) -> LeftOutRun:
    """Refit each domain without one run and score that run on all its evaluations."""
    held = config.held_out_run % len(points)
    rest = [i for i in range(len(points)) if i != held]
    result = LeftOutRun(held, len({tuple(np.round(ratios[i], 9)) for i in rest}) >= 2)
    if not result.tried:
        return result
    for n in names:
        try:
            law = fit_domain(n, ratios, fitted, rest, config.eps, eta)
        except InputError as e:
            # Too few points without the run: no left-out error for this domain; the laws
            # fitted on every run still answer the questions.
            result.refit_failures[n] = str(e)
            continue
        d, y = points[held][n]
        if d.size:
            err = np.abs(law.predict(d, ratios[held, names.index(n)]) - y)
            result.errors[n] = (float(err.mean()), float(err[np.argmax(d)]))
    return result


def fit_dcpt_runs(
    paths: Sequence[str], runs: Sequence[Trajectory], config: DcptRunsConfig
) -> DcptRunsReport:
    """Fit the D-CPT Law on static ratio runs and answer the blend questions.

    Args:
        paths (Sequence[str]): the runs' trajectory files (named in errors).
        runs (Sequence[Trajectory]): the parsed runs, one blend each.
        config (DcptRunsConfig): what to fit and ask.

    Returns:
        DcptRunsReport: the laws, the left-out run's errors and the answers.

    Raises:
        ToolError: a bad config value, fewer than 2 blends, no budget, a replay domain without
            an initial loss.
        InputError: a run that is not static, or a domain the law cannot be fitted on.
    """
    names = list(runs[0].domains)
    given = _check(config, names)
    ratios, points = gather(paths, runs, names, config.min_tokens)
    distinct = {tuple(np.round(r, 9)) for r in ratios}
    if len(distinct) < 2:
        raise ToolError(f"need static runs at 2 or more blends, got {len(distinct)}")
    budget = config.budget_tokens or header_budget(runs)
    if not budget or budget <= 0:
        raise ToolError("no token budget: pass --budget-tokens")
    init_list = (
        initial_losses(runs, names) if config.initial_losses is None else config.initial_losses
    )
    initial = dict(zip(names, init_list))
    no_init = [n for n in config.replay if initial[n] is None]
    if no_init:
        raise ToolError(
            f"replay domains {no_init} have no initial loss: pass "
            f"--initial-loss-file (or record one at iteration 0)"
        )

    cutoff = config.fit_fraction * budget
    fitted = [{n: (d[d <= cutoff], y[d <= cutoff]) for n, (d, y) in p.items()} for p in points]
    eta = NEGATIVE_ETA_BOUNDS if config.allow_negative_eta else ETA_BOUNDS
    laws = {n: fit_domain(n, ratios, fitted, range(len(runs)), config.eps, eta) for n in names}
    left_out = _left_out(names, ratios, points, fitted, config, eta)

    replay = list(config.replay)
    learn = [n for n in names if n not in replay]
    ratio_choice, blend_choice = None, None
    if len(names) == 2 and len(replay) == 1:
        dom, gen = learn[0], replay[0]
        ratio_choice = choose_ratio(laws[dom], laws[gen], budget, initial[gen], config.tolerance)
        chosen = np.array(
            [ratio_choice.ratio if n == dom else 1.0 - ratio_choice.ratio for n in names]
        )
        feasible = ratio_choice.feasible
    else:
        blend_choice = choose_blend(
            laws,
            budget,
            replay=replay,
            initial={n: v for n, v in initial.items() if v is not None},
            tolerance=config.tolerance,
            min_weight=config.min_weight,
            start=ratios[0],
        )
        chosen, feasible = blend_choice.weights, blend_choice.feasible
    weights = chosen if given is None else given
    curve = {
        n: laws[n].predict(np.array(CURVE_FRACTIONS) * budget, weights[j])
        for j, n in enumerate(names)
    }
    gen_law = laws[replay[0]] if len(replay) == 1 else None
    gen_init = initial[replay[0]] if len(replay) == 1 else None
    limited = [
        (n, tokens, ratio_for_limited_domain(laws[n], tokens, gen_law, gen_init, config.tolerance))
        for n, tokens in config.domain_tokens
    ]
    return DcptRunsReport(
        names=names,
        ratios=ratios,
        points=points,
        budget=budget,
        cutoff=cutoff,
        initial=initial,
        laws=laws,
        left_out=left_out,
        replay=replay,
        learn=learn,
        ratio_choice=ratio_choice,
        blend_choice=blend_choice,
        chosen=chosen,
        feasible=feasible,
        weights=weights,
        given=given is not None,
        curve=curve,
        limited=limited,
    )


@dataclass
class DcptTargets:
    """Target losses at the budget for the report's blend.

    Attributes:
        targets (List[float]): per domain (``names`` order); complete only without ``errors``.
        notes (List[str]): the rules applied, one line per domain.
        errors (List[str]): domains the rule refused.
    """

    targets: List[float] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)


def dcpt_targets(
    report: DcptRunsReport,
    rising_rule: str = DEFAULT_RISING_RULE,
    margin: float = DEFAULT_TARGET_MARGIN,
    forgetting_tolerance: Optional[Tolerance] = None,
) -> DcptTargets:
    """The laws' predictions at the budget, a rising domain's by ``rising_rule``.

    Args:
        report (DcptRunsReport): the fitted laws and blend.
        rising_rule (str): the rule of a prediction not below the initial loss.
        margin (float): the hold-initial rule's margin.
        forgetting_tolerance (Optional[Tolerance]): the tolerance rule's budget.

    Returns:
        DcptTargets: the targets, the rules' notes and the refused domains.
    """
    out = DcptTargets()
    for j, n in enumerate(report.names):
        pred = float(report.laws[n].predict(report.budget, report.weights[j]))
        try:
            dec = resolve_target(
                pred, report.initial[n], rising_rule, margin, n, forgetting_tolerance
            )
        except TargetAboveInitialError as e:
            out.errors.append(f"{e} (--rising-domains)")
            continue
        out.targets.append(dec.target)
        if dec.note:
            out.notes.append(f"domain {n!r}: {dec.note}")
    return out
