"""Velocitune against CPT, DBL and the paper's ablations, on one real corpus, base model and budget.

One command builds everything from a clean checkout and prints one table (issue 8):

  0. real text by domain (``examples/cpu_demo/get_text.sh``) and a 4k-BPE corpus
     (``tools/prepare_corpus.py``): ``general`` (the King James Bible: the replay domain),
     ``man``, ``pydocs``, ``code``; held-out split 10% of each domain's documents;
  1. a base model (the demo's tiny GPT) trained on ``general`` alone with a cosine schedule
     until its held-out loss has nearly stopped falling;
  2. **CPT**: continual pre-training from the base on the static token-proportional blend for
     the full budget, evaluating every domain every ``--cpt-eval-interval`` iterations
     (``--velocitune-policy static``): the baseline and the paper's proxy run;
  3. targets: ``tools/fit_target_loss.py`` on the CPT seeds' trajectories pooled, fitted on the
     first half of the budget (``--fit-fraction 0.5 --rising-domains hold-initial``); each
     seed's held-out error of that fit (the second half's evaluations) is a second table;
  4. **DBL**, **Velocitune** and **Velocitune without target loss** (``ratio``), every ``m``
     iterations, same floor;
  5. **reweighted static** (Velocitune's time-averaged weights, mean over seeds, as a fixed
     blend) and **replay-matched static** (the replay domain gets Velocitune's time-averaged
     replay weight, the new domains split the rest in their token-proportional ratio).

Every method runs on every seed from the same base checkpoint, token budget and learning-rate
schedule. ``--seed`` is the dataset seed of megatron-core's GPTDataset: it changes each domain's
document and sample shuffle (so the order and the samples drawn), the chunking of the held-out
documents into sequences (the same held-out documents every seed) and so the small held-out
subset evaluated at each update. Dropout is 0 and the model comes from the base checkpoint, so
the seed changes nothing else.

Runs are 2 gloo ranks with ``OMP_NUM_THREADS=1`` (``python -m torch.distributed.run
--nproc-per-node 2 examples/pretrain_gpt.py``). Each finished run leaves ``result.json`` in its
folder under ``--out``; a rerun with the same ``--out`` skips it, so the benchmark resumes.

Usage::

    .venv/bin/python benchmarks/compare_policies.py --out /tmp/compare          # default
    .venv/bin/python benchmarks/compare_policies.py --quick --out /tmp/cq       # mechanics
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
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from policy_stats import (  # noqa: E402
    STABLE_TOLERANCE,
    MethodRuns,
    mean_std,
    parse_final_losses,
    parse_loop_time,
    render_mae_table,
    render_table,
    replay_share_blend,
    stabilisation_iteration,
    summarise_method,
)

REPLAY_DOMAIN = "general"
DOMAINS = ["general", "man", "pydocs", "code"]

#: The forgetting tolerance of the ``vt-tolerance`` method and the headroom floor of the
#: ``-floor`` methods.
TOLERANCE = "5%"
MIN_HEADROOM = 0.1
#: Replay shares of the static frontier (CPT's token-proportional share is a point of it too).
FRONTIER = (0.1, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    Attributes:
        key (str): folder name under ``runs/``.
        label (str): its row in the table.
        policy (str): ``--velocitune-policy``.
        rule (Optional[str]): ``--velocitune-rising-rule`` (and the targets fitted with it).
        floor (bool): with ``--velocitune-min-headroom MIN_HEADROOM``.
        share (Optional[float]): a static frontier point: the replay domain's share.
    """

    key: str
    label: str
    policy: str
    rule: Optional[str] = None
    floor: bool = False
    share: Optional[float] = None

    @property
    def dynamic(self) -> bool:
        return self.policy != "static"


