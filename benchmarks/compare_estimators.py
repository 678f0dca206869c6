#!/usr/bin/env python3
"""Held-out vs training-stream velocity estimators on the demo's continual pre-training.

    python benchmarks/compare_estimators.py [--out benchmarks/out/estimators] [--nproc 2]

Uses the CPU demo's corpus and base model (``examples/cpu_demo/run.sh`` builds them in
``--demo-dir`` when missing), then, from the same base and blend:

1. two proxy runs (static blend, first half of the budget), one per estimator;
2. targets fitted on each (the Chinchilla fit of tools/fit_target_loss.py), so each estimator
   is compared with its own initial loss and targets;
3. three runs of the full budget: ``static`` (megatron-core's static path: no evaluation, no
   training-stream accumulation: the cost floor), ``eval`` (Velocitune as in the paper,
   evaluating every m iterations) and ``train`` (Velocitune reading the training stream: no
   extra forward passes); ``--repeats`` times each, interleaved (static, eval, train, static,
   ...), so a drift of the machine's speed hits all three alike.

It prints one table: per-iteration time of each kind against static (wall and CPU; the overhead
is the mean ± std over repeats of each repeat's ratio to the static run beside it; the first log
interval, the warm-up, is left out), the correlation of the two estimators' velocities over the
eval run's updates, the weight trajectories' distance, and each run's final per-domain held-out
loss (identical across repeats: the runs are deterministic).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_velocitune.core.policy import velocity  # noqa: E402
from megatron_velocitune.core.trajectory import read_trajectory  # noqa: E402

GBS, SEQ = 32, 128
MODEL = [
    "--num-layers",
    "4",
    "--hidden-size",
    "128",
    "--num-attention-heads",
    "4",
    "--seq-length",
    str(SEQ),
    "--micro-batch-size",
    "8",
    "--global-batch-size",
    str(GBS),
    "--hidden-dropout",
    "0",
    "--attention-dropout",
    "0",
    "--split",
    "90,10,0",
    "--num-workers",
    "1",
    "--log-interval",
    "10",
    "--seed",
    "1234",
    "--lr",
    "1e-3",
    "--lr-decay-style",
    "constant",
    "--lr-warmup-iters",
    "10",
    "--eval-interval",
    "0",
    "--velocitune-eval-iters",
    "4",
]
INTERVAL = re.compile(r"elapsed time per iteration \(ms\): ([\d.]+)")
LOOP = re.compile(
    r"training loop: (\d+) iterations in ([\d.]+) s \(([\d.]+) ms/iteration wall, "
    r"([\d.]+) ms/iteration CPU"
)
ROW = re.compile(r"^\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)\s+([\d.]+)\s*$")


def run(cmd: List[str], log: str, env: Dict[str, str]) -> str:
    """Run a command, tee its output to ``log``, fail loudly with the log's tail."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    text = open(log).read()
    if proc.returncode:
        sys.exit(
            f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}); see {log}:\n"
            + "\n".join(text.splitlines()[-20:])
        )
    return text


def parse_run(text: str) -> Dict:
    """Loop timing and the final per-domain held-out table from a run's log."""
    m = LOOP.search(text)
    rows = {}
    table = text[text.rindex("held-out loss per domain") :]
    for line in table.splitlines()[2:]:
        r = ROW.match(line)
        if not r:
            break
        rows[r.group(1)] = float(r.group(3))
    steady = [float(x) for x in INTERVAL.findall(text)[1:]]
    return {
        "iters": int(m.group(1)),
        "wall_ms": float(np.mean(steady)) if steady else float(m.group(3)),
        "cpu_ms": float(m.group(4)),
        "final": rows,
    }


