"""Which law predicts a static CPT proxy's later held-out losses best (no new runs).

For every regime folder given, fits each law of ``velocitune-fit-targets --law`` on the CPT
runs' first half (the tool's default fit fraction 0.5), pooled as the tool pools them (the
seeds' changes from their own ``L_init``) and per seed, and prints a markdown table: the mean
absolute error on the later evaluations (``held_out_error``'s metric) per law, domain and
seed, the mean over domains per corpus, ``auto``'s choice, and how far each law's prediction
at the full budget is from the loss the run reached (its last evaluation; pooled: the seeds'
mean on the common footing).

Runs whose header records their ``lr_schedule`` are fitted on it; older runs take
``--cpt-lr-schedule`` (default: steps as the clock, ``--constant-lr``). The summary's noise floor
is the MAE a perfect smooth law would still make on the later evaluations (their own
evaluation-to-evaluation noise); the extrapolation floor, per seed, the MAE an exactly right
law still makes when refitted on the window of copies of the curve with that run's own noise
(``--floor-draws``): a bar below it is out of reach of any law on runs this noisy.
``--plot-dir`` writes one PNG per law (a row per regime). With ``--base-lr-schedule``, each
folder's base run (``base/tb/velocitune_trajectory.jsonl``) gives every domain's annealing ``C``
and multi-power decay term (``velocitune-fit-targets --annealing-from``), printed first.

Each folder is the ``--out`` of one regime's ``benchmarks/compare_policies.py`` (its CPT runs
under ``runs/cpt/seed*/``). Example::

    python benchmarks/compare_policies.py --out /tmp/demo-real
    python benchmarks/target_laws.py /tmp/demo-real /tmp/d2-real \
        --cpt-lr-schedule constant:1e-3:1e-3:5:200 --base-lr-schedule cosine:2e-3:1e-4:80:800
"""

import argparse
import glob
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.core.errors import TooFewPointsError
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.schedule_laws import LrSchedule
from megatron_velocitune.laws.target_report import (
    LAWS,
    TargetFitConfig,
    fit_base_decay,
    fit_law,
    fit_target_losses,
)

#: The summary row of the best law per domain, chosen on the held-out points (a ceiling).
ORACLE = "best per domain (looks past the window)"


def _reached(report) -> Dict[str, float]:
    """Each domain's loss at the last evaluation (mean over the pooled runs at that point)."""
    out = {}
    for r in report.domains:
        last = r.tokens.max()
        out[r.name] = float(np.mean(r.losses[r.tokens == last]))
    return out


def _fit(paths: Sequence[str], cpt: Optional[LrSchedule], base_decay):
    runs = [read_trajectory(p) for p in paths]
    # Steps as the clock only for runs that record no schedule and were given none.
    constant = cpt is None and not all(r.header.get("lr_schedule") for r in runs)
    config = TargetFitConfig(
        law="auto", constant_lr=constant, lr_schedule=cpt, base_decay=base_decay
    )
    return fit_target_losses(paths, runs, config), config


def _extrapolation_floor(report, config: TargetFitConfig, draws: int, seed: int = 0) -> float:
    """The MAE after the window that even the right law makes, given the run's own noise.

    Per domain, the schedule-aware law that describes the whole curve best (least squares over
    every evaluation, the window's and the later ones) is taken as the truth and the spread of
    the points around it as the noise ``sigma``; ``draws`` times, the truth plus fresh Gaussian
    noise of that size is refitted on the window alone with the same law and scored on the later
    points, as the table scores the laws. The mean over draws and domains is what a law that
    is exactly right still misses by from half a run this noisy: a bar below it asks for a
    quieter proxy, not a better law. The noise is drawn independently per point; a real run's
    is correlated from one evaluation to the next, so the floor is if anything optimistic.
    """
    if draws <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    floors = []
    for dom in report.domains:
        x, y = dom.inputs, dom.losses
        if x is None:
            continue
        whole = {}
        for law in LAWS:
            if law == "chinchilla":
                continue
            try:
                whole[law] = fit_law(law, x, y, dom.initial, config, dom.name)
            except (TooFewPointsError, ValueError):
                continue
        if not whole:
            continue
        # Every fit saw the same points, so the highest R^2 is the least squared error.
        law = max(whole, key=lambda k: whole[k].r2)
        truth = whole[law].predict(x)
        sigma = float(np.std(y - truth))
        early = dom.tokens <= report.cutoff
        errors = []
        for _ in range(draws):
            noisy = truth + rng.normal(0.0, sigma, y.size)
            fit = fit_law(law, x.take(early), noisy[early], dom.initial, config, dom.name)
            errors.append(float(np.mean(np.abs(fit.predict(x.take(~early)) - noisy[~early]))))
        floors.append(float(np.mean(errors)))
    return float(np.mean(floors)) if floors else float("nan")


