"""The comparison's report: the tables (``table.md``, ``table.json``) and the plots.

Built from the finished runs' results: each method's final losses against CPT's (seed spread),
each seed's point of the Pareto plane against its seed's CPT run (collapsed runs named), each
method's place against the static frontier, and the target fits.
"""

import os
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.comparison.methods import DEFAULT_FIT, Method, fit_law
from megatron_velocitune.comparison.runs import run_command
from megatron_velocitune.comparison.setting import Setting
from megatron_velocitune.core.files import write_json
from megatron_velocitune.laws.comparison import (
    COLLAPSE_TOLERANCE,
    STABLE_TOLERANCE,
    MethodRuns,
    ParetoPoint,
    SeedPoint,
    dominated_by,
    find_collapses,
    frontier_margin,
    frontier_spread,
    mean_std,
    pareto_efficient,
    parse_loop_time,
    render_mae_table,
    render_seed_table,
    render_table,
    seed_points,
    summarise_method,
)

__all__ = ["labels_of", "pareto_plot", "pareto_points", "report", "run_points", "weight_plot"]


#: The phased blends' colour in the Pareto plot.
PHASED_COLOR = "tab:purple"


def _cpu_ms(result: dict) -> float:
    """The run's training-loop CPU ms/iteration (last rank), from its log; nan if absent."""
    path = os.path.join(os.path.dirname(os.path.dirname(result["trajectory"])), "log.txt")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            found = parse_loop_time(f.read())
    except OSError:
        return float("nan")
    return float("nan") if found is None else found[3]


def pareto_points(s: Setting, rows: Dict[str, object]) -> Dict[str, ParetoPoint]:
    """Each method's (replay loss, mean new-domain loss) point."""
    return {k: ParetoPoint(k, r.per_domain[s.replay], r.mean_new) for k, r in rows.items()}


def labels_of(s: Setting, methods: List[Method], results: Dict[str, List[dict]]) -> Dict[str, str]:
    """Each method's row name (the reweighted one names the run it averaged)."""
    source = next((r.get("reweighted_from", "?") for r in results.get("reweighted", [])), "?")
    return {m.key: m.label(s.tolerance, s.min_headroom, source) for m in methods}


def run_points(s: Setting, results: Dict[str, List[dict]]) -> Dict[str, List[SeedPoint]]:
    """Each method's runs as points of the Pareto plane, one per seed."""
    return {
        k: seed_points(k, [r["seed"] for r in rs], [r["final_loss"] for r in rs], [s.replay])
        for k, rs in results.items()
        if rs
    }


