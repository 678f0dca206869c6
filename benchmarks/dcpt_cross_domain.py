"""The Cross-Domain D-CPT Law on real short CPU runs: each new domain left out in turn (issue 19).

It reads (and runs first, resumably, what is missing) the ratio runs of ``dcpt_law_runs.py``
on the same ``--out`` as ``compare_policies.py`` (replay-only setting): static continual
pre-training from the base at several replay shares ``g``, the new domains splitting ``1 - g``
in their token ratio, seed 1, every domain evaluated every ``--eval-interval`` iterations.

For each new domain ``h`` (``man``, ``pydocs``, ``code``):

  1. the Cross-Domain D-CPT Law is fitted on the *other* new domains' ratio runs
     (:func:`megatron_velocitune.laws.cross_domain_law.fit_cross_domain`), every domain's K read
     from the first ``--k-window`` of the budget of one ratio run (``--k-run-share``): that
     window is the short run a team would pay for, ``--k-window`` of one full run;
  2. ``h``'s loss is predicted from its K alone on every evaluation of every ratio run, and
     compared with (a) the standard D-CPT Law fitted on ``h``'s own ratio runs, each run left
     out in turn (the fair rival: it predicts runs it has not seen, but it needs ratio runs of
     ``h``), (b) the same law on all of ``h``'s runs (in-sample, a floor), (c) the cross-domain
     law without ``h``'s K (the training domains' mean K: what K adds);
  3. ``velocitune-fit-dcpt --cross-domain`` on the runs, one domain left out, to show the tool
     (its fit table, K's, predicted curves and blend).

The errors are in nats (predicted minus observed held-out loss); the table and the plot go to
``out/dcpt_cross_domain.md`` and ``out/dcpt_cross_domain.png``.

Usage::

    .venv/bin/python benchmarks/dcpt_cross_domain.py --out /tmp/cmp-ro   # after compare_policies
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_policies as cp  # noqa: E402
from dcpt_law_runs import ratio_runs  # noqa: E402 - the same cached ratio runs

from megatron_velocitune.laws.cross_domain_law import (  # noqa: E402
    CrossDomainFit,
    EarlyLosses,
    early_losses,
    fit_cross_domain,
    points_by_domain,
)
from megatron_velocitune.laws.dcpt_law import (  # noqa: E402
    DEFAULT_EPS,
    DcptFit,
    fit_domain,
    static_points,
)
from megatron_velocitune.laws.scaling_law import loss_points  # noqa: E402

#: The ratio runs of dcpt_law_runs.py (same shares, same run folders).
REPLAY_SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)
SETTING = "replay-only"
NEW_DOMAINS = [n for n in cp.DOMAINS if n != cp.REPLAY_DOMAIN]


def own_law(name: str, ratios: np.ndarray, points: list, runs: Sequence[int]) -> DcptFit:
    """The standard D-CPT Law of ``name`` fitted on the given ratio runs."""
    return fit_domain(name, ratios, points, runs, eps=DEFAULT_EPS)


def k_features(traj, names, initial, window) -> Dict[str, EarlyLosses]:
    """Every domain's (k1, k2) from the first ``window`` tokens of one run."""
    pts = loss_points(traj, names)
    return {n: early_losses(*pts.domain(n), initial[n], window) for n in names}


def errors(law: DcptFit, name: str, ratios: np.ndarray, points: list, runs=None) -> np.ndarray:
    """Predicted minus observed loss of ``name`` on every evaluation of the given runs."""
    j = cp.DOMAINS.index(name)
    runs = range(len(points)) if runs is None else runs
    return np.concatenate(
        [law.predict(points[i][name][0], ratios[i, j]) - points[i][name][1] for i in runs]
    )


def final_errors(law: DcptFit, name: str, ratios: np.ndarray, points: list) -> List[float]:
    """Predicted minus observed loss at each run's last evaluation."""
    j = cp.DOMAINS.index(name)
    out = []
    for i, p in enumerate(points):
        d, y = p[name]
        k = int(np.argmax(d))
        out.append(float(law.predict(d[k], ratios[i, j]) - y[k]))
    return out


