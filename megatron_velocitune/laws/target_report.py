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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.core.errors import TargetAboveInitialError, TooFewPointsError, ToolError
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE, DEFAULT_TARGET_MARGIN, Tolerance
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.scaling_law import (
    HeldOutError,
    TargetDecision,
    common_footing,
    header_budget,
    held_out_error,
    initial_losses,
    loss_points,
    resolve_target,
)

__all__ = ["DomainTarget", "TargetFitConfig", "TargetFitReport", "fit_target_losses"]


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
    """

    fit_fraction: float = 0.5
    budget_tokens: Optional[float] = None
    min_tokens: float = 0.0
    domains: Optional[Sequence[str]] = None
    initial_losses: Optional[Dict[str, Optional[float]]] = None
    rising_rule: str = DEFAULT_RISING_RULE
    margin: float = DEFAULT_TARGET_MARGIN
    forgetting_tolerance: Optional[Tolerance] = None


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
    """

    name: str
    tokens: np.ndarray
    losses: np.ndarray
    held: HeldOutError
    predicted: float
    initial: Optional[float]
    decision: Optional[TargetDecision]
    target: float


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
    """

    names: List[str]
    budget: float
    cutoff: float
    num_runs: int
    reference: Optional[List[float]]
    footing: Optional[str]
    domains: List[DomainTarget]
    errors: List[str]

    def loss_file_fields(self, config: TargetFitConfig, paths: Sequence[str]) -> dict:
        """What the targets JSON records besides the losses (the fits and their footing).

        Args:
            config (TargetFitConfig): the config the report was fitted with.
            paths (Sequence[str]): the runs' trajectory files.

        Returns:
            dict: the fields, in the file's order.
        """
        return dict(
            law="L(D) = E + B / D^beta",
            trajectories=list(paths),
            budget_tokens=self.budget,
            fit_fraction=config.fit_fraction,
            cutoff_tokens=self.cutoff,
            rising_domains=config.rising_rule,
            margin=config.margin,
            forgetting_tolerance=(
                None if config.forgetting_tolerance is None else str(config.forgetting_tolerance)
            ),
            rules={r.name: r.decision.rule for r in self.domains},
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
                    rule_applied=bool(r.decision.rule_applied),
                    rule=r.decision.rule,
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

    domains, errors = [], []
    for n in names:
        d = np.concatenate([p.domain(n)[0] for p in points])
        y = np.concatenate([p.domain(n)[1] for p in points])
        keep = d >= config.min_tokens
        d, y = d[keep], y[keep]
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
        domains.append(DomainTarget(n, d, y, held, predicted, initial[n], decision, target))
    return TargetFitReport(
        names=names,
        budget=budget,
        cutoff=cutoff,
        num_runs=len(runs),
        reference=None if reference is None else list(reference),
        footing=None if reference is None else runs[0].header["footing"],
        domains=domains,
        errors=errors,
    )
