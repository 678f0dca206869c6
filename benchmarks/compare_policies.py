"""Velocitune against the static frontier and CPT, in four regimes on two corpora.

One command builds everything from a clean checkout, then runs ``velocitune-compare``
(:mod:`megatron_velocitune.cli.compare_policies`) on it:

  0. real text by domain and a 4k-BPE corpus (``tools/prepare_corpus.py``; held-out split 10%
     of each domain's documents), one of two corpora (``--corpus``):
     ``demo`` (the default; ``examples/cpu_demo/get_text.sh``): ``general`` (the King James
     Bible: the replay domain), ``man``, ``pydocs``, ``code``;
     ``debian2`` (``benchmarks/get_text_debian2.sh``): ``fortunes`` (the replay domain),
     ``man1``, ``perl``, ``changelog``;
  1. a base model (the demo's tiny GPT) with a cosine schedule until its held-out loss has
     nearly stopped falling, in one of four regimes (``--setting``; :data:`SETTINGS`):
     ``realistic`` (the default): on a replay-heavy blend that holds a little of every domain
     (replay 0.85, the others sharing 0.15 in their token ratio), as a pretrained LM has seen
     some code and docs: a replay domain whose loss rises in continual pre-training;
     ``replay-only``: on the replay domain alone (the new domains then start at ~10 nats,
     worse than a uniform guess over the vocabulary);
     ``saturated``: the realistic blend on a corpus whose replay domain is cut to its first
     files up to ``--saturated-replay-bytes`` (300 kB) of text, so the base has read it for
     many epochs and more of it does not help; the comparison runs on that corpus too, CPT
     on the full corpus's token-proportional blend (the realistic regime's);
     ``small-headroom``: replay 0.5, the first new domain 0.4, the other new domains sharing
     0.1: the base has already trained a lot on one new domain, whose headroom is small;
  2. ``velocitune-compare`` from that base: CPT (the proxy run the targets are fitted on),
     Velocitune as shipped (``default``) and the static frontier at replay shares 0.1 0.4 0.7,
     3 seeds (``--methods`` / ``--frontier`` choose others): one table, each seed's point, the
     Pareto plot and the weight trajectories (see that tool's ``--help``).

Every method runs on every seed from the same base checkpoint, token budget and learning-rate
schedule. ``--seed`` is the dataset seed of megatron-core's GPTDataset: it changes each domain's
document and sample shuffle, and so the small held-out subset evaluated at each update (the
same held-out documents every seed). Dropout is 0, so the seed changes nothing else. Runs are
2 gloo ranks with ``OMP_NUM_THREADS=1``; finished runs are kept, so the benchmark resumes.

The text and the tokenized corpora live under ``--corpus-dir`` (default: ``--out``):
``text/`` and ``corpus/`` (demo), ``text-debian2/`` and ``corpus-debian2/`` (debian2), and the
saturated regime's ``corpus[-debian2]-saturated<BYTES>/`` (the full corpus's tokenizer, its
replay text in ``text[-debian2]-saturated<BYTES>/``). Regimes given one ``--corpus-dir`` share
them (each is built once, under a lock); each regime needs its own ``--out`` (the base model
and the runs), which records its corpus and setting.

Usage::

    .venv/bin/python benchmarks/compare_policies.py --out /tmp/compare          # demo, realistic
    .venv/bin/python benchmarks/compare_policies.py --setting replay-only --out /tmp/cmp-ro
    .venv/bin/python benchmarks/compare_policies.py --setting saturated --out /tmp/cmp-sat
    .venv/bin/python benchmarks/compare_policies.py --setting small-headroom --out /tmp/cmp-sh
    .venv/bin/python benchmarks/compare_policies.py --corpus debian2 --out /tmp/d2-real
    .venv/bin/python benchmarks/compare_policies.py --corpus debian2 --setting replay-only \\
        --out /tmp/d2-ro
    .venv/bin/python benchmarks/compare_policies.py --corpus debian2 --setting saturated \\
        --out /tmp/d2-sat
    .venv/bin/python benchmarks/compare_policies.py --corpus debian2 --setting small-headroom \\
        --out /tmp/d2-sh
    # every regime of one corpus on one tokenized corpus (built by the first):
    for r in realistic replay-only saturated small-headroom; do
      .venv/bin/python benchmarks/compare_policies.py --corpus debian2 --setting $r \\
          --corpus-dir /tmp/corpora --out /tmp/d2-$r
    done
    .venv/bin/python benchmarks/compare_policies.py --quick --out /tmp/cq       # mechanics
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_velocitune.cli import compare_policies as compare  # noqa: E402
from megatron_velocitune.comparison import runner, runs, targets  # noqa: E402
from megatron_velocitune.comparison import setting as compare_setting  # noqa: E402
from megatron_velocitune.comparison.methods import LAW_METHOD_PREFIX  # noqa: E402
from megatron_velocitune.laws.comparison import fixed_share_blend, parse_final_losses  # noqa: E402


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus of real text by domain (``--corpus``).

    Attributes:
        script (str): the script that writes its text, one folder per domain (from the
            repository root, given the text folder).
        domains (Tuple[str, ...]): its domains, in blend order.
        replay (str): the replay domain.
        suffix (str): the suffix of its folders under ``--corpus-dir`` (``text<suffix>``,
            ``corpus<suffix>``).
        about (str): one line for ``--help``.
    """

    script: str
    domains: Tuple[str, ...]
    replay: str
    suffix: str
    about: str