METHODS = [
    Method("cpt", "CPT (static, token-proportional)", "static"),
    Method("vt-budget", "Velocitune, budget", "velocity", "budget"),
    Method("vt-tolerance", f"Velocitune, tolerance {TOLERANCE}", "velocity", "tolerance"),
    Method("vt-hold-initial", "Velocitune, hold-initial", "velocity", "hold-initial"),
    Method("vt-hold-initial-floor", f"Velocitune, hold-initial, floor {MIN_HEADROOM}",
           "velocity", "hold-initial", floor=True),
    Method("dbl", "DBL", "dbl", "budget"),
    Method("ratio", "Velocitune w/o target (ratio)", "ratio"),
    Method("reweighted", "reweighted static (VT-budget time-avg)", "static"),
] + [Method(f"frontier-{g:.2f}", f"static, replay {g:.2f}", "static", share=g) for g in FRONTIER]
BY_KEY = {m.key: m for m in METHODS}
DYNAMIC = {m.key for m in METHODS if m.dynamic}
#: The Velocitune method whose time-averaged blend is the reweighted static one.
REWEIGHT_FROM = "vt-budget"


@dataclass(frozen=True)
class Setting:
    """Every size of the experiment (``--quick`` shrinks them)."""

    base_iters: int = 800
    base_lr: float = 2e-3
    base_min_lr: float = 1e-4
    cpt_iters: int = 200
    cpt_lr: float = 1e-3
    warmup: int = 5
    cpt_eval_interval: int = 5
    update_interval: int = 10
    eval_iters: int = 4
    min_weight: float = 0.01
    fit_fraction: float = 0.5
    global_batch: int = 32
    micro_batch: int = 8
    seq_length: int = 128
    seeds: tuple = (1, 2, 3)
    base_seed: int = 1234
    #: The base model's blend: the replay domain's share, the new domains splitting the rest in
    #: their token ratio (a pretrained LM has seen a little of everything); None: replay only.
    base_replay_share: Optional[float] = 0.85

    @property
    def budget_tokens(self) -> int:
        """Tokens of the continual pre-training budget."""
        return self.cpt_iters * self.global_batch * self.seq_length

    @property
    def warmup_tokens(self) -> int:
        """Tokens of the LR warmup (evaluations before it are left out of the fits)."""
        return self.warmup * self.global_batch * self.seq_length


