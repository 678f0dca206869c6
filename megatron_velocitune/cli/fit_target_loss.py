"""Fit per-domain target losses from a proxy run's trajectory (Velocitune step 2).

Reads one or more JSONL trajectories (a static "observe" run: ``--velocitune-policy static``),
fits ``L(D) = E + B / D^beta`` per domain on the evaluations up to ``--fit-fraction`` of the
budget, prints the parameters, the predicted loss at the full budget and the absolute error on
the later (held-out) evaluations, and writes the targets JSON that
``--velocitune-target-loss-file`` reads.

Runs on the subset footing (the default policy's: each run's ``L_init`` measured on the very
samples its updates evaluate) are fitted on one level: each run's curve is shifted by the runs'
mean ``L_init`` minus its own, so the data seeds' different subsets pool as changes, not as one
band per seed; the targets file then names that mean as ``reference_initial`` and the training
run applies each predicted change to its own ``L_init``.

A domain whose fitted target is not below its initial loss (a replay domain that forgets) gets
the ``--rising-domains`` rule: ``budget`` (the default) keeps the prediction as a forgetting
budget, refitting a rising curve with the mirrored law ``E - B / D^beta`` so the budget is what
the static blend forgets by the end; ``tolerance`` gives ``L_init + --forgetting-tolerance``;
``hold-initial`` gives ``L_init * (1 - margin)``; ``refuse`` makes it an error.

Example::

    velocitune-fit-targets runs/proxy/trajectory.jsonl --output targets.json --plot fit.png
"""

import argparse
import math
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from megatron_velocitune.cli._common import (
    add_rising_rule_args,
    check_numbers,
    check_outputs,
    check_rising_rule_args,
    read_initial_loss_file,
    read_trajectories,
    run_tool,
)
from megatron_velocitune.core.arguments import write_loss_file
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.files import save_figure
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.laws.scaling_law import initial_losses
from megatron_velocitune.laws.schedule_laws import LrSchedule
from megatron_velocitune.laws.target_report import (
    LAW_CHOICES,
    BaseDecay,
    TargetFitConfig,
    TargetFitReport,
    fit_base_decay,
    fit_target_losses,
)

PROG = "velocitune-fit-targets"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fit L(D) = E + B/D^beta per domain on a proxy run's trajectory and write "
        "the target losses for --velocitune-target-loss-file.",
    )
    p.add_argument(
        "trajectories",
        nargs="+",
        help="JSONL trajectory file(s) of the proxy run; "
        "points of several files are pooled per domain.",
    )
    p.add_argument("--output", "-o", default=None, help="Write the targets JSON here.")
    p.add_argument(
        "--fit-fraction",
        type=float,
        default=0.5,
        help="Fit on evaluations up to this fraction of the budget; the later ones "
        "measure the prediction error (default: 0.5, as in the paper).",
    )
    p.add_argument(
        "--budget-tokens",
        type=float,
        default=None,
        help="Token budget to predict the target at (default: the header's "
        "train_iters * global_batch_size * seq_length).",
    )
    p.add_argument(
        "--min-tokens",
        type=float,
        default=0.0,
        help="Ignore evaluations before this many tokens (e.g. the LR warmup, where "
        "the loss does not follow the power law yet).",
    )
    p.add_argument(
        "--domains",
        nargs="+",
        default=None,
        help="Domains to fit, by name (default: all of the first trajectory's).",
    )
    p.add_argument(
        "--initial-loss-file",
        default=None,
        help="Initial losses JSON (default: the header's initial_loss, else an "
        "evaluation at 0 tokens).",
    )
    p.add_argument(
        "--law",
        choices=LAW_CHOICES,
        default="chinchilla",
        help="The law of the targets: chinchilla (the paper's E + B/D^beta, the default), "
        "annealing (Tissue et al. 2024: L0 + A*S1^-alpha - C*S2), cpt (Wang et al. 2025: the "
        "annealing law continued from pre-training plus a distribution-shift term), "
        "multi-power (Luo et al. 2025: a power law in the LR sum minus a loss-reduction term "
        "per LR drop), cpt-multi-power (the cpt law with the multi-power law's loss reduction, "
        "from --annealing-from, as its annealing term), or auto (per domain, the law with the "
        "lowest error on the last 25%% of the fit window). The schedule-aware laws read the "
        "header's 'lr_schedule', else each record's 'lr'.",
    )
    p.add_argument(
        "--constant-lr",
        action="store_true",
        help="The proxy ran at a constant learning rate (older trajectories have no 'lr'): "
        "take steps as the clock (S1 = steps, S2 = 0).",
    )
    p.add_argument(
        "--lr-schedule",
        default=None,
        metavar="STYLE:MAX_LR:MIN_LR:WARMUP:DECAY[:WSD_STEPS:WSD_STYLE]",
        help="The proxies' learning-rate schedule where their header has no 'lr_schedule' "
        "(older trajectories), in iterations, warm-up from 0, e.g. constant:1e-3:1e-3:5:200.",
    )
    p.add_argument(
        "--pt-area",
        type=float,
        default=None,
        help="The cpt law's pre-training forward area S1_pt (sum of the base model's learning "
        "rates, in the proxy's S1 units: steps at its LR with --constant-lr); default: fitted.",
    )
    p.add_argument(
        "--annealing-c",
        type=float,
        default=None,
        help="Fix the annealing coefficient C, per unit of annealing area in absolute LR "
        "units; default: fitted where the window anneals, else 0 (or --annealing-from's).",
    )
    p.add_argument(
        "--annealing-from",
        default=None,
        metavar="BASE_TRAJECTORY",
        help="Fit the annealing and multi-power laws to the base model's own held-out curve "
        "(it pre-trained with a decaying LR) and use each domain's C (annealing, cpt) and "
        "loss-reduction term (multi-power) in the proxy's fits.",
    )
    p.add_argument(
        "--base-lr-schedule",
        default=None,
        metavar="STYLE:MAX_LR:MIN_LR:WARMUP:DECAY[:WSD_STEPS:WSD_STYLE]",
        help="The --annealing-from run's schedule where its header has no 'lr_schedule' "
        "(format of --lr-schedule), e.g. cosine:2e-3:1e-4:80:800.",
    )
    add_rising_rule_args(p)
    p.add_argument("--plot", default=None, help="Write a PNG of every domain's fit here.")
    return p