CORPORA: Dict[str, CorpusSpec] = {
    "demo": CorpusSpec(
        "examples/cpu_demo/get_text.sh",
        ("general", "man", "pydocs", "code"),
        "general",
        "",
        "general (the King James Bible: replay), man, pydocs, code",
    ),
    "debian2": CorpusSpec(
        "benchmarks/get_text_debian2.sh",
        ("fortunes", "man1", "perl", "changelog"),
        "fortunes",
        "-debian2",
        "fortunes (replay), man1, perl, changelog",
    ),
}
#: The demo corpus's replay domain and domains (the other benchmarks run on that corpus).
REPLAY_DOMAIN = CORPORA["demo"].replay
DOMAINS = list(CORPORA["demo"].domains)


@dataclass(frozen=True)
class BaseBlend:
    """The base model of one regime (``--setting``): the blend it is trained on.

    Attributes:
        replay (Optional[float]): the replay domain's share; None: the replay domain alone.
        first_new (Optional[float]): the first new domain's share; None: the new domains
            split ``1 - replay`` in their token ratio (else the other new domains split the
            rest).
        saturated (bool): on a corpus whose replay domain holds only its first files up to
            ``--saturated-replay-bytes`` of text (the comparison runs on it too).
        about (str): one line for ``--help``.
    """

    replay: Optional[float]
    first_new: Optional[float] = None
    saturated: bool = False
    about: str = ""


#: Each regime's base model.
SETTINGS: Dict[str, BaseBlend] = {
    "realistic": BaseBlend(0.85, about="replay 0.85, the others 0.15 in their token ratio"),
    "replay-only": BaseBlend(None, about="the replay domain alone"),
    "saturated": BaseBlend(
        0.85, saturated=True, about="realistic, the replay text cut to --saturated-replay-bytes"
    ),
    "small-headroom": BaseBlend(
        0.5, first_new=0.4, about="replay 0.5, the first new domain 0.4, the others 0.1"
    ),
}
#: Bytes of replay text the saturated regime keeps (its first files).
SATURATED_REPLAY_BYTES = 300_000
#: Every regime's comparison by default: CPT, Velocitune as shipped, the static frontier.
BENCH_METHODS = ("default",)
BENCH_FRONTIER = (0.1, 0.4, 0.7)
#: Text per domain the tokenized corpora keep.
MAX_BYTES_PER_DOMAIN = 2_500_000

# The shared run machinery, under the names the other benchmarks use.
data_path = runner.data_path
initial_loss_file = targets.initial_loss_file
time_averaged = runner.time_averaged
_log = runs.log
_read_traj = runs.read_traj
_result = runs.result_of


