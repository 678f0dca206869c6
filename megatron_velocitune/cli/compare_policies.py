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
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.cli._common import ToolError, run_tool
from megatron_velocitune.core.files import write_json
from megatron_velocitune.core.policy import DEFAULT_RISING_RULE, RISING_RULES, Tolerance
from megatron_velocitune.laws.comparison import (
    COLLAPSE_TOLERANCE,
    STABLE_TOLERANCE,
    MethodRuns,
    ParetoPoint,
    SeedPoint,
    dominated_by,
    find_collapses,
    frontier_margin,
    mean_std,
    parse_final_losses,
    parse_loop_time,
    render_mae_table,
    render_seed_table,
    render_table,
    replay_share_blend,
    seed_points,
    stabilisation_iteration,
    summarise_method,
)

PROG = "velocitune-compare"
TRAJECTORY = "velocitune_trajectory.jsonl"
DEFAULT_FRONTIER = (0.1, 0.4, 0.6, 0.8)
DEFAULT_METHODS = (
    "cpt",
    "default",
    f"vt-{DEFAULT_RISING_RULE}",
    "vt-budget",
    "vt-tolerance",
    "vt-hold-initial",
    "vt-hold-initial-floor",
    "dbl",
    "ratio",
    "reweighted",
)
QUICK_METHODS = ("cpt", "default", "vt-hold-initial")
QUICK_FRONTIER = (0.1, 0.6)
VT_RULES = tuple(r for r in RISING_RULES if r != "refuse")
#: The name of the targets fitted with ``velocitune-fit-targets``' own default rule.
DEFAULT_FIT = "default"


@dataclass(frozen=True)
class Method:
    """One method of the comparison (see the module docstring for the names).

    Attributes:
        key (str): its name and folder under ``runs/``.
        policy (str): ``--velocitune-policy``.
        rule (Optional[str]): ``--velocitune-rising-rule`` and the targets fitted with it.
        floor (bool): with ``--velocitune-min-headroom``.
        share (Optional[float]): a frontier point: the replay domain's share.
        shipped (bool): the entry's and the fit tool's defaults: no rising rule, weight floor,
            headroom floor or initial-loss file; the targets of the fit tool's default rule.
        ablation (Tuple[str, ...]): entry flags that switch one guard of the default off
            (``default-<ablation>``, :data:`DEFAULT_ABLATIONS`).
    """

    key: str
    policy: str
    rule: Optional[str] = None
    floor: bool = False
    share: Optional[float] = None
    shipped: bool = False
    ablation: Tuple[str, ...] = ()

    @property
    def dynamic(self) -> bool:
        return self.policy != "static"

    @property
    def fit(self) -> Optional[str]:
        """The name of the targets it runs on (:func:`fit_name`), or None (no targets)."""
        if self.shipped:
            return DEFAULT_FIT
        return self.rule

    def label(self, tolerance: str, min_headroom: float, reweight_from: str = "") -> str:
        """The method's row name in the table."""
        if self.key == "cpt":
            return "CPT (static)"
        if self.key == "default":
            return "Velocitune, shipped defaults"
        if self.ablation:
            return f"Velocitune, defaults with {' '.join(self.ablation)}"
        if self.shipped:
            return f"Velocitune, {self.policy} policy (entry defaults)"
        if self.share is not None:
            return f"static, replay {self.share:.2f}"
        if self.policy == "velocity":
            rule = f"tolerance {tolerance}" if self.rule == "tolerance" else self.rule
            return f"Velocitune, {rule}" + (f", floor {min_headroom:g}" if self.floor else "")
        return {
            "dbl": "DBL",
            "ratio": "Velocitune w/o target (ratio)",
            "reweighted": f"reweighted static ({reweight_from} time-avg)",
        }[self.key]


