"""Running (or resuming) a comparison: every method on every seed from the same base.

CPT runs first (its runs are the targets' proxy and give each seed's initial loss); then each
worker takes the first run nobody holds whose inputs exist (:func:`run_all`).
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.comparison.methods import Method, run_order
from megatron_velocitune.comparison.runs import (
    TRAJECTORY,
    claim,
    log,
    read_traj,
    result_of,
    run_command,
    run_dir,
    torchrun,
)
from megatron_velocitune.comparison.setting import Setting
from megatron_velocitune.comparison.targets import fit_all, initial_loss_file
from megatron_velocitune.core.files import write_json
from megatron_velocitune.laws.comparison import (
    parse_final_losses,
    replay_share_blend,
    stabilisation_iteration,
)

__all__ = [
    "MethodRun",
    "data_path",
    "finished",
    "method_run",
    "run_all",
    "time_averaged",
    "train_command",
    "train_run",
]


def data_path(prefixes: Sequence[str], weights: Sequence[float]) -> List[str]:
    """Megatron-LM ``--data-path w1 p1 w2 p2 ...`` as argument words."""
    out: List[str] = []
    for p, w in zip(prefixes, weights):
        out += [f"{w:.6f}", p]
    return out


def train_command(
    python: str,
    s: Setting,
    folder: str,
    seed: int,
    policy: str,
    weights: Sequence[float],
    interval: int,
    extra: Sequence[str] = (),
    min_weight: bool = True,
) -> List[str]:
    """The command line of one continual pre-training run from the base.

    Args:
        python (str): the interpreter.
        s (Setting): the comparison's setting (base, budget, entry flags).
        folder (str): the run's folder (its ``tb`` holds the trajectory).
        seed (int): the dataset seed.
        policy (str): ``--velocitune-policy``.
        weights (Sequence[float]): the starting blend.
        interval (int): ``--velocitune-update-interval``.
        extra (Sequence[str]): further entry flags (the method's own).
        min_weight (bool): a dynamic policy floors the weights at ``s.min_weight``; False: no
            ``--velocitune-min-weight`` (the entry's default).

    Returns:
        List[str]: the command.
    """
    cmd = (
        torchrun(python, s.nproc)
        + list(s.entry_args)
        + [
            "--data-path",
            *data_path(s.prefixes, weights),
            "--load",
            s.load,
            "--finetune",
            "--train-iters",
            str(s.train_iters),
            "--seed",
            str(seed),
            "--velocitune-policy",
            policy,
            "--velocitune-update-interval",
            str(interval),
            "--velocitune-eval-iters",
            str(s.eval_iters),
            "--tensorboard-dir",
            os.path.join(folder, "tb"),
            *extra,
        ]
    )
    if policy != "static" and min_weight:
        cmd += ["--velocitune-min-weight", str(s.min_weight)]
    return cmd


def train_run(
    out: str,
    python: str,
    s: Setting,
    key: str,
    seed: int,
    policy: str,
    weights: Sequence[float],
    interval: int,
    extra: Sequence[str] = (),
    min_weight: bool = True,
    **record,
) -> dict:
    """One continual pre-training run from the base (:func:`train_command`); returns (and
    keeps) its result (with ``record``'s fields added).
    """
    folder = run_dir(out, key, seed)
    result = os.path.join(folder, "result.json")
    if not claim(folder):
        with open(result, encoding="utf-8") as f:
            return json.load(f)
    log(f"run {key} seed {seed} ({policy}, every {interval} iterations)")
    for name in os.listdir(folder):
        if name != ".claim":
            target = os.path.join(folder, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    tb = os.path.join(folder, "tb")
    cmd = train_command(python, s, folder, seed, policy, weights, interval, extra, min_weight)
    log_path = os.path.join(folder, "log.txt")
    wall = run_command(cmd, log_path, claimed=folder)
    with open(log_path, encoding="utf-8") as f:
        names, start, end, final_w = parse_final_losses(f.read())
    traj = read_traj(os.path.join(tb, TRAJECTORY))
    applied = [u for u in traj.updates if not u.get("skipped")]
    stable = stabilisation_iteration(
        [u["iteration"] for u in applied], [u["weights"] for u in applied], traj.header["weights"]
    )
    res = {
        "key": key,
        "seed": seed,
        "policy": policy,
        "domains": names,
        "start_loss": start,
        "final_loss": end,
        "final_weights": final_w,
        "wall_s": wall,
        "stable_at": stable if policy != "static" else 0,
        "updates": len(traj.updates),
        "skipped": len(traj.updates) - len(applied),
        "blend": list(weights),
        "trajectory": os.path.join(tb, TRAJECTORY),
        **record,
    }
    write_json(result, res, allow_nan=True)
    return res


def time_averaged(results: List[dict]) -> np.ndarray:
    """Mean over runs of each run's time-averaged blend (each blend weighted by its samples)."""
    from megatron_velocitune.core.weight_history import run_history, time_averaged_weights

    avgs = []
    for r in results:
        t = read_traj(r["trajectory"])
        h = run_history(t.header, t.updates, "samples")
        avgs.append(time_averaged_weights(h.initial, h.updates, h.end))
    avg = np.mean(avgs, axis=0)
    return avg / avg.sum()


@dataclass(frozen=True)
class MethodRun:
    """What :func:`train_run` gets for one method on one seed.

    Attributes:
        policy (str): ``--velocitune-policy``.
        weights (List[float]): the starting (for a static policy: the whole run's) blend.
        interval (int): ``--velocitune-update-interval``.
        extra (List[str]): the method's own entry flags.
        min_weight (bool): ``--velocitune-min-weight`` of the comparison (dynamic policies).
    """

    policy: str
    weights: List[float]
    interval: int
    extra: List[str]
    min_weight: bool


def method_run(
    m: Method,
    s: Setting,
    fits: Dict[str, dict],
    initial_loss: str,
    reweighted: Optional[Sequence[float]] = None,
) -> MethodRun:
    """The run of method ``m`` (no process: the flags only).

    Every method but the shipped ones (``default``, ``vt-paper``) starts from ``initial_loss``
    (the file of the same seed's CPT measurement) and a dynamic one floors its weights at
    ``s.min_weight``; a method with a rule runs on that rule's targets with that rule, a shipped
    one on the fit tool's default targets (``default-law-<law>``: that law's) with nothing else
    (the entry's defaults).

    Args:
        m (Method): the method.
        s (Setting): the setting.
        fits (Dict[str, dict]): the target fits by name (:func:`fit_name`).
        initial_loss (str): the seed's initial-loss file.
        reweighted (Optional[Sequence[float]]): the ``reweighted`` method's blend.

    Returns:
        MethodRun: the run's arguments.
    """
    if m.shipped:
        extra = ["--velocitune-target-loss-file", fits[m.fit]["targets"], *m.ablation]
        return MethodRun(m.policy, list(s.weights), s.update_interval, extra, False)
    extra = ["--velocitune-initial-loss-file", initial_loss]
    if m.rule:
        extra += [
            "--velocitune-target-loss-file",
            fits[m.rule]["targets"],
            "--velocitune-rising-rule",
            m.rule,
        ]
        if m.rule == "tolerance":
            extra += ["--velocitune-forgetting-tolerance", s.tolerance]
        if m.floor:
            extra += ["--velocitune-min-headroom", str(s.min_headroom)]
    if m.dynamic:
        return MethodRun(m.policy, list(s.weights), s.update_interval, extra, True)
    if m.phase is not None:
        first = s.weights if m.phase.first is None else _replay_blend(s, m.phase.first)
        second = ",".join(f"{w:.6f}" for w in _replay_blend(s, m.phase.second))
        switch = max(1, min(s.train_iters - 1, round(m.phase.switch * s.train_iters)))
        extra += ["--velocitune-blend-schedule", f"{switch}:{second}"]
        return MethodRun(m.policy, list(first), s.train_iters, extra, False)
    if m.key == "reweighted":
        if reweighted is None:
            raise ValueError("the reweighted method needs its blend")
        return MethodRun("static", list(reweighted), s.train_iters, extra, True)
    return MethodRun("static", _replay_blend(s, m.share), s.train_iters, extra, True)


def _replay_blend(s: Setting, share: float) -> List[float]:
    """The CPT blend with the replay domain's share set to ``share``."""
    return replay_share_blend(s.weights, [s.replay], share).tolist()


def run_all(
    out: str,
    python: str,
    s: Setting,
    methods: List[Method],
    seeds: Sequence[int],
    reweight_from: str,
) -> tuple:
    """Run (or pick up) every method on every seed.

    Returns:
        tuple: the results by method, and the target fits by name (:func:`fit_name`).
    """
    cpt = [
        train_run(out, python, s, "cpt", x, "static", s.weights, s.cpt_eval_interval) for x in seeds
    ]
    fits = fit_all(out, python, cpt, s, methods)
    init = {r["seed"]: initial_loss_file(out, r) for r in cpt}

    def reweighted_blend() -> Optional[List[float]]:
        runs = [result_of(out, reweight_from, x) for x in seeds]
        return None if any(r is None for r in runs) else time_averaged(runs).tolist()

    # A worker takes the first task nobody holds whose inputs exist (run_order's priority).
    order = run_order(methods, reweight_from)
    tasks = [(m, x) for m in order if m.key != "cpt" for x in seeds]
    pending = list(tasks)
    while pending:
        picked = None
        for m, x in pending:
            ready = m.key != "reweighted" or reweighted_blend() is not None
            if result_of(out, m.key, x) is not None or (
                ready and claim(run_dir(out, m.key, x), wait=False)
            ):
                picked = (m, x)
                break
        if picked is None:
            time.sleep(10)
            continue
        pending.remove(picked)
        m, x = picked
        if result_of(out, m.key, x) is not None:
            continue
        blend = reweighted_blend() if m.key == "reweighted" else None
        r = method_run(m, s, fits, init[x], blend)
        record = {"reweighted_from": reweight_from} if m.key == "reweighted" else {}
        train_run(
            out,
            python,
            s,
            m.key,
            x,
            r.policy,
            r.weights,
            r.interval,
            r.extra,
            r.min_weight,
            **record,
        )
    results: Dict[str, List[dict]] = {"cpt": cpt}
    for m, x in tasks:  # runs another worker still has in hand
        while result_of(out, m.key, x) is None:
            time.sleep(10)
        results.setdefault(m.key, []).append(result_of(out, m.key, x))
    return results, fits


def finished(out: str, methods: List[Method], seeds: Sequence[int]) -> Dict[str, List[dict]]:
    """The finished runs under ``out`` (``--report-only``)."""
    results = {}
    for m in methods:
        found = [r for r in (result_of(out, m.key, x) for x in seeds) if r is not None]
        if found:
            results[m.key] = found
    return results