def read_initial_losses(
    trajectories: Sequence[Trajectory], names: Sequence[str], path: Optional[str]
) -> Dict[str, Optional[float]]:
    """Initial loss per domain: the file, else what the runs recorded (header or 0-token eval)."""
    if path is not None:
        return dict(zip(names, read_initial_loss_file(path, names)))
    return dict(zip(names, initial_losses(trajectories, names)))


def _plot(path: str, report: TargetFitReport) -> None:
    """One panel per domain: the points, the fit window, every fitted law's curve to the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    results, budget, cutoff = report.domains, report.budget, report.cutoff
    k = len(results)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        d, y = res.tokens, res.losses
        early = d <= cutoff
        ax.axvspan(d.min(), cutoff, color="grey", alpha=0.12, lw=0, label="fit window")
        ax.plot(d[early], y[early], "o", ms=3, color="k", label="fitted")
        ax.plot(d[~early], y[~early], "s", ms=3, mfc="none", color="k", label="held out")
        for name, law in res.laws.items():
            drawn = report.law_curve(law, d.min())
            if drawn is None:
                continue
            mark = " *" if name == res.law else ""
            ax.plot(*drawn, "-", lw=1.6 if mark else 1, label=f"{name}{mark}")
        ax.plot([budget], [res.target], "*", ms=10, color="C3", label="target")
        if res.initial is not None:
            ax.axhline(res.initial, color="red", ls="--", lw=1, label="initial")
        ax.set_xscale("log")
        # Minor-tick labels of a short log range overlap into an unreadable band.
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(res.name, fontsize=10)
        ax.set_xlabel("tokens")
        ax.set_ylabel("held-out loss")
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Fit, print and write; raises :class:`ToolError` on a user error."""
    check_rising_rule_args(args)
    if args.annealing_from and args.annealing_c is not None:
        raise ToolError("--annealing-c and --annealing-from both give C: pass one")
    if args.base_lr_schedule and not args.annealing_from:
        raise ToolError("--base-lr-schedule describes the --annealing-from run: pass it too")
    check_numbers(
        ("--budget-tokens", args.budget_tokens, lambda v: v > 0, "finite and > 0"),
        ("--min-tokens", args.min_tokens, lambda v: v >= 0, "finite and >= 0"),
    )
    check_outputs(output=args.output, plot=args.plot)
    runs = read_trajectories(args.trajectories)
    names = list(args.domains or runs[0].domains)
    base_decay = None
    if args.annealing_from:
        base_schedule = (
            LrSchedule.from_spec(args.base_lr_schedule, "--base-lr-schedule")
            if args.base_lr_schedule
            else None
        )
        (base,) = read_trajectories([args.annealing_from])
        base_decay = fit_base_decay(args.annealing_from, base, names, base_schedule)
        _print_base(base_decay)
    config = TargetFitConfig(
        fit_fraction=args.fit_fraction,
        budget_tokens=args.budget_tokens,
        min_tokens=args.min_tokens,
        domains=args.domains,
        initial_losses=(
            read_initial_losses(runs, names, args.initial_loss_file)
            if args.initial_loss_file
            else None
        ),
        rising_rule=args.rising_domains,
        margin=args.margin,
        forgetting_tolerance=args.forgetting_tolerance,
        law=args.law,
        constant_lr=args.constant_lr,
        pt_area=args.pt_area,
        fixed_c=args.annealing_c,
        lr_schedule=(
            LrSchedule.from_spec(args.lr_schedule, "--lr-schedule") if args.lr_schedule else None
        ),
        base_decay=base_decay,
    )
    report = fit_target_losses(args.trajectories, runs, config)
    _print_report(report, args.fit_fraction)
    if args.plot:
        _plot(args.plot, report)
        print(f"wrote {args.plot}")
    if report.errors:
        for e in report.errors:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        write_loss_file(
            args.output,
            report.names,
            [r.target for r in report.domains],
            source="fit_target_loss",
            **report.loss_file_fields(config, args.trajectories),
        )
        print(f"wrote {args.output}")
    return 0