QUICK = Setting(base_iters=150, cpt_iters=60, warmup=5, cpt_eval_interval=2, update_interval=6,
                seeds=(1,))


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(cmd: Sequence[str], log_path: str) -> float:
    """Run ``cmd`` from the repository root, output to ``log_path``; returns the wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(list(cmd), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall


def _torchrun(python: str) -> List[str]:
    return [python, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(_free_port()), os.path.join(REPO, "examples", "pretrain_gpt.py")]


def _model_args(corpus: str, s: Setting) -> List[str]:
    return ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4",
            "--seq-length", str(s.seq_length), "--micro-batch-size", str(s.micro_batch),
            "--global-batch-size", str(s.global_batch), "--hidden-dropout", "0",
            "--attention-dropout", "0", "--tokenizer-model", os.path.join(corpus, "tokenizer.json"),
            "--split", "90,10,0", "--num-workers", "1", "--log-interval", "25",
            "--eval-interval", "0"]


def token_blend(corpus: dict) -> List[float]:
    """The token-proportional blend of the corpus's domains (CPT's static blend)."""
    tokens = np.asarray([d["tokens"] for d in corpus["domains"]], np.float64)
    return (tokens / tokens.sum()).tolist()


def data_path(prefixes: Sequence[str], weights: Sequence[float]) -> List[str]:
    """Megatron-LM ``--data-path w1 p1 w2 p2 ...`` as argument words."""
    out: List[str] = []
    for p, w in zip(prefixes, weights):
        out += [f"{w:.6f}", p]
    return out


# ----------------------------------------------------------------------------- stages


def prepare_corpus(out: str, python: str) -> dict:
    """Stage 0: text from Debian packages and the tokenized corpus (kept when present)."""
    corpus = os.path.join(out, "corpus")
    if not os.path.exists(os.path.join(corpus, "corpus.json")):
        _log("text and corpus")
        subprocess.run(["bash", "examples/cpu_demo/get_text.sh", os.path.join(out, "text")],
                       cwd=REPO, check=True)
        cmd = [python, "tools/prepare_corpus.py", "--output-dir", corpus, "--vocab-size", "4096",
               "--max-bytes-per-domain", "2500000"]
        for d in DOMAINS:
            cmd += ["--domain", f"{d}={os.path.join(out, 'text', d)}"]
        _run(cmd, os.path.join(out, "corpus.log"))
    with open(os.path.join(corpus, "corpus.json"), encoding="utf-8") as f:
        return json.load(f)


def train_base(out: str, python: str, corpus: dict, s: Setting) -> dict:
    """Stage 1: the base model (cosine decay to ``base_min_lr``).

    On a replay-heavy blend of every domain (``base_replay_share``), or on the replay domain
    alone when that is None.
    """
    base = os.path.join(out, "base")
    result = os.path.join(base, "result.json")
    if os.path.exists(result):
        with open(result, encoding="utf-8") as f:
            return json.load(f)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    prefixes = [d["prefix"] for d in corpus["domains"]]
    replay = DOMAINS.index(REPLAY_DOMAIN)
    if s.base_replay_share is None:
        _log(f"base model: {s.base_iters} iterations on {REPLAY_DOMAIN}")
        blend = [prefixes[replay]]
    else:
        weights = replay_share_blend([d["tokens"] for d in corpus["domains"]], [replay],
                                     s.base_replay_share)
        _log(f"base model: {s.base_iters} iterations, {REPLAY_DOMAIN} {s.base_replay_share}")
        blend = data_path(prefixes, weights)
    cmd = _torchrun(python) + _model_args(os.path.dirname(prefixes[0]), s) + [
        "--data-path", *blend, "--train-iters", str(s.base_iters), "--seed", str(s.base_seed),
        "--lr", str(s.base_lr), "--min-lr", str(s.base_min_lr), "--lr-decay-style", "cosine",
        "--lr-warmup-iters", str(max(1, s.base_iters // 10)),
        "--velocitune-policy", "static",
        "--velocitune-update-interval", str(max(1, s.base_iters // 16)),
        "--velocitune-eval-iters", str(s.eval_iters),
        "--save", base, "--tensorboard-dir", os.path.join(base, "tb")]
    wall = _run(cmd, os.path.join(base, "log.txt"))
    with open(os.path.join(base, "log.txt"), encoding="utf-8") as f:
        names, start, end, _ = parse_final_losses(f.read())
    at = names.index(REPLAY_DOMAIN)
    updates = _read_traj(os.path.join(base, "tb", "velocitune_trajectory.jsonl")).updates
    curve = [(u["iteration"], u["eval_loss"][at]) for u in updates]
    curves = {d: [(u["iteration"], u["eval_loss"][i]) for u in updates]
              for i, d in enumerate(names)}
    res = {"wall_s": wall, "start_loss": start[at], "final_loss": end[at], "curve": curve,
           "domains": names, "start_losses": start, "final_losses": end, "curves": curves}
    with open(result, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    return res


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(run_dir: str, result: str) -> bool:
    """Claim ``run_dir`` for this process; False when ``result`` appeared meanwhile.

    Several workers may share one ``--out`` (``--reverse`` runs the seeds from the other end):
    a run another live worker has claimed is waited for, never run twice; a claim whose
    process has died is taken over.
    """
    os.makedirs(run_dir, exist_ok=True)
    claim = os.path.join(run_dir, ".claim")
    waited = False
    while True:
        if os.path.exists(result):
            return False
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _claim_holder(claim)
            if pid and pid != os.getpid() and _pid_alive(pid):
                if not waited:
                    _log(f"waiting for {run_dir} (run by process {pid})")
                    waited = True
                time.sleep(10)
                continue
            if pid == os.getpid():
                return True
            try:
                os.remove(claim)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True


def _claim_holder(claim: str) -> int:
    """The process id written in a claim file (0: none, unreadable or gone)."""
    try:
        with open(claim, encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _run_dir(out: str, key: str, seed: int) -> str:
    return os.path.join(out, "runs", key, f"seed{seed}")


def _result(out: str, key: str, seed: int) -> Optional[dict]:
    """A finished run's ``result.json``, or None."""
    path = os.path.join(_run_dir(out, key, seed), "result.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _try_claim(run_dir: str) -> bool:
    """Claim ``run_dir`` without waiting: False when another live process holds it."""
    pid = _claim_holder(os.path.join(run_dir, ".claim"))
    if pid and pid != os.getpid() and _pid_alive(pid):
        return False
    return _claim(run_dir, os.path.join(run_dir, "result.json"))


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _read_traj(path: str):
    from megatron_velocitune.trajectory import read_trajectory

    return read_trajectory(path)


def cpt_run(out: str, python: str, corpus: dict, s: Setting, key: str, seed: int,
            policy: str, weights: Sequence[float], interval: int,
            extra: Sequence[str] = ()) -> dict:
    """One continual pre-training run from the base; returns (and caches) its result."""
    run_dir = os.path.join(out, "runs", key, f"seed{seed}")
    result = os.path.join(run_dir, "result.json")
    if not _claim(run_dir, result):
        with open(result, encoding="utf-8") as f:
            return json.load(f)
    _log(f"run {key} seed {seed} ({policy}, every {interval} iterations)")
    for name in os.listdir(run_dir):
        if name != ".claim":
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
            if os.path.exists(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
    prefixes = [d["prefix"] for d in corpus["domains"]]
    tb = os.path.join(run_dir, "tb")
    cmd = _torchrun(python) + _model_args(os.path.dirname(prefixes[0]), s) + [
        "--data-path", *data_path(prefixes, weights),
        "--load", os.path.join(out, "base"), "--finetune",
        "--train-iters", str(s.cpt_iters), "--seed", str(seed),
        "--lr", str(s.cpt_lr), "--lr-decay-style", "constant", "--lr-warmup-iters", str(s.warmup),
        "--velocitune-policy", policy, "--velocitune-update-interval", str(interval),
        "--velocitune-eval-iters", str(s.eval_iters), "--tensorboard-dir", tb, *extra]
    if policy != "static":
        cmd += ["--velocitune-min-weight", str(s.min_weight)]
    log_path = os.path.join(run_dir, "log.txt")
    wall = _run(cmd, log_path)
    with open(log_path, encoding="utf-8") as f:
        names, start, end, final_w = parse_final_losses(f.read())
    traj = _read_traj(os.path.join(tb, "velocitune_trajectory.jsonl"))
    applied = [u for u in traj.updates if not u.get("skipped")]
    stable = stabilisation_iteration([u["iteration"] for u in applied],
                                     [u["weights"] for u in applied], traj.header["weights"])
    res = {"key": key, "seed": seed, "policy": policy, "domains": names, "start_loss": start,
           "final_loss": end, "final_weights": final_w, "wall_s": wall,
           "stable_at": stable if policy != "static" else 0,
           "updates": len(traj.updates), "skipped": len(traj.updates) - len(applied),
           "blend": list(weights), "trajectory": os.path.join(tb, "velocitune_trajectory.jsonl")}
    _write_json_atomic(result, res)
    return res


def fit_targets(out: str, python: str, cpt: List[dict], s: Setting,
                rule: str = "budget") -> Dict[str, object]:
    """Stage 3: targets by ``rule`` from the pooled CPT trajectories; each seed's fit error."""
    from megatron_velocitune.scaling_law import held_out_error, loss_points

    budget, min_tokens = s.budget_tokens, s.warmup_tokens
    targets = os.path.join(out, f"targets-{rule}.json")
    cpt = sorted(cpt, key=lambda r: r["seed"])
    trajs = [r["trajectory"] for r in cpt]
    tmp = f".{os.getpid()}.tmp"
    png = os.path.join(out, f"target_fit-{rule}.png")
    log = os.path.join(out, f"fit_targets-{rule}.txt")
    cmd = [python, "tools/fit_target_loss.py", *trajs, "--fit-fraction", str(s.fit_fraction),
           "--budget-tokens", str(budget), "--min-tokens", str(min_tokens),
           "--rising-domains", rule, "-o", targets + tmp, "--plot", png + tmp + ".png"]
    if rule == "tolerance":
        cmd += ["--forgetting-tolerance", TOLERANCE]
    _run(cmd, log + tmp)
    os.replace(targets + tmp, targets)
    os.replace(png + tmp + ".png", png)
    os.replace(log + tmp, log)
    cutoff = s.fit_fraction * budget
    per_seed: Dict[str, List[float]] = {d: [] for d in DOMAINS}
    spans: List[float] = []
    for r in cpt:
        pts = loss_points(_read_traj(r["trajectory"]), DOMAINS)
        keep = pts.tokens >= min_tokens
        fitted = pts.tokens[keep & (pts.tokens <= cutoff)]
        spans.append(float(fitted.max() / fitted.min()))
        for i, d in enumerate(DOMAINS):
            try:
                per_seed[d].append(held_out_error(pts.tokens[keep], pts.losses[keep, i], cutoff).mae)
            except ValueError:
                per_seed[d].append(float("nan"))
    with open(targets, encoding="utf-8") as f:
        fits = json.load(f)
    pooled = {d: (fits["fits"][d]["held_out_mae"] if fits["fits"][d]["held_out_mae"] is not None
                  else float("nan")) for d in DOMAINS}
    return {"targets": targets, "per_seed": per_seed, "pooled": pooled, "fit_span": spans,
            "losses": fits["losses"], "fits": fits["fits"], "min_tokens": min_tokens,
            "cutoff_tokens": cutoff, "budget_tokens": budget}


def time_averaged(results: List[dict]) -> np.ndarray:
    """Mean over runs of each run's time-averaged blend (each blend weighted by its samples)."""
    from megatron_velocitune.weight_history import run_history, time_averaged_weights

    avgs = []
    for r in results:
        t = _read_traj(r["trajectory"])
        h = run_history(t.header, t.updates, "samples")
        avgs.append(time_averaged_weights(h.initial, h.updates, h.end))
    avg = np.mean(avgs, axis=0)
    return avg / avg.sum()


def plots(out: str, python: str, results: Dict[str, List[dict]]) -> List[str]:
    """Weights / held-out loss / velocity over iterations, one column per method, seed 1."""
    written = []
    keys = [k for k in ("cpt", "dbl", "velocitune", "ratio") if results.get(k)]
    labels = {"cpt": "CPT", "dbl": "DBL", "velocitune": "Velocitune", "ratio": "w/o target"}
    png = os.path.join(out, "weights_by_method.png")
    cmd = [python, "tools/plot_weights.py", *[results[k][0]["trajectory"] for k in keys],
           "--labels", *[labels[k] for k in keys], "--layout", "columns", "--output", png,
           "--title", f"seed {results[keys[0]][0]['seed']}: weights, held-out loss, velocity"]
    _run(cmd, os.path.join(out, "plot.log"))
    written.append(png)
    vt = results.get("velocitune", [])
    if len(vt) > 1:
        png = os.path.join(out, "velocitune_seeds.png")
        cmd = [python, "tools/plot_weights.py", *[r["trajectory"] for r in vt],
               "--labels", *[f"seed {r['seed']}" for r in vt], "--panels", "weights",
               "--layout", "columns", "--output", png, "--title", "Velocitune weights by seed"]
        _run(cmd, os.path.join(out, "plot.log"))
        written.append(png)
    return written


# ----------------------------------------------------------------------------- the report


def report(out: str, s: Setting, corpus: dict, base: dict, results: Dict[str, List[dict]],
           fit: dict, blends: Dict[str, List[float]], written: List[str]) -> str:
    """The tables as Markdown (printed, and written to ``table.md`` / ``table.json``)."""
    replay = [DOMAINS.index(REPLAY_DOMAIN)]
    labels = {k: label for k, label, _ in METHODS}
    cpt_rows = summarise_method(_runs("cpt", labels, results), DOMAINS, replay)
    cpt_ref = np.array([x.mean for x in cpt_rows.per_domain])
    rows = [summarise_method(_runs(k, labels, results), DOMAINS, replay, cpt_ref)
            for k, _, _ in METHODS if results.get(k)]
    plain = [r for k in ("reweighted", "replay_matched") for r in results.get(k, [])]
    use_cpu = all(r.cpu_ms.n for r in rows)
    static_plain = mean_std([_cpu_ms(r) if use_cpu else r["wall_s"] for r in plain])
    table = render_table(rows, DOMAINS, overhead_base=static_plain if static_plain.n else None,
                         overhead_label="static (no periodic eval)" if static_plain.n else "CPT")
    mae = render_mae_table(DOMAINS, fit["per_seed"], fit["pooled"])
    budget = s.budget_tokens
    tokens = {d["name"]: d["tokens"] for d in corpus["domains"]}
    lines = [
        f"## Policy comparison: {len(s.seeds)} seed(s) {list(s.seeds)}, budget {s.cpt_iters} "
        f"iterations x {s.global_batch} x {s.seq_length} = {budget:,} tokens",
        "",
        f"Base model: {s.base_iters} iterations on `{REPLAY_DOMAIN}` (held-out loss "
        f"{base['start_loss']:.3f} -> {base['final_loss']:.3f}; last evaluations "
        + ", ".join(f"{it}: {loss:.3f}" for it, loss in base["curve"][-4:]) + ").",
        "Corpus tokens: " + ", ".join(f"{k} {v:,}" for k, v in tokens.items())
        + "; held-out = 10% of each domain's documents (full held-out sets for the final loss).",
        f"Dynamic policies update every {s.update_interval} iterations (floor "
        f"{s.min_weight}); CPT evaluates every {s.cpt_eval_interval} for the target fit; the "
        "two static ablations evaluate only at the end. Wall time is the whole 2-rank run "
        "(start-up, data, training, evaluations); loop CPU is the training "
        "loop's CPU time per iteration on the last rank (periodic evaluations included), and "
        "the overhead compares it with the static runs that evaluate only at the end.",
        "",
        "Final held-out loss per domain (nats, full held-out sets), mean ± std over seeds "
        "(sample std). `*`: differs from CPT by more than the seed spread "
        "(|mean difference| > std + std_CPT). Worst vs CPT: the domain this method loses most "
        f"on against CPT. Stable at: the iteration of the last update that moved any weight by "
        f"more than {STABLE_TOLERANCE} (absolute), mean over seeds that stabilised.",
        "",
        table,
        "",
        "Blends (general, man, pydocs, code):",
    ]
    for k, w in blends.items():
        lines.append(f"- {k}: " + ", ".join(f"{x:.4f}" for x in w))
    lines += [
        "",
        f"### Target-fit held-out error (CPT runs; fit on evaluations from {fit['min_tokens']:,} "
        f"to {fit['cutoff_tokens']:,.0f} tokens, spanning {min(fit['fit_span']):.1f}x, mean "
        "absolute error on the later ones)",
        "",
        mae,
        "",
        "Targets (pooled fit, general by the hold-initial rule if it rose): "
        + ", ".join(f"{d} {fit['losses'][d]:.4f}" for d in DOMAINS),
        "",
        "Plots: " + ", ".join(written),
    ]
    text = "\n".join(lines)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "table.json"), "w", encoding="utf-8") as f:
        json.dump({"setting": asdict(s), "domains": DOMAINS, "blends": blends,
                   "rows": [asdict(r) for r in rows], "static_plain_wall_s": asdict(static_plain),
                   "fit": {k: v for k, v in fit.items() if k != "fits"}, "base": base,
                   "runs": results}, f, indent=1)
    return text


