"""Fit the D-CPT Law on short static runs at several blends and choose the starting blend.

Each trajectory is one static run (``--velocitune-policy static``) at its own blend. Every
domain's held-out loss is fitted with ``L(D, r) = E + B r^eta / D^beta + C / (r + eps)^gamma``
(Que et al. 2024; ``r`` = that domain's share of the run's blend, ``D`` = training tokens). The
tool reports R^2 and the Huber loss of each fit, the error on a run left out of the fit (with
``--fit-fraction`` the laws see only the evaluations up to that fraction of the budget, like the
Chinchilla target fit, and the left-out run is scored on all of its), and answers the practical
questions:

* the blend minimising the new domains' loss at the budget while each replay (general) domain's
  loss stays within ``--tolerance`` of its initial value (one new domain: the paper's ratio);
* each domain's loss over ``D`` for that blend;
* for a data-limited domain (``--domain-tokens NAME=TOKENS``), the share that minimises its loss
  when its data is seen once (``D = TOKENS / r``).

With ``--cross-domain`` it fits the Cross-Domain D-CPT Law instead: a domain without ratio runs
gets its law from a short run, through its coefficient K (see
:mod:`megatron_velocitune.cli.fit_cross_domain`).

It prints a ready ``--data-path`` blend and can write a targets JSON (the losses predicted at
the budget for the chosen blend) for ``--velocitune-target-loss-file``.

Example::

    velocitune-fit-dcpt runs/r*/trajectory.jsonl --replay web --budget-tokens 2e9 \\
        --data-prefix code=data/code_text_document --output dcpt_targets.json --plot dcpt.png
"""

import argparse
import math
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.cli._common import (
    ToolError,
    add_rising_rule_args,
    check_rising_rule_args,
    parse_name_value,
    run_tool,
)
from megatron_velocitune.cli.fit_cross_domain import add_cross_domain_args, run_cross_domain
from megatron_velocitune.core.arguments import read_loss_file, write_loss_file
from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.core.errors import InputError
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.dcpt_law import (
    DEFAULT_EPS,
    ETA_BOUNDS,
    choose_blend,
    choose_ratio,
    fit_domain,
    format_data_path,
    gather,
    ratio_for_limited_domain,
)
from megatron_velocitune.laws.scaling_law import (
    TargetAboveInitialError,
    header_budget,
    initial_losses,
    resolve_target,
)

PROG = "velocitune-fit-dcpt"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fit the D-CPT Law L(D, r) per domain on static runs at several blends, "
        "report fit quality and a left-out run's error, and choose a starting blend.",
    )
    p.add_argument(
        "trajectories",
        nargs="+",
        help="JSONL trajectories of static runs, one blend each (3 or more blends to "
        "leave one out).",
    )
    p.add_argument(
        "--replay",
        nargs="+",
        default=[],
        help="Replay (general) domains: their loss must stay within --tolerance of "
        "its initial value.",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="Relative rise allowed in each replay domain's loss (default: %(default)s).",
    )
    p.add_argument(
        "--budget-tokens",
        type=float,
        default=None,
        help="Token budget of the real run (default: the largest header budget).",
    )
    p.add_argument(
        "--min-tokens",
        type=float,
        default=0.0,
        help="Ignore evaluations before this many tokens (e.g. the LR warmup).",
    )
    p.add_argument(
        "--fit-fraction",
        type=float,
        default=1.0,
        help="Fit on the evaluations up to this fraction of the budget, as "
        "velocitune-fit-targets does (the left-out run is scored on all of its "
        "evaluations; default: %(default)s).",
    )
    p.add_argument(
        "--held-out-run",
        type=int,
        default=-1,
        help="Index of the run left out of the validation fit (default: the last); "
        "the reported laws are fitted on every run.",
    )
    p.add_argument(
        "--initial-loss-file",
        default=None,
        help="Initial losses JSON (default: what the runs recorded).",
    )
    p.add_argument(
        "--domain-tokens",
        action="append",
        default=[],
        type=parse_name_value("--domain-tokens", float),
        metavar="NAME=TOKENS",
        help="A data-limited domain and its available tokens (repeatable).",
    )
    p.add_argument(
        "--data-prefix",
        action="append",
        default=[],
        type=parse_name_value("--data-prefix", str),
        metavar="NAME=PREFIX",
        help="Data prefix of a domain for the printed --data-path (default: the domain name).",
    )
    p.add_argument(
        "--blend",
        action="append",
        default=[],
        type=parse_name_value("--blend", float),
        metavar="NAME=WEIGHT",
        help="Use this blend (one per domain, normalised) for the loss curve and the "
        "targets JSON instead of the chosen one.",
    )
    p.add_argument(
        "--min-weight",
        type=float,
        default=0.01,
        help="Floor of every weight in the chosen blend (default: %(default)s).",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=DEFAULT_EPS,
        help="The law's fixed ratio offset eps (default: %(default)s).",
    )
    p.add_argument(
        "--allow-negative-eta",
        action="store_true",
        help="Let eta go down to -2 (a larger share slows the data term, the "
        "effective-tokens reading); the paper's form keeps eta >= 0.",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="Write the targets JSON (losses at the budget for the chosen blend).",
    )
    add_rising_rule_args(p, "For the targets JSON: ")
    p.add_argument(
        "--plot", default=None, help="PNG of predicted vs observed loss over D, per domain and run."
    )
    add_cross_domain_args(p)
    return p


