"""``velocitune-fit-dcpt --cross-domain``: a new domain's D-CPT Law from a short run.

The Cross-Domain D-CPT Law (:mod:`megatron_velocitune.laws.cross_domain_law`) shares every parameter
but the domain's coefficient ``K`` across domains: fitted on the ratio runs (the positional
trajectories, static runs at several blends, one domain list) of the training domains
(``--domains``; default every domain of the runs that is neither ``--replay`` nor
``--new-domain``), it predicts a domain that has no ratio runs from ``K`` alone, and ``K``
comes from the first ``--k-window`` of the budget of one short run (``--short-run``, a
trajectory that holds the training domains and the new ones: every K is measured on the same
run, over the same window). The replay domains keep the standard law fitted on the ratio runs,
and so do the training domains in the blend recommendation (they have runs of their own).

Example::

    velocitune-fit-dcpt --cross-domain runs/g*/trajectory.jsonl --replay web \\
        --short-run short/trajectory.jsonl --new-domain physics --k-window 0.02 \\
        --budget-tokens 2e9 --plot cross.png
"""

import argparse
import math
from typing import List, Sequence

import numpy as np

from megatron_velocitune.cli._common import read_initial_loss_file
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.trajectory import Trajectory, read_trajectory
from megatron_velocitune.laws.cross_domain_law import DEFAULT_MIN_DECLINE
from megatron_velocitune.laws.cross_domain_report import (
    CrossDomainConfig,
    CrossDomainReport,
    cross_domain_roles,
    fit_cross_domain_runs,
)
from megatron_velocitune.laws.dcpt_law import format_data_path
from megatron_velocitune.laws.scaling_law import initial_losses

DEFAULT_K_WINDOW = 0.05
DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)


def add_cross_domain_args(p: argparse.ArgumentParser) -> None:
    """The ``--cross-domain`` mode's flags (the standard mode ignores them)."""
    g = p.add_argument_group(
        "cross-domain law (--cross-domain)",
        "Fit the Cross-Domain D-CPT Law L(D, r, K) = E + B r^eta / D^beta + C / (r + eps)^gamma "
        "+ F / K^mu on the training domains' ratio runs (the trajectories), estimate K = w1/k1 "
        "+ w2*k2 of each --new-domain from its initial loss k1 and its relative decline k2 "
        "over the first --k-window of the budget of --short-run, predict its loss for any "
        "share and budget, and choose the blend.",
    )
    g.add_argument("--cross-domain", action="store_true", help="Use the cross-domain law.")
    g.add_argument(
        "--short-run",
        default=None,
        help="Trajectory of the short run K is read from (it must hold the training domains "
        "and the new ones; only its first --k-window is used).",
    )
    g.add_argument(
        "--new-domain",
        action="append",
        default=[],
        metavar="NAME",
        help="A domain without ratio runs, predicted from its K (repeatable; required).",
    )
    g.add_argument(
        "--domains",
        nargs="+",
        default=None,
        metavar="NAME",
        help="Training domains of the shared fit (default: every domain of the runs that is "
        "neither --replay nor --new-domain; 2 or more).",
    )
    g.add_argument(
        "--k-window",
        type=float,
        default=DEFAULT_K_WINDOW,
        help="The window K's decline is measured over, as a fraction of the budget "
        "(default: %(default)s, i.e. the short run costs that share of a full run).",
    )
    g.add_argument(
        "--min-decline",
        type=float,
        default=DEFAULT_MIN_DECLINE,
        help="Smallest relative decline over the window from which K is estimated "
        "(default: %(default)s).",
    )
    g.add_argument(
        "--ratio",
        action="append",
        type=float,
        default=[],
        help="A share of the new domain to print its predicted loss curve for (repeatable; "
        f"default: {' '.join(map(str, DEFAULT_RATIOS))}).",
    )