def _cpu_ms(result: dict) -> float:
    """The run's training-loop CPU ms/iteration (last rank), from its log; nan if absent."""
    log = os.path.join(os.path.dirname(os.path.dirname(result["trajectory"])), "log.txt")
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            found = parse_loop_time(f.read())
    except OSError:
        return float("nan")
    return float("nan") if found is None else found[3]


def _runs(key: str, labels: Dict[str, str], results: Dict[str, List[dict]]) -> MethodRuns:
    rs = results[key]
    return MethodRuns(labels[key], [r["final_loss"] for r in rs],
                      [r["stable_at"] for r in rs], [r["wall_s"] for r in rs], key in DYNAMIC,
                      [_cpu_ms(r) for r in rs])


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="compare_policies.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Default: ~2 hours on 2 CPU cores; --quick: ~15 minutes (mechanics only).",
    )
    p.add_argument("--out", required=True, help="Output folder (finished runs in it are kept).")
    p.add_argument("--quick", action="store_true",
                   help=f"Small sizes: base {QUICK.base_iters}, budget {QUICK.cpt_iters} "
                        f"iterations, seeds {list(QUICK.seeds)}.")
    p.add_argument("--seeds", type=int, nargs="+", help="Dataset seeds (default 1 2 3; quick 1).")
    p.add_argument("--base-iters", type=int, help="Base model iterations.")
    p.add_argument("--cpt-iters", type=int, help="Continual pre-training budget in iterations.")
    p.add_argument("--update-interval", type=int, help="m of the dynamic policies.")
    p.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"),
                   help="Interpreter with this package and megatron-core (default .venv).")
    p.add_argument("--reverse", action="store_true",
                   help="Take the seeds from the last one: a second worker on the same --out "
                        "(runs are claimed, never run twice).")
    p.add_argument("--report-only", action="store_true",
                   help="Run nothing: print the tables from the runs finished under --out.")
    p.add_argument("--stop-after", choices=["corpus", "base", "cpt"],
                   help="Stop after this stage (the rest runs on the next call).")
    return p


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The :class:`Setting` the flags ask for."""
    s = QUICK if args.quick else Setting()
    if args.seeds:
        s = replace(s, seeds=tuple(args.seeds))
    if args.base_iters:
        s = replace(s, base_iters=args.base_iters)
    if args.cpt_iters:
        s = replace(s, cpt_iters=args.cpt_iters)
    if args.update_interval:
        s = replace(s, update_interval=args.update_interval)
    if len(set(s.seeds)) != len(s.seeds):
        raise SystemExit(f"--seeds {list(s.seeds)}: repeated seed")
    return s


def check_setting(out: str, s: Setting) -> None:
    """Stop when ``out`` holds runs of another setting than ``s`` (the seeds may differ)."""
    path = os.path.join(out, "setting.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    mine = json.loads(json.dumps(asdict(s)))
    diff = {k: (old.get(k), v) for k, v in mine.items() if k != "seeds" and old.get(k) != v}
    if diff:
        raise SystemExit(f"{out} holds runs of another setting {diff}: use another --out")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run (or resume) the whole comparison and print the tables."""
    args = build_parser().parse_args(argv)
    s = setting_from_args(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    check_setting(out, s)
    with open(os.path.join(out, "setting.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(s), f, indent=1)
    t0 = time.time()
    py = args.python
    corpus = prepare_corpus(out, py)
    if args.stop_after == "corpus":
        return 0
    base = train_base(out, py, corpus, s)
    if args.stop_after == "base":
        return 0
    tokens = [d["tokens"] for d in corpus["domains"]]
    cpt_blend = token_blend(corpus)
    results: Dict[str, List[dict]] = {m.key: [] for m in METHODS}
    blends: Dict[str, List[float]] = {"cpt": cpt_blend}
    if args.report_only:
        return _report_finished(out, s, corpus, base, py, blends)

    order = list(reversed(s.seeds)) if args.reverse else list(s.seeds)
    for seed in order:
        results["cpt"].append(cpt_run(out, py, corpus, s, "cpt", seed, "static", cpt_blend,
                                      s.cpt_eval_interval))
    if args.stop_after == "cpt":
        return 0
    rules = sorted({m.rule for m in METHODS if m.rule})
    fits = {rule: fit_targets(out, py, results["cpt"], s, rule) for rule in rules}
    fit = fits["budget"]
    init = {r["seed"]: initial_loss_file(out, r) for r in results["cpt"]}
    replay = DOMAINS.index(REPLAY_DOMAIN)

    # Work list in priority order; a worker takes the first task nobody has claimed whose
    # inputs exist (the reweighted blend needs every REWEIGHT_FROM run), so workers sharing
    # --out never wait while there is something to run.
    priority = ["vt-budget"] + [m.key for m in METHODS if m.share is not None] + [
        m.key for m in METHODS if m.key not in ("cpt", "vt-budget") and m.share is None]
    tasks = [(k, x) for k in priority for x in order]

    def static_blends() -> Optional[Dict[str, List[float]]]:
        vt = [_result(out, REWEIGHT_FROM, x) for x in s.seeds]
        if any(r is None for r in vt):
            return None
        return {"reweighted": time_averaged(vt).tolist()}

    for m in METHODS:
        if m.share is not None:
            blends[m.key] = replay_share_blend(tokens, [replay], m.share).tolist()
    pending = list(tasks)
    while pending:
        picked = None
        for key, seed in pending:
            if _result(out, key, seed) is not None or key != "reweighted" or static_blends():
                if _result(out, key, seed) is not None or _try_claim(_run_dir(out, key, seed)):
                    picked = (key, seed)
                    break
        if picked is None:
            time.sleep(10)
            continue
        pending.remove(picked)
        key, seed = picked
        m = BY_KEY[key]
        extra = ["--velocitune-initial-loss-file", init[seed]]
        if m.rule:
            extra += ["--velocitune-target-loss-file", fits[m.rule]["targets"],
                      "--velocitune-rising-rule", m.rule]
            if m.rule == "tolerance":
                extra += ["--velocitune-forgetting-tolerance", TOLERANCE]
            if m.floor:
                extra += ["--velocitune-min-headroom", str(MIN_HEADROOM)]
        if m.dynamic:
            cpt_run(out, py, corpus, s, key, seed, m.policy, cpt_blend, s.update_interval, extra)
        else:
            blends.update(static_blends() or {})
            cpt_run(out, py, corpus, s, key, seed, "static", blends[key], s.cpt_iters, extra)
    blends.update(static_blends() or {})
    _write_json_atomic(os.path.join(out, "blends.json"), blends)
    for key, seed in tasks:  # runs another worker still has in hand
        while _result(out, key, seed) is None:
            time.sleep(10)
        results.setdefault(key, []).append(_result(out, key, seed))
    for key in results:
        results[key].sort(key=lambda r: r["seed"])
    written = plots(out, py, results)
    text = report(out, s, corpus, base, results, fit, blends, written)
    print(text)
    print(f"\nwrote {os.path.join(out, 'table.md')} and table.json; "
          f"this call took {time.time() - t0:.0f} s")
    return 0


def initial_loss_file(out: str, cpt: dict) -> str:
    """The base model's held-out loss as the CPT run of the same seed measured it, as a file.

    Same base model, same seed, so the same held-out sequences: every other method of that
    seed starts from this value instead of measuring it again.
    """
    path = os.path.join(out, f"initial_loss_seed{cpt['seed']}.json")
    # The trajectory's header keeps full precision; the printed table has 4 decimals.
    losses = _read_traj(cpt["trajectory"]).header.get("initial_loss") or cpt["start_loss"]
    _write_json_atomic(path, {"losses": dict(zip(cpt["domains"], losses)),
                              "source": cpt["trajectory"]})
    return path


def _report_finished(out: str, s: Setting, corpus: dict, base: dict, py: str,
                     blends: Dict[str, List[float]]) -> int:
    """``--report-only``: the tables from whatever runs have finished under ``out``."""
    results: Dict[str, List[dict]] = {}
    for key, _, _ in METHODS:
        found = []
        for seed in s.seeds:
            path = os.path.join(out, "runs", key, f"seed{seed}", "result.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    found.append(json.load(f))
        if found:
            results[key] = found
    if not results.get("cpt"):
        raise SystemExit(f"{out}: no finished CPT run yet")
    path = os.path.join(out, "blends.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            blends.update(json.load(f))
    elif len(results.get("velocitune", [])) == len(s.seeds):
        avg = time_averaged(results["velocitune"])
        tokens = [d["tokens"] for d in corpus["domains"]]
        replay = DOMAINS.index(REPLAY_DOMAIN)
        blends["reweighted"] = avg.tolist()
        blends["replay_matched"] = replay_share_blend(tokens, [replay], float(avg[replay])).tolist()
    fit = fit_targets(out, py, results["cpt"], s)
    written = plots(out, py, results) if results.get("velocitune") else []
    print(report(out, s, corpus, base, results, fit, blends, written))
    print("\n(--report-only: " + ", ".join(f"{k} {len(v)} seed(s)" for k, v in results.items())
          + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