def report(
    out: str,
    s: Setting,
    methods: List[Method],
    results: Dict[str, List[dict]],
    fits: Dict[str, dict],
    seeds: Sequence[int],
) -> str:
    """The tables as Markdown (also written to ``table.md`` / ``table.json``)."""
    labels = labels_of(s, methods, results)
    keys = [m.key for m in methods if results.get(m.key)]
    by_key = {m.key: m for m in methods}

    def runs(key: str) -> MethodRuns:
        rs = results[key]
        return MethodRuns(
            labels[key],
            [r["final_loss"] for r in rs],
            [r["stable_at"] for r in rs],
            [r["wall_s"] for r in rs],
            by_key[key].dynamic,
            [_cpu_ms(r) for r in rs],
        )

    cpt = summarise_method(runs("cpt"), s.domains, [s.replay])
    ref = np.array([x.mean for x in cpt.per_domain])
    rows = {k: summarise_method(runs(k), s.domains, [s.replay], ref) for k in keys}
    plain = [r for k in keys if by_key[k].policy == "static" and k != "cpt" for r in results[k]]
    static_cpu = mean_std([_cpu_ms(r) for r in plain])
    per_seed = run_points(s, {k: results[k] for k in keys})
    others = [p for k in keys if k != "cpt" for p in per_seed[k]]
    collapses = find_collapses(others, per_seed["cpt"])
    table = render_table(
        [rows[k] for k in keys],
        s.domains,
        overhead_base=static_cpu if static_cpu.n else None,
        overhead_label="static (no periodic eval)" if static_cpu.n else "CPT",
        collapsed=[None if k == "cpt" else sum(c.method == k for c in collapses) for k in keys],
    )
    seed_table = render_seed_table([p for k in keys for p in per_seed[k]], per_seed["cpt"], labels)
    collapse_lines = [f"- {c.line()}" for c in collapses] + ([""] if collapses else [])
    collapse_lines.append(
        f"{len(collapses)} of {len(others)} runs collapsed (ended behind their seed's CPT run by "
        f"more than {COLLAPSE_TOLERANCE} nats on both axes)."
    )
    points = pareto_points(s, rows)
    frontier = [points[k] for k in keys if k == "cpt" or by_key[k].share is not None]
    cpt_gain = float(np.mean([ref[i] for i in range(len(s.domains)) if i != s.replay]))
    base_new = _base_new_loss(s, results["cpt"])
    pareto = [
        "| method | replay loss | mean new loss | new-domain gain vs CPT's | "
        "vs frontier line (nats, + = below it) | dominated by (beyond spread) |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys:
        p = points[k]
        gain = base_new - p.new.mean
        share = gain / (base_new - cpt_gain) if base_new != cpt_gain else float("nan")
        on_front = by_key[k].share is not None or k == "cpt"
        margin = None if on_front else _margin_cell(p, frontier)
        dom = None if on_front else dominated_by(p, frontier)
        pareto.append(
            f"| {labels[k]} | {p.replay.fmt()} | {p.new.fmt()} | {gain:+.4f} ({share:.0%}) | "
            f"{margin or '-'} | {'-' if dom is None else labels[dom]} |"
        )
    phased = [points[k] for k in keys if by_key[k].phase is not None]
    phased_lines = _phased_lines(phased, frontier, [points[k] for k in keys], labels)
    lines = [
        f"## Policy comparison: {len(seeds)} seed(s) {list(seeds)}, budget {s.train_iters} "
        f"iterations x {s.global_batch_size} x {s.seq_length} = {s.budget_tokens:,} tokens",
        "",
        f"Domains {s.domains} (replay: `{s.replay_domain}`), CPT blend "
        + ", ".join(f"{d} {w:.4f}" for d, w in zip(s.domains, s.weights))
        + f"; base `{s.load}`; dynamic policies update every {s.update_interval} iterations "
        f"(floor {s.min_weight}; the shipped-defaults runs: the entry's defaults, their own "
        f"initial loss); CPT evaluates every {s.cpt_eval_interval} for the target fit.",
        "",
        "Final held-out loss per domain (nats, full held-out sets), mean ± std over seeds. `*`: "
        "differs from CPT by more than the seed spread (|mean difference| > std + std_CPT). "
        f"Stable at: the iteration of the last update that moved any weight by more than "
        f"{STABLE_TOLERANCE}. Collapsed seeds: runs that ended behind the same seed's CPT run "
        f"by more than {COLLAPSE_TOLERANCE} nats on both the replay loss and the mean new-domain "
        f"loss.",
        "",
        table,
        "",
        "### Each seed",
        "",
        "Each run's point: the replay domain's final loss and the mean new-domain final loss, "
        "each against the CPT run of the same seed (+ = behind it).",
        "",
        seed_table,
        "",
        *collapse_lines,
        "",
        "### Against the static frontier",
        "",
        f"The base model's mean new-domain loss is {base_new:.4f}; gain = base - final (share "
        "of CPT's gain). Frontier: CPT and the `static, replay g` rows; the line joins them by "
        "replay loss. `*`: the margin exceeds the seed spread (the point's new-domain std, the "
        "line's there, and the point's replay std times the line's slope).",
        "",
        "\n".join(pareto),
        "",
        *phased_lines,
        "### Targets",
        "",
    ]
    for rule, fit in sorted(fits.items()):
        name = f"{rule} (the fit tool's default rule)" if rule == DEFAULT_FIT else rule
        lines.append(
            f"- `{name}`: "
            + ", ".join(
                f"{d} {fit['losses'][d]:.4f} ("
                + (f"{fit['laws'][d]} law, " if d in fit.get("laws", {}) else "")
                + f"{fit['rules'].get(d, '?')}; predicted "
                f"{fit['predicted'][d]:.4f})"
                for d in s.domains
            )
        )
    if fits:
        first = "budget" if "budget" in fits else next(iter(fits))
        for name in dict.fromkeys([first, *(n for n in fits if fit_law(n))]):
            fit = fits[name]
            which = f" of the `{name}` targets, each seed fitted alone" if fit_law(name) else ""
            lines += [
                "",
                f"Target-fit held-out error{which} (CPT runs; fitted up to "
                f"{fit['cutoff_tokens']:,.0f} tokens, spanning {min(fit['fit_span']):.1f}x; "
                "mean absolute error on the later evaluations):",
                "",
                render_mae_table(s.domains, fit["per_seed"], fit["pooled"]),
            ]
    text = "\n".join(lines)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    write_json(
        os.path.join(out, "table.json"),
        {
            "setting": asdict(s),
            "seeds": list(seeds),
            "labels": labels,
            "rows": {k: asdict(r) for k, r in rows.items()},
            "pareto": {k: asdict(p) for k, p in points.items()},
            "per_seed": {
                k: [
                    {
                        **asdict(p),
                        "collapsed": any(c.method == k and c.seed == p.seed for c in collapses),
                    }
                    for p in ps
                ]
                for k, ps in per_seed.items()
            },
            "collapsed": [asdict(c) for c in collapses],
            "collapse_tolerance": COLLAPSE_TOLERANCE,
            "base_new_loss": base_new,
            "fits": {k: {x: v for x, v in f.items() if x != "per_seed"} for k, f in fits.items()},
            "runs": results,
        },
        allow_nan=True,  # a method without a value (NaN) stays readable by json.load
    )
    return text


def _margin_cell(point: ParetoPoint, frontier: Sequence[ParetoPoint]) -> Optional[str]:
    """``+0.0123`` (``*`` beyond the seed spread), or None outside the frontier's range."""
    margin = frontier_margin(point, frontier)
    if margin is None:
        return None
    spread = frontier_spread(point, frontier)
    return f"{margin:+.4f}" + (" *" if spread is not None and abs(margin) > spread else "")


def _phased_lines(
    phased: List[ParetoPoint],
    frontier: List[ParetoPoint],
    points: List[ParetoPoint],
    labels: Dict[str, str],
) -> List[str]:
    """The phased blends against the constant frontier, and every other method against theirs."""
    if not phased:
        return []
    beyond = []
    for p in phased:
        margin, spread = frontier_margin(p, frontier), frontier_spread(p, frontier)
        if margin is not None and spread is not None and margin > spread:
            beyond.append(f"{labels[p.name]} ({margin:+.4f} > spread {spread:.4f})")
    efficient = pareto_efficient(phased)
    lines = [
        "### Phased blends",
        "",
        "The phased frontier (the phased blends no other phased blend beats on both axes): "
        + ", ".join(labels[p.name] for p in efficient)
        + ".",
        "",
        f"{len(beyond)} of {len(phased)} phased blends lie below the constant frontier beyond "
        "the seed spread" + (": " + "; ".join(beyond) + "." if beyond else "."),
        "",
    ]
    rows = []
    for p in points:
        if p in frontier or p in phased:
            continue
        cell = _margin_cell(p, efficient)
        dom = dominated_by(p, efficient)
        rows.append(
            f"| {labels[p.name]} | {cell or '- (outside its range)'} | "
            f"{'-' if dom is None else labels[dom]} |"
        )
    if rows:
        lines += [
            "| method | vs phased frontier line (+ = below it) | dominated by (beyond spread) |",
            "|---|---|---|",
            *rows,
            "",
        ]
    return lines


def _base_new_loss(s: Setting, cpt: List[dict]) -> float:
    """The base model's mean new-domain loss (the CPT runs' start losses)."""
    start = np.mean([r["start_loss"] for r in cpt], axis=0)
    return float(np.mean([start[i] for i in range(len(s.domains)) if i != s.replay]))


def pareto_plot(out: str, s: Setting, methods: List[Method], results, path: str) -> None:
    """The (replay loss, mean new-domain loss) plane: each method's seed mean with error bars
    and each seed's point (small markers, collapsed runs ringed), the static frontier as a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels_of(s, methods, results)
    new = [i for i in range(len(s.domains)) if i != s.replay]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    front, phased = [], []
    points = run_points(s, {m.key: results[m.key] for m in methods if results.get(m.key)})
    others = [p for k, ps in points.items() if k != "cpt" for p in ps]
    collapsed = {(c.method, c.seed) for c in find_collapses(others, points.get("cpt", []))}
    for m in methods:
        rs = results.get(m.key)
        if not rs:
            continue
        loss = np.asarray([r["final_loss"] for r in rs], np.float64)
        x, y = mean_std(loss[:, s.replay]), mean_std(loss[:, new].mean(axis=1))
        is_front = m.key == "cpt" or m.share is not None
        if is_front:
            share = m.share if m.share is not None else s.weights[s.replay]
            front.append((x.mean, y.mean, share))
        if m.phase is not None:
            phased.append(ParetoPoint(m.key, x, y))
        marker = "s" if is_front else "^" if m.phase is not None else "o"
        err = dict(xerr=0 if np.isnan(x.std) else x.std, yerr=0 if np.isnan(y.std) else y.std)
        bars = ax.errorbar(
            x.mean,
            y.mean,
            fmt=marker,
            ms=5 if is_front or m.phase is not None else 7,
            capsize=3,
            color=(
                "gray"
                if is_front and m.key != "cpt"
                else PHASED_COLOR
                if m.phase is not None
                else None
            ),
            label=None if (is_front and m.key != "cpt") or m.phase is not None else labels[m.key],
            **err,
        )
        color = bars.lines[0].get_color()
        seeds = points[m.key]
        ax.scatter(
            [p.replay for p in seeds],
            [p.new for p in seeds],
            s=12,
            marker=marker,
            color=color,
            alpha=0.45,
            linewidths=0,
        )
        ringed = [p for p in seeds if (p.method, p.seed) in collapsed]
        if ringed:
            ax.scatter(
                [p.replay for p in ringed],
                [p.new for p in ringed],
                s=60,
                facecolors="none",
                edgecolors="red",
                linewidths=1,
            )
    if front:
        front.sort()
        ax.plot(
            [f[0] for f in front],
            [f[1] for f in front],
            "-",
            color="gray",
            lw=1,
            label="static frontier (replay share)",
        )
        for fx, fy, g in front:
            ax.annotate(
                f"{g:.2f}",
                (fx, fy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="gray",
            )
    if phased:
        best = pareto_efficient(phased)
        ax.plot(
            [p.replay.mean for p in best],
            [p.new.mean for p in best],
            "--",
            color=PHASED_COLOR,
            lw=1,
            marker="^",
            ms=4,
            label=f"phased blends ({len(phased)}; dashed: their frontier)",
        )
    ax.set_xlabel(f"replay domain `{s.replay_domain}`: final held-out loss")
    ax.set_ylabel("mean new-domain final held-out loss")
    ax.set_title("lower-left is better; seed mean ± std, small: each seed (red ring: collapsed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def weight_plot(out: str, python: str, methods: List[Method], results, path: str) -> None:
    """Weights, held-out loss and velocity over iterations for the dynamic methods, one seed."""
    keys = [m.key for m in methods if m.dynamic and results.get(m.key)]
    if not keys:
        return
    cmd = [
        python,
        "-m",
        "megatron_velocitune.cli.plot_weights",
        *[results[k][0]["trajectory"] for k in keys],
        "--labels",
        *keys,
        "--layout",
        "columns",
        "--output",
        path,
        "--title",
        f"seed {results[keys[0]][0]['seed']}: weights, held-out loss, velocity",
    ]
    run_command(cmd, os.path.join(out, "plot.log"))
