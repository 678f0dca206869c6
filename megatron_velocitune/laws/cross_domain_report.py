"""A new domain's D-CPT Law from a short run: the Cross-Domain D-CPT Law on ratio runs.

:func:`cross_domain_roles` splits the domains into replay, training and new ones;
:func:`fit_cross_domain_runs` measures every training and new domain's K on the same window of
one short run, fits the shared law on the training domains' ratio runs, predicts each new
domain from its K (scored where the runs hold it too), fits the standard law where a domain has
runs of its own, and chooses the blend.

Pure: the runs come parsed; reading, printing and plotting are the tool's
(:mod:`megatron_velocitune.cli.fit_cross_domain`).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import CoefficientError, TooFewPointsError, ToolError
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.cross_domain_law import (
    DEFAULT_MIN_DECLINE,
    CrossDomainFit,
    EarlyLosses,
    early_losses,
    fit_cross_domain,
    points_by_domain,
)
from megatron_velocitune.laws.dcpt_law import (
    DEFAULT_EPS,
    BlendChoice,
    DcptFit,
    choose_blend,
    fit_dcpt,
    static_points,
)
from megatron_velocitune.laws.scaling_law import header_budget, loss_points

__all__ = [
    "CrossDomainConfig",
    "CrossDomainReport",
    "DomainRoles",
    "cross_domain_roles",
    "fit_cross_domain_runs",
]

Curves = Dict[str, Tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CrossDomainConfig:
    """What to fit and ask (the tool's flags).

    Attributes:
        short_run (str): the short run's trajectory file (named in errors).
        new_domains (Sequence[str]): the domains to predict from K.
        replay (Sequence[str]): replay (general) domains, kept within ``tolerance``.
        domains (Optional[Sequence[str]]): training domains (None: every domain of the runs
            that is neither replay nor new).
        budget_tokens (Optional[float]): the budget (None: the runs' headers').
        k_window (float): K's window, a share of the budget.
        min_decline (float): the smallest relative decline K is estimated from.
        min_tokens (float): evaluations before this many tokens are dropped.
        fit_fraction (float): the laws see the evaluations up to this share of the budget.
        eps (float): the law's ratio offset.
        tolerance (float): relative rise allowed in each replay domain's loss.
        min_weight (float): floor of every weight of the chosen blend.
    """

    short_run: str
    new_domains: Sequence[str]
    replay: Sequence[str] = ()
    domains: Optional[Sequence[str]] = None
    budget_tokens: Optional[float] = None
    k_window: float = 0.05
    min_decline: float = DEFAULT_MIN_DECLINE
    min_tokens: float = 0.0
    fit_fraction: float = 1.0
    eps: float = DEFAULT_EPS
    tolerance: float = 0.01
    min_weight: float = 0.01


@dataclass(frozen=True)
class DomainRoles:
    """Which domain plays which part.

    Attributes:
        names (List[str]): the ratio runs' domains.
        train (List[str]): the shared fit's training domains.
        new (List[str]): the domains predicted from K.
        wanted (List[str]): replay, training and new domains: those needing an initial loss.
    """

    names: List[str]
    train: List[str]
    new: List[str]
    wanted: List[str]


@dataclass
class CrossDomainReport:
    """The shared law, each new domain's prediction and the blend.

    Attributes:
        roles (DomainRoles): the domains' parts.
        budget (float): the token budget.
        window (float): K's window in tokens.
        cutoff (float): the last token count the laws saw.
        ratios (np.ndarray): each run's blend (runs x domains).
        points (List[Curves]): each run's curves.
        early (Dict[str, EarlyLosses]): K's features per training and new domain.
        law (CrossDomainFit): the shared law.
        coefficients (Dict[str, float]): each new domain's K.
        predicted (Dict[str, DcptFit]): each new domain's law, from its K.
        observed (Dict[str, Tuple[np.ndarray, List[float]]]): a new domain the runs hold too:
            the prediction's errors over every evaluation, and at each run's last one.
        blend_names (List[str]): the blend's domains (those with a law), in the short run's order.
        replay (List[str]): the replay domains among them.
        learn (List[str]): the others.
        blend (Optional[BlendChoice]): the blend (None: fewer than 2 domains or nothing to learn).
    """

    roles: DomainRoles
    budget: float
    window: float
    cutoff: float
    ratios: np.ndarray
    points: List[Curves]
    early: Dict[str, EarlyLosses]
    law: CrossDomainFit
    coefficients: Dict[str, float]
    predicted: Dict[str, DcptFit]
    observed: Dict[str, Tuple[np.ndarray, List[float]]]
    blend_names: List[str]
    replay: List[str]
    learn: List[str]
    blend: Optional[BlendChoice]


def _check_names(flag: str, given: Sequence[str], known: Sequence[str], where: str) -> None:
    unknown = [n for n in given if n not in known]
    if unknown:
        raise ToolError(f"{flag} {unknown[0]!r}: not a domain of {where} (domains {list(known)})")


def cross_domain_roles(
    paths: Sequence[str], runs: Sequence[Trajectory], short: Trajectory, config: CrossDomainConfig
) -> DomainRoles:
    """The replay, training and new domains, checked against the runs and the short run.

    Raises:
        ToolError: runs with different domain lists, an unknown or doubly given domain, or
            fewer than 2 training domains.
    """
    names = runs[0].domains
    for path, t in zip(paths[1:], runs[1:]):
        if t.domains != names:
            raise ToolError(
                f"{path}: domains {t.domains} differ from {paths[0]}'s {names}; the ratio runs "
                "need one domain list"
            )
    where = f"--short-run {config.short_run}"
    _check_names("--replay", config.replay, names, "the runs")
    _check_names("--new-domain", config.new_domains, short.domains, where)
    new = list(dict.fromkeys(config.new_domains))
    if config.domains is None:
        train = [n for n in names if n not in config.replay and n not in new]
    else:
        _check_names("--domains", config.domains, names, "the runs")
        train = list(dict.fromkeys(config.domains))
        both = [n for n in train if n in new or n in config.replay]
        if both:
            raise ToolError(f"--domains {both[0]!r}: also a --new-domain or --replay domain")
    if len(train) < 2:
        raise ToolError(f"--domains {train}: the cross-domain law needs 2 or more training domains")
    _check_names("--domains", train, short.domains, where)
    wanted = list(dict.fromkeys(list(config.replay) + train + new))
    return DomainRoles(list(names), train, new, wanted)


def fit_cross_domain_runs(
    paths: Sequence[str],
    runs: Sequence[Trajectory],
    short: Trajectory,
    roles: DomainRoles,
    initial: Dict[str, Optional[float]],
    config: CrossDomainConfig,
) -> CrossDomainReport:
    """Fit the shared law, predict the new domains from their K and choose the blend.

    Args:
        paths (Sequence[str]): the ratio runs' trajectory files (named in errors).
        runs (Sequence[Trajectory]): the ratio runs (static, one blend each).
        short (Trajectory): the short run K is read from.
        roles (DomainRoles): from :func:`cross_domain_roles`.
        initial (Dict[str, Optional[float]]): initial loss per wanted domain.
        config (CrossDomainConfig): what to fit and ask.

    Returns:
        CrossDomainReport: the law, the predictions and the blend.

    Raises:
        ToolError: no budget, a domain without an initial loss or a K, too few points.
    """
    names, train, new = roles.names, roles.train, roles.new
    budget = config.budget_tokens or header_budget(runs)
    if not budget or budget <= 0:
        raise ToolError("no token budget: pass --budget-tokens")
    window = config.k_window * budget

    # K's features, every domain from the same short run and window (a short run need not be
    # static: K reads only its losses).
    short_points = loss_points(short, train + new)
    early: Dict[str, EarlyLosses] = {}
    for n in train + new:
        if initial[n] is None:
            raise ToolError(
                f"--short-run {config.short_run}: no initial loss for {n!r} (k1): pass "
                "--initial-loss-file"
            )
        d, y = short_points.domain(n)
        try:
            early[n] = early_losses(d, y, initial[n], window, config.min_decline)
        except CoefficientError as e:
            raise ToolError(f"--short-run {config.short_run}: domain {n!r}: {e}") from None

    ratios, points = [], []
    for path, t in zip(paths, runs):
        try:
            blend, pts = static_points(t, names, config.min_tokens)
        except ValueError as e:
            raise ToolError(f"{path}: {e}") from None
        ratios.append(blend)
        points.append(pts)
    ratios = np.array(ratios)
    cutoff = config.fit_fraction * budget
    fitted = [{n: (d[d <= cutoff], y[d <= cutoff]) for n, (d, y) in p.items()} for p in points]
    try:
        law = fit_cross_domain(points_by_domain(train, ratios, fitted, early), eps=config.eps)
    except TooFewPointsError as e:
        raise ToolError(f"{e} (in the {len(paths)} trajectories)") from None

    # The standard law where a domain has ratio runs of its own.
    own: Dict[str, DcptFit] = {}
    for n in list(config.replay) + train:
        j = names.index(n)
        d = np.concatenate([p[n][0] for p in fitted])
        y = np.concatenate([p[n][1] for p in fitted])
        r = np.concatenate([np.full(p[n][0].size, ratios[i, j]) for i, p in enumerate(fitted)])
        try:
            own[n] = fit_dcpt(d, r, y, eps=config.eps)
        except (TooFewPointsError, ValueError) as e:
            raise ToolError(f"domain {n!r}: {e}") from None
    coeff = {n: law.coefficient(early[n]) for n in new}
    predicted = {n: law.domain_law(coeff[n]) for n in new}

    observed: Dict[str, Tuple[np.ndarray, List[float]]] = {}
    for n in new:
        if n in names:
            # The runs hold the new domain too (a leave-one-domain-out check): score it.
            j = names.index(n)
            errs = [
                predicted[n].predict(p[n][0], ratios[i, j]) - p[n][1]
                for i, p in enumerate(points)
                if p[n][0].size
            ]
            observed[n] = (np.concatenate(errs), [float(e[-1]) for e in errs])

    blend_names = [n for n in short.domains if n in own or n in predicted]
    laws = {n: own.get(n, predicted.get(n)) for n in blend_names}
    replay = [n for n in config.replay if n in laws]
    learn = [n for n in blend_names if n not in replay]
    no_init = [n for n in replay if initial.get(n) is None]
    if no_init:
        raise ToolError(
            f"replay domains {no_init} have no initial loss: pass --initial-loss-file "
            "(or record one at iteration 0)"
        )
    blend = None
    if len(blend_names) >= 2 and learn:
        blend = choose_blend(
            laws,
            budget,
            replay=replay,
            initial={n: initial[n] for n in blend_names if initial.get(n) is not None},
            tolerance=config.tolerance,
            min_weight=config.min_weight,
        )
    return CrossDomainReport(
        roles=roles,
        budget=budget,
        window=window,
        cutoff=cutoff,
        ratios=ratios,
        points=points,
        early=early,
        law=law,
        coefficients=coeff,
        predicted=predicted,
        observed=observed,
        blend_names=blend_names,
        replay=replay,
        learn=learn,
        blend=blend,
    )
