"""The D-CPT Law on real short CPU runs, and its targets against the Chinchilla fit's (issue 11).

It shares the corpus, base model, budget and Velocitune runs of ``compare_policies.py`` (same
``--out``; what is missing there is run first, resumably):

  1. **ratio runs**: static continual pre-training from the base at several replay shares
     ``g`` (``--replay-shares``; the new domains split ``1 - g`` in their token-proportional
     ratio), one dataset seed, every domain evaluated every ``--eval-interval`` iterations;
  2. **the law**: ``tools/fit_dcpt_law.py`` on the ratio runs with one share left out
     (``--held-out-share``): fit table, the left-out run's error, the plot of predicted vs
     observed loss over ``D`` for every share; then each share left out in turn (the error of
     its final evaluation), and the CPT run's own blend predicted from the ratio runs;
  3. **targets**: the law fitted on the first ``fit_fraction`` of every ratio run (the window
     the Chinchilla fit of ``compare_policies.py`` sees on its CPT runs), predicted at the
     budget for Velocitune's starting blend (the CPT blend); ``hold-initial`` for a domain
     predicted to rise, as for the Chinchilla targets;
  4. **the recommended blend**: the blend the law chooses (``choose_blend``, as the tool does:
     the new domains' loss minimised with the replay loss within 1% of its initial value), run
     and compared with its prediction;
  5. **Velocitune with the D-CPT targets** on the seeds of the Chinchilla-target Velocitune
     runs, everything else identical; one table compares targets, final losses and weights.

Usage::

    .venv/bin/python benchmarks/dcpt_law_runs.py --out /tmp/compare     # after compare_policies
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_policies as cp  # noqa: E402

from megatron_velocitune.laws.comparison import mean_std, replay_share_blend  # noqa: E402
from megatron_velocitune.laws.dcpt_law import DEFAULT_EPS, DcptFit, choose_blend, fit_domain, gather  # noqa: E402

REPLAY_SHARES = (0.1, 0.3, 0.5, 0.7, 0.9)


#: The compare_policies setting, Velocitune run and Chinchilla targets this benchmark reads: the
#: replay-only base and the hold-initial rule its published figures were measured with.
SETTING = "replay-only"
VT_KEY = "vt-hold-initial"
CHINCHILLA_TARGETS = "targets-hold-initial.json"


def ratio_key(share: float) -> str:
    """Run folder name of the ratio run at replay share ``share``."""
    return f"dcpt_g{share:.2f}"


def ensure_policy_runs(out: str, python: str, s: cp.Setting, quick: bool) -> None:
    """Run ``compare_policies.py`` on ``out`` for ``s.seeds`` unless its runs are there."""
    need = [("cpt", x) for x in s.seeds] + [(VT_KEY, x) for x in s.seeds]
    if all(cp._result(out, k, x) is not None for k, x in need) and os.path.exists(
        os.path.join(out, CHINCHILLA_TARGETS)
    ):
        return
    cp._log("compare_policies.py runs missing: running them first")
    argv = [
        "--out",
        out,
        "--python",
        python,
        "--seeds",
        *map(str, s.seeds),
        "--setting",
        SETTING,
        "--methods",
        VT_KEY,
    ]
    cp.main(argv + (["--quick"] if quick else []))


def ratio_runs(
    out: str,
    python: str,
    corpus: dict,
    s: cp.Setting,
    shares: Sequence[float],
    seed: int,
    interval: int,
    init: str,
) -> List[dict]:
    """Step 1: one static run per replay share (cached under ``out/runs``)."""
    tokens = [d["tokens"] for d in corpus["domains"]]
    replay = cp.DOMAINS.index(cp.REPLAY_DOMAIN)
    return [
        cp.cpt_run(
            out,
            python,
            corpus,
            s,
            ratio_key(g),
            seed,
            "static",
            replay_share_blend(tokens, [replay], g).tolist(),
            interval,
            ["--velocitune-initial-loss-file", init],
        )
        for g in shares
    ]


def run_tool(out: str, python: str, name: str, args: Sequence[str]) -> str:
    """``tools/fit_dcpt_law.py`` with ``args``; its output is kept in ``out/<name>.txt``."""
    log = os.path.join(out, f"{name}.txt")
    cp._run([python, "tools/fit_dcpt_law.py", *args], log)
    with open(log, encoding="utf-8") as f:
        return f.read()


def ratio_points(runs: List[dict], min_tokens: float) -> Tuple[np.ndarray, list]:
    """The ratio runs' blends (runs x domains), per-domain (tokens, losses) from ``min_tokens``."""
    paths = [r["trajectory"] for r in runs]
    return gather(paths, [cp._read_traj(p) for p in paths], cp.DOMAINS, min_tokens)


