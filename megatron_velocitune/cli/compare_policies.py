"""velocitune-compare: Velocitune against the static blends and baselines, on your data and base.

Every method continues pre-training the same base checkpoint (``--load``) on the same
``--data-path`` domains for the same ``--train-iters`` and seeds, through the training entry
(``megatron_velocitune.training.pretrain``, the flags after ``--`` passed to it unchanged):

- ``cpt``: the static blend (the ``--data-path`` weights, else token-proportional), evaluating
  every domain every ``--cpt-eval-interval`` iterations: the baseline and the proxy run the
  targets are fitted on (its seeds pooled, the first ``--fit-fraction`` of the budget);
- ``default``: Velocitune exactly as shipped, what a user gets without choosing anything: the
  entry's defaults (no ``--velocitune-rising-rule``, ``--velocitune-min-weight`` or
  ``--velocitune-min-headroom``; the run measures its own initial loss at iteration 0) on
  targets ``velocitune-fit-targets`` fits with its own default rule (``targets-default.json``);
- ``vt-paper`` (or ``paper``), where the entry has ``--velocitune-policy paper``: the paper's
  Algorithm 1 as written, on the same targets and the same entry defaults as ``default``;
- ``default-<ablation>``: ``default`` with one guard changed: ``default-nobrake`` (no runaway
  guard), ``default-nonoise`` (no noise floor), ``default-cap`` and ``default-anchored`` (the
  other runaway guards of ``--velocitune-runaway-guard`` in the brake's place);
- ``default-law-<law>`` (``default-law-auto``, ``default-law-cpt``, ...): ``default`` on
  targets ``velocitune-fit-targets --law <law>`` fits (``targets-law-<law>.json``, with
  ``--annealing-from``/``--base-lr-schedule``/``--lr-schedule`` when given); its table of fit
  errors fits each seed alone;
- ``vt-<rule>`` (``vt-budget``, ``vt-tolerance``, ``vt-hold-initial``) and ``vt-<rule>-floor``:
  Velocitune (``--velocitune-policy velocity``) with that rising-domain rule (the targets fitted
  with the same rule), ``-floor`` adding ``--velocitune-min-headroom``;
- ``dbl`` (Sheared LLaMA's DBL, on the budget targets), ``ratio`` (without target loss);
- ``reweighted``: the time-averaged blend of ``--reweight-from`` as a fixed blend;
- ``frontier-<g>``: the static frontier, the CPT blend with the replay domain's share set to
  ``g`` (``--frontier``), the other domains splitting the rest in their CPT ratio.

The methods other than ``default`` and ``vt-paper`` start from the initial loss the CPT run of
the same seed measured, and floor the weights at ``--min-weight``.

It prints one table (final held-out loss per domain, mean ± std over seeds, ``*`` where a
difference from CPT exceeds the seed spread, each method's collapsed seeds, and each method's
place against the frontier), then every seed's point (replay loss, mean new-domain loss) with
its distance from that seed's CPT run, naming each collapsed run: one that ends behind its
seed's CPT run by more than 0.01 nats on both axes. It writes the tables to ``OUT/table.md``
and ``table.json``, and plots the Pareto plane (x: the replay domain's final loss, y: the mean
new-domain final loss; seed means with error bars and each seed's point; the frontier as a
line) and the weight trajectories. Finished runs are kept (``OUT/runs/<method>/seed<N>/
result.json``): a killed or extended comparison resumes where it stopped, and several
workers may share one ``--out`` (runs are claimed, never run twice).

Example::

    velocitune-compare --out cmp --data-path data/general data/man data/code \\
        --load base_ckpt --replay-domain general --train-iters 200 --seeds 1 2 3 -- \\
        --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128 \\
        --micro-batch-size 8 --global-batch-size 32 --lr 1e-3 --lr-decay-style constant \\
        --lr-warmup-iters 5 --tokenizer-model data/tokenizer.json --split 90,10,0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from megatron_velocitune.cli._common import run_tool
from megatron_velocitune.comparison.methods import (
    DEFAULT_FRONTIER,
    DEFAULT_METHODS,
    QUICK_FRONTIER,
    QUICK_METHODS,
    select_methods,
)
from megatron_velocitune.comparison.report import pareto_plot, report, weight_plot
from megatron_velocitune.comparison.runner import finished, run_all
from megatron_velocitune.comparison.setting import PROG, check_setting, setting_from_args
from megatron_velocitune.comparison.targets import fit_all
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE


def build_parser() -> argparse.ArgumentParser:
    """The command line (the entry's own flags go after ``--``)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} --out DIR --data-path ... --load BASE --replay-domain NAME "
        "--train-iters N [options] -- ENTRY_FLAGS...",
        description="Velocitune (as shipped, and with each rising-domain rule), DBL, the "
        "ablations and the static "
        "frontier, continued from one base on your domains at equal tokens over seeds: one "
        "table, a Pareto plot and the weight trajectories. Flags after '--' go to every run of "
        "the training entry (model, optimizer, tokenizer, --split).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Example::", 1)[1],
    )
    p.add_argument("--out", required=True, help="Output folder (finished runs in it are kept).")
    p.add_argument(
        "--data-path",
        nargs="+",
        required=True,
        help="The domains, Megatron-style ([weight] prefix ...); without weights "
        "the CPT blend is token-proportional.",
    )
    p.add_argument("--load", required=True, help="The base checkpoint every method continues.")
    p.add_argument(
        "--replay-domain",
        required=True,
        help="The replay (general) domain, by name (a prefix's base name).",
    )
    p.add_argument(
        "--train-iters",
        type=int,
        required=True,
        help="The continual pre-training budget in iterations.",
    )
    p.add_argument(
        "--update-interval",
        type=int,
        default=10,
        help="m of the dynamic policies (default: %(default)s).",
    )
    p.add_argument(
        "--cpt-eval-interval",
        type=int,
        default=5,
        help="CPT's evaluation interval, the target fit's points (default: 5).",
    )
    p.add_argument(
        "--eval-iters",
        type=int,
        default=4,
        help="--velocitune-eval-iters of every run (default: %(default)s).",
    )
    p.add_argument(
        "--min-weight",
        type=float,
        default=0.01,
        help="--velocitune-min-weight of the dynamic policies (default: 0.01).",
    )
    p.add_argument(
        "--fit-fraction",
        type=float,
        default=0.5,
        help="The targets' fit window, a fraction of the budget (default: 0.5).",
    )
    p.add_argument(
        "--annealing-from",
        metavar="BASE_TRAJECTORY",
        help="The base model's trajectory, for the default-law-<law> targets "
        "(velocitune-fit-targets --annealing-from: the annealing coefficient of a "
        "schedule-aware law from the base's own decaying-LR curve).",
    )
    p.add_argument(
        "--base-lr-schedule",
        metavar="STYLE:MAX_LR:MIN_LR:WARMUP:DECAY",
        help="--annealing-from's schedule where its header has none "
        "(velocitune-fit-targets --base-lr-schedule).",
    )
    p.add_argument(
        "--lr-schedule",
        metavar="STYLE:MAX_LR:MIN_LR:WARMUP:DECAY",
        help="The CPT runs' schedule where their trajectory header has none (runs written "
        "before it did), for the default-law-<law> targets (velocitune-fit-targets "
        "--lr-schedule).",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"Methods (default: {' '.join(DEFAULT_METHODS)}); cpt always runs. Also: "
        "vt-paper (the entry's --velocitune-policy paper, where it has it), vt-<rule>[-floor].",
    )
    p.add_argument(
        "--frontier",
        type=float,
        nargs="*",
        default=None,
        help=f"Replay shares of the static frontier (default: "
        f"{' '.join(map(str, DEFAULT_FRONTIER))}; none: no frontier).",
    )
    p.add_argument(
        "--tolerance",
        default="5%",
        help="The vt-tolerance method's forgetting budget, nats or %% (default: %(default)s).",
    )
    p.add_argument(
        "--min-headroom",
        type=float,
        default=0.1,
        help="The -floor methods' --velocitune-min-headroom (default: 0.1 nats).",
    )
    p.add_argument(
        "--reweight-from",
        default=f"vt-{DEFAULT_RISING_RULE}",
        help="The Velocitune method whose time-averaged blend 'reweighted' runs "
        "(default: %(default)s).",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="Dataset seeds (default: 1 2 3)."
    )
    p.add_argument("--nproc", type=int, default=2, help="Ranks per run (default: 2).")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"The mechanics only: the first seed, methods {' '.join(QUICK_METHODS)}"
        f", frontier {' '.join(map(str, QUICK_FRONTIER))}.",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="Interpreter with this package and megatron-core (default: this one).",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: the tables from the runs finished under --out.",
    )
    return p


