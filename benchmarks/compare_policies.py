"""Velocitune against the static frontier, CPT, DBL and the ablations on the demo's corpus.

One command builds everything from a clean checkout, then runs ``velocitune-compare``
(:mod:`megatron_velocitune.cli.compare_policies`) on it:

  0. real text by domain (``examples/cpu_demo/get_text.sh``) and a 4k-BPE corpus
     (``tools/prepare_corpus.py``): ``general`` (the King James Bible: the replay domain),
     ``man``, ``pydocs``, ``code``; held-out split 10% of each domain's documents;
  1. a base model (the demo's tiny GPT) with a cosine schedule until its held-out loss has
     nearly stopped falling, in one of two settings (``--setting``):
     ``realistic`` (the default): on a replay-heavy blend that holds a little of every domain
     (``general`` 0.85, the others sharing 0.15 in their token ratio), as a pretrained LM has
     seen some code and docs; ``replay-only``: on ``general`` alone (the new domains then start
     at ~10 nats, worse than a uniform guess over the vocabulary);
  2. ``velocitune-compare`` from that base: CPT (the proxy for the targets), Velocitune with
     each rising-domain rule, DBL, the ablations and the static frontier, 3 seeds, one table,
     the Pareto plot and the weight trajectories (see that tool's ``--help``).

Every method runs on every seed from the same base checkpoint, token budget and learning-rate
schedule. ``--seed`` is the dataset seed of megatron-core's GPTDataset: it changes each domain's
document and sample shuffle, and so the small held-out subset evaluated at each update (the
same held-out documents every seed). Dropout is 0, so the seed changes nothing else. Runs are
2 gloo ranks with ``OMP_NUM_THREADS=1``; finished runs are kept, so the benchmark resumes.

Usage::

    .venv/bin/python benchmarks/compare_policies.py --out /tmp/compare          # realistic
    .venv/bin/python benchmarks/compare_policies.py --setting replay-only --out /tmp/cmp-ro
    .venv/bin/python benchmarks/compare_policies.py --quick --out /tmp/cq       # mechanics
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from typing import List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_velocitune.cli import compare_policies as compare  # noqa: E402
from megatron_velocitune.laws.comparison import parse_final_losses, replay_share_blend  # noqa: E402

REPLAY_DOMAIN = "general"
DOMAINS = ["general", "man", "pydocs", "code"]
#: The base model's replay share per setting (None: the replay domain alone).
SETTINGS = {"realistic": 0.85, "replay-only": None}

# The shared run machinery, under the names the other benchmarks use.
data_path = compare.data_path
initial_loss_file = compare.initial_loss_file
time_averaged = compare.time_averaged
_log = compare.log
_read_traj = compare.read_traj
_result = compare.result_of


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


QUICK = Setting(
    base_iters=150, cpt_iters=60, warmup=5, cpt_eval_interval=2, update_interval=6, seeds=(1,)
)


def _run(cmd: Sequence[str], log_path: str) -> float:
    """Run ``cmd`` from the repository root, output to ``log_path``; returns the wall time."""
    return compare.run_command(cmd, log_path, cwd=REPO)


def _torchrun(python: str) -> List[str]:
    return compare.torchrun(python, 2)


def _model_args(corpus: str, s: Setting) -> List[str]:
    return [
        "--num-layers",
        "4",
        "--hidden-size",
        "128",
        "--num-attention-heads",
        "4",
        "--seq-length",
        str(s.seq_length),
        "--micro-batch-size",
        str(s.micro_batch),
        "--global-batch-size",
        str(s.global_batch),
        "--hidden-dropout",
        "0",
        "--attention-dropout",
        "0",
        "--tokenizer-model",
        os.path.join(corpus, "tokenizer.json"),
        "--split",
        "90,10,0",
        "--num-workers",
        "1",
        "--log-interval",
        "25",
        "--eval-interval",
        "0",
    ]


def entry_args(corpus_dir: str, s: Setting) -> List[str]:
    """The training flags every continual pre-training run gets (after ``--``)."""
    return _model_args(corpus_dir, s) + [
        "--lr",
        str(s.cpt_lr),
        "--lr-decay-style",
        "constant",
        "--lr-warmup-iters",
        str(s.warmup),
    ]


def token_blend(corpus: dict) -> List[float]:
    """The token-proportional blend of the corpus's domains (CPT's static blend)."""
    tokens = np.asarray([d["tokens"] for d in corpus["domains"]], np.float64)
    return (tokens / tokens.sum()).tolist()


def compare_argv(
    out: str, s: Setting, corpus: dict, python: str, extra: Sequence[str] = ()
) -> List[str]:
    """``velocitune-compare``'s command line for this corpus, base and setting."""
    prefixes = [d["prefix"] for d in corpus["domains"]]
    return [
        "--out",
        out,
        "--data-path",
        *data_path(prefixes, token_blend(corpus)),
        "--load",
        os.path.join(out, "base"),
        "--replay-domain",
        REPLAY_DOMAIN,
        "--train-iters",
        str(s.cpt_iters),
        "--update-interval",
        str(s.update_interval),
        "--cpt-eval-interval",
        str(s.cpt_eval_interval),
        "--eval-iters",
        str(s.eval_iters),
        "--min-weight",
        str(s.min_weight),
        "--fit-fraction",
        str(s.fit_fraction),
        "--seeds",
        *map(str, s.seeds),
        "--python",
        python,
        *extra,
        "--",
        *entry_args(os.path.dirname(prefixes[0]), s),
    ]