@dataclass(frozen=True)
class Setting:
    """Every size of the experiment (``--quick`` shrinks them)."""

    base_iters: int = 800
    base_lr: float = 2e-3
    base_min_lr: float = 1e-4
    cpt_iters: int = 200
    cpt_lr: float = 1e-3
    #: The continual pre-training's schedule: ``constant`` after the warm-up, or ``cosine``
    #: (decay to ``cpt_lr / 10`` over the budget, what the paper's users run).
    cpt_schedule: str = "constant"
    warmup: int = 5
    cpt_eval_interval: int = 5
    update_interval: int = 10
    eval_iters: int = 4
    min_weight: float = 0.01
    fit_fraction: float = 0.5
    global_batch: int = 32
    micro_batch: int = 8
    seq_length: int = 128
    #: The model (the README's tiny GPT) and the ranks of every run (``--nproc``).
    num_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 4
    nproc: int = 2
    seeds: tuple = (1, 2, 3)
    base_seed: int = 1234
    #: The corpus (:data:`CORPORA`) and the regime (:data:`SETTINGS`).
    corpus: str = "demo"
    setting: str = "realistic"
    #: The saturated regime's replay text in bytes (None in the other regimes).
    saturated_replay_bytes: Optional[int] = None

    @property
    def spec(self) -> CorpusSpec:
        """The corpus."""
        return CORPORA[self.corpus]

    @property
    def regime(self) -> BaseBlend:
        """The base model's blend."""
        return SETTINGS[self.setting]

    @property
    def replay_domain(self) -> str:
        """The corpus's replay domain."""
        return self.spec.replay

    @property
    def budget_tokens(self) -> int:
        """Tokens of the continual pre-training budget."""
        return self.cpt_iters * self.global_batch * self.seq_length

    @property
    def warmup_tokens(self) -> int:
        """Tokens of the LR warmup (evaluations before it are left out of the fits)."""
        return self.warmup * self.global_batch * self.seq_length


#: The flags that size the model and the runs: (flag, :class:`Setting` field, type); the
#: ``argparse`` destination is the field's name.
SIZE_FLAGS: Tuple[Tuple[str, str, type], ...] = (
    ("--num-layers", "num_layers", int),
    ("--hidden-size", "hidden_size", int),
    ("--num-attention-heads", "num_attention_heads", int),
    ("--seq-length", "seq_length", int),
    ("--micro-batch-size", "micro_batch", int),
    ("--global-batch-size", "global_batch", int),
    ("--base-lr", "base_lr", float),
    ("--cpt-lr", "cpt_lr", float),
    ("--cpt-eval-interval", "cpt_eval_interval", int),
    ("--eval-iters", "eval_iters", int),
    ("--nproc", "nproc", int),
)

QUICK = Setting(
    base_iters=150, cpt_iters=60, warmup=5, cpt_eval_interval=2, update_interval=6, seeds=(1,)
)


def _run(cmd: Sequence[str], log_path: str) -> float:
    """Run ``cmd`` from the repository root, output to ``log_path``; returns the wall time."""
    return runs.run_command(cmd, log_path, cwd=REPO)