def _noise_floor(report) -> float:
    """The MAE a perfect smooth law would still make on the later evaluations: the curves' own
    evaluation-to-evaluation noise, ``sqrt(2/pi) * sigma`` with ``sigma`` from the second
    differences of each domain's held-out points (``Var(y[i-1] - 2 y[i] + y[i+1]) = 6 sigma^2``
    for a curve that is locally straight), the mean over domains.
    """
    floors = []
    for r in report.domains:
        late = r.tokens > report.cutoff
        y = r.losses[late][np.argsort(r.tokens[late], kind="stable")]
        if y.size >= 5:
            second = y[:-2] - 2.0 * y[1:-1] + y[2:]
            floors.append(math.sqrt(2.0 / math.pi) * float(np.std(second)) / math.sqrt(6.0))
    return float(np.mean(floors)) if floors else float("nan")


def _base(folder: str, names, schedule: Optional[LrSchedule], lines: List[str]):
    """The base run's annealing terms per domain (None without a schedule or a base run)."""
    path = os.path.join(folder, "base/tb/velocitune_trajectory.jsonl")
    if schedule is None or not os.path.exists(path):
        return None
    decay = fit_base_decay(path, read_trajectory(path), names, schedule)
    for name, b in decay.items():
        d = b.decay
        term = "-" if d is None else f"{d.B:.4g}, {d.C:.4g}, {d.beta:.3g}, {d.gamma:.3g}"
        bounds = "; ".join(
            f"{law}: {', '.join(f.at_bound)}" for law, f in b.fits.items() if f.at_bound
        )
        lines.append(
            f"| {os.path.basename(os.path.normpath(folder))} | {name} | {b.c:.4g} | {term} | "
            + " / ".join(f"{f.r2:.4f}" for f in b.fits.values())
            + f" | {bounds} |"
        )
    return decay


