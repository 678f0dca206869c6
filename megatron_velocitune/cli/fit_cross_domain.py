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
from typing import Dict, List, Sequence

import numpy as np

from megatron_velocitune.cli._common import ToolError
from megatron_velocitune.core.arguments import read_loss_file
from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.core.trajectory import Trajectory, read_trajectory
from megatron_velocitune.laws.cross_domain_law import (
    DEFAULT_MIN_DECLINE,
    CoefficientError,
    CrossDomainFit,
    EarlyLosses,
    early_losses,
    fit_cross_domain,
    points_by_domain,
)
from megatron_velocitune.laws.dcpt_law import (
    DcptFit,
    choose_blend,
    fit_dcpt,
    format_data_path,
    static_points,
)
from megatron_velocitune.laws.scaling_law import (
    TooFewPointsError,
    header_budget,
    initial_losses,
    loss_points,
)

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


def _check_names(flag: str, given: Sequence[str], known: Sequence[str], where: str) -> None:
    unknown = [n for n in given if n not in known]
    if unknown:
        raise ToolError(f"{flag} {unknown[0]!r}: not a domain of {where} (domains {list(known)})")


def run_cross_domain(args: argparse.Namespace) -> int:
    """The ``--cross-domain`` mode of velocitune-fit-dcpt; raises :class:`ToolError`."""
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
    if args.tolerance < 0:
        raise ToolError(f"--tolerance {args.tolerance} must be >= 0")
    shares = args.ratio or list(DEFAULT_RATIOS)
    bad = [r for r in shares if not 0.0 < r <= 1.0]
    if bad:
        raise ToolError(f"--ratio {bad[0]}: a share must be in (0, 1]")

    paths = list(args.trajectories)
    runs = [_read(p) for p in paths]
    names = runs[0].domains
    for path, t in zip(paths[1:], runs[1:]):
        if t.domains != names:
            raise ToolError(
                f"{path}: domains {t.domains} differ from {paths[0]}'s {names}; the ratio runs "
                "need one domain list"
            )
    short = _read(args.short_run, "--short-run")
    _check_names("--replay", args.replay, names, "the runs")
    _check_names("--new-domain", args.new_domain, short.domains, f"--short-run {args.short_run}")
    new = list(dict.fromkeys(args.new_domain))
    if args.domains is None:
        train = [n for n in names if n not in args.replay and n not in new]
    else:
        _check_names("--domains", args.domains, names, "the runs")
        train = list(dict.fromkeys(args.domains))
        both = [n for n in train if n in new or n in args.replay]
        if both:
            raise ToolError(f"--domains {both[0]!r}: also a --new-domain or --replay domain")
    if len(train) < 2:
        raise ToolError(f"--domains {train}: the cross-domain law needs 2 or more training domains")
    _check_names("--domains", train, short.domains, f"--short-run {args.short_run}")

    budget = args.budget_tokens or header_budget(runs)
    if not budget or budget <= 0:
        raise ToolError("no token budget: pass --budget-tokens")
    window = args.k_window * budget

    wanted = list(dict.fromkeys(list(args.replay) + train + new))
    if args.initial_loss_file:
        try:
            init = read_loss_file(args.initial_loss_file, wanted, "--initial-loss-file")
        except VelocituneConfigError as e:
            raise ToolError(str(e)) from None
    else:
        init = initial_losses([short] + runs, wanted)
    initial = dict(zip(wanted, init))

    # K's features, every domain from the same short run and window.
    curves = _curves(short, train + new)
    early: Dict[str, EarlyLosses] = {}
    for n in train + new:
        if initial[n] is None:
            raise ToolError(
                f"--short-run {args.short_run}: no initial loss for {n!r} (k1): pass "
                "--initial-loss-file"
            )
        d, y = curves[n]
        try:
            early[n] = early_losses(d, y, initial[n], window, args.min_decline)
        except CoefficientError as e:
            raise ToolError(f"--short-run {args.short_run}: domain {n!r}: {e}") from None

    ratios, points = [], []
    for path, t in zip(paths, runs):
        try:
            blend, pts = static_points(t, names, args.min_tokens)
        except ValueError as e:
            raise ToolError(f"{path}: {e}") from None
        ratios.append(blend)
        points.append(pts)
    ratios = np.array(ratios)
    cutoff = args.fit_fraction * budget
    fitted = [{n: (d[d <= cutoff], y[d <= cutoff]) for n, (d, y) in p.items()} for p in points]
    try:
        law = fit_cross_domain(points_by_domain(train, ratios, fitted, early), eps=args.eps)
    except TooFewPointsError as e:
        raise ToolError(f"{e} (in the {len(paths)} trajectories)") from None

    # The standard law where a domain has ratio runs of its own.
    own: Dict[str, DcptFit] = {}
    for n in list(args.replay) + train:
        j = names.index(n)
        d = np.concatenate([p[n][0] for p in fitted])
        y = np.concatenate([p[n][1] for p in fitted])
        r = np.concatenate([np.full(p[n][0].size, ratios[i, j]) for i, p in enumerate(fitted)])
        try:
            own[n] = fit_dcpt(d, r, y, eps=args.eps)
        except (TooFewPointsError, ValueError) as e:
            raise ToolError(f"domain {n!r}: {e}") from None
    coeff = {n: law.coefficient(early[n]) for n in new}
    predicted = {n: law.domain_law(coeff[n]) for n in new}

    print(
        f"cross-domain D-CPT Law on {len(train)} training domains {train} x {len(paths)} "
        f"static runs; budget {budget:.6g} tokens; fit on points <= {cutoff:.6g} tokens "
        f"({args.fit_fraction:g}); eps {args.eps:g}"
    )
    print(
        f"K = w1/k1 + w2*k2 from the first {window:.6g} tokens ({args.k_window:g} of the "
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
        k = law.coefficients[n] if n in law.coefficients else coeff[n]
        role = "train" if n in train else "new"
        e = early[n]
        print(f"{n:<14}{role:<10}{e.k1:>9.4f}{e.k2:>8.4f}{k:>8.4f}{e.loss_at_window:>11.4f}")

    fractions = (0.1, 0.25, 0.5, 1.0)
    for n in new:
        print(f"{n}: predicted loss over D: " + "  ".join(f"{f * budget:.3g}" for f in fractions))
        for r in shares:
            curve = predicted[n].predict(np.array(fractions) * budget, r)
            print(f"  r={r:<8.3f}" + "  ".join(f"{v:.4f}" for v in curve))
        if n in names:
            # The runs hold the new domain too (a leave-one-domain-out check): score it.
            j = names.index(n)
            errs = [
                predicted[n].predict(p[n][0], ratios[i, j]) - p[n][1]
                for i, p in enumerate(points)
                if p[n][0].size
            ]
            flat = np.concatenate(errs)
            last = [float(e[-1]) for e in errs]
            print(
                f"  observed in the runs (not fitted): mean abs error {np.mean(np.abs(flat)):.4f}"
                f" nats over {flat.size} evaluations; at each run's last evaluation "
                + " ".join(f"{v:+.4f}" for v in last)
            )

    blend_names = [n for n in short.domains if n in own or n in predicted]
    laws = {n: own.get(n, predicted.get(n)) for n in blend_names}
    replay = [n for n in args.replay if n in laws]
    learn = [n for n in blend_names if n not in replay]
    no_init = [n for n in replay if initial.get(n) is None]
    if no_init:
        raise ToolError(
            f"replay domains {no_init} have no initial loss: pass --initial-loss-file "
            "(or record one at iteration 0)"
        )
    if len(blend_names) >= 2 and learn:
        bc = choose_blend(
            laws,
            budget,
            replay=replay,
            initial={n: initial[n] for n in blend_names if initial.get(n) is not None},
            tolerance=args.tolerance,
            min_weight=args.min_weight,
        )
        limits = ", ".join(f"{n} {bc.losses[n]:.4f} <= {lim:.4f}" for n, lim in bc.limits.items())
        print(
            f"blend minimising the mean relative loss of {learn} (new domains by the "
            "cross-domain law, the others by their own runs' law)"
            + (f" with {limits}" if limits else "")
        )
        if not bc.feasible:
            print(
                f"warning: no blend keeps the replay loss within {args.tolerance:g} of its "
                "initial value; the blend shown forgets least"
            )
        prefixes = dict(args.data_prefix)
        print(
            "--data-path " + format_data_path([prefixes.get(n, n) for n in blend_names], bc.weights)
        )
        for j, n in enumerate(blend_names):
            print(f"  {n:<14}w={bc.weights[j]:.4f}  predicted {bc.losses[n]:.4f} at the budget")
    if args.plot:
        _plot(args.plot, law, train, new, names, ratios, points, early, coeff, shares, budget)
        print(f"wrote {args.plot}")
    return 0


def _curves(t: Trajectory, names: Sequence[str]):
    # A short run need not be static: K reads only its losses.
    pts = loss_points(t, names)
    return {n: pts.domain(n) for n in names}


def _plot(
    path, law: CrossDomainFit, train, new, names, ratios, points, early, coeff, shares, budget
):
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
            grid = np.geomspace(early[n].window_tokens, budget, 100)
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