def parse_method(key: str) -> Method:
    """A method from its name.

    Raises:
        ToolError: an unknown name.
    """
    if key == "default":
        return Method(key, "velocity", shipped=True)
    if key.startswith("default-") and key[len("default-") :] in DEFAULT_ABLATIONS:
        return Method(key, "velocity", shipped=True, ablation=DEFAULT_ABLATIONS[key[8:]])
    if key in ("paper", "vt-paper"):
        return Method("vt-paper", "paper", shipped=True)
    if key in ("cpt", "reweighted"):
        return Method(key, "static")
    if key == "dbl":
        return Method(key, "dbl", "budget")
    if key == "ratio":
        return Method(key, "ratio")
    if key.startswith("frontier-"):
        try:
            share = float(key[len("frontier-") :])
        except ValueError:
            share = -1.0
        if not 0.0 < share < 1.0:
            raise ToolError(f"method {key!r}: a frontier share must be in (0, 1)")
        return Method(key, "static", share=share)
    if key.startswith("vt-"):
        rule, floor = key[3:], False
        if rule.endswith("-floor"):
            rule, floor = rule[: -len("-floor")], True
        if rule in VT_RULES:
            return Method(key, "velocity", rule, floor)
    raise ToolError(
        f"--methods {key}: unknown method; choose from cpt, default, "
        f"{', '.join('default-' + a for a in DEFAULT_ABLATIONS)}, vt-paper, dbl, ratio, "
        f"reweighted, vt-<rule>[-floor] with rule in {list(VT_RULES)} (frontier points come "
        f"from --frontier)"
    )


#: The default with one guard off: which of them a result owes to.
DEFAULT_ABLATIONS = {
    "nobrake": ("--velocitune-brake-window", "0"),
    "nonoise": ("--velocitune-noise-multiple", "0"),
    # The other runaway guards in the brake's place.
    "cap": ("--velocitune-runaway-guard", "cap"),
    "anchored": ("--velocitune-runaway-guard", "anchored"),
}


def frontier_key(share: float) -> str:
    return f"frontier-{share:.2f}"


# ----------------------------------------------------------------------------- the setting


@dataclass(frozen=True)
class Setting:
    """What every run of one ``--out`` shares (a resume must match it)."""

    prefixes: tuple
    weights: tuple
    load: str
    replay_domain: str
    train_iters: int
    update_interval: int
    cpt_eval_interval: int
    eval_iters: int
    min_weight: float
    fit_fraction: float
    tolerance: str
    min_headroom: float
    nproc: int
    entry_args: tuple
    seq_length: int
    global_batch_size: int
    warmup_iters: int

    @property
    def domains(self) -> List[str]:
        return [os.path.basename(p) for p in self.prefixes]

    @property
    def replay(self) -> int:
        return self.domains.index(self.replay_domain)

    @property
    def budget_tokens(self) -> int:
        return self.train_iters * self.global_batch_size * self.seq_length

    @property
    def warmup_tokens(self) -> int:
        return self.warmup_iters * self.global_batch_size * self.seq_length


def _entry_sizes(entry_args: Sequence[str]) -> argparse.Namespace:
    # No abbreviations: the entry's --lr must not read as --lr-warmup-iters.
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--seq-length", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--lr-warmup-iters", type=int, default=0)
    p.add_argument("--data-path", nargs="+")
    p.add_argument("--load")
    p.add_argument("--train-iters")
    p.add_argument("--seed")
    known, _ = p.parse_known_args(list(entry_args))
    for flag in ("data_path", "load", "train_iters", "seed"):
        if getattr(known, flag) is not None:
            raise ToolError(
                f"--{flag.replace('_', '-')} after '--': give it to {PROG} itself "
                f"(it sets it for every run)"
            )
    for flag in ("seq_length", "global_batch_size"):
        if getattr(known, flag) is None:
            raise ToolError(
                f"the entry flags after '--' need --{flag.replace('_', '-')} "
                f"(the token budget is train iterations x batch x sequence)"
            )
    return known


def _blend(data_path: Sequence[str]) -> tuple:
    """(prefixes, weights or None) of a Megatron ``--data-path``, each prefix's files checked."""
    from megatron_velocitune.core.errors import DataError
    from megatron_velocitune.data.builder import blend_from_data_path

    try:
        prefixes, weights = blend_from_data_path(data_path)
    except (FileNotFoundError, DataError) as e:
        raise ToolError(str(e)) from None
    if weights is not None and any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ToolError(f"--data-path: weights {weights} must be finite and > 0")
    return prefixes, weights