def plot_laws(regimes, out_dir: str) -> List[str]:
    """One PNG per law: a row per regime, a panel per domain, every seed's points and that
    seed's own fit of the law.

    Args:
        regimes: per regime, ``(name, per-seed reports, seed names)``.
        out_dir (str): the folder of the PNGs.

    Returns:
        List[str]: the files written (``target_laws_<law>.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_velocitune.core.files import save_figure

    cols = max(len(seeds[0].domains) for _, seeds, _ in regimes)
    written = []
    for law in LAWS:
        fig, axes = plt.subplots(
            len(regimes), cols, figsize=(4.0 * cols, 3.0 * len(regimes)), squeeze=False
        )
        for row, (corpus, seeds, seed_names) in zip(axes, regimes):
            for i, ax in enumerate(row):
                if i >= len(seeds[0].domains):
                    ax.axis("off")
                    continue
                maes = []
                for k, (report, seed) in enumerate(zip(seeds, seed_names)):
                    r = report.domains[i]
                    early, color = r.tokens <= report.cutoff, f"C{k}"
                    ax.plot(r.tokens[early], r.losses[early], "o", ms=2, color=color)
                    ax.plot(r.tokens[~early], r.losses[~early], "s", ms=2, mfc="none", color=color)
                    res = r.laws[law]
                    drawn = report.law_curve(res, report.domains[0].tokens.min(), geometric=False)
                    ax.plot(*drawn, "-", lw=1.1, color=color, label=seed)
                    maes.append(res.mae)
                ax.axvline(seeds[0].cutoff, color="grey", lw=0.8, ls=":")
                ax.set_title(
                    f"{corpus}: {seeds[0].domains[i].name}, MAE {np.nanmean(maes):.3f}", fontsize=9
                )
            row[0].set_ylabel("held-out loss")
        axes[0][0].legend(fontsize=7, title="seed's own fit", title_fontsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("tokens (dotted: end of the fit window)")
        fig.suptitle(f"{law} law, fitted on each seed's first half (o), held out (□)", fontsize=11)
        fig.tight_layout()
        path = os.path.join(out_dir, f"target_laws_{law}.png")
        save_figure(fig, path, dpi=70)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2e}"


def run(
    regimes: Sequence[str],
    cpt: Optional[LrSchedule] = None,
    base_schedule: Optional[LrSchedule] = None,
    plot_dir: Optional[str] = None,
    seeds_wanted: Optional[Sequence[int]] = None,
    floor_draws: int = 20,
) -> str:
    """The markdown table of every regime.

    Args:
        regimes (Sequence[str]): the regime folders.
        cpt (Optional[LrSchedule]): the CPT runs' schedule (None: the runs' header's, else
            steps as the clock).
        base_schedule (Optional[LrSchedule]): the base runs' schedule (None: no base fits).
        plot_dir (Optional[str]): write one PNG per law there (:func:`plot_laws`).
        seeds_wanted (Optional[Sequence[int]]): the CPT seeds to read (None: every one).
        floor_draws (int): noisy copies per domain of :func:`_extrapolation_floor` (0: none,
            the column is ``-``).

    Returns:
        str: the markdown.
    """
    lines: List[str] = []
    base_lines: List[str] = [
        "| corpus | domain | base C | multi-power B, C, beta, gamma | R2 annealing / "
        "multi-power | at bound |",
        "|---|---|---|---|---|---|",
    ]
    summary: List[str] = [
        "| corpus | law | mean MAE pooled | mean MAE per seed | each seed | mean "
        "abs(pred@budget - reached) pooled | noise floor per seed | extrapolation floor "
        "each seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plotted = []
    for folder in regimes:
        paths = sorted(
            p
            for p in glob.glob(
                os.path.join(folder, "runs/cpt/seed*/tb/velocitune_trajectory.jsonl")
            )
            if seeds_wanted is None or int(p.split("/")[-3][len("seed") :]) in seeds_wanted
        )
        if not paths:
            print(f"{folder}: no CPT runs, skipped", file=sys.stderr)
            continue
        corpus = os.path.basename(os.path.normpath(folder))
        names = read_trajectory(paths[0]).domains
        decay = _base(folder, names, base_schedule, base_lines)
        pooled, _ = _fit(paths, cpt, decay)
        fitted = [_fit([p], cpt, decay) for p in paths]
        seeds = [report for report, _ in fitted]
        seed_names = [p.split("/")[-3] for p in paths]
        plotted.append((corpus, seeds, seed_names))
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
                means[label][1].append(seed_maes)
                means[label][2].append(diff)
        lines.append("")
        floor = float(np.mean([_noise_floor(s) for s in seeds]))
        extrapolation = [_extrapolation_floor(r, c, floor_draws) for r, c in fitted]
        # A ceiling, not a method: per domain the law that did best after the window (by the
        # seeds' mean), with its pooled and per-seed errors.
        best = [
            min(LAWS, key=lambda law: float(np.nanmean(means[law][1][i])))
            for i in range(len(pooled.domains))
        ]
        means[ORACLE] = tuple([means[law][k][i] for i, law in enumerate(best)] for k in range(3))
        for label, (mp, ms, md) in means.items():
            each = np.nanmean(np.asarray(ms, np.float64), axis=0)  # per seed, over domains
            summary.append(
                f"| {corpus} | {label} | {np.mean(mp):.2e} | {np.mean(each):.2e} | "
                + " / ".join(f"{v:.2e}" for v in each)
                + f" | {np.mean(md):.3f} | {floor:.1e} | "
                + " / ".join(_fmt(v) for v in extrapolation)
                + " |"
            )
    if plot_dir and plotted:
        for path in plot_laws(plotted, plot_dir):
            print(f"wrote {path}", file=sys.stderr)
    base = base_lines + [""] if len(base_lines) > 2 else []
    return "\n".join(summary + [""] + base + lines)


def main(argv=None) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("regimes", nargs="+", help="regime folders (each a compare_policies.py --out)")
    p.add_argument("--cpt-lr-schedule", default=None, help="the CPT runs' schedule (spec)")
    p.add_argument("--base-lr-schedule", default=None, help="the base runs' schedule (spec)")
    p.add_argument("--plot-dir", default=None, help="write one PNG per law here (a row per regime)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="CPT seeds (default: all)")
    p.add_argument(
        "--floor-draws",
        type=int,
        default=20,
        help="noisy copies per domain and seed of the extrapolation floor (default 20; 0: none)",
    )
    args = p.parse_args(argv)
    if args.floor_draws < 0:
        p.error(f"--floor-draws {args.floor_draws} must be >= 0")
    cpt = args.cpt_lr_schedule and LrSchedule.from_spec(args.cpt_lr_schedule, "--cpt-lr-schedule")
    base = args.base_lr_schedule and LrSchedule.from_spec(
        args.base_lr_schedule, "--base-lr-schedule"
    )
    print(run(args.regimes, cpt or None, base or None, args.plot_dir, args.seeds, args.floor_draws))
    return 0


if __name__ == "__main__":
    sys.exit(main())