def overhead(runs: List[Dict], static: List[Dict], key: str) -> str:
    """Mean ± std over repeats of each run's ``key`` against the static run of its repeat."""
    ratios = [100.0 * (r[key] / s[key] - 1.0) for r, s in zip(runs, static)]
    spread = f" ± {np.std(ratios, ddof=1):.1f}" if len(ratios) > 1 else ""
    return f"{np.mean(ratios):+.1f}%{spread}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "estimators"))
    p.add_argument(
        "--demo-dir",
        default=os.path.join(ROOT, "outputs", "demo"),
        help="Where the demo's corpus/ and base/ are (built there when missing).",
    )
    p.add_argument("--iters", type=int, default=200, help="Continual pre-training budget.")
    p.add_argument("--update-interval", type=int, default=20)
    p.add_argument("--nproc", type=int, default=2, help="Processes (GPUs on a GPU machine).")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Timing runs of each kind, interleaved (default: %(default)s).",
    )
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning")
    corpus, base = os.path.join(args.demo_dir, "corpus"), os.path.join(args.demo_dir, "base")
    if not os.path.exists(os.path.join(base, "latest_checkpointed_iteration.txt")):
        run(
            ["bash", "examples/cpu_demo/run.sh", args.demo_dir],
            os.path.join(args.demo_dir + ".log"),
            dict(env, PYTHON=args.python),
        )
    manifest = json.load(open(os.path.join(corpus, "corpus.json")))
    blend = []
    for w, d in zip(manifest["weights"], manifest["domains"]):
        blend += [f"{w:.6f}", os.path.join(corpus, d["name"])]
    os.makedirs(args.out, exist_ok=True)
    launch = [
        args.python,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(args.nproc),
        "--master-port",
        "29577",
        "examples/pretrain_gpt.py",
        *MODEL,
        "--tokenizer-model",
        os.path.join(corpus, "tokenizer.json"),
        "--data-path",
        *blend,
        "--train-iters",
        str(args.iters),
        "--load",
        base,
        "--finetune",
    ]

    # 1. a proxy per estimator (static blend, first half); 2. targets on each footing.
    targets, proxies = {}, {}
    for source in ("eval", "train"):
        proxy = os.path.join(args.out, f"proxy_{source}")
        shutil.rmtree(proxy, ignore_errors=True)
        run(
            launch
            + [
                "--exit-interval",
                str(args.iters // 2),
                "--velocitune-policy",
                "static",
                "--velocitune-loss-source",
                source,
                "--velocitune-update-interval",
                str(max(1, args.iters // 20)),
                "--tensorboard-dir",
                proxy,
            ],
            os.path.join(args.out, f"proxy_{source}.log"),
            env,
        )
        proxies[source] = read_trajectory(os.path.join(proxy, "velocitune_trajectory.jsonl"))
        targets[source] = os.path.join(args.out, f"targets_{source}.json")
        run(
            [
                args.python,
                "tools/fit_target_loss.py",
                os.path.join(proxy, "velocitune_trajectory.jsonl"),
                "--rising-domains",
                "hold-initial",
                "--budget-tokens",
                str(args.iters * GBS * SEQ),
                "-o",
                targets[source],
            ],
            os.path.join(args.out, f"fit_{source}.log"),
            env,
        )

    # 3. the three runs.
    runs = {
        "static": [
            "--velocitune-policy",
            "static",
            "--velocitune-update-interval",
            str(args.iters + 1),
        ],
        "eval": [
            "--velocitune-target-loss-file",
            targets["eval"],
            "--velocitune-update-interval",
            str(args.update_interval),
        ],
        "train": [
            "--velocitune-target-loss-file",
            targets["train"],
            "--velocitune-loss-source",
            "train",
            "--velocitune-update-interval",
            str(args.update_interval),
        ],
    }
    repeats: Dict[str, List[Dict]] = {name: [] for name in runs}
    for i in range(args.repeats):
        for name, extra in runs.items():
            tb = os.path.join(args.out, f"{name}{i}")
            shutil.rmtree(tb, ignore_errors=True)
            text = run(
                launch + extra + ["--tensorboard-dir", tb],
                os.path.join(args.out, f"{name}{i}.log"),
                env,
            )
            repeats[name].append(parse_run(text))
            repeats[name][-1]["trajectory"] = os.path.join(tb, "velocitune_trajectory.jsonl")
    results = {name: rs[0] for name, rs in repeats.items()}

    # Velocities of both estimators on the eval run's updates, each against its own targets.
    ev = read_trajectory(results["eval"]["trajectory"])
    tr = read_trajectory(results["train"]["trajectory"])
    t_eval, t_train = (
        np.array([json.load(open(targets[s]))["losses"][d] for d in ev.domains])
        for s in ("eval", "train")
    )
    # Each estimator against its own footing: held-out L_init, or the stream's first draws.
    i_eval, i_train = (np.asarray(proxies[s].header["initial_loss"]) for s in ("eval", "train"))
    v_eval = np.array([velocity(u["eval_loss"], i_eval, t_eval) for u in ev.updates])
    v_train = np.array([velocity(u["train_loss"], i_train, t_train) for u in ev.updates])
    r_all = float(np.corrcoef(v_eval.ravel(), v_train.ravel())[0, 1])
    w_eval = np.array([u["weights"] for u in ev.updates])
    w_train = np.array([u["weights"] for u in tr.updates])
    w_gap = float(np.abs(w_eval - w_train).sum(1).max())

    lines = [
        f"| run | ms/iter wall (mean of {args.repeats}) | vs static | ms/iter CPU | vs static "
        "| final held-out loss " + " / ".join(ev.domains) + " | mean |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, rs in repeats.items():
        final = [results[name]["final"][d] for d in ev.domains]
        lines.append(
            f"| {name} | {np.mean([r['wall_ms'] for r in rs]):.1f} "
            f"| {overhead(rs, repeats['static'], 'wall_ms')} "
            f"| {np.mean([r['cpu_ms'] for r in rs]):.1f} "
            f"| {overhead(rs, repeats['static'], 'cpu_ms')} | "
            + " / ".join(f"{x:.4f}" for x in final)
            + f" | {np.mean(final):.4f} |"
        )
    per_domain = [
        f"{float(np.corrcoef(v_eval[:, i], v_train[:, i])[0, 1]):.3f}"
        if v_eval[:, i].std() > 0 and v_train[:, i].std() > 0
        else "constant"
        for i in range(len(ev.domains))
    ]
    lines += [
        "",
        f"velocity correlation (eval run, {len(ev.updates)} updates x {len(ev.domains)} "
        f"domains): r = {r_all:.3f}; per domain "
        + ", ".join(f"{d} {c}" for d, c in zip(ev.domains, per_domain)),
        f"weight trajectories eval vs train run: max L1 distance over updates {w_gap:.4f}; "
        "final blends " + " / ".join(f"{a:.3f}|{b:.3f}" for a, b in zip(w_eval[-1], w_train[-1])),
    ]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