def leave_domain_out(
    held: str, ratios: np.ndarray, points: list, early: Dict[str, EarlyLosses]
) -> dict:
    """Step 1-2 for one held-out domain: the cross-domain law and its rivals' errors."""
    train = [n for n in NEW_DOMAINS if n != held]
    law = fit_cross_domain(points_by_domain(train, ratios, points, early), eps=DEFAULT_EPS)
    k = law.coefficient(early[held])
    cross = law.domain_law(k)
    no_k = law.domain_law(float(np.mean(list(law.coefficients.values()))))
    own_all = own_law(held, ratios, points, range(len(points)))
    # The own-runs law, each run predicted from the others.
    loro, loro_final = [], []
    for i in range(len(points)):
        rest = [x for x in range(len(points)) if x != i]
        f = own_law(held, ratios, points, rest)
        loro.append(errors(f, held, ratios, points, [i]))
        loro_final.append(final_errors(f, held, ratios, points)[i])
    cross_err = errors(cross, held, ratios, points)
    return {
        "held": held,
        "train": train,
        "law": law,
        "K": k,
        "cross": cross,
        "own_all": own_all,
        "mae": {
            "cross": float(np.mean(np.abs(cross_err))),
            "no_k": float(np.mean(np.abs(errors(no_k, held, ratios, points)))),
            # The best any K could do: the shared shape with the offset F / K^mu chosen after
            # seeing the domain's losses (the median minimises the mean absolute error).
            "best_k": float(np.mean(np.abs(cross_err - np.median(cross_err)))),
            "own_loro": float(np.mean(np.abs(np.concatenate(loro)))),
            "own_all": float(np.mean(np.abs(errors(own_all, held, ratios, points)))),
        },
        "final": {
            "cross": final_errors(cross, held, ratios, points),
            "no_k": final_errors(no_k, held, ratios, points),
            "own_loro": loro_final,
            "own_all": final_errors(own_all, held, ratios, points),
        },
    }


def all_domains_fit(ratios: np.ndarray, points: list, early: Dict[str, EarlyLosses]) -> dict:
    """The cross-domain law fitted on all three new domains (nothing left out): can one set of
    shared parameters and one K per domain describe them at all?
    """
    law = fit_cross_domain(points_by_domain(NEW_DOMAINS, ratios, points, early), eps=DEFAULT_EPS)
    mae = {
        n: float(np.mean(np.abs(errors(law.domain_law(law.coefficients[n]), n, ratios, points))))
        for n in NEW_DOMAINS
    }
    return {"law": law, "mae": mae}