def leave_each_out(ratios: np.ndarray, points: list) -> Dict[str, List[float]]:
    """Each ratio run left out in turn: law(D_final) - last evaluation, per domain (signed)."""
    errors: Dict[str, List[float]] = {n: [] for n in cp.DOMAINS}
    for held in range(len(points)):
        rest = [i for i in range(len(points)) if i != held]
        for j, n in enumerate(cp.DOMAINS):
            law = fit_domain(n, ratios, points, rest, eps=DEFAULT_EPS)
            d, y = points[held][n]
            last = int(np.argmax(d))
            errors[n].append(float(law.predict(d[last], ratios[held, j]) - y[last]))
    return errors


def fit_laws(ratios: np.ndarray, points: list) -> Dict[str, DcptFit]:
    """Each domain's law fitted on every evaluation of every ratio run."""
    return {
        n: fit_domain(n, ratios, points, range(len(points)), eps=DEFAULT_EPS) for n in cp.DOMAINS
    }


def predict(laws: Dict[str, DcptFit], blend: Sequence[float], tokens: float) -> Dict[str, float]:
    """Every domain's predicted loss after ``tokens`` of ``blend``."""
    return {n: float(laws[n].predict(tokens, blend[j])) for j, n in enumerate(cp.DOMAINS)}


def last_eval(result: dict) -> Dict[str, float]:
    """A run's last held-out-subset evaluation per domain (the footing the laws are fitted on)."""
    t = cp._read_traj(result["trajectory"])
    rec = [u for u in t.updates if u.get("eval_loss") is not None][-1]
    return {n: float(rec["eval_loss"][t.domains.index(n)]) for n in cp.DOMAINS}


