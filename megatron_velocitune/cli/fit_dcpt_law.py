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
from typing import Optional, Sequence

import numpy as np

from megatron_velocitune.cli._common import (
    add_rising_rule_args,
    check_numbers,
    check_outputs,
    check_rising_rule_args,
    parse_name_value,
    read_initial_loss_file,
    read_trajectories,
    run_tool,
)
from megatron_velocitune.cli.fit_cross_domain import add_cross_domain_args, run_cross_domain
from megatron_velocitune.core.arguments import write_loss_file
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.files import save_figure
from megatron_velocitune.laws.dcpt_law import DEFAULT_EPS, format_data_path
from megatron_velocitune.laws.dcpt_report import (
    CURVE_FRACTIONS,
    DcptRunsConfig,
    DcptRunsReport,
    dcpt_targets,
    fit_dcpt_runs,
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
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Fit, answer, print and write; raises :class:`ToolError` on a user error."""
    # Both modes read these flags.
    check_numbers(
        ("--tolerance", args.tolerance, lambda v: v >= 0, "finite and >= 0"),
        ("--budget-tokens", args.budget_tokens, lambda v: v > 0, "finite and > 0"),
        ("--min-tokens", args.min_tokens, lambda v: v >= 0, "finite and >= 0"),
        ("--min-weight", args.min_weight, lambda v: v >= 0, "finite and >= 0"),
        ("--eps", args.eps, lambda v: v > 0, "finite and > 0"),
    )
    check_outputs(plot=args.plot)
    if args.cross_domain:
        return run_cross_domain(args)
    check_rising_rule_args(args)
    check_outputs(output=args.output)
    runs = read_trajectories(args.trajectories)
    names = runs[0].domains
    if not args.min_weight < 1.0 / len(names):
        raise ToolError(
            f"--min-weight {args.min_weight:g}: must be below 1/{len(names)} with "
            f"{len(names)} domains"
        )
    init_list = None
    if args.initial_loss_file:
        init_list = read_initial_loss_file(args.initial_loss_file, names)
    config = DcptRunsConfig(
        replay=list(args.replay),
        tolerance=args.tolerance,
        budget_tokens=args.budget_tokens,
        min_tokens=args.min_tokens,
        fit_fraction=args.fit_fraction,
        held_out_run=args.held_out_run,
        initial_losses=init_list,
        domain_tokens=list(args.domain_tokens),
        blend=dict(args.blend),
        min_weight=args.min_weight,
        eps=args.eps,
        allow_negative_eta=args.allow_negative_eta,
    )
    report = fit_dcpt_runs(args.trajectories, runs, config)
    _print_report(report, args)
    if args.output:
        targets = dcpt_targets(report, args.rising_domains, args.margin, args.forgetting_tolerance)
        for note in targets.notes:
            print(f"note: {note}")
        if targets.errors:
            for e in targets.errors:
                print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        write_loss_file(
            args.output,
            names,
            targets.targets,
            source="fit_dcpt_law",
            law="L(D, r) = E + B r^eta / D^beta + C / (r + eps)^gamma",
            trajectories=list(args.trajectories),
            budget_tokens=report.budget,
            fit_fraction=args.fit_fraction,
            blend={n: float(w) for n, w in zip(names, report.weights)},
            rising_domains=args.rising_domains,
            margin=args.margin,
            forgetting_tolerance=(
                None if args.forgetting_tolerance is None else str(args.forgetting_tolerance)
            ),
            fits={
                n: {
                    k: getattr(report.laws[n], k)
                    for k in ("E", "B", "eta", "beta", "C", "gamma", "eps", "r2", "huber_loss")
                }
                for n in names
            },
        )
        print(f"wrote {args.output}")
    if args.plot:
        held = report.left_out.index if report.left_out.errors else -1
        _plot(args.plot, names, report.ratios, report.points, report.laws, held)
        print(f"wrote {args.plot}")
    return 0


def _print_report(report: DcptRunsReport, args: argparse.Namespace) -> None:
    """The laws, the left-out errors and the answers, as the tool prints them."""
    names, budget, left_out = report.names, report.budget, report.left_out
    print(
        f"{len(report.points)} static runs; budget {budget:.6g} tokens; fit on points <= "
        f"{report.cutoff:.6g} tokens ({args.fit_fraction:g}); eps {args.eps:g}"
    )
    print(
        f"{'domain':<14}{'E':>8}{'B':>10}{'eta':>7}{'beta':>7}{'C':>8}{'gamma':>7}"
        f"{'R2':>8}{'Huber':>10}{'left-out MAE':>14}{'final err':>11}"
    )
    for n in names:
        f = report.laws[n]
        v = left_out.errors.get(n)
        mae, fin = (f"{v[0]:.2e}", f"{v[1]:.2e}") if v else ("-", "-")
        print(
            f"{n:<14}{f.E:>8.4f}{f.B:>10.4g}{f.eta:>7.3f}{f.beta:>7.3f}{f.C:>8.4f}"
            f"{f.gamma:>7.3f}{f.r2:>8.4f}{f.huber_loss:>10.2e}{mae:>14}{fin:>11}"
        )
    for reason in left_out.refit_failures.values():
        print(f"note: {reason} (the refit without the left-out run); no left-out error")
    if left_out.errors or left_out.refit_failures:
        held = left_out.index
        blend = " ".join(f"{n}={report.ratios[held, j]:.3f}" for j, n in enumerate(names))
        print(f"left-out run: {args.trajectories[held]} ({blend})")
    else:
        print("left-out run: none (needs runs at 3 or more blends)")

    # Q1: the blend.
    initial, tolerance = report.initial, args.tolerance
    if report.ratio_choice is not None:
        choice = report.ratio_choice
        dom, gen = report.learn[0], report.replay[0]
        print(
            f"ratio: {dom} {choice.ratio:.3f} / {gen} {1 - choice.ratio:.3f} minimises "
            f"{dom}'s loss ({choice.domain_loss:.4f}) with {gen} at {choice.general_loss:.4f} "
            f"<= {choice.general_limit:.4f} (initial {initial[gen]:.4f} x (1 + "
            f"{tolerance:g}))"
        )
    else:
        bc = report.blend_choice
        limits = ", ".join(f"{n} {bc.losses[n]:.4f} <= {lim:.4f}" for n, lim in bc.limits.items())
        print(
            f"blend minimising the mean relative loss of {report.learn}"
            + (f" with {limits}" if limits else "")
        )
    if not report.feasible:
        print(
            f"warning: no blend keeps the replay loss within {tolerance:g} of its "
            f"initial value; the blend shown forgets least"
        )
    prefixes = dict(args.data_prefix)
    print("--data-path " + format_data_path([prefixes.get(n, n) for n in names], report.chosen))
    if report.given:
        print(
            "using --blend " + format_data_path([prefixes.get(n, n) for n in names], report.weights)
        )

    # Q2: the loss curve over D for that blend.
    print("predicted loss over D: " + "  ".join(f"{f * budget:.3g}" for f in CURVE_FRACTIONS))
    for n in names:
        print(f"  {n:<14}" + "  ".join(f"{v:.4f}" for v in report.curve[n]))

    # Q3: data-limited domains.
    for n, tokens, c in report.limited:
        extra = f", general {c.general_loss:.4f}" if c.general_loss is not None else ""
        print(
            f"data-limited {n} ({tokens:.4g} tokens, seen once): share {c.ratio:.3f}, run of "
            f"{c.tokens:.4g} tokens, predicted loss {c.domain_loss:.4f}{extra}"
            + ("" if c.feasible else " (general limit not met)")
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