def _plot(path, names, ratios, points, laws, held):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    k = len(names)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (j, n) in zip(axes.flat, enumerate(names)):
        for i, pts in enumerate(points):
            d, y = pts[n]
            if d.size == 0:
                continue
            c = colors[i % len(colors)]
            grid = np.geomspace(d.min(), d.max(), 100)
            mark = "s" if i == held else "o"
            ax.plot(
                d,
                y,
                mark,
                ms=3,
                color=c,
                mfc="none" if i == held else c,
                label=f"r={ratios[i, j]:.2f}" + (" (left out)" if i == held else ""),
            )
            ax.plot(grid, laws[n].predict(grid, ratios[i, j]), "-", lw=1, color=c)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(n, fontsize=10)
        ax.set_xlabel("tokens D")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Fit, answer, print and write; raises :class:`ToolError` on a user error."""
    if args.cross_domain:
        return run_cross_domain(args)
    check_rising_rule_args(args)
    if args.tolerance < 0:
        raise ToolError(f"--tolerance {args.tolerance} must be >= 0")
    if not 0.0 < args.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {args.fit_fraction} must be in (0, 1]")
    runs = []
    for path in args.trajectories:
        try:
            runs.append(read_trajectory(path))
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot read trajectory {path!r}: {e}") from None
    names = runs[0].domains
    unknown = [n for n in args.replay if n not in names]
    if unknown:
        raise ToolError(f"--replay {unknown}: not domains of the runs ({names})")
    given_blend = None
    if args.blend:
        given = dict(args.blend)
        if sorted(given) != sorted(names) or any(v <= 0 for v in given.values()):
            raise ToolError(f"--blend needs one positive weight for each of {names}, got {given}")
        given_blend = np.array([given[n] for n in names]) / sum(given.values())
    ratios, points = gather(args.trajectories, runs, names, args.min_tokens)
    distinct = {tuple(np.round(r, 9)) for r in ratios}
    if len(distinct) < 2:
        raise ToolError(f"need static runs at 2 or more blends, got {len(distinct)}")
    budget = args.budget_tokens or header_budget(runs)
    if not budget or budget <= 0:
        raise ToolError("no token budget: pass --budget-tokens")
    if args.initial_loss_file:
        try:
            init_list = read_loss_file(args.initial_loss_file, names, "--initial-loss-file")
        except VelocituneConfigError as e:
            raise ToolError(str(e)) from None
    else:
        init_list = initial_losses(runs, names)
    initial = dict(zip(names, init_list))
    no_init = [n for n in args.replay if initial[n] is None]
    if no_init:
        raise ToolError(
            f"replay domains {no_init} have no initial loss: pass "
            f"--initial-loss-file (or record one at iteration 0)"
        )

    cutoff = args.fit_fraction * budget
    fitted = [{n: (d[d <= cutoff], y[d <= cutoff]) for n, (d, y) in p.items()} for p in points]
    eta = (-2.0, 2.0) if args.allow_negative_eta else ETA_BOUNDS
    laws = {n: fit_domain(n, ratios, fitted, range(len(runs)), args.eps, eta) for n in names}

    # Validation: refit without one run and predict it.
    held = args.held_out_run % len(runs)
    rest = [i for i in range(len(runs)) if i != held]
    validation: Dict[str, Tuple[float, float]] = {}
    # A domain whose refit fails (too few points without the left-out run) has no left-out
    # error; the laws fitted on every run still answer the questions below.
    refit_failures: Dict[str, str] = {}
    if len({tuple(np.round(ratios[i], 9)) for i in rest}) >= 2:
        for n in names:
            try:
                law = fit_domain(n, ratios, fitted, rest, args.eps, eta)
            except InputError as e:
                refit_failures[n] = str(e)
                continue
            d, y = points[held][n]
            if d.size:
                err = np.abs(law.predict(d, ratios[held, names.index(n)]) - y)
                validation[n] = (float(err.mean()), float(err[np.argmax(d)]))

    print(
        f"{len(runs)} static runs; budget {budget:.6g} tokens; fit on points <= "
        f"{cutoff:.6g} tokens ({args.fit_fraction:g}); eps {args.eps:g}"
    )
    print(
        f"{'domain':<14}{'E':>8}{'B':>10}{'eta':>7}{'beta':>7}{'C':>8}{'gamma':>7}"
        f"{'R2':>8}{'Huber':>10}{'left-out MAE':>14}{'final err':>11}"
    )
    for n in names:
        f = laws[n]
        v = validation.get(n)
        mae, fin = (f"{v[0]:.2e}", f"{v[1]:.2e}") if v else ("-", "-")
        print(
            f"{n:<14}{f.E:>8.4f}{f.B:>10.4g}{f.eta:>7.3f}{f.beta:>7.3f}{f.C:>8.4f}"
            f"{f.gamma:>7.3f}{f.r2:>8.4f}{f.huber_loss:>10.2e}{mae:>14}{fin:>11}"
        )
    for reason in refit_failures.values():
        print(f"note: {reason} (the refit without the left-out run); no left-out error")
    if validation or refit_failures:
        blend = " ".join(f"{n}={ratios[held, j]:.3f}" for j, n in enumerate(names))
        print(f"left-out run: {args.trajectories[held]} ({blend})")
    else:
        print("left-out run: none (needs runs at 3 or more blends)")

    # Q1: the blend.
    replay = list(args.replay)
    learn = [n for n in names if n not in replay]
    if len(names) == 2 and len(replay) == 1:
        dom, gen = learn[0], replay[0]
        choice = choose_ratio(laws[dom], laws[gen], budget, initial[gen], args.tolerance)
        weights = np.array([choice.ratio if n == dom else 1.0 - choice.ratio for n in names])
        feasible = choice.feasible
        print(
            f"ratio: {dom} {choice.ratio:.3f} / {gen} {1 - choice.ratio:.3f} minimises "
            f"{dom}'s loss ({choice.domain_loss:.4f}) with {gen} at {choice.general_loss:.4f} "
            f"<= {choice.general_limit:.4f} (initial {initial[gen]:.4f} x (1 + "
            f"{args.tolerance:g}))"
        )
    else:
        bc = choose_blend(
            laws,
            budget,
            replay=replay,
            initial={n: v for n, v in initial.items() if v is not None},
            tolerance=args.tolerance,
            min_weight=args.min_weight,
            start=ratios[0],
        )
        weights, feasible = bc.weights, bc.feasible
        limits = ", ".join(f"{n} {bc.losses[n]:.4f} <= {lim:.4f}" for n, lim in bc.limits.items())
        print(
            f"blend minimising the mean relative loss of {learn}"
            + (f" with {limits}" if limits else "")
        )
    if not feasible:
        print(
            f"warning: no blend keeps the replay loss within {args.tolerance:g} of its "
            f"initial value; the blend shown forgets least"
        )
    prefixes = dict(args.data_prefix)
    print("--data-path " + format_data_path([prefixes.get(n, n) for n in names], weights))

    if given_blend is not None:
        weights = given_blend
        print("using --blend " + format_data_path([prefixes.get(n, n) for n in names], weights))

    # Q2: the loss curve over D for that blend.
    fractions = (0.1, 0.25, 0.5, 1.0)
    print("predicted loss over D: " + "  ".join(f"{f * budget:.3g}" for f in fractions))
    for j, n in enumerate(names):
        curve = laws[n].predict(np.array(fractions) * budget, weights[j])
        print(f"  {n:<14}" + "  ".join(f"{v:.4f}" for v in curve))

    # Q3: data-limited domains.
    gen_law = laws[replay[0]] if len(replay) == 1 else None
    gen_init = initial[replay[0]] if len(replay) == 1 else None
    for n, tokens in args.domain_tokens:
        if n not in laws:
            raise ToolError(f"--domain-tokens {n}: not a domain of the runs ({names})")
        c = ratio_for_limited_domain(laws[n], tokens, gen_law, gen_init, args.tolerance)
        extra = f", general {c.general_loss:.4f}" if c.general_loss is not None else ""
        print(
            f"data-limited {n} ({tokens:.4g} tokens, seen once): share {c.ratio:.3f}, run of "
            f"{c.tokens:.4g} tokens, predicted loss {c.domain_loss:.4f}{extra}"
            + ("" if c.feasible else " (general limit not met)")
        )

    if args.output:
        targets, errors = [], []
        for j, n in enumerate(names):
            pred = float(laws[n].predict(budget, weights[j]))
            try:
                dec = resolve_target(
                    pred, initial[n], args.rising_domains, args.margin, n, args.forgetting_tolerance
                )
                targets.append(dec.target)
                if dec.note:
                    print(f"note: domain {n!r}: {dec.note}")
            except TargetAboveInitialError as e:
                errors.append(f"{e} (--rising-domains)")
        if errors:
            for e in errors:
                print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        write_loss_file(
            args.output,
            names,
            targets,
            source="fit_dcpt_law",
            law="L(D, r) = E + B r^eta / D^beta + C / (r + eps)^gamma",
            trajectories=list(args.trajectories),
            budget_tokens=budget,
            fit_fraction=args.fit_fraction,
            blend={n: float(w) for n, w in zip(names, weights)},
            rising_domains=args.rising_domains,
            margin=args.margin,
            forgetting_tolerance=(
                None if args.forgetting_tolerance is None else str(args.forgetting_tolerance)
            ),
            fits={
                n: {
                    k: getattr(laws[n], k)
                    for k in ("E", "B", "eta", "beta", "C", "gamma", "eps", "r2", "huber_loss")
                }
                for n in names
            },
        )
        print(f"wrote {args.output}")
    if args.plot:
        _plot(args.plot, names, ratios, points, laws, held if validation else -1)
        print(f"wrote {args.plot}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