def _pm(values: Sequence[float]) -> str:
    """``mean ± std`` (the mean alone for one value)."""
    st = mean_std(values)
    return f"{st.mean:.4f}" if st.n < 2 else f"{st.mean:.4f} ± {st.std:.4f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(
    out: str,
    s: cp.Setting,
    shares: Sequence[float],
    held_share: float,
    runs: List[dict],
    fit_text: str,
    target_text: str,
    loo: Dict[str, List[float]],
    cpt_pred: Dict[str, float],
    recommended: dict,
    chin: dict,
    dcpt: dict,
    vt: Dict[str, List[dict]],
    cpt_blend: Sequence[float],
) -> str:
    """The Markdown report (printed and written to ``out/dcpt_law.md``)."""
    budget = s.budget_tokens
    lines = [
        f"## D-CPT Law on real runs: {len(shares)} replay shares, budget {s.cpt_iters} "
        f"iterations = {budget:,} tokens, seed {runs[0]['seed']}",
        "",
    ]
    lines += [
        "Ratio runs (static, new domains split the rest in token proportion), final "
        "held-out loss on the full held-out sets:",
        "",
        _row(["replay share g", *cp.DOMAINS, "wall (s)"]),
        _row(["---"] * (len(cp.DOMAINS) + 2)),
    ]
    for g, r in zip(shares, runs):
        lines.append(
            _row([f"{g:.2f}", *(f"{x:.4f}" for x in r["final_loss"]), f"{r['wall_s']:.0f}"])
        )
    lines += [
        "",
        f"`velocitune-fit-dcpt`, every evaluation of every run, g = {held_share:.2f} "
        "left out of the validation fit:",
        "",
        "```",
        fit_text.strip(),
        "```",
        "",
    ]
    lines += [
        "Each share left out in turn: predicted minus observed loss at the budget (last "
        "evaluation, the footing of the fit), nats:",
        "",
        _row(["left out g", *cp.DOMAINS]),
        _row(["---"] * (len(cp.DOMAINS) + 1)),
    ]
    for i, g in enumerate(shares):
        lines.append(_row([f"{g:.2f}", *(f"{loo[n][i]:+.4f}" for n in cp.DOMAINS)]))
    mae = {n: float(np.mean(np.abs(loo[n]))) for n in cp.DOMAINS}
    lines.append(_row(["mean abs", *(f"{mae[n]:.4f}" for n in cp.DOMAINS)]))
    cpt_obs = [last_eval(r) for r in chin["cpt"]]
    lines += [
        "",
        f"CPT blend (g = {cpt_blend[0]:.2f}, not among the ratio runs) predicted by "
        "the law on all ratio runs vs the CPT runs' last evaluation (mean over "
        f"{len(cpt_obs)} seed(s)): "
        + ", ".join(
            f"{n} {cpt_pred[n]:.4f} vs {np.mean([o[n] for o in cpt_obs]):.4f}" for n in cp.DOMAINS
        ),
        "",
    ]
    rec, obs = recommended, last_eval(recommended["run"])
    lines += [
        "The blend the law recommends (new domains' mean relative loss minimised, "
        f"`{cp.REPLAY_DOMAIN}` at most {rec['limit']:.4f} = its initial loss + 1%): "
        + ", ".join(f"{n} {w:.4f}" for n, w in zip(cp.DOMAINS, rec["weights"]))
        + f"; run at the budget (seed {rec['run']['seed']}), predicted vs observed last "
        "evaluation (full held-out set): "
        + ", ".join(
            f"{n} {rec['predicted'][n]:.4f} vs {obs[n]:.4f} ({rec['run']['final_loss'][j]:.4f})"
            for j, n in enumerate(cp.DOMAINS)
        ),
        "",
    ]
    lines += [
        "### Targets: D-CPT Law vs Chinchilla fit, and Velocitune run with each",
        "",
        "D-CPT targets: `velocitune-fit-dcpt` on the ratio runs' evaluations up to "
        f"{s.fit_fraction:g} of the budget, predicted at the budget for the CPT blend "
        "(`--blend`, `--rising-domains hold-initial`). Chinchilla targets: "
        "`velocitune-fit-targets` on the CPT runs' evaluations up to the same fraction "
        "(compare_policies.py). Observed: the CPT runs' last evaluation (mean over seeds). "
        "Velocitune final: full held-out sets, mean ± std over seeds.",
        "",
        "```",
        target_text.strip(),
        "```",
        "",
    ]
    head = [
        "domain",
        "initial",
        "Chinchilla target",
        "D-CPT target",
        "CPT observed",
        "VT (Chinchilla) final",
        "VT (D-CPT) final",
    ]
    lines += [_row(head), _row(["---"] * len(head))]
    init = cp._read_traj(vt["chinchilla"][0]["trajectory"]).header["initial_loss"]
    for j, n in enumerate(cp.DOMAINS):
        lines.append(
            _row(
                [
                    n,
                    f"{init[j]:.4f}",
                    f"{chin['targets'][n]:.4f}",
                    f"{dcpt[n]:.4f}",
                    f"{np.mean([o[n] for o in cpt_obs]):.4f}",
                    _pm([r["final_loss"][j] for r in vt["chinchilla"]]),
                    _pm([r["final_loss"][j] for r in vt["dcpt"]]),
                ]
            )
        )
    for key, label in (("chinchilla", "Chinchilla"), ("dcpt", "D-CPT")):
        rs = vt[key]
        avg = cp.time_averaged(rs)
        lines.append("")
        lines.append(
            f"- Velocitune with {label} targets ({len(rs)} seed(s)): mean new-domain "
            f"loss {_pm([float(np.mean(r['final_loss'][1:])) for r in rs])}; "
            "time-averaged blend " + ", ".join(f"{n} {w:.3f}" for n, w in zip(cp.DOMAINS, avg))
        )
    text = "\n".join(lines)
    with open(os.path.join(out, "dcpt_law.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="dcpt_law_runs.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        required=True,
        help="compare_policies.py output folder (its missing runs are run first).",
    )
    p.add_argument("--quick", action="store_true", help="compare_policies.py's --quick setting.")
    p.add_argument(
        "--replay-shares",
        type=float,
        nargs="+",
        default=list(REPLAY_SHARES),
        help="Replay shares of the ratio runs (default: %(default)s).",
    )
    p.add_argument(
        "--held-out-share",
        type=float,
        default=0.5,
        help="Share left out of the validation fit (default: %(default)s).",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="Velocitune seeds (default: compare_policies' seeds); the ratio runs use the first.",
    )
    p.add_argument(
        "--eval-interval",
        type=int,
        default=None,
        help="Evaluation interval of the ratio runs (default: the dynamic "
        "policies' update interval).",
    )
    p.add_argument(
        "--python",
        default=os.path.join(cp.REPO, ".venv", "bin", "python"),
        help="Interpreter with this package and megatron-core (default .venv).",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run (or resume) the ratio runs, the fits and the Velocitune runs; print the report."""
    args = build_parser().parse_args(argv)
    s = replace(cp.QUICK if args.quick else cp.Setting(), setting=SETTING)
    if args.seeds:
        s = replace(s, seeds=tuple(args.seeds))
    shares = sorted(set(args.replay_shares))
    if len(shares) < 4 or not all(0.0 < g < 1.0 for g in shares):
        raise SystemExit(f"--replay-shares {shares}: need 4 or more distinct shares in (0, 1)")
    if args.held_out_share not in shares:
        raise SystemExit(f"--held-out-share {args.held_out_share} is not one of {shares}")
    out, py, t0 = os.path.abspath(args.out), args.python, time.time()
    cp.check_setting(out, s)
    ensure_policy_runs(out, py, s, args.quick)
    corpus = cp.prepare_corpus(out, py)
    interval = args.eval_interval or s.update_interval
    # The base model's initial loss per seed, as the CPT run of that seed measured it.
    init_files = {x: cp.initial_loss_file(out, cp._result(out, "cpt", x)) for x in s.seeds}
    runs = ratio_runs(out, py, corpus, s, shares, s.seeds[0], interval, init_files[s.seeds[0]])

    min_tokens, budget = s.warmup_tokens, s.budget_tokens
    trajs = [r["trajectory"] for r in runs]
    common = [
        "--replay",
        cp.REPLAY_DOMAIN,
        "--budget-tokens",
        str(budget),
        "--min-tokens",
        str(min_tokens),
        "--held-out-run",
        str(shares.index(args.held_out_share)),
    ]
    fit_text = run_tool(
        out, py, "dcpt_fit", [*trajs, *common, "--plot", os.path.join(out, "dcpt_fit.png")]
    )
    ratios, points = ratio_points(runs, min_tokens)
    loo = leave_each_out(ratios, points)
    cpt_blend = cp.token_blend(corpus)
    laws = fit_laws(ratios, points)
    cpt_pred = predict(laws, cpt_blend, budget)
    # The blend the law recommends (as velocitune-fit-dcpt chooses it), run and checked.
    init = cp._read_traj(runs[0]["trajectory"]).header["initial_loss"]
    replay = cp.DOMAINS.index(cp.REPLAY_DOMAIN)
    choice = choose_blend(
        laws,
        budget,
        replay=[cp.REPLAY_DOMAIN],
        initial={cp.REPLAY_DOMAIN: init[replay]},
        start=ratios[0],
    )
    chosen = cp.cpt_run(
        out,
        py,
        corpus,
        s,
        "dcpt_chosen",
        s.seeds[0],
        "static",
        choice.weights.tolist(),
        interval,
        ["--velocitune-initial-loss-file", init_files[s.seeds[0]]],
    )
    recommended = {
        "weights": choice.weights.tolist(),
        "limit": choice.limits[cp.REPLAY_DOMAIN],
        "predicted": predict(laws, choice.weights, budget),
        "run": chosen,
    }

    targets = os.path.join(out, "dcpt_targets.json")
    blend_args = [x for n, w in zip(cp.DOMAINS, cpt_blend) for x in ("--blend", f"{n}={w}")]
    target_text = run_tool(
        out,
        py,
        "dcpt_targets",
        [
            *trajs,
            *common,
            "--fit-fraction",
            str(s.fit_fraction),
            "--rising-domains",
            "hold-initial",
            *blend_args,
            "-o",
            targets,
        ],
    )
    with open(targets, encoding="utf-8") as f:
        dcpt = json.load(f)["losses"]
    with open(os.path.join(out, CHINCHILLA_TARGETS), encoding="utf-8") as f:
        chin_targets = json.load(f)["losses"]

    vt_dcpt = []
    for seed in s.seeds:
        extra = [
            "--velocitune-initial-loss-file",
            init_files[seed],
            "--velocitune-target-loss-file",
            targets,
            "--velocitune-rising-rule",
            "hold-initial",
        ]
        vt_dcpt.append(
            cp.cpt_run(
                out,
                py,
                corpus,
                s,
                "velocitune_dcpt",
                seed,
                "velocity",
                cpt_blend,
                s.update_interval,
                extra,
            )
        )
    chin = {"targets": chin_targets, "cpt": [cp._result(out, "cpt", x) for x in s.seeds]}
    vt = {"chinchilla": [cp._result(out, VT_KEY, x) for x in s.seeds], "dcpt": vt_dcpt}
    print(
        report(
            out,
            s,
            shares,
            args.held_out_share,
            runs,
            fit_text,
            target_text,
            loo,
            cpt_pred,
            recommended,
            chin,
            dcpt,
            vt,
            cpt_blend,
        )
    )
    print(
        f"\nwrote {os.path.join(out, 'dcpt_law.md')} and {os.path.join(out, 'dcpt_fit.png')}; "
        f"this call took {time.time() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