def _read(path: str, flag: str = "") -> Trajectory:
    try:
        return read_trajectory(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToolError(
            f"cannot read {flag + ' ' if flag else ''}trajectory {path!r}: {e}"
        ) from None


def run_cross_domain(args: argparse.Namespace) -> int:
    """The ``--cross-domain`` mode of velocitune-fit-dcpt; raises :class:`ToolError`.

    The number flags both modes share are checked before (``fit_dcpt_law._check_numbers``).
    """
    if args.output:
        raise ToolError("--output: the targets JSON is written by the standard law only")
    if args.blend or args.domain_tokens:
        raise ToolError("--blend and --domain-tokens: standard-law options, not --cross-domain")
    if not args.short_run:
        raise ToolError("--cross-domain needs --short-run (the run K is read from)")
    if not args.new_domain:
        raise ToolError("--cross-domain needs --new-domain (the domain to predict)")
    if not 0.0 < args.k_window <= 1.0:
        raise ToolError(f"--k-window {args.k_window} must be in (0, 1] (a share of the budget)")
    if not 0.0 < args.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {args.fit_fraction} must be in (0, 1]")
    shares = args.ratio or list(DEFAULT_RATIOS)
    bad = [r for r in shares if not 0.0 < r <= 1.0]
    if bad:
        raise ToolError(f"--ratio {bad[0]}: a share must be in (0, 1]")

    config = CrossDomainConfig(
        short_run=args.short_run,
        new_domains=list(args.new_domain),
        replay=list(args.replay),
        domains=args.domains,
        budget_tokens=args.budget_tokens,
        k_window=args.k_window,
        min_decline=args.min_decline,
        min_tokens=args.min_tokens,
        fit_fraction=args.fit_fraction,
        eps=args.eps,
        tolerance=args.tolerance,
        min_weight=args.min_weight,
    )
    paths = list(args.trajectories)
    runs = [_read(p) for p in paths]
    short = _read(args.short_run, "--short-run")
    roles = cross_domain_roles(paths, runs, short, config)
    if args.initial_loss_file:
        init = read_initial_loss_file(args.initial_loss_file, roles.wanted)
    else:
        init = initial_losses([short] + runs, roles.wanted)
    report = fit_cross_domain_runs(paths, runs, short, roles, dict(zip(roles.wanted, init)), config)
    _print_report(report, args, shares)
    if args.plot:
        _plot(args.plot, report, shares)
        print(f"wrote {args.plot}")
    return 0


def _print_report(report: CrossDomainReport, args: argparse.Namespace, shares) -> None:
    """The shared law, K per domain, the new domains' curves and the blend, as printed."""
    law, budget, train, new = report.law, report.budget, report.roles.train, report.roles.new
    print(
        f"cross-domain D-CPT Law on {len(train)} training domains {train} x "
        f"{len(report.points)} static runs; budget {budget:.6g} tokens; fit on points <= "
        f"{report.cutoff:.6g} tokens ({args.fit_fraction:g}); eps {args.eps:g}"
    )
    print(
        f"K = w1/k1 + w2*k2 from the first {report.window:.6g} tokens ({args.k_window:g} of the "
        f"budget) of --short-run {args.short_run}"
    )
    print(
        f"{'E':>8}{'B':>10}{'eta':>7}{'beta':>7}{'C':>8}{'gamma':>7}{'F':>8}{'mu':>7}"
        f"{'w1':>9}{'w2':>9}{'R2':>8}{'Huber':>10}"
    )
    print(
        f"{law.E:>8.4f}{law.B:>10.4g}{law.eta:>7.3f}{law.beta:>7.3f}{law.C:>8.4f}"
        f"{law.gamma:>7.3f}{law.F:>8.4f}{law.mu:>7.3f}{law.w1:>9.4g}{law.w2:>9.4g}"
        f"{law.r2:>8.4f}{law.huber_loss:>10.2e}"
    )
    if len(train) < 4:
        print(
            f"note: {len(train)} training domains give {len(train)} offsets for F, mu and the "
            "w1:w2 balance; the K term extrapolates to a new domain with little support"
        )
    print(f"{'domain':<14}{'role':<10}{'k1':>9}{'k2':>8}{'K':>8}{'L(window)':>11}")
    for n in train + new:
        k = law.coefficients[n] if n in law.coefficients else report.coefficients[n]
        role = "train" if n in train else "new"
        e = report.early[n]
        print(f"{n:<14}{role:<10}{e.k1:>9.4f}{e.k2:>8.4f}{k:>8.4f}{e.loss_at_window:>11.4f}")

    fractions = (0.1, 0.25, 0.5, 1.0)
    for n in new:
        print(f"{n}: predicted loss over D: " + "  ".join(f"{f * budget:.3g}" for f in fractions))
        for r in shares:
            curve = report.predicted[n].predict(np.array(fractions) * budget, r)
            print(f"  r={r:<8.3f}" + "  ".join(f"{v:.4f}" for v in curve))
        if n in report.observed:
            flat, last = report.observed[n]
            print(
                f"  observed in the runs (not fitted): mean abs error {np.mean(np.abs(flat)):.4f}"
                f" nats over {flat.size} evaluations; at each run's last evaluation "
                + " ".join(f"{v:+.4f}" for v in last)
            )

    bc = report.blend
    if bc is not None:
        limits = ", ".join(f"{n} {bc.losses[n]:.4f} <= {lim:.4f}" for n, lim in bc.limits.items())
        print(
            f"blend minimising the mean relative loss of {report.learn} (new domains by the "
            "cross-domain law, the others by their own runs' law)"
            + (f" with {limits}" if limits else "")
        )
        if not bc.feasible:
            print(
                f"warning: no blend keeps the replay loss within {args.tolerance:g} of its "
                "initial value; the blend shown forgets least"
            )
        prefixes = dict(args.data_prefix)
        names = report.blend_names
        print("--data-path " + format_data_path([prefixes.get(n, n) for n in names], bc.weights))
        for j, n in enumerate(names):
            print(f"  {n:<14}w={bc.weights[j]:.4f}  predicted {bc.losses[n]:.4f} at the budget")


def _plot(path: str, report: CrossDomainReport, shares: Sequence[float]) -> None:
    law, train, new, names = report.law, report.roles.train, report.roles.new, report.roles.names
    ratios, points, early, coeff = report.ratios, report.points, report.early, report.coefficients
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels: List[str] = list(train) + list(new)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, n in zip(axes.flat, panels):
        k = law.coefficients.get(n, coeff.get(n))
        dl = law.domain_law(k)
        if n in names:
            j = names.index(n)
            for i, p in enumerate(points):
                d, y = p[n]
                if d.size == 0:
                    continue
                c = colors[i % len(colors)]
                grid = np.geomspace(d.min(), d.max(), 100)
                ax.plot(d, y, "o", ms=3, color=c, label=f"r={ratios[i, j]:.2f}")
                ax.plot(grid, dl.predict(grid, ratios[i, j]), "-", lw=1, color=c)
        else:
            grid = np.geomspace(early[n].window_tokens, report.budget, 100)
            for i, r in enumerate(shares):
                c = colors[i % len(colors)]
                ax.plot(grid, dl.predict(grid, r), "-", lw=1, color=c, label=f"r={r:.2f}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        role = "training domain" if n in train else "new domain, from K"
        ax.set_title(f"{n} ({role}, K={k:.3f})", fontsize=9)
        ax.set_xlabel("tokens D")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
