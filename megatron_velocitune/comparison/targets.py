"""The target losses the methods run on: ``velocitune-fit-targets`` on the CPT runs.

Every seed's CPT run evaluates every domain often (``--cpt-eval-interval``); the targets of one
rising-domain rule (or, for ``default-law-<law>``, of one ``--law``) are fitted on those runs
pooled, up to ``--fit-fraction`` of the budget, and each seed's held-out error is kept for the
report: of the pooled fit for the default law; of the law fitted on that seed alone for the
others (what ``benchmarks/target_laws.py`` tables).
"""

import json
import os
from typing import Dict, List, Optional, Sequence

from megatron_velocitune.comparison.methods import (
    DEFAULT_FIT,
    Method,
    fit_law,
    fit_name,
    law_fit_name,
)
from megatron_velocitune.comparison.runs import read_traj, run_command
from megatron_velocitune.comparison.setting import Setting
from megatron_velocitune.core.files import write_json

__all__ = ["fit_all", "fit_command", "fit_targets", "initial_loss_file"]


def initial_loss_file(out: str, cpt: dict) -> str:
    """The base model's held-out loss as the CPT run of the same seed measured it, as a file.

    Same base, same seed, so the same held-out sequences: every other method of that seed
    starts from this value instead of measuring it again.
    """
    path = os.path.join(out, f"initial_loss_seed{cpt['seed']}.json")
    # The trajectory's header keeps full precision; the printed table has 4 decimals.
    # The full held-out sets' value (a run on the subset footing measures its own subset L_init).
    header = read_traj(cpt["trajectory"]).header
    losses = header.get("initial_loss_full") or header.get("initial_loss") or cpt["start_loss"]
    write_json(path, {"losses": dict(zip(cpt["domains"], losses)), "source": cpt["trajectory"]})
    return path


def fit_command(
    python: str,
    trajectories: Sequence[str],
    s: Setting,
    rule: Optional[str],
    output: str,
    png: Optional[str],
    law: Optional[str] = None,
) -> List[str]:
    """``velocitune-fit-targets`` on the CPT trajectories, with ``rule`` as its
    ``--rising-domains`` (None: no such flag, the tool's own default) and ``law`` as its
    ``--law`` (None: the tool's default law; a law takes the setting's ``--annealing-from``,
    ``--base-lr-schedule`` and ``--lr-schedule``).

    Returns:
        List[str]: the command.
    """
    cmd = [
        python,
        "-m",
        "megatron_velocitune.cli.fit_target_loss",
        *trajectories,
        "--fit-fraction",
        str(s.fit_fraction),
        "--budget-tokens",
        str(s.budget_tokens),
        "--min-tokens",
        str(s.warmup_tokens),
    ]
    if rule is not None:
        cmd += ["--rising-domains", rule]
    if rule == "tolerance":
        cmd += ["--forgetting-tolerance", s.tolerance]
    if law is not None:
        cmd += ["--law", law]
        if s.annealing_from is not None:
            cmd += ["--annealing-from", s.annealing_from]
        if s.base_lr_schedule is not None:
            cmd += ["--base-lr-schedule", s.base_lr_schedule]
        if s.lr_schedule is not None:
            cmd += ["--lr-schedule", s.lr_schedule]
    return cmd + ["-o", output] + (["--plot", png] if png else [])


