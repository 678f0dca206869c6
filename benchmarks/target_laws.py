"""Which law predicts a static CPT proxy's later held-out losses best (no new runs).

For every regime folder given, fits each law of ``velocitune-fit-targets --law`` on the CPT
runs' first half (the tool's default fit fraction 0.5), pooled as the tool pools them (the
seeds' changes from their own ``L_init``) and per seed, and prints a markdown table: the mean
absolute error on the later evaluations (``held_out_error``'s metric) per law, domain and
seed, the mean over domains per corpus, ``auto``'s choice, and how far each law's prediction
at the full budget is from the loss the run reached (its last evaluation; pooled: the seeds'
mean on the common footing).

The CPT runs here predate the ``lr`` field and ran at a constant LR after a 5-step warm-up, so
the schedule-aware laws take steps as the clock (``--constant-lr``: ``S1`` = steps, ``S2 = 0``;
``C`` is then fixed at 0 and the annealing law is the Chinchilla term in steps).

Each folder is the ``--out`` of one regime's ``benchmarks/compare_policies.py`` (its CPT runs
under ``runs/cpt/seed*/``). Example::

    python benchmarks/compare_policies.py --out /tmp/demo-real
    python benchmarks/target_laws.py /tmp/demo-real /tmp/d2-real
"""

import argparse
import glob
import math
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.target_report import LAWS, TargetFitConfig, fit_target_losses


def _reached(report) -> Dict[str, float]:
    """Each domain's loss at the last evaluation (mean over the pooled runs at that point)."""
    out = {}
    for r in report.domains:
        last = r.tokens.max()
        out[r.name] = float(np.mean(r.losses[r.tokens == last]))
    return out


def _fit(paths: Sequence[str]):
    runs = [read_trajectory(p) for p in paths]
    config = TargetFitConfig(law="auto", constant_lr=True)
    return fit_target_losses(paths, runs, config)


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2e}"


def run(regimes: Sequence[str]) -> str:
    """The markdown table of every regime."""
    lines: List[str] = []
    summary: List[str] = [
        "| corpus | law | mean MAE pooled | mean MAE per seed | mean abs(pred@budget - reached) "
        "pooled |",
        "|---|---|---|---|---|",
    ]
    for folder in regimes:
        paths = sorted(
            glob.glob(os.path.join(folder, "runs/cpt/seed*/tb/velocitune_trajectory.jsonl"))
        )
        if not paths:
            print(f"{folder}: no CPT runs, skipped", file=sys.stderr)
            continue
        corpus = os.path.basename(os.path.normpath(folder))
        pooled = _fit(paths)
        seeds = [_fit([p]) for p in paths]
        seed_names = [p.split("/")[-3] for p in paths]
        reached = _reached(pooled)
        lines += [
            f"### {corpus}",
            "",
            "| domain | law | MAE pooled | "
            + " | ".join(f"MAE {s}" for s in seed_names)
            + " | pred@budget pooled | reached | abs diff | at bound (pooled) |",
            "|---|---|---|" + "---|" * len(seeds) + "---|---|---|---|",
        ]
        means = {law: ([], [], []) for law in LAWS + ("auto",)}
        for i, dom in enumerate(pooled.domains):
            rows = [(law, law) for law in LAWS] + [("auto", dom.law)]
            for label, law in rows:
                res = dom.laws[law]
                seed_maes = []
                for s in seeds:
                    sd = s.domains[i]
                    seed_maes.append(sd.laws[sd.law if label == "auto" else law].mae)
                diff = abs(res.predicted - reached[dom.name])
                name = f"auto ({law})" if label == "auto" else law
                lines.append(
                    f"| {dom.name} | {name} | {_fmt(res.mae)} | "
                    + " | ".join(_fmt(v) for v in seed_maes)
                    + f" | {res.predicted:.4f} | {reached[dom.name]:.4f} | {diff:.3f} | "
                    + (", ".join(res.at_bound) or "")
                    + " |"
                )
                means[label][0].append(res.mae)
                means[label][1].append(float(np.nanmean(seed_maes)))
                means[label][2].append(diff)
        lines.append("")
        for label, (mp, ms, md) in means.items():
            summary.append(
                f"| {corpus} | {label} | {np.mean(mp):.2e} | {np.mean(ms):.2e} "
                f"| {np.mean(md):.3f} |"
            )
    return "\n".join(summary + [""] + lines)


def main(argv=None) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("regimes", nargs="+", help="regime folders (each a compare_policies.py --out)")
    args = p.parse_args(argv)
    print(run(args.regimes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