def plot(path: str, results: List[dict], ratios: np.ndarray, points: list, shares) -> None:
    """One panel per held-out domain: observed, cross-domain prediction, own-runs law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, res in zip(axes.flat, results):
        n = res["held"]
        j = cp.DOMAINS.index(n)
        for i, p in enumerate(points):
            d, y = p[n]
            c = colors[i % len(colors)]
            grid = np.geomspace(d.min(), d.max(), 100)
            ax.plot(d, y, "o", ms=2.5, color=c, label=f"g={shares[i]:.1f} (r={ratios[i, j]:.2f})")
            ax.plot(grid, res["cross"].predict(grid, ratios[i, j]), "-", lw=1.2, color=c)
            ax.plot(grid, res["own_all"].predict(grid, ratios[i, j]), ":", lw=1, color=c)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(
            f"{n} left out: K={res['K']:.3f} (fit on {', '.join(res['train'])})\n"
            f"solid cross-domain, dotted own runs; MAE {res['mae']['cross']:.3f} vs "
            f"{res['mae']['own_loro']:.3f} nats",
            fontsize=8,
        )
        ax.set_xlabel("tokens D")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(
    s, shares, runs, k_run, window_frac, interval, results, early, sens, tool_text, k_traj, every
) -> str:
    """The Markdown report."""
    budget = s.budget_tokens
    window = window_frac * budget
    lines = [
        f"## Cross-Domain D-CPT Law, each new domain left out: {len(shares)} ratio runs "
        f"(replay shares {', '.join(f'{g:.1f}' for g in shares)}), budget {s.cpt_iters} "
        f"iterations = {budget:,} tokens, seed {runs[0]['seed']}, evaluations every "
        f"{interval} iterations",
        "",
        f"K of every domain from the first {window:,.0f} tokens ({window_frac:g} of the budget, "
        f"{int(round(window_frac * s.cpt_iters))} iterations) of the g = {k_run:.2f} ratio run "
        f"({k_traj}): the short run costs {window_frac:.0%} of one full run, "
        f"{window_frac / len(shares):.0%} of the {len(shares)} ratio runs the standard law "
        "needs. k1 = the loss before training, k2 = its relative decline over the window:",
        "",
        _row(["domain", "k1 (initial)", "L(window)", "k2"]),
        _row(["---"] * 4),
    ]
    for n in NEW_DOMAINS:
        e = early[n]
        lines.append(_row([n, f"{e.k1:.4f}", f"{e.loss_at_window:.4f}", f"{e.k2:.4f}"]))
    lines += [
        "",
        "Mean absolute error in nats over every evaluation (after the warmup) of every ratio "
        "run of the left-out domain; 'cross-domain': fitted on the other two new domains, the "
        "left-out one predicted from its K alone (none of its losses seen but the window); "
        "'own runs, run left out': the standard D-CPT Law on the domain's own ratio runs, each "
        "run predicted from the other four; 'own runs, in-sample': fitted on all five; "
        "'cross-domain, mean K': the cross-domain law with the training domains' mean K "
        "instead of the domain's own; 'cross-domain, best K': the shared shape with the "
        "offset F / K^mu chosen after seeing the domain's losses (what the shared parameters "
        "allow, whatever K is):",
        "",
        _row(
            [
                "left out",
                "fit on",
                "K",
                "cross-domain",
                "own runs, run left out",
                "own runs, in-sample",
                "cross-domain, mean K",
                "cross-domain, best K",
            ]
        ),
        _row(["---"] * 8),
    ]
    for res in results:
        m = res["mae"]
        lines.append(
            _row(
                [
                    res["held"],
                    ", ".join(res["train"]),
                    f"{res['K']:.4f}",
                    f"{m['cross']:.4f}",
                    f"{m['own_loro']:.4f}",
                    f"{m['own_all']:.4f}",
                    f"{m['no_k']:.4f}",
                    f"{m['best_k']:.4f}",
                ]
            )
        )
    mean = {k: np.mean([r["mae"][k] for r in results]) for k in results[0]["mae"]}
    lines.append(
        _row(
            [
                "mean",
                "",
                "",
                f"{mean['cross']:.4f}",
                f"{mean['own_loro']:.4f}",
                f"{mean['own_all']:.4f}",
                f"{mean['no_k']:.4f}",
                f"{mean['best_k']:.4f}",
            ]
        )
    )
    lines += [
        "",
        "Predicted minus observed loss at each run's last evaluation (the budget), nats, "
        "cross-domain / own runs with that run left out:",
        "",
        _row(["left out", *(f"g={g:.1f}" for g in shares)]),
        _row(["---"] * (len(shares) + 1)),
    ]
    for res in results:
        f = res["final"]
        lines.append(
            _row(
                [
                    res["held"],
                    *(f"{a:+.3f} / {b:+.3f}" for a, b in zip(f["cross"], f["own_loro"])),
                ]
            )
        )
    lines += [
        "",
        "The shared fits (one per left-out domain; K = w1/k1 + w2*k2, only the w1:w2 balance "
        "is identified, F absorbs the scale):",
        "",
        _row(["left out", "E", "B", "eta", "beta", "C", "gamma", "F", "mu", "w1", "w2", "R2"]),
        _row(["---"] * 12),
    ]
    for res in results:
        f: CrossDomainFit = res["law"]
        lines.append(
            _row(
                [
                    res["held"],
                    f"{f.E:.4f}",
                    f"{f.B:.4g}",
                    f"{f.eta:.3f}",
                    f"{f.beta:.3f}",
                    f"{f.C:.4f}",
                    f"{f.gamma:.3f}",
                    f"{f.F:.4f}",
                    f"{f.mu:.3f}",
                    f"{f.w1:.4g}",
                    f"{f.w2:.4g}",
                    f"{f.r2:.4f}",
                ]
            )
        )
    f = every["law"]
    lines += [
        "",
        "All three new domains fitted together (nothing left out, in-sample): MAE "
        + ", ".join(f"{n} {v:.4f}" for n, v in every["mae"].items())
        + f" nats; F {f.F:.4f}, mu {f.mu:.3f}, w1 {f.w1:.4g}, w2 {f.w2:.4g}, K "
        + ", ".join(f"{n} {k:.4f}" for n, k in f.coefficients.items())
        + ".",
    ]
    if sens:
        lines += [
            "",
            "Sensitivity to the window (cross-domain MAE per left-out domain, nats): "
            + "; ".join(
                f"{w:g} of the budget: " + ", ".join(f"{n} {v:.4f}" for n, v in per.items())
                for w, per in sens.items()
            ),
        ]
    lines += [
        "",
        "`velocitune-fit-dcpt --cross-domain` on the same runs, "
        f"`{results[-1]['held']}` left out (its ratio runs are in the trajectories but not "
        "fitted; the tool scores them):",
        "",
        "```",
        tool_text.strip(),
        "```",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="dcpt_cross_domain.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="compare_policies.py output folder.")
    p.add_argument(
        "--replay-shares",
        type=float,
        nargs="+",
        default=list(REPLAY_SHARES),
        help="Replay shares of the ratio runs (default: %(default)s).",
    )
    p.add_argument(
        "--eval-interval",
        type=int,
        default=None,
        help="Evaluation interval of ratio runs not yet run (default: the CPT evaluation "
        "interval, so the first 5%% of a run holds two evaluations; runs already there are "
        "kept as they are).",
    )
    p.add_argument(
        "--k-window",
        type=float,
        default=0.05,
        help="Share of the budget K is read from (default: %(default)s).",
    )
    p.add_argument(
        "--sensitivity",
        type=float,
        nargs="*",
        default=[0.025],
        help="Other windows to report the cross-domain error for (default: %(default)s).",
    )
    p.add_argument(
        "--k-run-share",
        type=float,
        default=0.5,
        help="Replay share of the ratio run K is read from (default: %(default)s).",
    )
    p.add_argument(
        "--python",
        default=os.path.join(cp.REPO, ".venv", "bin", "python"),
        help="Interpreter with this package and megatron-core (default .venv).",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run (or resume) the ratio runs, leave each new domain out, print the report."""
    args = build_parser().parse_args(argv)
    s = replace(cp.Setting(), setting=SETTING)
    shares = sorted(set(args.replay_shares))
    if len(shares) < 3 or not all(0.0 < g < 1.0 for g in shares):
        raise SystemExit(f"--replay-shares {shares}: need 3 or more distinct shares in (0, 1)")
    if args.k_run_share not in shares:
        raise SystemExit(f"--k-run-share {args.k_run_share} is not one of {shares}")
    if not 0.0 < args.k_window < 1.0:
        raise SystemExit(f"--k-window {args.k_window} must be in (0, 1)")
    out, py, t0 = os.path.abspath(args.out), args.python, time.time()
    cp.check_setting(out, s)
    cpt = cp._result(out, "cpt", s.seeds[0])
    if cpt is None:
        raise SystemExit(
            f"{out}: no CPT run of seed {s.seeds[0]}: run benchmarks/compare_policies.py "
            f"--setting {SETTING} --out {out} first"
        )
    corpus = cp.prepare_corpus(out, py)
    init_file = cp.initial_loss_file(out, cpt)
    interval = args.eval_interval or s.cpt_eval_interval
    runs = ratio_runs(out, py, corpus, s, shares, s.seeds[0], interval, init_file)
    trajs = [cp._read_traj(r["trajectory"]) for r in runs]
    intervals = {t.header.get("update_interval") for t in trajs}
    ratios, points = [], []
    for t in trajs:
        blend, pts = static_points(t, cp.DOMAINS, s.warmup_tokens)
        ratios.append(blend)
        points.append(pts)
    ratios = np.array(ratios)
    k_index = shares.index(args.k_run_share)
    initial = dict(zip(cp.DOMAINS, trajs[k_index].header["initial_loss"]))
    budget = s.budget_tokens
    early = k_features(trajs[k_index], NEW_DOMAINS, initial, args.k_window * budget)
    results = [leave_domain_out(h, ratios, points, early) for h in NEW_DOMAINS]
    every = all_domains_fit(ratios, points, early)
    sens = {}
    for w in args.sensitivity:
        e = k_features(trajs[k_index], NEW_DOMAINS, initial, w * budget)
        sens[w] = {h: leave_domain_out(h, ratios, points, e)["mae"]["cross"] for h in NEW_DOMAINS}

    held = NEW_DOMAINS[-1]
    log = os.path.join(out, "dcpt_cross_domain_tool.txt")
    cp._run(
        [
            py,
            "tools/fit_dcpt_law.py",
            "--cross-domain",
            *[r["trajectory"] for r in runs],
            "--replay",
            cp.REPLAY_DOMAIN,
            "--short-run",
            runs[k_index]["trajectory"],
            "--new-domain",
            held,
            "--k-window",
            str(args.k_window),
            "--budget-tokens",
            str(budget),
            "--min-tokens",
            str(s.warmup_tokens),
            "--plot",
            os.path.join(out, "dcpt_cross_domain_tool.png"),
        ],
        log,
    )
    with open(log, encoding="utf-8") as f:
        tool_text = f.read()
    png = os.path.join(out, "dcpt_cross_domain.png")
    plot(png, results, ratios, points, shares)
    interval_used = intervals.pop() if len(intervals) == 1 else sorted(intervals)
    text = report(
        s,
        shares,
        runs,
        args.k_run_share,
        args.k_window,
        interval_used,
        results,
        early,
        sens,
        tool_text,
        os.path.relpath(runs[k_index]["trajectory"], out),
        every,
    )
    md = os.path.join(out, "dcpt_cross_domain.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    walls = ", ".join(f"g={g:.1f} {r['wall_s']:.0f} s" for g, r in zip(shares, runs))
    print(f"\nratio runs' wall: {walls}")
    print(f"wrote {md} and {png}; this call took {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