def _token_counts(prefixes: Sequence[str]) -> List[float]:
    """Tokens of each ``.bin/.idx`` domain (megatron-core's own index reader)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = []
    for p in prefixes:
        index = IndexedDataset(p)  # held: its arrays are views of a mmap closed on deletion
        counts.append(float(np.sum(index.sequence_lengths, dtype=np.float64)))
        del index
    return counts


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The :class:`Setting` the flags ask for, checked (one line per problem)."""
    prefixes, weights = _blend(args.data_path)
    if len(prefixes) < 2:
        raise ToolError(
            f"--data-path {' '.join(args.data_path)}: a comparison needs two or "
            f"more domains (a replay domain and new ones)"
        )
    names = [os.path.basename(p) for p in prefixes]
    if len(set(names)) != len(names):
        raise ToolError(f"--data-path: domain names {names} repeat (the prefixes' base names)")
    if args.replay_domain not in names:
        raise ToolError(
            f"--replay-domain {args.replay_domain}: not a domain of --data-path {names}"
        )
    tracker = os.path.join(args.load, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(tracker):
        raise ToolError(f"--load {args.load}: no base checkpoint there (no {tracker})")
    sizes = _entry_sizes(args.entry_args)
    if weights is None:
        weights = _token_counts(prefixes)
    total = float(sum(weights))
    weights = [w / total for w in weights]
    try:
        tolerance = str(Tolerance.parse(args.tolerance))
    except ValueError as e:
        raise ToolError(f"--tolerance {e}") from None
    for flag in ("train_iters", "update_interval", "cpt_eval_interval", "eval_iters", "nproc"):
        if getattr(args, flag) < 1:
            raise ToolError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    if not 0.0 < args.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {args.fit_fraction} must be in (0, 1]")
    return Setting(
        prefixes=tuple(os.path.abspath(p) for p in prefixes),
        weights=tuple(weights),
        load=os.path.abspath(args.load),
        replay_domain=args.replay_domain,
        train_iters=args.train_iters,
        update_interval=args.update_interval,
        cpt_eval_interval=args.cpt_eval_interval,
        eval_iters=args.eval_iters,
        min_weight=args.min_weight,
        fit_fraction=args.fit_fraction,
        tolerance=tolerance,
        min_headroom=args.min_headroom,
        nproc=args.nproc,
        entry_args=tuple(args.entry_args),
        seq_length=sizes.seq_length,
        global_batch_size=sizes.global_batch_size,
        warmup_iters=sizes.lr_warmup_iters,
    )


def check_setting(out: str, s: Setting) -> None:
    """Refuse an ``--out`` that holds runs of another setting (one line naming what differs)."""
    path = os.path.join(out, "compare_setting.json")
    mine = json.loads(json.dumps(asdict(s)))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
        if diff:
            raise ToolError(
                f"{out} holds runs of another setting (old, new): {diff}; use another --out"
            )
        return
    write_json(path, mine, allow_nan=True)


# ----------------------------------------------------------------------------- processes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_command(cmd: Sequence[str], log_path: str, cwd: Optional[str] = None) -> float:
    """Run ``cmd``, output to ``log_path``; returns the wall time (a failure raises with the
    log's tail: an internal failure of a run, not a user error).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(python: str, nproc: int) -> List[str]:
    """The launcher of one run: ``torch.distributed.run`` of the training entry."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(_free_port()),
        "-m",
        "megatron_velocitune.training.pretrain",
    ]


