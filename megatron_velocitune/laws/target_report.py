"""Target losses from a proxy run: ``L(D) = E + B / D^beta`` per domain, predicted at the budget.

:func:`fit_target_losses` pools the runs' evaluations per domain (on one footing when the runs
measured their initial losses on their own subsets), fits each domain on the evaluations up to
``fit_fraction`` of the budget, scores the later ones, and applies the rising-domain rule to a
prediction not below the initial loss. :meth:`TargetFitReport.loss_file_fields` is what the
targets JSON records besides the losses.

Pure: the runs come parsed; reading, printing and writing are the tool's
(:mod:`megatron_velocitune.cli.fit_target_loss`).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import TargetAboveInitialError, TooFewPointsError, ToolError
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE, DEFAULT_TARGET_MARGIN, Tolerance
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.scaling_law import (
    ChinchillaFit,
    HeldOutError,
    TargetDecision,
    common_footing,
    header_budget,
    held_out_error,
    initial_losses,
    loss_points,
    resolve_target,
)
from megatron_velocitune.laws.schedule_laws import (
    DEFAULT_ANNEALING_DECAY,
    DecayTerm,
    LawFit,
    LrSchedule,
    MissingLearningRateError,
    ScheduleInputs,
    fit_annealing_law,
    fit_cpt_law,
    fit_cpt_multi_power_law,
    fit_multi_power_law,
    schedule_curve,
    trajectory_schedule,
)

__all__ = [
    "BaseDecay",
    "LAWS",
    "LAW_CHOICES",
    "VALIDATION_SHARE",
    "DomainTarget",
    "LawResult",
    "TargetFitConfig",
    "TargetFitReport",
    "fit_base_decay",
    "fit_target_losses",
]

#: The laws a target can come from: the Chinchilla data term (the paper's), Tissue et al.'s
#: annealing law, Wang et al.'s CPT law and Luo et al.'s multi-power law
#: (:mod:`megatron_velocitune.laws.schedule_laws`).
LAWS = ("chinchilla", "annealing", "cpt", "multi-power", "cpt-multi-power")
#: ``auto`` picks per domain the law with the lowest error on the window's last points.
LAW_CHOICES = ("auto",) + LAWS
#: ``auto``'s validation slice: this share of the fit window's last evaluations (by tokens).
VALIDATION_SHARE = 0.25

_LAW_FORMULAS = {
    "chinchilla": "L(D) = E + B / D^beta",
    "annealing": "L = L0 + A * S1^-alpha - C * S2 (Tissue et al. 2024)",
    "cpt": "L = L0 + A * (S1_pt + S1)^-alpha - C * S2 + B * (1 - (1 + E * S1)^-beta), "
    "L(0) = L_init (Wang et al. 2025)",
    "multi-power": "L = L0 + A * (S1 + S_W)^-alpha - B * sum_k (eta_{k-1} - eta_k) * "
    "(1 - (C * eta_k^-gamma * S_k + 1)^-beta) (Luo et al. 2025)",
    "cpt-multi-power": "L = L0 + A * (S1_pt + S1)^-alpha + B * (1 - (1 + E * S1)^-beta) - LD(t), "
    "L(0) = L_init, LD the multi-power law's loss reduction from the base run (Wang et al. 2025 "
    "with Luo et al. 2025's annealing term)",
}


@dataclass(frozen=True)
class TargetFitConfig:
    """What to fit (the tool's flags).

    Attributes:
        fit_fraction (float): the fit sees the evaluations up to this share of the budget.
        budget_tokens (Optional[float]): the budget to predict at (None: the headers').
        min_tokens (float): evaluations before this many tokens are dropped.
        domains (Optional[Sequence[str]]): the domains to fit (None: the first run's).
        initial_losses (Optional[Dict[str, Optional[float]]]): given initial losses (a file's,
            absolute: the runs' points are then taken as they are); None: the runs' own.
        rising_rule (str): the rule of a prediction not below the initial loss.
        margin (float): the hold-initial rule's margin.
        forgetting_tolerance (Optional[Tolerance]): the tolerance rule's budget.
        law (str): one of :data:`LAW_CHOICES`.
        constant_lr (bool): the proxies ran at a constant LR (steps as the clock).
        pt_area (Optional[float]): the CPT law's ``S1_pt`` (None: fitted).
        fixed_c (Optional[float]): the annealing coefficient for every domain (per unit of
            absolute annealing area; None: fitted, or 0 without annealing in the window).
        annealing_decay (float): the annealing momentum's decay factor.
        lr_schedule (Optional[LrSchedule]): the proxies' schedule where a header has none.
        base_decay (Optional[Dict[str, BaseDecay]]): per domain, ``C`` and the multi-power
            decay term fitted on the base model's curve (:func:`fit_base_decay`).
    """

    fit_fraction: float = 0.5
    budget_tokens: Optional[float] = None
    min_tokens: float = 0.0
    domains: Optional[Sequence[str]] = None
    initial_losses: Optional[Dict[str, Optional[float]]] = None
    rising_rule: str = DEFAULT_RISING_RULE
    margin: float = DEFAULT_TARGET_MARGIN
    forgetting_tolerance: Optional[Tolerance] = None
    law: str = "chinchilla"
    constant_lr: bool = False
    pt_area: Optional[float] = None
    fixed_c: Optional[float] = None
    annealing_decay: float = DEFAULT_ANNEALING_DECAY
    lr_schedule: Optional[LrSchedule] = None
    base_decay: Optional[Dict[str, "BaseDecay"]] = None


@dataclass(frozen=True)
class BaseDecay:
    """One domain's annealing terms fitted on the base model's own (decaying-LR) curve.

    Attributes:
        c (float): the annealing law's ``C`` per unit of absolute annealing area.
        decay (Optional[DecayTerm]): the multi-power law's loss-reduction term (None where that
            fit failed).
        source (str): where it came from (named in the fits' notes).
        fits (Dict[str, LawFit]): the base fits (annealing, multi-power).
    """

    c: float
    decay: Optional[DecayTerm]
    source: str
    fits: Dict[str, LawFit] = field(default_factory=dict)


def fit_base_decay(
    path: str,
    base: Trajectory,
    names: Sequence[str],
    schedule: Optional[LrSchedule] = None,
    decay: float = DEFAULT_ANNEALING_DECAY,
) -> Dict[str, BaseDecay]:
    """Fit the annealing and multi-power laws to the base model's held-out curve, per domain.

    The base model was pre-trained with a decaying LR, so its curve identifies what a constant-LR
    proxy cannot: the annealing coefficient ``C`` (Tissue et al.) and the multi-power law's
    loss-reduction term (Luo et al.). The schedule comes from the base trajectory's header
    (``lr_schedule``), else ``schedule``, else its records' ``lr``.

    Args:
        path (str): the base trajectory's file (named in errors and in the notes).
        base (Trajectory): the parsed base run.
        names (Sequence[str]): the domains to fit (all in the base run).
        schedule (Optional[LrSchedule]): the base run's schedule where its header has none.
        decay (float): the annealing momentum's decay factor.

    Returns:
        Dict[str, BaseDecay]: per domain.

    Raises:
        ToolError: a missing domain, no schedule anywhere, or too few points.
    """
    missing = [n for n in names if n not in base.domains]
    if missing:
        raise ToolError(f"--annealing-from {path}: no domains {missing} (it has {base.domains})")
    points = loss_points(base, names)
    budget = float(points.tokens.max()) if points.tokens.size else 0.0
    try:
        x, _ = trajectory_schedule(base, path, budget, decay=decay, schedule=schedule)
    except MissingLearningRateError:
        raise ToolError(
            f"--annealing-from {path}: its header has no 'lr_schedule' and its records no 'lr': "
            "give its schedule with --base-lr-schedule (e.g. cosine:2e-3:1e-4:80:800) or the "
            "coefficient with --annealing-c"
        ) from None
    source = f"base {path}"
    out = {}
    for n in names:
        keep = _domain_rows(points, n)
        y = points.losses[keep, points.domains.index(n)]
        xs = x.take(keep)
        try:
            annealing = fit_annealing_law(xs, y)
            multi = fit_multi_power_law(xs, y)
        except TooFewPointsError as e:
            raise ToolError(f"--annealing-from {path}: domain {n!r}: {e}") from None
        out[n] = BaseDecay(
            c=annealing.annealing_c(),
            decay=multi.decay_term() if float(multi.params["B"]) > 0 else None,
            source=source,
            fits={"annealing": annealing, "multi-power": multi},
        )
    return out


@dataclass
class LawResult:
    """One law's fit of one domain on the window, and how it does after it.

    Attributes:
        law (str): one of :data:`LAWS`.
        fit (object): the :class:`ChinchillaFit` or :class:`LawFit`.
        predicted (float): its loss at the budget.
        mae (float): mean absolute error on the evaluations after the window (``nan`` if none).
        final_error (float): absolute error at the last of them.
        validation_mae (float): ``auto``'s score: the error on the window's last
            :data:`VALIDATION_SHARE` of evaluations of a fit on the rest (``nan`` unless auto).
        at_bound (List[str]): free parameters that ended on a bound.
    """

    law: str
    fit: object
    predicted: float
    mae: float
    final_error: float
    validation_mae: float = float("nan")
    at_bound: List[str] = field(default_factory=list)

    def params(self) -> Dict[str, float]:
        """The fit's parameters by name."""
        if isinstance(self.fit, ChinchillaFit):
            return dict(E=self.fit.E, B=self.fit.B, beta=self.fit.beta)
        return dict(self.fit.params)


@dataclass
class DomainTarget:
    """One domain's fit and target.

    Attributes:
        name (str): the domain.
        tokens (np.ndarray): the pooled evaluations' token counts (from ``min_tokens`` on).
        losses (np.ndarray): their losses.
        held (HeldOutError): the fit and its error on the evaluations after the cutoff.
        predicted (float): the fit's loss at the budget.
        initial (Optional[float]): the initial loss.
        decision (Optional[TargetDecision]): the rule's decision; None where it refused.
        target (float): the target (the prediction where the rule refused).
        law (str): the law the target comes from.
        laws (Dict[str, LawResult]): every law fitted, by name.
        inputs (Optional[ScheduleInputs]): the points' schedule areas (rows of ``tokens``);
            None where only Chinchilla was fitted.
    """

    name: str
    tokens: np.ndarray
    losses: np.ndarray
    held: HeldOutError
    predicted: float
    initial: Optional[float]
    decision: Optional[TargetDecision]
    target: float
    law: str = "chinchilla"
    laws: Dict[str, LawResult] = field(default_factory=dict)
    inputs: Optional[ScheduleInputs] = None


@dataclass
class TargetFitReport:
    """Every domain's fit and target.

    Attributes:
        names (List[str]): the domains fitted.
        budget (float): the token budget.
        cutoff (float): the last token count the fits saw.
        num_runs (int): the runs pooled.
        reference (Optional[List[float]]): on the subset footing, the runs' mean initial loss
            the curves were shifted to (the targets carry over as changes); else None.
        footing (Optional[str]): the runs' footing, with ``reference``.
        domains (List[DomainTarget]): per domain, ``names`` order.
        errors (List[str]): domains the rule refused (no targets file then).
        curve (Optional[ScheduleInputs]): the first run's schedule from its first step to the
            budget (where the schedule-aware laws are drawn); None for Chinchilla alone.
    """

    names: List[str]
    budget: float
    cutoff: float
    num_runs: int
    reference: Optional[List[float]]
    footing: Optional[str]
    domains: List[DomainTarget]
    errors: List[str]
    curve: Optional[ScheduleInputs] = None

    def law_curve(
        self, result: "LawResult", start: float, geometric: bool = True, points: int = 200
    ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """One fitted law's (tokens, losses) from ``start`` tokens to the budget, for a plot.

        Args:
            result (LawResult): the law's fit of one domain.
            start (float): the first token count drawn.
            geometric (bool): Chinchilla's grid spacing (geometric for a log axis, else linear).
            points (int): Chinchilla's grid size.

        Returns:
            Optional[Tuple[np.ndarray, np.ndarray]]: Chinchilla on a grid; a schedule-aware
            law at every step of :attr:`curve`; None when there is no curve to draw it on.
        """
        if result.law == "chinchilla":
            grid = (np.geomspace if geometric else np.linspace)(start, self.budget, points)
            return grid, result.fit.predict(grid)
        if self.curve is None:
            return None
        keep = self.curve.tokens >= start
        return self.curve.tokens[keep], result.fit.predict(self.curve.take(keep))

    def loss_file_fields(self, config: TargetFitConfig, paths: Sequence[str]) -> dict:
        """What the targets JSON records besides the losses (the fits and their footing).

        Args:
            config (TargetFitConfig): the config the report was fitted with.
            paths (Sequence[str]): the runs' trajectory files.

        Returns:
            dict: the fields, in the file's order.
        """
        return dict(
            law=(
                _LAW_FORMULAS["chinchilla"]
                if config.law == "chinchilla"
                else {r.name: _LAW_FORMULAS[r.law] for r in self.domains}
            ),
            law_choice=config.law,
            laws={r.name: r.law for r in self.domains},
            trajectories=list(paths),
            budget_tokens=self.budget,
            fit_fraction=config.fit_fraction,
            cutoff_tokens=self.cutoff,
            rising_domains=config.rising_rule,
            margin=config.margin,
            forgetting_tolerance=(
                None if config.forgetting_tolerance is None else str(config.forgetting_tolerance)
            ),
            rules={r.name: r.decision.rule if r.decision else None for r in self.domains},
            **(
                {
                    "footing": self.footing,
                    "reference_initial": dict(zip(self.names, self.reference)),
                }
                if self.reference is not None
                else {}
            ),
            fits={
                r.name: dict(
                    E=r.held.fit.E,
                    B=r.held.fit.B,
                    beta=r.held.fit.beta,
                    r2=r.held.fit.r2,
                    huber_loss=r.held.fit.huber_loss,
                    predicted=r.predicted,
                    initial=r.initial,
                    held_out_mae=None if math.isnan(r.held.mae) else r.held.mae,
                    held_out_points=int(r.held.tokens.size),
                    rule_applied=bool(r.decision and r.decision.rule_applied),
                    rule=r.decision.rule if r.decision else None,
                    law=r.law,
                    params=r.laws[r.law].params() if r.law in r.laws else None,
                    law_held_out_mae={
                        k: None if math.isnan(v.mae) else v.mae for k, v in r.laws.items()
                    },
                )
                for r in self.domains
            },
        )


def fit_target_losses(
    paths: Sequence[str], runs: Sequence[Trajectory], config: TargetFitConfig
) -> TargetFitReport:
    """Fit every domain's curve on the proxy runs and resolve its target at the budget.

    Args:
        paths (Sequence[str]): the runs' trajectory files (named in errors).
        runs (Sequence[Trajectory]): the parsed runs, pooled per domain.
        config (TargetFitConfig): what to fit.

    Returns:
        TargetFitReport: the fits, the targets and the domains the rule refused.

    Raises:
        ToolError: a bad fit fraction, a missing domain, no budget, runs on different footings,
            or a domain with too few points.
    """
    if not 0.0 < config.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {config.fit_fraction} must be in (0, 1]")
    names = list(config.domains or runs[0].domains)
    for path, t in zip(paths, runs):
        missing = [n for n in names if n not in t.domains]
        if missing:
            raise ToolError(f"{path}: no domains {missing} (it has {t.domains})")
    budget = config.budget_tokens or header_budget(runs)
    if not budget or budget <= 0:
        raise ToolError(
            "no token budget: pass --budget-tokens (the header lacks train_iters, "
            "global_batch_size or seq_length)"
        )
    cutoff = config.fit_fraction * budget
    if config.initial_losses is not None:
        # Given initial losses are absolute: the runs' points as they are.
        points, reference = [loss_points(t, names) for t in runs], None
        initial = dict(config.initial_losses)
    else:
        try:
            points, reference = common_footing(runs, names)
        except ValueError as e:
            raise ToolError(f"{', '.join(paths)}: {e}") from None
        if reference is None:
            initial = dict(zip(names, initial_losses(runs, names)))
        else:
            initial = dict(zip(names, reference))

    schedules = None
    if config.law != "chinchilla":
        try:
            schedules = [
                trajectory_schedule(
                    t,
                    p,
                    budget,
                    config.constant_lr,
                    config.annealing_decay,
                    schedule=config.lr_schedule,
                )
                for t, p in zip(runs, paths)
            ]
        except MissingLearningRateError as e:
            raise ToolError(str(e)) from None

    domains, errors = [], []
    for n in names:
        d = np.concatenate([p.domain(n)[0] for p in points])
        y = np.concatenate([p.domain(n)[1] for p in points])
        x = None
        if schedules is not None:
            # The areas of the rows ``domain`` keeps (positive tokens, a finite loss).
            x = _concat_inputs([s.take(_domain_rows(p, n)) for (s, _), p in zip(schedules, points)])
        keep = d >= config.min_tokens
        d, y = d[keep], y[keep]
        x = None if x is None else x.take(keep)
        try:
            held = held_out_error(d, y, cutoff)
        except TooFewPointsError as e:
            raise ToolError(
                f"domain {n!r}: {e} (fit fraction {config.fit_fraction:g} of {budget:.4g} tokens)"
            ) from None
        predicted = float(held.fit.predict(budget))
        if (
            config.rising_rule in ("budget", "budget-hold")
            and initial[n] is not None
            and predicted >= initial[n]
        ):
            # The learning law fits a rising curve as flat; the budget is its rise, extrapolated.
            held = held_out_error(d, y, cutoff, rising=True)
            predicted = float(held.fit.predict(budget))
        laws = {"chinchilla": _chinchilla_result(held, predicted)}
        chosen = "chinchilla"
        if config.law != "chinchilla":
            at_budget = schedules[0][1]
            candidates = LAWS if config.law == "auto" else (config.law,)
            for law in candidates:
                if law == "chinchilla":
                    continue
                try:
                    laws[law] = _law_result(law, d, y, x, cutoff, at_budget, initial[n], config, n)
                except TooFewPointsError as e:
                    raise ToolError(f"domain {n!r}: {e} ({law} law)") from None
            if config.law == "auto":
                for law in LAWS:
                    laws[law].validation_mae = _validation_mae(
                        law, d, y, x, cutoff, initial[n], config, n
                    )
                chosen = min(LAWS, key=lambda k: _nan_last(laws[k].validation_mae))
            else:
                chosen = config.law
                laws = {k: v for k, v in laws.items() if k == chosen}
            predicted = laws[chosen].predicted
        try:
            decision = resolve_target(
                predicted,
                initial[n],
                config.rising_rule,
                config.margin,
                n,
                config.forgetting_tolerance,
            )
        except TargetAboveInitialError as e:
            errors.append(f"{e} (--rising-domains)")
            decision = None
        target = decision.target if decision else predicted
        domains.append(
            DomainTarget(n, d, y, held, predicted, initial[n], decision, target, chosen, laws, x)
        )
    return TargetFitReport(
        names=names,
        budget=budget,
        cutoff=cutoff,
        num_runs=len(runs),
        reference=None if reference is None else list(reference),
        footing=None if reference is None else runs[0].header["footing"],
        domains=domains,
        errors=errors,
        curve=None
        if schedules is None
        else schedule_curve(schedules[0][1], config.annealing_decay),
    )


def _curve(schedules, config: TargetFitConfig) -> ScheduleInputs:
    """The first run's schedule up to the budget, where a plot draws the laws."""
    return schedule_curve(schedules[0][1], config.annealing_decay)


def _nan_last(v: float) -> float:
    return math.inf if math.isnan(v) else v


def _domain_rows(points, name: str) -> np.ndarray:
    """The rows :meth:`LossPoints.domain` keeps, as a mask."""
    col = points.losses[:, points.domains.index(name)]
    return (points.tokens > 0) & np.isfinite(col)


def _concat_inputs(parts: Sequence[ScheduleInputs]) -> ScheduleInputs:
    """The pooled runs' points; the schedule (``lrs``) is kept only where they share one."""
    lrs = parts[0].lrs
    same = all(p.lrs is not None and np.array_equal(p.lrs, lrs) for p in parts)
    return ScheduleInputs(
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.s1 for p in parts]),
        np.concatenate([p.s2 for p in parts]),
        np.concatenate([p.steps for p in parts]) if same else None,
        lrs if same else None,
    )


def _chinchilla_result(held: HeldOutError, predicted: float) -> LawResult:
    beta_lo, beta_hi = 0.01, 2.0
    at_bound = [
        name
        for name, hit in (
            ("beta", min(abs(held.fit.beta - beta_lo), abs(held.fit.beta - beta_hi)) < 1e-4),
            ("B", held.fit.B == 0.0),
            ("E", held.fit.E <= 1.0001e-6),
        )
        if hit
    ]
    return LawResult(
        "chinchilla", held.fit, predicted, held.mae, held.final_error, at_bound=at_bound
    )


def fit_law(
    law: str,
    x: ScheduleInputs,
    y: np.ndarray,
    initial: Optional[float],
    config: TargetFitConfig,
    name: str,
) -> LawFit:
    """Fit a schedule-aware law to one domain's points with the annealing terms ``config`` fixes.

    Args:
        law (str): one of :data:`LAWS` but ``chinchilla``.
        x (ScheduleInputs): the points' schedule areas.
        y (np.ndarray): their losses.
        initial (Optional[float]): the domain's starting loss (the CPT laws' anchor).
        config (TargetFitConfig): the fixed ``C``, base-run decay terms and pre-training area.
        name (str): the domain (picks its base-run terms).

    Returns:
        LawFit: the fit.

    Raises:
        TooFewPointsError: too few points, no shared schedule for a multi-power law, or no
            initial loss for a CPT law.
    """
    base = (config.base_decay or {}).get(name)
    fixed_c, source = config.fixed_c, "--annealing-c"
    if fixed_c is None and base is not None:
        fixed_c, source = base.c, base.source
    if law == "annealing":
        return fit_annealing_law(x, y, fixed_c=fixed_c, c_source=source)
    decay, decay_source = (None, None) if base is None else (base.decay, base.source)
    if law in ("multi-power", "cpt-multi-power") and x.lrs is None:
        # Both evaluate LD(t) on the schedule's every step.
        raise TooFewPointsError(
            f"the {law} law needs one schedule for the pooled runs (they differ)"
        )
    if law == "multi-power":
        return fit_multi_power_law(x, y, fixed_decay=decay, decay_source=decay_source)
    if initial is None:
        raise TooFewPointsError("the CPT law needs the initial loss (its starting point)")
    if law == "cpt-multi-power":
        return fit_cpt_multi_power_law(
            x, y, initial, decay, s1_pt=config.pt_area, decay_source=decay_source or "none"
        )
    return fit_cpt_law(x, y, initial, s1_pt=config.pt_area, fixed_c=fixed_c, c_source=source)


def _law_result(law, d, y, x, cutoff, at_budget, initial, config, name) -> LawResult:
    """Fit ``law`` on the window (``d <= cutoff``), score it after, predict at the budget."""
    early = d <= cutoff
    fit = fit_law(law, x.take(early), y[early], initial, config, name)
    late = ~early
    order = np.argsort(d[late], kind="stable")
    err = np.abs(fit.predict(x.take(late))[order] - y[late][order])
    return LawResult(
        law,
        fit,
        float(fit.predict(at_budget)[0]),
        float(err.mean()) if err.size else float("nan"),
        float(err[-1]) if err.size else float("nan"),
        at_bound=list(fit.at_bound),
    )


def _validation_mae(law, d, y, x, cutoff, initial, config, name) -> float:
    """``auto``'s score: fit on the window's first 75%, the error on its last 25%.

    Only points inside the window (``d <= cutoff``) are touched: the choice cannot see the
    evaluations the held-out error is measured on.
    """
    inside = d <= cutoff
    window = np.unique(d[inside])
    if window.size < 4:
        return float("nan")
    split = window[int(math.floor((1.0 - VALIDATION_SHARE) * window.size)) - 1]
    train, val = inside & (d <= split), inside & (d > split)
    try:
        if law == "chinchilla":
            pred = held_out_error(d[inside], y[inside], split).predicted
            obs = y[val][np.argsort(d[val], kind="stable")]
            return float(np.mean(np.abs(pred - obs)))
        fit = fit_law(law, x.take(train), y[train], initial, config, name)
    except (TooFewPointsError, ValueError):
        return float("nan")
    return float(np.mean(np.abs(fit.predict(x.take(val)) - y[val])))