def split_argv(argv: Sequence[str]) -> tuple:
    """(the tool's flags, the entry's flags after ``--``)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def run(argv: Sequence[str]) -> int:
    """Run (or resume) the comparison and print the tables."""
    own, entry = split_argv(argv)
    args = build_parser().parse_args(own)
    args.entry_args = entry
    if not entry:
        raise ToolError(
            "no entry flags after '--' (the model, optimizer, tokenizer and "
            "--split every run trains with)"
        )
    seeds = args.seeds[:1] if args.quick else args.seeds
    if len(set(seeds)) != len(seeds):
        raise ToolError(f"--seeds {seeds}: repeated seed")
    keys = list(args.methods or (QUICK_METHODS if args.quick else DEFAULT_METHODS))
    shares = (
        args.frontier
        if args.frontier is not None
        else (QUICK_FRONTIER if args.quick else DEFAULT_FRONTIER)
    )
    methods = select_methods(keys, shares, args.reweight_from)
    s = setting_from_args(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    check_setting(out, s)
    t0 = time.time()
    if args.report_only:
        results = finished(out, methods, seeds)
        if not results.get("cpt"):
            raise ToolError(f"{out}: no finished CPT run yet")
        done = [m for m in methods if results.get(m.key)]
        fits = fit_all(out, args.python, results["cpt"], s, done)
    else:
        results, fits = run_all(out, args.python, s, methods, seeds, args.reweight_from)
    done = [m for m in methods if results.get(m.key)]
    text = report(out, s, done, results, fits, seeds)
    pareto_plot(out, s, done, results, os.path.join(out, "pareto.png"))
    weight_plot(out, args.python, done, results, os.path.join(out, "weights_by_method.png"))
    print(text)
    print(
        f"\nwrote {out}/table.md, table.json, pareto.png, weights_by_method.png; this call "
        f"took {time.time() - t0:.0f} s"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    return run_tool(PROG, lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