def cpt_run(
    out: str,
    python: str,
    corpus: dict,
    s: Setting,
    key: str,
    seed: int,
    policy: str,
    weights: Sequence[float],
    interval: int,
    extra: Sequence[str] = (),
) -> dict:
    """One continual pre-training run from the base, as ``velocitune-compare`` runs them."""
    own, entry = compare.split_argv(compare_argv(out, s, corpus, python))
    args = compare.build_parser().parse_args(own)
    args.entry_args = entry
    return compare.train_run(
        out, python, compare.setting_from_args(args), key, seed, policy, weights, interval, extra
    )


# ----------------------------------------------------------------------------- stages


def prepare_corpus(out: str, python: str) -> dict:
    """Stage 0: text from Debian packages and the tokenized corpus (kept when present)."""
    corpus = os.path.join(out, "corpus")
    if not os.path.exists(os.path.join(corpus, "corpus.json")):
        _log("text and corpus")
        subprocess.run(
            ["bash", "examples/cpu_demo/get_text.sh", os.path.join(out, "text")],
            cwd=REPO,
            check=True,
        )
        cmd = [
            python,
            "tools/prepare_corpus.py",
            "--output-dir",
            corpus,
            "--vocab-size",
            "4096",
            "--max-bytes-per-domain",
            "2500000",
        ]
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
        weights = replay_share_blend(
            [d["tokens"] for d in corpus["domains"]], [replay], s.base_replay_share
        )
        _log(f"base model: {s.base_iters} iterations, {REPLAY_DOMAIN} {s.base_replay_share}")
        blend = data_path(prefixes, weights)
    cmd = (
        _torchrun(python)
        + _model_args(os.path.dirname(prefixes[0]), s)
        + [
            "--data-path",
            *blend,
            "--train-iters",
            str(s.base_iters),
            "--seed",
            str(s.base_seed),
            "--lr",
            str(s.base_lr),
            "--min-lr",
            str(s.base_min_lr),
            "--lr-decay-style",
            "cosine",
            "--lr-warmup-iters",
            str(max(1, s.base_iters // 10)),
            "--velocitune-policy",
            "static",
            "--velocitune-update-interval",
            str(max(1, s.base_iters // 16)),
            "--velocitune-eval-iters",
            str(s.eval_iters),
            "--save",
            base,
            "--tensorboard-dir",
            os.path.join(base, "tb"),
        ]
    )
    wall = _run(cmd, os.path.join(base, "log.txt"))
    with open(os.path.join(base, "log.txt"), encoding="utf-8") as f:
        names, start, end, _ = parse_final_losses(f.read())
    at = names.index(REPLAY_DOMAIN)
    updates = _read_traj(os.path.join(base, "tb", "velocitune_trajectory.jsonl")).updates
    curve = [(u["iteration"], u["eval_loss"][at]) for u in updates]
    curves = {
        d: [(u["iteration"], u["eval_loss"][i]) for u in updates] for i, d in enumerate(names)
    }
    res = {
        "wall_s": wall,
        "start_loss": start[at],
        "final_loss": end[at],
        "curve": curve,
        "domains": names,
        "start_losses": start,
        "final_losses": end,
        "curves": curves,
    }
    with open(result, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    return res


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="compare_policies.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Default: ~1 hour per setting on 2 CPU cores; --quick: under 15 minutes.",
    )
    p.add_argument("--out", required=True, help="Output folder (finished runs in it are kept).")
    p.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        default="realistic",
        help="The base model: realistic (replay 0.85 + a little of every domain, "
        "the default) or replay-only.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"Small sizes: base {QUICK.base_iters}, budget {QUICK.cpt_iters} "
        f"iterations, seeds {list(QUICK.seeds)}; velocitune-compare --quick.",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="Dataset seeds (default 1 2 3; quick 1).")
    p.add_argument("--base-iters", type=int, help="Base model iterations.")
    p.add_argument("--cpt-iters", type=int, help="Continual pre-training budget in iterations.")
    p.add_argument("--update-interval", type=int, help="m of the dynamic policies.")
    p.add_argument("--methods", nargs="+", help="velocitune-compare --methods.")
    p.add_argument("--frontier", type=float, nargs="+", help="velocitune-compare --frontier.")
    p.add_argument(
        "--python",
        default=os.path.join(REPO, ".venv", "bin", "python"),
        help="Interpreter with this package and megatron-core (default .venv).",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: print the tables from the runs finished under --out.",
    )
    p.add_argument(
        "--stop-after",
        choices=["corpus", "base"],
        help="Stop after this stage (the rest runs on the next call).",
    )
    return p


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The :class:`Setting` the flags ask for."""
    s = QUICK if args.quick else Setting()
    s = replace(s, base_replay_share=SETTINGS[getattr(args, "setting", "realistic")])
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
    """Build the corpus and the base model, then run (or resume) the comparison."""
    args = build_parser().parse_args(argv)
    s = setting_from_args(args)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    check_setting(out, s)
    with open(os.path.join(out, "setting.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(s), f, indent=1)
    py = args.python
    corpus = prepare_corpus(out, py)
    if args.stop_after == "corpus":
        return 0
    train_base(out, py, corpus, s)
    if args.stop_after == "base":
        return 0
    extra = (["--quick"] if args.quick else []) + (["--report-only"] if args.report_only else [])
    if args.methods:
        extra += ["--methods", *args.methods]
    if args.frontier:
        extra += ["--frontier", *map(str, args.frontier)]
    return compare.main(compare_argv(out, s, corpus, py, extra))


if __name__ == "__main__":
    sys.exit(main())