def data_path(prefixes: Sequence[str], weights: Sequence[float]) -> List[str]:
    """Megatron-LM ``--data-path w1 p1 w2 p2 ...`` as argument words."""
    out: List[str] = []
    for p, w in zip(prefixes, weights):
        out += [f"{w:.6f}", p]
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_holder(claim: str) -> int:
    """The process id written in a claim file (0: none, unreadable or gone)."""
    try:
        with open(claim, encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def claim(run_dir: str, wait: bool = True) -> bool:
    """Claim ``run_dir`` for this process; False when its result appeared (or, without
    ``wait``, when another live process holds it). A dead holder's claim is taken over.
    """
    os.makedirs(run_dir, exist_ok=True)
    path, result = os.path.join(run_dir, ".claim"), os.path.join(run_dir, "result.json")
    waited = False
    while True:
        if os.path.exists(result):
            return False
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _claim_holder(path)
            if pid == os.getpid():
                return True
            if pid and _pid_alive(pid):
                if not wait:
                    return False
                if not waited:
                    log(f"waiting for {run_dir} (run by process {pid})")
                    waited = True
                time.sleep(10)
                continue
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True


def run_dir(out: str, key: str, seed: int) -> str:
    return os.path.join(out, "runs", key, f"seed{seed}")


def result_of(out: str, key: str, seed: int) -> Optional[dict]:
    """A finished run's ``result.json``, or None."""
    path = os.path.join(run_dir(out, key, seed), "result.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_traj(path: str):
    from megatron_velocitune.core.trajectory import read_trajectory

    return read_trajectory(path)


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
    wall = run_command(cmd, log_path)
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


def fit_name(rule: Optional[str]) -> str:
    """The name of the targets fitted with ``rule`` (None: the fit tool's default rule)."""
    return DEFAULT_FIT if rule is None else rule


def fit_command(
    python: str, trajectories: Sequence[str], s: Setting, rule: Optional[str], output: str, png: str
) -> List[str]:
    """``velocitune-fit-targets`` on the CPT trajectories, with ``rule`` as its
    ``--rising-domains`` (None: no such flag, the tool's own default).

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
    return cmd + ["-o", output, "--plot", png]


def fit_targets(
    out: str, python: str, cpt: List[dict], s: Setting, rule: Optional[str] = None
) -> dict:
    """Targets by ``rule`` (None: the fit tool's default) from the pooled CPT trajectories, and
    each seed's fit error; the file is ``targets-<rule>.json`` (``targets-default.json``).
    """
    from megatron_velocitune.laws.scaling_law import held_out_error, loss_points

    name = fit_name(rule)
    targets = os.path.join(out, f"targets-{name}.json")
    cpt = sorted(cpt, key=lambda r: r["seed"])
    png, text = os.path.join(out, f"target_fit-{name}.png"), os.path.join(out, f"fit-{name}.txt")
    trajectories = [r["trajectory"] for r in cpt]
    # The fit tool writes the targets and the plot atomically itself, so it is given their final
    # names (its log then says what a user will find); only its log, captured here, goes through
    # a temporary name of this process (workers may share --out).
    tmp = f"{text}.{os.getpid()}.tmp"
    run_command(fit_command(python, trajectories, s, rule, targets, png), tmp)
    os.replace(tmp, text)
    with open(targets, encoding="utf-8") as f:
        fits = json.load(f)
    cutoff = s.fit_fraction * s.budget_tokens
    per_seed: Dict[str, List[float]] = {d: [] for d in s.domains}
    spans: List[float] = []
    for r in cpt:
        pts = loss_points(read_traj(r["trajectory"]), s.domains)
        keep = pts.tokens >= s.warmup_tokens
        fitted = pts.tokens[keep & (pts.tokens <= cutoff)]
        spans.append(float(fitted.max() / fitted.min()))
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
    return {
        "targets": targets,
        "per_seed": per_seed,
        "pooled": pooled,
        "fit_span": spans,
        "losses": fits["losses"],
        "rules": fits.get("rules", {}),
        "predicted": {d: fits["fits"][d]["predicted"] for d in s.domains},
        "cutoff_tokens": cutoff,
    }


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


# ----------------------------------------------------------------------------- the comparison


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
    one on the fit tool's default targets with nothing else (the entry's defaults).

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
        extra = ["--velocitune-target-loss-file", fits[DEFAULT_FIT]["targets"], *m.ablation]
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
    if m.key == "reweighted":
        if reweighted is None:
            raise ValueError("the reweighted method needs its blend")
        return MethodRun("static", list(reweighted), s.train_iters, extra, True)
    blend = replay_share_blend(s.weights, [s.replay], m.share).tolist()
    return MethodRun("static", blend, s.train_iters, extra, True)


def fit_all(
    out: str, python: str, cpt: List[dict], s: Setting, methods: Sequence[Method]
) -> Dict[str, dict]:
    """The target fits the methods need, by name (:func:`fit_name`)."""
    names = sorted({m.fit for m in methods if m.fit})
    return {n: fit_targets(out, python, cpt, s, None if n == DEFAULT_FIT else n) for n in names}


def run_order(methods: Sequence[Method], reweight_from: str) -> List[Method]:
    """The order workers take the methods in: ``default``, the ``--reweight-from`` method, the
    frontier, then the rest, ``reweighted`` (it needs every ``--reweight-from`` run) and CPT
    last.
    """
    return sorted(
        methods,
        key=lambda m: (
            m.key == "cpt",
            m.key == "reweighted",
            m.key != "default",
            m.key != reweight_from,
            m.share is None,
        ),
    )


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
    plain = [r for k in keys if not by_key[k].dynamic and k != "cpt" for r in results[k]]
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
        margin = frontier_margin(p, frontier) if by_key[k].share is None and k != "cpt" else None
        dom = dominated_by(p, frontier) if by_key[k].share is None and k != "cpt" else None
        pareto.append(
            f"| {labels[k]} | {p.replay.fmt()} | {p.new.fmt()} | {gain:+.4f} ({share:.0%}) | "
            f"{'-' if margin is None else f'{margin:+.4f}'} | "
            f"{'-' if dom is None else labels[dom]} |"
        )
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
        "replay loss.",
        "",
        "\n".join(pareto),
        "",
        "### Targets",
        "",
    ]
    for rule, fit in sorted(fits.items()):
        name = f"{rule} (the fit tool's default rule)" if rule == DEFAULT_FIT else rule
        lines.append(
            f"- `{name}`: "
            + ", ".join(
                f"{d} {fit['losses'][d]:.4f} ({fit['rules'].get(d, '?')}; predicted "
                f"{fit['predicted'][d]:.4f})"
                for d in s.domains
            )
        )
    if fits:
        fit = fits.get("budget") or next(iter(fits.values()))
        lines += [
            "",
            f"Target-fit held-out error (CPT runs; fitted up to "
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
    front = []
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
        err = dict(xerr=0 if np.isnan(x.std) else x.std, yerr=0 if np.isnan(y.std) else y.std)
        bars = ax.errorbar(
            x.mean,
            y.mean,
            fmt="s" if is_front else "o",
            ms=5 if is_front else 7,
            capsize=3,
            color="gray" if is_front and m.key != "cpt" else None,
            label=None if is_front and m.key != "cpt" else labels[m.key],
            **err,
        )
        color = bars.lines[0].get_color()
        seeds = points[m.key]
        ax.scatter(
            [p.replay for p in seeds],
            [p.new for p in seeds],
            s=12,
            marker="s" if is_front else "o",
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


# ----------------------------------------------------------------------------- command line


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


def select_methods(
    keys: Sequence[str], shares: Sequence[float], reweight_from: str
) -> List[Method]:
    """CPT, the ``--methods`` (each once) and the frontier points, checked.

    Raises:
        ToolError: an unknown method, nothing to compare, or ``reweighted`` without its source.
    """
    methods: Dict[str, Method] = {}
    for k in ["cpt", *keys, *(frontier_key(g) for g in shares)]:
        m = parse_method(k)
        methods.setdefault(m.key, m)
    if len(methods) < 2:
        raise ToolError("--methods: nothing to compare with CPT (and --frontier is empty)")
    if "reweighted" in methods and reweight_from not in methods:
        raise ToolError(f"--reweight-from {reweight_from}: not among --methods {list(keys)}")
    return list(methods.values())


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