def fit_targets(
    out: str,
    python: str,
    cpt: List[dict],
    s: Setting,
    rule: Optional[str] = None,
    law: Optional[str] = None,
) -> dict:
    """Targets by ``rule`` (None: the fit tool's default) or ``law`` from the pooled CPT
    trajectories, and each seed's fit error; the file is ``targets-<name>.json``
    (``targets-default.json``, ``targets-law-auto.json``).
    """
    from megatron_velocitune.laws.scaling_law import loss_points

    name = fit_name(rule) if law is None else law_fit_name(law)
    targets = os.path.join(out, f"targets-{name}.json")
    cpt = sorted(cpt, key=lambda r: r["seed"])
    png, text = os.path.join(out, f"target_fit-{name}.png"), os.path.join(out, f"fit-{name}.txt")
    trajectories = [r["trajectory"] for r in cpt]
    # The fit tool writes the targets and the plot atomically itself, so it is given their final
    # names (its log then says what a user will find); only its log, captured here, goes through
    # a temporary name of this process (workers may share --out).
    tmp = f"{text}.{os.getpid()}.tmp"
    run_command(fit_command(python, trajectories, s, rule, targets, png, law), tmp)
    os.replace(tmp, text)
    with open(targets, encoding="utf-8") as f:
        fits = json.load(f)
    cutoff = s.fit_fraction * s.budget_tokens
    points = [loss_points(read_traj(path), s.domains) for path in trajectories]
    if law is None:
        per_seed, pooled = _pooled_fit_errors(points, fits, s, cutoff)
    else:
        per_seed, pooled = _law_fit_errors(out, python, cpt, s, law, name, fits)
    spans = []
    for pts in points:
        fitted = pts.tokens[(pts.tokens >= s.warmup_tokens) & (pts.tokens <= cutoff)]
        spans.append(float(fitted.max() / fitted.min()))
    return {
        "targets": targets,
        "per_seed": per_seed,
        "pooled": pooled,
        "fit_span": spans,
        "losses": fits["losses"],
        "rules": fits.get("rules", {}),
        **({"laws": fits.get("laws", {})} if law is not None else {}),
        "predicted": {d: fits["fits"][d]["predicted"] for d in s.domains},
        "cutoff_tokens": cutoff,
    }


def _pooled_fit_errors(points, fits: dict, s: Setting, cutoff: float):
    """Each seed's held-out error of the default law refitted on that seed's points, and the
    pooled fit's (from the targets file).
    """
    from megatron_velocitune.laws.scaling_law import held_out_error

    per_seed: Dict[str, List[float]] = {d: [] for d in s.domains}
    for pts in points:
        keep = pts.tokens >= s.warmup_tokens
        for i, d in enumerate(s.domains):
            rising = fits["fits"][d].get("B", 0.0) < 0
            try:
                err = held_out_error(pts.tokens[keep], pts.losses[keep, i], cutoff, rising=rising)
                per_seed[d].append(err.mae)
            except ValueError:
                per_seed[d].append(float("nan"))
    pooled = {
        d: (
            fits["fits"][d]["held_out_mae"]
            if fits["fits"][d]["held_out_mae"] is not None
            else float("nan")
        )
        for d in s.domains
    }
    return per_seed, pooled


def _law_fit_errors(out: str, python: str, cpt: List[dict], s: Setting, law: str, name: str, fits):
    """A ``--law`` fit's errors: each seed's that of the law fitted on the seed alone (the fit
    tool once per seed), the pooled one that of the pooled fit's chosen law.
    """

    def chosen_mae(record: dict) -> float:
        mae = record.get("law_held_out_mae", {}).get(record.get("law"))
        return float("nan") if mae is None else float(mae)

    per_seed: Dict[str, List[float]] = {d: [] for d in s.domains}
    for r in cpt:
        path = os.path.join(out, f"targets-{name}-seed{r['seed']}.json")
        log = f"{path}.{os.getpid()}.log"
        run_command(fit_command(python, [r["trajectory"]], s, None, path, None, law), log)
        os.remove(log)
        with open(path, encoding="utf-8") as f:
            own = json.load(f)["fits"]
        for d in s.domains:
            per_seed[d].append(chosen_mae(own[d]))
    return per_seed, {d: chosen_mae(fits["fits"][d]) for d in s.domains}


def fit_all(
    out: str, python: str, cpt: List[dict], s: Setting, methods: Sequence[Method]
) -> Dict[str, dict]:
    """The target fits the methods need, by name (:func:`fit_name`)."""
    names = sorted({m.fit for m in methods if m.fit})
    return {
        n: fit_targets(
            out, python, cpt, s, None if n == DEFAULT_FIT or fit_law(n) else n, fit_law(n)
        )
        for n in names
    }
