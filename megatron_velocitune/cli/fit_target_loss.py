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
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.cli._common import (
    ToolError,
    add_rising_rule_args,
    check_rising_rule_args,
    run_tool,
)
from megatron_velocitune.core.arguments import read_loss_file, write_loss_file
from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.core.files import save_figure
from megatron_velocitune.core.trajectory import Trajectory, read_trajectory
from megatron_velocitune.laws.scaling_law import (
    TargetAboveInitialError,
    TooFewPointsError,
    common_footing,
    header_budget,
    held_out_error,
    initial_losses,
    loss_points,
    resolve_target,
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
    add_rising_rule_args(p)
    p.add_argument("--plot", default=None, help="Write a PNG of every domain's fit here.")
    return p


def read_initial_losses(
    trajectories: Sequence[Trajectory], names: Sequence[str], path: Optional[str]
) -> Dict[str, Optional[float]]:
    """Initial loss per domain: the file, else what the runs recorded (header or 0-token eval)."""
    if path is not None:
        try:
            return dict(zip(names, read_loss_file(path, names, "--initial-loss-file")))
        except VelocituneConfigError as e:
            raise ToolError(str(e)) from None
    return dict(zip(names, initial_losses(trajectories, names)))


def _plot(path: str, results: List[dict], budget: float, cutoff: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    k = len(results)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        d, y = res["tokens"], res["losses"]
        early = d <= cutoff
        ax.plot(d[early], y[early], "o", ms=3, label="fitted")
        ax.plot(d[~early], y[~early], "s", ms=3, mfc="none", label="held out")
        grid = np.geomspace(d.min(), budget, 200)
        ax.plot(grid, res["held"].fit.predict(grid), "-", lw=1, label="E + B/D^beta")
        ax.axvline(cutoff, color="grey", ls=":", lw=1)
        ax.plot([budget], [res["target"]], "*", ms=10, label="target")
        if res["initial"] is not None:
            ax.axhline(res["initial"], color="red", ls="--", lw=1, label="initial")
        ax.set_xscale("log")
        # Minor-tick labels of a short log range overlap into an unreadable band.
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(res["name"], fontsize=10)
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
    if not 0.0 < args.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {args.fit_fraction} must be in (0, 1]")
    check_rising_rule_args(args)
    trajectories = []
    for path in args.trajectories:
        try:
            trajectories.append(read_trajectory(path))
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot read trajectory {path!r}: {e}") from None
    names = list(args.domains or trajectories[0].domains)
    for path, t in zip(args.trajectories, trajectories):
        missing = [n for n in names if n not in t.domains]
        if missing:
            raise ToolError(f"{path}: no domains {missing} (it has {t.domains})")
    budget = args.budget_tokens or header_budget(trajectories)
    if not budget or budget <= 0:
        raise ToolError(
            "no token budget: pass --budget-tokens (the header lacks train_iters, "
            "global_batch_size or seq_length)"
        )
    cutoff = args.fit_fraction * budget
    if args.initial_loss_file:
        # Given initial losses are absolute: the runs' points as they are.
        points, reference = [loss_points(t, names) for t in trajectories], None
    else:
        try:
            points, reference = common_footing(trajectories, names)
        except ValueError as e:
            raise ToolError(f"{', '.join(args.trajectories)}: {e}") from None
    if reference is None:
        initial = read_initial_losses(trajectories, names, args.initial_loss_file)
    else:
        initial = dict(zip(names, reference))

    results, errors = [], []
    for n in names:
        d = np.concatenate([p.domain(n)[0] for p in points])
        y = np.concatenate([p.domain(n)[1] for p in points])
        keep = d >= args.min_tokens
        d, y = d[keep], y[keep]
        try:
            held = held_out_error(d, y, cutoff)
        except TooFewPointsError as e:
            raise ToolError(
                f"domain {n!r}: {e} (fit fraction {args.fit_fraction:g} of {budget:.4g} tokens)"
            ) from None
        predicted = float(held.fit.predict(budget))
        if (
            args.rising_domains in ("budget", "budget-hold")
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
                args.rising_domains,
                args.margin,
                n,
                args.forgetting_tolerance,
            )
        except TargetAboveInitialError as e:
            errors.append(f"{e} (--rising-domains)")
            decision = None
        results.append(
            dict(
                name=n,
                tokens=d,
                losses=y,
                held=held,
                predicted=predicted,
                initial=initial[n],
                decision=decision,
                target=decision.target if decision else predicted,
            )
        )

    print(
        f"budget {budget:.6g} tokens; fit on points <= {cutoff:.6g} tokens "
        f"({args.fit_fraction:g}); {len(trajectories)} trajectory file(s)"
        + (
            "; subset footing: each run's change from its own L_init, on their mean L_init "
            "(targets carry over as changes)"
            if reference is not None
            else ""
        )
    )
    head = (
        f"{'domain':<16}{'fit/held':>9}{'E':>9}{'B':>11}{'beta':>7}{'R2':>8}"
        f"{'initial':>9}{'pred@budget':>12}{'target':>9}{'MAE held':>10}{'final err':>10}"
    )
    print(head)
    for r in results:
        h = r["held"]
        init = f"{r['initial']:.4f}" if r["initial"] is not None else "?"
        mae = "-" if math.isnan(h.mae) else f"{h.mae:.2e}"
        final = "-" if math.isnan(h.final_error) else f"{h.final_error:.2e}"
        print(
            f"{r['name']:<16}{h.fit.num_points:>4}/{h.tokens.size:<4}{h.fit.E:>9.4f}"
            f"{h.fit.B:>11.4g}{h.fit.beta:>7.3f}{h.fit.r2:>8.4f}{init:>9}"
            f"{r['predicted']:>12.4f}{r['target']:>9.4f}{mae:>10}{final:>10}"
        )
    maes = [r["held"].mae for r in results if not math.isnan(r["held"].mae)]
    if maes:
        print(
            f"mean held-out absolute error {np.mean(maes):.3e} (paper: 2.4e-3 Reasoning, "
            f"1.84e-3 SystemStack)"
        )
    for r in results:
        if r["decision"] is not None and r["decision"].note:
            print(f"note: domain {r['name']!r}: {r['decision'].note}")
    if args.plot:
        _plot(args.plot, results, budget, cutoff)
        print(f"wrote {args.plot}")
    if errors:
        for e in errors:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        write_loss_file(
            args.output,
            names,
            [r["target"] for r in results],
            source="fit_target_loss",
            law="L(D) = E + B / D^beta",
            trajectories=list(args.trajectories),
            budget_tokens=budget,
            fit_fraction=args.fit_fraction,
            cutoff_tokens=cutoff,
            rising_domains=args.rising_domains,
            margin=args.margin,
            forgetting_tolerance=(
                None if args.forgetting_tolerance is None else str(args.forgetting_tolerance)
            ),
            rules={r["name"]: r["decision"].rule for r in results},
            **(
                {
                    "footing": trajectories[0].header["footing"],
                    "reference_initial": dict(zip(names, reference)),
                }
                if reference is not None
                else {}
            ),
            fits={
                r["name"]: dict(
                    E=r["held"].fit.E,
                    B=r["held"].fit.B,
                    beta=r["held"].fit.beta,
                    r2=r["held"].fit.r2,
                    huber_loss=r["held"].fit.huber_loss,
                    predicted=r["predicted"],
                    initial=r["initial"],
                    held_out_mae=None if math.isnan(r["held"].mae) else r["held"].mae,
                    held_out_points=int(r["held"].tokens.size),
                    rule_applied=bool(r["decision"].rule_applied),
                    rule=r["decision"].rule,
                )
                for r in results
            },
        )
        print(f"wrote {args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