def _model_args(corpus: str, s: Setting) -> List[str]:
    return [
        "--num-layers",
        str(s.num_layers),
        "--hidden-size",
        str(s.hidden_size),
        "--num-attention-heads",
        str(s.num_attention_heads),
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


def _base_warmup(s: Setting) -> int:
    """The base model's LR warm-up: a tenth of its iterations."""
    return max(1, s.base_iters // 10)


def _cpt_min_lr(s: Setting) -> float:
    """The CPT schedule's last learning rate: a tenth of ``cpt_lr`` under cosine."""
    return s.cpt_lr / 10 if s.cpt_schedule == "cosine" else s.cpt_lr


def entry_args(corpus_dir: str, s: Setting) -> List[str]:
    """The training flags every continual pre-training run gets (after ``--``)."""
    decay = ["--min-lr", str(_cpt_min_lr(s))] if s.cpt_schedule == "cosine" else []
    return _model_args(corpus_dir, s) + [
        "--lr",
        str(s.cpt_lr),
        "--lr-decay-style",
        s.cpt_schedule,
        *decay,
        "--lr-warmup-iters",
        str(s.warmup),
    ]


def token_blend(corpus: dict) -> List[float]:
    """The token-proportional blend of the corpus's domains."""
    tokens = np.asarray([d["tokens"] for d in corpus["domains"]], np.float64)
    return (tokens / tokens.sum()).tolist()


def cpt_blend(corpus: dict) -> List[float]:
    """CPT's static blend: the token-proportional blend of the full corpus (for the saturated
    corpus, of the one it was cut from, kept as ``cpt_weights``: that regime changes the replay
    text, not the blend).
    """
    return list(corpus["cpt_weights"]) if "cpt_weights" in corpus else token_blend(corpus)


def compare_argv(
    out: str, s: Setting, corpus: dict, python: str, extra: Sequence[str] = ()
) -> List[str]:
    """``velocitune-compare``'s command line for this corpus, base and setting."""
    prefixes = [d["prefix"] for d in corpus["domains"]]
    return [
        "--out",
        out,
        "--data-path",
        *data_path(prefixes, cpt_blend(corpus)),
        "--load",
        os.path.join(out, "base"),
        "--replay-domain",
        s.replay_domain,
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
        "--nproc",
        str(s.nproc),
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
    return runner.train_run(
        out,
        python,
        compare_setting.setting_from_args(args),
        key,
        seed,
        policy,
        weights,
        interval,
        extra,
    )


# ----------------------------------------------------------------------------- stages


def base_blend(regime: BaseBlend, tokens: Sequence[float], replay: int) -> Optional[np.ndarray]:
    """The base model's blend in ``regime`` (None: the replay domain alone).

    Args:
        regime (BaseBlend): the regime.
        tokens (Sequence[float]): each domain's token count, in blend order.
        replay (int): the replay domain's index.

    Returns:
        Optional[np.ndarray]: the blend over every domain, or None.
    """
    if regime.replay is None:
        return None
    shares = {replay: regime.replay}
    if regime.first_new is not None:
        shares[next(i for i in range(len(tokens)) if i != replay)] = regime.first_new
    return fixed_share_blend(tokens, shares)


def corpus_folders(root: str, corpus: str, saturated_bytes: Optional[int] = None) -> tuple:
    """(text folder, tokenized corpus folder) of ``corpus`` under ``root`` (``--corpus-dir``).

    With ``saturated_bytes``: the saturated corpus's, whose text folder holds only its replay
    domain (the others are the full corpus's).
    """
    tag = CORPORA[corpus].suffix + (f"-saturated{saturated_bytes}" if saturated_bytes else "")
    return os.path.join(root, "text" + tag), os.path.join(root, "corpus" + tag)


def first_files(files: Sequence[Tuple[str, int]], max_bytes: int) -> List[str]:
    """The first files (by name) whose sizes add up to at most ``max_bytes``, at least one.

    Args:
        files (Sequence[Tuple[str, int]]): (relative path, size in bytes) of each file.
        max_bytes (int): the byte budget.

    Returns:
        List[str]: the chosen paths, sorted (the order the corpus reads them in).
    """
    chosen, total = [], 0
    for path, size in sorted(files):
        if chosen and total + size > max_bytes:
            break
        chosen.append(path)
        total += size
    return chosen


def truncate_text(source: str, target: str, max_bytes: int) -> List[str]:
    """Copy the first files of ``source`` up to ``max_bytes`` (:func:`first_files`) to
    ``target`` (written whole, then renamed); returns them.
    """
    files = []
    for folder, _, names in os.walk(source):
        for n in names:
            path = os.path.join(folder, n)
            files.append((os.path.relpath(path, source), os.path.getsize(path)))
    chosen = first_files(files, max_bytes)
    if not chosen:
        raise SystemExit(f"{source}: no text to keep for the saturated corpus")
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in chosen:
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(source, rel), os.path.join(tmp, rel))
    os.replace(tmp, target)
    return chosen


@contextlib.contextmanager
def _locked(root: str) -> Iterator[None]:
    """Hold ``root/.corpus.lock``: one process builds a corpus, the others then reuse it."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".corpus.lock"), "w", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tokenize(python: str, folder: str, domains: Sequence[Tuple[str, str]], tokenizer: str) -> None:
    """``tools/prepare_corpus.py`` of ``(name, text folder)`` pairs into ``folder`` (a new BPE
    when ``tokenizer`` is empty, else that tokenizer).
    """
    cmd = [python, "tools/prepare_corpus.py", "--output-dir", folder]
    cmd += ["--tokenizer-model", tokenizer] if tokenizer else ["--vocab-size", "4096"]
    cmd += ["--max-bytes-per-domain", str(MAX_BYTES_PER_DOMAIN)]
    for name, text in domains:
        cmd += ["--domain", f"{name}={text}"]
    _run(cmd, folder + ".log")


def _manifest(folder: str, corpus: str) -> dict:
    """The ``corpus.json`` in ``folder``, checked to hold ``corpus``'s domains."""
    with open(os.path.join(folder, "corpus.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    # The files are wherever the folder is now (it may have been copied, e.g. to a GPU machine).
    manifest["tokenizer"] = os.path.join(folder, "tokenizer.json")
    for d in manifest["domains"]:
        d["prefix"] = os.path.join(folder, d["name"])
    names = [d["name"] for d in manifest["domains"]]
    if names != list(CORPORA[corpus].domains):
        raise SystemExit(
            f"{folder}: holds domains {names}, not the {corpus} corpus's "
            f"{list(CORPORA[corpus].domains)}: use another --corpus-dir"
        )
    return manifest


def _write_text(spec: CorpusSpec, text: str) -> None:
    """The corpus's text script into ``text``, unless every domain's folder is there."""
    if all(os.path.isdir(os.path.join(text, d)) for d in spec.domains):
        return
    try:
        subprocess.run(["bash", spec.script, text], cwd=REPO, check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(
            f"{spec.script} {text}: failed (exit {e.returncode}); its message is above"
        ) from None


def prepare_corpus(
    root: str, python: str, corpus: str = "demo", saturated_bytes: Optional[int] = None
) -> dict:
    """Stage 0: the text and the tokenized corpus under ``root`` (kept when present).

    Args:
        root (str): ``--corpus-dir`` (default: the output folder).
        python (str): the interpreter.
        corpus (str): a name of :data:`CORPORA`.
        saturated_bytes (Optional[int]): build (and return) the saturated corpus too: the full
            corpus's tokenizer and other domains, its replay domain cut to the first files up
            to this many bytes of text.

    Returns:
        dict: the ``corpus.json`` of the corpus the comparison runs on.
    """
    spec = CORPORA[corpus]
    text, folder = corpus_folders(root, corpus)
    with _locked(root):
        if not os.path.exists(os.path.join(folder, "corpus.json")):
            _log(f"text and corpus ({corpus}) in {folder}")
            _write_text(spec, text)
            _tokenize(python, folder, [(d, os.path.join(text, d)) for d in spec.domains], "")
        manifest = _manifest(folder, corpus)
        if not saturated_bytes:
            return manifest
        sat_text, sat_folder = corpus_folders(root, corpus, saturated_bytes)
        if not os.path.exists(os.path.join(sat_folder, "corpus.json")):
            _write_text(spec, text)  # the full text (kept when there)
            replay_text = os.path.join(sat_text, spec.replay)
            if not os.path.isdir(replay_text):
                os.makedirs(sat_text, exist_ok=True)
                kept = truncate_text(os.path.join(text, spec.replay), replay_text, saturated_bytes)
                _log(f"saturated corpus: {spec.replay} cut to {len(kept)} files")
            sources = [
                (d, replay_text if d == spec.replay else os.path.join(text, d))
                for d in spec.domains
            ]
            _tokenize(python, sat_folder, sources, manifest["tokenizer"])
        return {**_manifest(sat_folder, corpus), "cpt_weights": token_blend(manifest)}


def train_base(out: str, python: str, corpus: dict, s: Setting) -> dict:
    """Stage 1: the base model (cosine decay to ``base_min_lr``), on the regime's blend
    (:func:`base_blend`).
    """
    base = os.path.join(out, "base")
    result = os.path.join(base, "result.json")
    if os.path.exists(result):
        with open(result, encoding="utf-8") as f:
            return json.load(f)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    prefixes = [d["prefix"] for d in corpus["domains"]]
    names = [d["name"] for d in corpus["domains"]]
    replay = names.index(s.replay_domain)
    weights = base_blend(s.regime, [d["tokens"] for d in corpus["domains"]], replay)
    if weights is None:
        _log(f"base model ({s.setting}): {s.base_iters} iterations on {s.replay_domain}")
        blend = [prefixes[replay]]
    else:
        shares = ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights))
        _log(f"base model ({s.setting}): {s.base_iters} iterations, {shares}")
        blend = data_path(prefixes, weights)
    cmd = (
        runs.torchrun(python, s.nproc)
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
            str(_base_warmup(s)),
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
    at = names.index(s.replay_domain)
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
        epilog="Regimes (--corpus x --setting), each in its own --out:\n"
        + __doc__.split("Usage::", 1)[1].rstrip()
        + "\n\nDefault: ~1 hour per regime on 2 CPU cores; --quick: under 15 minutes.",
    )
    p.add_argument("--out", required=True, help="Output folder (finished runs in it are kept).")
    p.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="demo",
        help="The text: "
        + "; ".join(f"{k}: {c.about}" for k, c in CORPORA.items())
        + " (default: %(default)s).",
    )
    p.add_argument(
        "--corpus-dir",
        default=None,
        help="Folder of the text and tokenized corpora, reused when there, built there when "
        "not (default: --out); several regimes can share one.",
    )
    p.add_argument(
        "--setting",
        choices=list(SETTINGS),
        default="realistic",
        help="The base model: "
        + "; ".join(f"{k}: {b.about}" for k, b in SETTINGS.items())
        + " (default: %(default)s).",
    )
    p.add_argument(
        "--saturated-replay-bytes",
        type=int,
        default=None,
        help=f"--setting saturated: bytes of replay text kept, its first files "
        f"(default: {SATURATED_REPLAY_BYTES}).",
    )
    p.add_argument(
        "--cpt-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="The continual pre-training's LR schedule after the warm-up: constant, or cosine "
        "decay to a tenth of --cpt-lr over the budget (default: %(default)s).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"Small sizes: base {QUICK.base_iters}, budget {QUICK.cpt_iters} "
        f"iterations, seeds {list(QUICK.seeds)}.",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="Dataset seeds (default 1 2 3; quick 1).")
    p.add_argument("--base-iters", type=int, help="Base model iterations.")
    p.add_argument("--cpt-iters", type=int, help="Continual pre-training budget in iterations.")
    p.add_argument("--update-interval", type=int, help="m of the dynamic policies.")
    p.add_argument(
        "--methods",
        nargs="+",
        help=f"velocitune-compare --methods (default: {' '.join(BENCH_METHODS)}; cpt always).",
    )
    p.add_argument(
        "--frontier",
        type=float,
        nargs="+",
        help=f"velocitune-compare --frontier (default: {' '.join(map(str, BENCH_FRONTIER))}).",
    )
    size = p.add_argument_group(
        "model and sizes",
        "The README's tiny GPT on 2 CPU ranks unless given (a GPU: examples/gpu_checks/run.sh).",
    )
    for flag, field, kind in SIZE_FLAGS:
        size.add_argument(
            flag,
            dest=field,
            type=kind,
            metavar="N" if kind is int else "LR",
            help=f"(default: {getattr(Setting(), field)})",
        )
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
    setting = getattr(args, "setting", "realistic")
    sat_bytes = getattr(args, "saturated_replay_bytes", None)
    if sat_bytes is not None and not SETTINGS[setting].saturated:
        raise SystemExit(
            f"--saturated-replay-bytes {sat_bytes}: goes with --setting saturated, not {setting}"
        )
    if sat_bytes is not None and sat_bytes < 1:
        raise SystemExit(f"--saturated-replay-bytes {sat_bytes} must be >= 1")
    if SETTINGS[setting].saturated and sat_bytes is None:
        sat_bytes = SATURATED_REPLAY_BYTES
    s = replace(
        s,
        corpus=getattr(args, "corpus", "demo"),
        setting=setting,
        saturated_replay_bytes=sat_bytes,
        cpt_schedule=getattr(args, "cpt_schedule", "constant"),
    )
    if args.seeds:
        s = replace(s, seeds=tuple(args.seeds))
    if args.base_iters:
        s = replace(s, base_iters=args.base_iters)
    if args.cpt_iters:
        s = replace(s, cpt_iters=args.cpt_iters)
    if args.update_interval:
        s = replace(s, update_interval=args.update_interval)
    for flag, field, _ in SIZE_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            if not value > 0:  # NaN too
                raise SystemExit(f"{flag} {value}: must be > 0")
            s = replace(s, **{field: value})
    if s.global_batch % (s.micro_batch * s.nproc):
        raise SystemExit(
            f"--global-batch-size {s.global_batch}: not a multiple of --micro-batch-size "
            f"{s.micro_batch} x --nproc {s.nproc}"
        )
    if len(set(s.seeds)) != len(s.seeds):
        raise SystemExit(f"--seeds {list(s.seeds)}: repeated seed")
    return s


#: The regime of a ``setting.json`` written before it named its corpus and setting.
_LEGACY_SETTING = {0.85: "realistic", None: "replay-only"}


def check_setting(out: str, s: Setting) -> None:
    """Stop when ``out`` holds runs of another setting than ``s`` (the seeds may differ):
    another corpus, regime or size.
    """
    path = os.path.join(out, "setting.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    if "setting" not in old:  # written when the demo corpus and base_replay_share were all
        old["setting"] = _LEGACY_SETTING.get(old.get("base_replay_share"), "?")
    mine = json.loads(json.dumps(asdict(s)))
    # A field added since that file was written (the corpus, the saturated bytes, the sizes)
    # held its default then.
    before = {**json.loads(json.dumps(asdict(Setting()))), **old}
    diff = {k: (before.get(k), v) for k, v in mine.items() if k != "seeds" and before.get(k) != v}
    if diff:
        raise SystemExit(f"{out} holds runs of another setting {diff}: use another --out")


def comparison_flags(args: argparse.Namespace, s: Setting, out: str) -> List[str]:
    """The velocitune-compare flags of the benchmark's own (methods, frontier, quick; the base
    run's curve and schedule for a ``default-law-<law>`` method's targets).
    """
    extra = (["--quick"] if args.quick else []) + (["--report-only"] if args.report_only else [])
    methods = list(args.methods or BENCH_METHODS)
    extra += ["--methods", *methods]
    extra += ["--frontier", *map(str, args.frontier or BENCH_FRONTIER)]
    if any(m.startswith(LAW_METHOD_PREFIX) for m in methods):
        extra += [
            "--annealing-from",
            os.path.join(out, "base", "tb", "velocitune_trajectory.jsonl"),
            "--base-lr-schedule",
            f"cosine:{s.base_lr}:{s.base_min_lr}:{_base_warmup(s)}:{s.base_iters}",
            # For CPT runs written before their header recorded it (entry_args' schedule).
            "--lr-schedule",
            f"{s.cpt_schedule}:{s.cpt_lr}:{_cpt_min_lr(s)}:{s.warmup}:{s.cpt_iters}",
        ]
    return extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the corpus and the base model, then run (or resume) the comparison."""
    args = build_parser().parse_args(argv)
    s = setting_from_args(args)
    out = os.path.abspath(args.out)
    root = os.path.abspath(args.corpus_dir or out)
    if args.corpus_dir and os.path.exists(os.path.join(root, "corpus.json")):
        raise SystemExit(
            f"--corpus-dir {args.corpus_dir}: is a tokenized corpus itself; give the folder "
            f"that holds it ({os.path.dirname(root)})"
        )
    os.makedirs(out, exist_ok=True)
    check_setting(out, s)
    with open(os.path.join(out, "setting.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(s), f, indent=1)
    py = args.python
    corpus = prepare_corpus(root, py, s.corpus, s.saturated_replay_bytes)
    if args.stop_after == "corpus":
        return 0
    train_base(out, py, corpus, s)
    if args.stop_after == "base":
        return 0
    return compare.main(compare_argv(out, s, corpus, py, comparison_flags(args, s, out)))


if __name__ == "__main__":
    sys.exit(main())