def _print_base(base: Dict[str, BaseDecay]) -> None:
    """The annealing terms fitted on the base model's curve, per domain."""
    print(f"{'domain':<16}{'base C':>10}  multi-power decay term (B, C, beta, gamma)  R2 ann/mp")
    for name, b in base.items():
        d = b.decay
        term = "none (B = 0)" if d is None else f"{d.B:.4g}, {d.C:.4g}, {d.beta:.3g}, {d.gamma:.3g}"
        r2 = "/".join(f"{f.r2:.4f}" for f in b.fits.values())
        print(f"{name:<16}{b.c:>10.4g}  {term:<42}  {r2}")
    print(f"(from {next(iter(base.values())).source})")


def _print_report(report: TargetFitReport, fit_fraction: float) -> None:
    """Every domain's fit, prediction, target and held-out error, as the tool prints them."""
    print(
        f"budget {report.budget:.6g} tokens; fit on points <= {report.cutoff:.6g} tokens "
        f"({fit_fraction:g}); {report.num_runs} trajectory file(s)"
        + (
            "; subset footing: each run's change from its own L_init, on their mean L_init "
            "(targets carry over as changes)"
            if report.reference is not None
            else ""
        )
    )
    head = (
        f"{'domain':<16}{'fit/held':>9}{'E':>9}{'B':>11}{'beta':>7}{'R2':>8}"
        f"{'initial':>9}{'pred@budget':>12}{'target':>9}{'MAE held':>10}{'final err':>10}"
    )
    print(head)
    for r in report.domains:
        h = r.held
        init = f"{r.initial:.4f}" if r.initial is not None else "?"
        mae = "-" if math.isnan(h.mae) else f"{h.mae:.2e}"
        final = "-" if math.isnan(h.final_error) else f"{h.final_error:.2e}"
        print(
            f"{r.name:<16}{h.fit.num_points:>4}/{h.tokens.size:<4}{h.fit.E:>9.4f}"
            f"{h.fit.B:>11.4g}{h.fit.beta:>7.3f}{h.fit.r2:>8.4f}{init:>9}"
            f"{r.predicted:>12.4f}{r.target:>9.4f}{mae:>10}{final:>10}"
        )
    maes = [r.held.mae for r in report.domains if not math.isnan(r.held.mae)]
    if maes:
        print(
            f"mean held-out absolute error {np.mean(maes):.3e} (paper: 2.4e-3 Reasoning, "
            f"1.84e-3 SystemStack)"
        )
    if any(len(r.laws) > 1 or r.law != "chinchilla" for r in report.domains):
        _print_laws(report)
    for r in report.domains:
        if r.decision is not None and r.decision.note:
            print(f"note: domain {r.name!r}: {r.decision.note}")


def _print_laws(report: TargetFitReport) -> None:
    """Every law's errors per domain, and which one the target came from."""

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2e}"

    print(
        f"{'domain':<16}{'law':<12}{'val MAE':>10}{'MAE held':>10}{'final err':>10}"
        f"{'pred@budget':>12}  params"
    )
    for r in report.domains:
        for name, res in r.laws.items():
            mark = "*" if name == r.law else " "
            params = " ".join(f"{k}={v:.4g}" for k, v in res.params().items())
            bound = f"  at bound: {','.join(res.at_bound)}" if res.at_bound else ""
            notes = getattr(res.fit, "notes", [])
            print(
                f"{r.name:<16}{mark}{name:<11}{fmt(res.validation_mae):>10}{fmt(res.mae):>10}"
                f"{fmt(res.final_error):>10}{res.predicted:>12.4f}  {params}{bound}"
                + (f"  ({'; '.join(notes)})" if notes else "")
            )
    print("* the law each target comes from")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
