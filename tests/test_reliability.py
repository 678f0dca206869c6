"""Issue 18: bad inputs end in one line naming the flag or file and the value; checkpoints cannot
run code; resumes refuse what they cannot continue exactly; one run per trajectory; a NaN stop;
a lock on --save; a SIGKILL during a save resumes to the uninterrupted result.

The entry cases run the real entry function (``run_pretrain(prog, parse_args(argv))``, what
``pretrain_gpt.py`` runs) in a fresh one-rank torch.distributed process on the small real
corpus; a traceback there fails the test (the child raises), a user error returns its exit code
and one stderr line.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megatron_velocitune.core.files import read_tracker
from megatron_velocitune.core.trajectory import read_trajectory

from ._multiproc import free_port, run_distributed
from .test_training import base_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = os.path.join("iter_0000004", "mp_rank_00_000", "model_optim_rng.pt")
SIDECAR = os.path.join("iter_0000004", "velocitune_state.json")


def entry_worker(rank, world_size, argv):
    """The entry in this process: (exit code, stderr)."""
    from megatron_velocitune.training.arguments import parse_args
    from megatron_velocitune.training.pretrain import run_pretrain

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = run_pretrain("pretrain_gpt.py", parse_args(argv))
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, err.getvalue()


def run_entry(argv, world_size=1):
    return run_distributed(entry_worker, world_size, (argv,), timeout=240)[0]


INITIAL = ("--velocitune-initial-loss", "7", "7", "7")


def argv_for(corpus, save, train_iters=4, extra=(), data_path=None):
    # A given initial loss: no full held-out measurement at start (it is not what is tested).
    extra = ("--num-workers", "0", "--save-interval", "2", *INITIAL, *extra)
    argv = base_argv(corpus, save, train_iters=train_iters, extra=extra)
    if data_path is not None:
        i = argv.index("--data-path")
        j = argv.index("--split")
        argv[i + 1 : j] = data_path
    return argv


def one_line(err):
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if "error:" in x]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def ckpt(corpus, tmp_path_factory):
    """A finished 4-iteration one-rank velocity run, checkpoints at 2 and 4."""
    save = str(tmp_path_factory.mktemp("rel") / "base")
    rc, err = run_entry(argv_for(corpus, save))
    assert rc == 0, err
    return save


def copy_ckpt(ckpt, tmp_path, name="run"):
    dst = str(tmp_path / name)
    shutil.copytree(ckpt, dst, ignore=shutil.ignore_patterns("tb"))
    return dst


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return path


def domain_copy(corpus, tmp_path, name, mutate):
    src = corpus.prefixes[0]
    dst = str(tmp_path / name)
    shutil.copyfile(src + ".bin", dst + ".bin")
    shutil.copyfile(src + ".idx", dst + ".idx")
    mutate(dst)
    return dst


def empty_domain(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    os.remove(prefix + ".bin")
    IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16).finalize(prefix + ".idx")


def blend(corpus, weights, prefixes=None):
    out = []
    for w, p in zip(weights, prefixes or corpus.prefixes):
        out += [w, p]
    return out


# ----------------------------------------------------------------- fresh-run cases
def _fresh_cases():
    def tok(text):
        def setup(corpus, tmp_path):
            return ["--tokenizer-model", write(str(tmp_path / "tokenizer.json"), text)]

        return setup

    def target(value):
        def setup(corpus, tmp_path):
            losses = {"code": 1.0, "docs": 3.0, "legal": 5.0}
            losses["code"] = value
            path = write(str(tmp_path / "t.json"), json.dumps({"losses": losses}))
            return ["--velocitune-target-loss-file", path]

        return setup

    def extra_domain(corpus, tmp_path):
        losses = {"code": 1.0, "docs": 3.0, "legal": 5.0, "web": 2.0}
        return [
            "--velocitune-target-loss-file",
            write(str(tmp_path / "t.json"), json.dumps(losses)),
        ]

    def weights(ws):
        return lambda corpus, tmp_path: ["--data-path", *blend(corpus, ws)]

    def domain(mutate):
        def setup(corpus, tmp_path):
            bad = domain_copy(corpus, tmp_path, "bad", mutate)
            return [
                "--data-path",
                *blend(corpus, ["0.5", "0.3", "0.2"], [bad, *corpus.prefixes[1:]]),
            ]

        return setup

    def truncate(prefix):
        size = os.path.getsize(prefix + ".bin")
        with open(prefix + ".bin", "r+b") as f:
            f.truncate(size // 2)

    def missing_tok(corpus, tmp_path):
        return ["--tokenizer-model", str(tmp_path / "nope" / "tokenizer.json")]

    def save_under_file(corpus, tmp_path):
        return ["--save", os.path.join(write(str(tmp_path / "f"), "x"), "sub")]

    def live_lock(corpus, tmp_path):
        import socket

        save = str(tmp_path / "locked")
        os.makedirs(save)
        # The lock of a live process on this host: this test process.
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": None}
        write(os.path.join(save, ".velocitune.lock"), json.dumps(owner))
        return ["--save", save]

    def tiny_heldout(corpus, tmp_path):
        # Ten short documents: --split 90,10,0 holds out one, one 32-token sample.
        from megatron_velocitune.data.corpus import load_tokenizer, write_domain

        tok = load_tokenizer(corpus.tokenizer_path)
        prefix = str(tmp_path / "tiny")
        write_domain("tiny", [("word%d " % i) * 12 for i in range(10)], tok, prefix)
        return [
            "--data-path",
            *blend(corpus, ["0.5", "0.3", "0.2"], [*corpus.prefixes[:2], prefix]),
        ]

    def a_file(flag, below=False):
        def setup(corpus, tmp_path):
            path = write(str(tmp_path / "f"), "x")
            return [flag, os.path.join(path, "sub") if below else path]

        return setup

    def read_only(flag):
        return lambda corpus, tmp_path: [flag, read_only_dir(tmp_path)]

    no_targets = ("--velocitune-target-loss",)
    return [
        (
            "held-out below one step",
            tiny_heldout,
            (),
            "tiny) holds 1 held-out sample(s), fewer than one evaluation step reads (2:",
        ),
        ("tensorboard-dir a file", a_file("--tensorboard-dir"), (), "f is a file, not a folder"),
        (
            "log-dir under a file",
            a_file("--velocitune-log-dir", below=True),
            (),
            "f is a file, not a folder",
        ),
        ("log-dir read-only", read_only("--velocitune-log-dir"), (), "cannot write in"),
        ("data-cache-path read-only", read_only("--data-cache-path"), (), "cannot write in"),
        (
            "tokenizer truncated",
            tok('{"version": "1.0", "trunc'),
            (),
            "is not a readable Hugging Face tokenizer.json",
        ),
        ("tokenizer {}", tok("{}"), (), "is not a readable Hugging Face tokenizer.json"),
        ("tokenizer missing", missing_tok, (), "no such file"),
        (
            "target null",
            target(None),
            no_targets,
            "gives domain 'code' the loss null, not a number",
        ),
        ("target [3.7]", target([3.7]), no_targets, "the loss [3.7], not a number"),
        ("target abc", target("abc"), no_targets, 'the loss "abc", not a number'),
        ("target true", target(True), no_targets, "the loss true, not a number"),
        (
            "target extra domain",
            extra_domain,
            no_targets,
            "losses for domains ['web'] that are not in this run",
        ),
        ("weight abc", weights(["0.5", "abc", "0.2"]), (), "--data-path: weight 'abc' of"),
        ("weight inf", weights(["inf", "0.3", "0.2"]), (), "--data-path: weight 'inf' of"),
        ("weight 0", weights(["0", "0.3", "0.2"]), (), "--data-path: weight '0' of"),
        ("weight -1", weights(["0.5", "-1", "0.2"]), (), "--data-path: weight '-1' of"),
        ("truncated .bin", domain(truncate), (), "bad.bin is truncated"),
        ("0-document domain", domain(empty_domain), (), "bad: the domain holds no documents"),
        (
            "split 100,0,0",
            lambda c, t: ["--split", "100,0,0", "--velocitune-initial-loss", "7", "7", "7"],
            (),
            "--split 100,0,0: domain 'code' gets no held-out documents",
        ),
        (
            "eval-iters too many",
            lambda c, t: ["--velocitune-eval-iters", "100000"],
            (),
            "--velocitune-eval-iters 100000: 100000 x 2 samples",
        ),
        ("save uncreatable", save_under_file, (), "sub: cannot create it"),
        ("live lock", live_lock, (), "another run holds it (pid"),
    ]


def read_only_dir(tmp_path):
    """A folder this process cannot write in: chmod 0555, or for root (whom modes do not stop)
    /proc, where no file can be created.
    """
    if os.geteuid() == 0:
        return "/proc"
    path = tmp_path / "ro"
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return str(path)


def _drop(argv, flags):
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a in flags
        if not skip:
            out.append(a)
    return out


FRESH = _fresh_cases()


@pytest.mark.parametrize("name, setup, drop, message", FRESH, ids=[c[0] for c in FRESH])
def test_bad_input_is_one_line(corpus, tmp_path, name, setup, drop, message):
    argv = _drop(argv_for(corpus, str(tmp_path / "save")), set(drop))
    extra = setup(corpus, tmp_path)
    # Later flags win in argparse, except nargs="+" lists: replace those in place.
    for flag in ("--data-path", "--tokenizer-model", "--save"):
        if flag in extra:
            argv = _drop(argv, {flag})
    rc, err = run_entry(argv + extra)
    line = one_line(err)
    assert rc == 2, err
    assert message in line, line


# ----------------------------------------------------------------- resume cases
class Payload:
    """Pickles as a call that creates a folder: harmless proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _resume_cases():
    def shard(root):
        return os.path.join(root, SHARD)

    def sidecar(root):
        return os.path.join(root, SIDECAR)

    def edit_sidecar(change):
        def mutate(root, tmp_path, corpus):
            state = json.load(open(sidecar(root)))
            change(state)
            write(sidecar(root), json.dumps(state))
            return []

        return mutate

    def truncate_shard(root, tmp_path, corpus):
        data = open(shard(root), "rb").read()
        write(shard(root), data[: len(data) // 2], "wb")
        return []

    def raw_sidecar(data):
        def mutate(root, tmp_path, corpus):
            write(sidecar(root), data, "wb")
            return []

        return mutate

    def no_sidecar(root, tmp_path, corpus):
        os.remove(sidecar(root))
        return ["--velocitune-initial-loss", "7", "7", "7"]

    def tracker(root, tmp_path, corpus):
        write(os.path.join(root, "latest_checkpointed_iteration.txt"), "7")
        return []

    def swapped(root, tmp_path, corpus):
        # The same domain names, the files behind two of them swapped.
        p = corpus.prefixes
        return [
            "--data-path",
            *blend(corpus, ["0.5", "0.3", "0.2"], [p[1], p[0], p[2]]),
            "--velocitune-domain-names",
            "code",
            "docs",
            "legal",
        ]

    def same_size_edit(root, tmp_path, corpus):
        # The same names, the same sizes and .idx; bytes of one .bin changed in place.
        def flip(prefix):
            with open(prefix + ".bin", "r+b") as f:
                f.seek(1000)
                chunk = f.read(64)
                f.seek(1000)
                f.write(bytes(reversed(chunk)))

        edited = domain_copy(corpus, tmp_path, "code", flip)
        return [
            "--data-path",
            *blend(corpus, ["0.5", "0.3", "0.2"], [edited, *corpus.prefixes[1:]]),
        ]

    def new_run_from_a_copy(root, tmp_path, corpus):
        # A new run (a fine-tune of another checkpoint) into a finished run's --save.
        return ["--load", shutil.copytree(root, str(tmp_path / "other")), "--finetune"]

    def resume_an_older_copy(root, tmp_path, corpus):
        # The same run resumed from an earlier checkpoint of a copy, saving over its newer ones.
        copy = shutil.copytree(root, str(tmp_path / "copy"))
        write(os.path.join(copy, "latest_checkpointed_iteration.txt"), "2")
        return ["--load", copy]

    def set_key(key, value):
        def change(state):
            state[key] = value

        return change

    def drop_key(key):
        return lambda state: state.pop(key)

    return [
        ("truncated shard", truncate_shard, "model_optim_rng.pt is truncated or corrupt"),
        (
            "sidecar no history",
            edit_sidecar(drop_key("history")),
            "velocitune_state.json: the Velocitune sidecar has no history",
        ),
        (
            "sidecar history null",
            edit_sidecar(set_key("history", None)),
            "'history' must be a list of updates; it holds None",
        ),
        (
            "sidecar corrupt",
            raw_sidecar(b"\xff\xfe\x00garbage"),
            "velocitune_state.json: the Velocitune sidecar is not a text file",
        ),
        (
            "sidecar empty",
            raw_sidecar(b""),
            "velocitune_state.json: the Velocitune sidecar is empty",
        ),
        ("sidecar missing", no_sidecar, "velocitune_state.json is missing: the weight history"),
        ("tracker names a missing iteration", tracker, "names iteration 7, but"),
        (
            "sidecar weights invalid",
            edit_sidecar(set_key("weights", [0.5, 0.5, 0.5])),
            "velocitune_state.json: 'weights' [0.5, 0.5, 0.5] is not a blend",
        ),
        (
            "sidecar NaN initial loss",
            edit_sidecar(lambda s: s["initial_loss"].__setitem__(0, None)),
            "velocitune_state.json: 'initial_loss' [nan,",
        ),
        ("prefixes swapped", swapped, "domain 0 of --data-path was"),
        ("same-size .bin edit", same_size_edit, "other data, it cannot resume"),
        (
            "update interval changed",
            lambda r, t, c: ["--velocitune-update-interval", "4"],
            "--velocitune-update-interval 2, this run has 4",
        ),
        (
            "rising rule changed",
            lambda r, t, c: ["--velocitune-rising-rule", "budget"],
            "--velocitune-rising-rule 'budget-hold', this run has 'budget'",
        ),
        (
            "train iters below the checkpoint",
            lambda r, t, c: ["--train-iters", "3"],
            "--train-iters 3 is below the iteration of the checkpoint in --load ",
        ),
        (
            "save holds a finished run's checkpoints",
            new_run_from_a_copy,
            "holds the checkpoints of run ",
        ),
        (
            "save ahead of the resumed copy",
            resume_an_older_copy,
            "holds this run's checkpoints up to iteration 4, ahead of its start at 2, which this "
            "run would overwrite: resume that run with --load",
        ),
        (
            "model shape changed",
            lambda r, t, c: ["--hidden-size", "64"],
            "does not fit this model (Error(s) in loading state_dict for GPTModel: size "
            "mismatch for ",
        ),
    ]


RESUME = _resume_cases()


@pytest.mark.parametrize("name, mutate, message", RESUME, ids=[c[0] for c in RESUME])
def test_bad_resume_is_one_line(corpus, ckpt, tmp_path, name, mutate, message):
    root = copy_ckpt(ckpt, tmp_path)
    extra = mutate(root, tmp_path, corpus)
    argv = argv_for(corpus, root, train_iters=6, extra=("--load", root))
    for flag in ("--data-path", "--load"):  # replaced, not repeated
        if flag in extra:
            argv = _drop(argv, {flag})
    rc, err = run_entry(argv + extra)
    line = one_line(err)
    assert rc == 2, err
    assert message in line, line


def test_malicious_checkpoint_is_refused_and_runs_nothing(corpus, ckpt, tmp_path):
    root = copy_ckpt(ckpt, tmp_path)
    marker = str(tmp_path / "payload-ran")
    path = os.path.join(root, SHARD)
    payload = torch.load(path, weights_only=True)
    payload["extra"] = Payload(marker)
    torch.save(payload, path)
    argv = argv_for(corpus, str(tmp_path / "new"), extra=("--load", root, "--finetune"))
    rc, err = run_entry(argv)
    line = one_line(err)
    assert rc == 2 and f"--load: {path} needs the global" in line and "makedirs" in line, line
    assert "--trust-checkpoint" in line
    assert not os.path.exists(marker)
    # The converter refuses it the same way.
    from megatron_velocitune.cli import convert_hf_llama

    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        rc = convert_hf_llama.main(
            [
                "megatron-to-hf",
                "--load",
                root,
                "--output",
                str(tmp_path / "hf"),
                "--vocab-size",
                "1024",
            ]
        )
    assert rc == 2 and "needs the global" in one_line(out.getvalue())
    assert not os.path.exists(marker)
    # The explicit opt-in loads it (and so runs it).
    from megatron_velocitune.training.safe_load import load_checkpoint_file

    load_checkpoint_file(path, trust=True)
    assert os.path.isdir(marker)


def test_finished_run_says_it_is_done(corpus, ckpt, tmp_path):
    root = copy_ckpt(ckpt, tmp_path)
    rc, out = run_distributed(_entry_stdout, 1, (argv_for(corpus, root, extra=("--load", root)),))[
        0
    ]
    assert rc == 0 and "the end of this run (--train-iters 4): nothing left to train" in out


def _entry_stdout(rank, world_size, argv):
    from megatron_velocitune.training.arguments import parse_args
    from megatron_velocitune.training.pretrain import run_pretrain

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_pretrain("pretrain_gpt.py", parse_args(argv))
    return rc, out.getvalue()


@pytest.mark.slow
def test_data_parallel_change_is_refused(corpus, ckpt, tmp_path):
    root = copy_ckpt(ckpt, tmp_path)
    argv = argv_for(corpus, root, train_iters=6, extra=("--load", root))
    results = run_distributed(entry_worker, 2, (argv,), timeout=240)
    for rc, err in results:
        assert rc == 2
        # The identity names it first (the window check refuses it too, for older sidecars).
        assert "the data-parallel size (world size / (TP x PP)) 1, this run has 2" in one_line(err)


# ----------------------------------------------------------------- tools
def test_tools_check_their_paths_and_files_first(corpus, ckpt, tmp_path):
    from megatron_velocitune.cli import convert_hf_llama, measure_initial_loss, prepare_corpus

    def call(main, argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
        return rc, one_line(err.getvalue())

    rc, line = call(measure_initial_loss.main, ["--output", str(tmp_path), "--num-layers", "2"])
    assert rc == 2 and f"--output {tmp_path}: is a directory" in line
    a_file = write(str(tmp_path / "a_file"), "x")
    rc, line = call(
        prepare_corpus.main,
        ["--output-dir", a_file, "--vocab-size", "300", "--domain", f"x={corpus.root}"],
    )
    assert rc == 2 and f"--output-dir {a_file}: is a file" in line
    # A broken Hugging Face config.json, for either direction.
    hf = tmp_path / "hf"
    hf.mkdir()
    write(str(hf / "config.json"), '{"hidden_size": ')
    rc, line = call(
        convert_hf_llama.main,
        ["hf-to-megatron", "--hf-dir", str(hf), "--output", str(tmp_path / "o")],
    )
    assert rc == 2 and "config.json is not readable JSON" in line
    root = copy_ckpt(ckpt, tmp_path)
    rc, line = call(
        convert_hf_llama.main,
        [
            "megatron-to-hf",
            "--load",
            root,
            "--output",
            str(tmp_path / "h"),
            "--hf-config",
            str(hf / "config.json"),
        ],
    )
    assert rc == 2 and "--hf-config" in line and "config.json is not readable JSON" in line
    # A truncated shard.
    data = open(os.path.join(root, SHARD), "rb").read()
    write(os.path.join(root, SHARD), data[:1000], "wb")
    rc, line = call(
        convert_hf_llama.main, ["megatron-to-hf", "--load", root, "--output", str(tmp_path / "h")]
    )
    assert rc == 2 and "model_optim_rng.pt is truncated or corrupt" in line


# ----------------------------------------------------------------- runs, NaN, lock
def strict_lines(path):
    def refuse(name):
        raise ValueError(f"{path}: non-strict JSON constant {name}")

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def test_two_runs_in_one_log_dir_stay_apart(corpus, ckpt, tmp_path):
    tb = str(tmp_path / "tb")
    first = argv_for(corpus, str(tmp_path / "a"), extra=("--tensorboard-dir", tb))
    assert run_entry(first)[0] == 0
    second = argv_for(
        corpus,
        str(tmp_path / "b"),
        extra=(
            "--tensorboard-dir",
            tb,
            "--velocitune-policy",
            "static",
            "--velocitune-update-interval",
            "4",
        ),
    )
    assert run_entry(_drop(second, {"--velocitune-target-loss"}))[0] == 0
    path = os.path.join(tb, "velocitune_trajectory.jsonl")
    records = strict_lines(path)
    headers = [r for r in records if r["type"] == "header"]
    assert len(headers) == 2 and headers[0]["run_id"] != headers[1]["run_id"]
    traj = read_trajectory(path)
    assert traj.header["policy"] == "static" and traj.header["update_interval"] == 4
    assert [u["iteration"] for u in traj.updates] == [4]
    assert traj.earlier_runs == [headers[0]["run_id"]]
    # The tools' reader sees the last run only.
    from megatron_velocitune.cli._common import load_trajectory

    assert load_trajectory(path).header["policy"] == "static"


def test_a_resume_into_a_new_log_dir_keeps_the_time_average(corpus, tmp_path):
    """The resumed run's trajectory starts with the updates restored from the sidecar, so
    velocitune-average-weights reads the uninterrupted run's time average from it.
    """
    from megatron_velocitune.cli import average_weights

    straight, parts = str(tmp_path / "straight"), str(tmp_path / "parts")
    assert run_entry(argv_for(corpus, straight, train_iters=6))[0] == 0
    assert run_entry(argv_for(corpus, parts, train_iters=6, extra=("--exit-interval", "4")))[0] == 0
    new_log = str(tmp_path / "new-log")  # the first part's trajectory is not there
    resume = argv_for(corpus, parts, train_iters=6, extra=("--load", parts))
    rc, err = run_entry(resume + ["--velocitune-log-dir", new_log])
    assert rc == 0, err

    def average(path, name):
        out = str(tmp_path / f"{name}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            assert average_weights.main([path, "--json", out]) == 0
        return json.load(open(out))["per_run"][0]

    first = os.path.join(straight, "tb", "velocitune_trajectory.jsonl")
    second = os.path.join(new_log, "velocitune_trajectory.jsonl")
    updates = read_trajectory(second).updates
    assert [u["iteration"] for u in updates] == [2, 4, 6]
    assert [u.get("restored", False) for u in updates] == [True, True, False]
    assert [u["weights"] for u in updates] == [u["weights"] for u in read_trajectory(first).updates]
    np.testing.assert_allclose(average(second, "resumed"), average(first, "straight"), atol=1e-12)


def test_non_finite_loss_stops_without_saving(corpus, tmp_path):
    # A static run (no update evaluation before iteration 8): the training loss trips the stop.
    save = str(tmp_path / "nan")
    extra = ("--lr", "1e20", "--clip-grad", "0", "--save-interval", "1")
    static = ("--velocitune-policy", "static", "--velocitune-update-interval", "8")
    argv = argv_for(corpus, save, train_iters=6, extra=(*extra, *static, "--lr-warmup-iters", "4"))
    rc, err = run_entry(_drop(argv, {"--velocitune-target-loss"}))
    line = one_line(err)
    assert rc == 1 and "training loss or gradient norm is not finite" in line, err
    assert "stopped without saving" in line
    last = int(open(os.path.join(save, "latest_checkpointed_iteration.txt")).read())
    stopped = int(line.split("error: iteration ")[1].split(":")[0])
    # The training loss of iteration t is the forward of the weights saved at t - 1: those had
    # diverged already, so the good checkpoint is t - 2, and the tracker names it again.
    assert stopped >= 3, line
    assert last == stopped - 2 and f"the last good checkpoint is iteration {last}" in line
    assert f"the weights of iteration {stopped - 1} had already diverged" in line
    assert os.path.exists(os.path.join(save, f"iter_{stopped - 1:07d}"))  # kept, not named
    assert not os.path.exists(os.path.join(save, f"iter_{stopped:07d}"))
    assert not os.path.exists(os.path.join(save, ".velocitune.lock"))
    # The checkpoint named is a good one: every weight finite, and a resume from it trains on
    # (its next iteration's loss is finite) instead of stopping at once.
    shard = os.path.join(save, f"iter_{last:07d}", "mp_rank_00_000", "model_optim_rng.pt")
    model = torch.load(shard, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if isinstance(v, torch.Tensor))
    resume = _drop(argv, {"--velocitune-target-loss"}) + ["--exit-interval", str(last + 1)]
    rc, err = run_entry(resume + ["--load", save])
    assert rc == 0, err
    assert read_tracker(save) == last + 1
    # An update's held-out loss reads the weights of its own iteration t: t - 1 is good.
    save = str(tmp_path / "nan-update")
    rc, err = run_entry(argv_for(corpus, save, train_iters=6, extra=extra))
    line = one_line(err)
    assert rc == 1 and "loss of the velocitune update is not finite" in line, err
    stopped = int(line.split("error: iteration ")[1].split(":")[0])
    assert f"the last good checkpoint is iteration {stopped - 1} in {save} (--no" in line
    # With the opt-out it trains on; every file is strict JSON and reads back with NaN.
    save = str(tmp_path / "nan-on")
    extra += ("--no-check-for-nan-in-loss-and-grad",)
    rc, err = run_entry(argv_for(corpus, save, train_iters=4, extra=extra))
    assert rc == 0, err
    path = os.path.join(save, "tb", "velocitune_trajectory.jsonl")
    strict_lines(path)
    with open(os.path.join(save, "iter_0000004", "velocitune_state.json")) as f:
        state = json.loads(f.read(), parse_constant=lambda name: pytest.fail(name))
    assert any(r["skipped"] and None in r["eval_loss"] for r in state["history"])
    skipped = [u for u in read_trajectory(path).updates if u["skipped"]]
    assert skipped and any(math.isnan(x) for x in skipped[-1]["eval_loss"])


def test_stale_lock_is_taken_over(corpus, tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    save = str(tmp_path / "stale")
    os.makedirs(save)
    write(
        os.path.join(save, ".velocitune.lock"),
        json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start_time": "1"}),
    )
    from megatron_velocitune.control.runlock import RunLock

    lock = RunLock(save).acquire()
    assert lock.took_over["pid"] == dead.pid
    assert json.load(open(lock.path))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(lock.path)


@pytest.mark.parametrize("content", ["", "{", "null", '{"pid": null, "host": null}'])
def test_an_empty_or_garbage_lock_is_taken_over_once_old(tmp_path, content, caplog):
    from megatron_velocitune.control import runlock

    save = str(tmp_path / "save")
    os.makedirs(save)
    path = write(os.path.join(save, runlock.LOCK_NAME), content)
    old = time.time() - runlock.UNREADABLE_GRACE_S - 1
    os.utime(path, (old, old))
    with caplog.at_level("WARNING"):
        lock = runlock.RunLock(save).acquire()
    assert lock.held and json.load(open(path))["pid"] == os.getpid()
    assert "named no owner" in caplog.text and "pid None" not in caplog.text
    lock.release()
    # A fresh one may be a run's being written: read again, then taken over once old enough.
    write(path, content)
    start = time.monotonic()
    lock = runlock.RunLock(save).acquire()
    assert lock.held and time.monotonic() - start >= runlock.UNREADABLE_GRACE_S - 0.5
    lock.release()


# ----------------------------------------------------------------- SIGKILL during a save
def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _torchrun(argv, env=None, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        os.path.join(REPO, "examples", "pretrain_gpt.py"),
        *argv,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if wait:
        out = proc.communicate(timeout=400)[0]
        assert proc.returncode == 0, out[-3000:]
        return out
    return proc


@pytest.mark.slow
def test_sigkill_of_every_worker_during_a_save_resumes_to_the_same_run(corpus, tmp_path):
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")

    def argv(save, *extra):
        return base_argv(corpus, save, train_iters=6, extra=(*INITIAL, *extra))

    _torchrun(argv(full))
    proc = _torchrun(argv(parts), env={"VELOCITUNE_TEST_PAUSE_IN_SAVE": "6"}, wait=False)
    marker = os.path.join(parts, ".paused_in_save")
    deadline = time.monotonic() + 400
    while not os.path.exists(marker):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the save"
        time.sleep(0.2)
    # torchrun, its two workers (in process groups of their own) and their loader workers.
    tree = _descendants(proc.pid)
    assert len(tree) >= 3
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # Killed during the save of 6: its shards are written, its sidecar and tracker are not.
    assert open(os.path.join(parts, "latest_checkpointed_iteration.txt")).read().strip() == "4"
    assert os.path.exists(os.path.join(parts, "iter_0000006", "mp_rank_00_000"))
    assert not os.path.exists(os.path.join(parts, "iter_0000006", "velocitune_state.json"))
    assert os.path.exists(os.path.join(parts, ".velocitune.lock"))  # the dead run's
    out = _torchrun(argv(parts, "--load", parts))
    assert "took over the stale lock" in out
    assert " loaded checkpoint from" in out and "at iteration 4" in out
    assert not os.path.exists(os.path.join(parts, ".velocitune.lock"))

    def sidecar(root):
        return json.load(open(os.path.join(root, "iter_0000006", "velocitune_state.json")))

    assert len(sidecar(full)["history"]) == 3
    assert sidecar(full)["history"] == sidecar(parts)["history"]
    assert sidecar(full)["weights"] == sidecar(parts)["weights"]

    def shard(root):
        path = os.path.join(root, "iter_0000006", "mp_rank_00_000", "model_optim_rng.pt")
        return torch.load(path, weights_only=True)

    x, y = shard(full), shard(parts)
    for k, v in x["model"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, y["model"][k]), k


# ----------------------------------------------------------------- pure pieces
def test_strict_json_round_trip():
    from megatron_velocitune.core.strict_json import nan_from_null, strict

    data = {"a": [1.0, float("nan"), float("inf")], "b": None, "c": [[float("nan")]], "d": [1, 2]}
    text = json.dumps(strict(data), allow_nan=False)
    back = nan_from_null(json.loads(text))
    assert back["b"] is None and back["d"] == [1, 2]
    assert back["a"][0] == 1.0 and math.isnan(back["a"][1]) and math.isnan(back["a"][2])
    assert math.isnan(back["c"][0][0])


def test_resume_identity_accepts_moved_data_and_names_changes():
    from megatron_velocitune.control.resume import ResumeIdentity, check_resume
    from megatron_velocitune.core.errors import CheckpointError

    files = [{"bin_bytes": 10, "idx_bytes": 5, "idx_sha256": "ab" * 32, "bin_blake2b": "cd" * 20}]

    def ident(prefix="/a/code", m=150, dp=2, seed=1, files=files):
        return ResumeIdentity.of(
            [prefix],
            files,
            update_interval=m,
            stream_dp_size=dp,
            policy="velocity",
            rising_rule="budget",
            rule_knobs={"min_headroom": 0.0},
            min_weight=0.0,
            loss_source="eval",
            split="98,2,0",
            seq_length=256,
            global_batch_size=32,
            seed=seed,
        )

    notes = check_resume(ident().to_json(), ident(prefix="/b/code"), "s.json")
    assert notes == ["domain 0: data moved from /a/code to /b/code (same content)"]
    with pytest.raises(CheckpointError, match=r"--seed 1, this run has 2"):
        check_resume(ident().to_json(), ident(seed=2), "s.json")
    with pytest.raises(CheckpointError, match=r"data-parallel size .* 2, this run has 1"):
        check_resume(ident().to_json(), ident(dp=1), "s.json")
    assert "older version" in check_resume(None, ident(), "s.json")[0]
    # The .bin's content hash tells a same-size edit; a sidecar written before it compares the
    # sizes and the .idx only, and says so.
    edited = [{**files[0], "bin_blake2b": "ef" * 20}]
    with pytest.raises(CheckpointError, match=r"bin blake2b cdcdcdcdcdcd\), this run has"):
        check_resume(ident().to_json(), ident(files=edited), "s.json")
    old = [{k: v for k, v in files[0].items() if k != "bin_blake2b"}]
    notes = check_resume(ident(files=old).to_json(), ident(files=edited), "s.json")
    assert notes == [
        "the sidecar records no .bin content hash (written by an older version): the .bin "
        "files were compared by size only"
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident().seed = 2


# The ``resume`` record of a sidecar written before the identity became a dataclass (0.4 run,
# velocity policy, two domains): it must still compare equal to the same run's identity.
OLD_SIDECAR_IDENTITY = {
    "data": [
        {
            "prefix": "/d/code",
            "documents": 7,
            "bin_bytes": 1000,
            "idx_bytes": 98,
            "idx_sha256": "cd" * 32,
        },
        {
            "prefix": "/d/docs",
            "documents": 3,
            "bin_bytes": 500,
            "idx_bytes": 66,
            "idx_sha256": "ef" * 32,
        },
    ],
    "update_interval": 2,
    "stream_dp_size": 1,
    "policy": "velocity",
    "rising_rule": "budget-hold",
    "rule_knobs": {"min_headroom": 0.0, "target_margin": 0.02, "forgetting_tolerance": None},
    "min_weight": 0.0,
    "loss_source": "eval",
    "split": "90,10,0",
    "seq_length": 64,
    "global_batch_size": 4,
    "seed": 1234,
    "guards": {"noise_multiple": 2.0, "brake_window": 3},
    "blend": [0.6, 0.4],
}


def test_an_older_sidecar_identity_compares_equal():
    from megatron_velocitune.control.resume import ResumeIdentity, check_resume

    old = json.loads(json.dumps(OLD_SIDECAR_IDENTITY))  # as read back from the file
    files = [{k: v for k, v in d.items() if k != "prefix"} for d in old["data"]]
    same = ResumeIdentity.of(
        ["/d/code", "/d/docs"],
        files,
        update_interval=2,
        stream_dp_size=1,
        policy="velocity",
        rising_rule="budget-hold",
        rule_knobs={"min_headroom": 0.0, "target_margin": 0.02, "forgetting_tolerance": None},
        min_weight=0,
        loss_source="eval",
        split="90,10,0",
        seq_length=64,
        global_batch_size=4,
        seed=1234,
        guards={"noise_multiple": 2.0, "brake_window": 3},
        blend=[0.6, 0.4000000000000001],
    )
    # Written before the .bin content hash too: compared by size, and the resume says so.
    no_hash = (
        "the sidecar records no .bin content hash (written by an older version): the .bin "
        "files were compared by size only"
    )
    assert same.to_json() == old and check_resume(old, same, "s.json") == [no_hash]
    older = {k: v for k, v in old.items() if k not in ("guards", "blend")}  # before those
    assert sorted(check_resume(older, same, "s.json")) == sorted(
        [
            "the sidecar records no --data-path weights (written by an older version)",
            "the sidecar records no guards (written by an older version)",
            no_hash,
        ]
    )


def test_legacy_data_types_load_without_trust(tmp_path):
    # What older checkpoints of this project (numpy RNG state) and Megatron-LM's legacy files
    # (args as a Namespace) hold: data only, allowed by name.
    import argparse

    from megatron_velocitune.training.safe_load import load_checkpoint_file

    path = str(tmp_path / "legacy.pt")
    state = np.random.get_state()
    torch.save({"args": argparse.Namespace(num_layers=2, lr=1e-3), "numpy": state}, path)
    loaded = load_checkpoint_file(path)
    assert loaded["args"].num_layers == 2
    np.testing.assert_array_equal(loaded["numpy"][1], state[1])


def test_entry_catches_only_project_errors(monkeypatch, capsys):
    from megatron_velocitune.core.errors import NonFiniteLossError
    from megatron_velocitune.training import pretrain as entry

    def bug(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(entry, "pretrain", bug)
    with pytest.raises(ValueError, match="an internal bug"):  # keeps its traceback
        entry.run_pretrain("prog", None)

    def diverged(args):
        raise NonFiniteLossError("iteration 3: not finite")

    monkeypatch.setattr(entry, "pretrain", diverged)
    assert entry.run_pretrain("prog", None) == 1
    assert capsys.readouterr().err == "prog: error: iteration 3: not finite\n"


# ----------------------------------------------------------------- the tools' one-line cases
def _tool_cases():
    """(name, setup(tmp_path) -> (tool main, argv), message): each a one-line error, exit 2."""
    from megatron_velocitune.cli import average_weights, fit_dcpt_law, fit_target_loss, plot_weights

    from .test_fit_tools import CODE, CODE_LAW, MATH, MATH_LAW, WEB_LAW, chin, rising
    from .test_fit_tools import write_run as fit_run

    def proxy(tmp_path):
        domains, weights = ["code", "math", "web"], [0.4, 0.4, 0.2]
        curves = [chin(*CODE), chin(*MATH), rising]
        return fit_run(tmp_path / "proxy.jsonl", domains, weights, curves, initial=[4, 3.5, 3])

    def four_domains(tmp_path):
        blends = [(0.3, 0.3, 0.2, 0.2), (0.4, 0.2, 0.2, 0.2), (0.1, 0.3, 0.3, 0.3)]
        laws = [CODE_LAW, MATH_LAW, WEB_LAW, WEB_LAW]
        return [
            fit_run(
                tmp_path / f"b{i}.jsonl",
                ["a", "b", "c", "d"],
                list(w),
                [lambda d, law=law, r=r: law(d, r) for law, r in zip(laws, w)],
                iters=600,
                every=100,
                seed=i,
                initial=[3.5, 2.8, 2.75, 2.75],
            )
            for i, w in enumerate(blends)
        ]

    def tool(main, *flags, trajectory=proxy):
        def setup(tmp_path, corpus):
            paths = trajectory(tmp_path)
            paths = paths if isinstance(paths, list) else [paths]
            return main, [*paths, *[f(tmp_path) if callable(f) else f for f in flags]]

        return setup

    def folder(tmp_path):
        return str(tmp_path)

    def read_only(name):
        return lambda tmp_path: os.path.join(read_only_dir(tmp_path), name)

    def compare_bad_entry_flag(tmp_path, corpus):
        # The child (the training entry under torchrun) refuses the flag in one line.
        from megatron_velocitune.cli import compare_policies

        from .test_compare_tool import argv as compare_argv

        base = tmp_path / "base"
        base.mkdir()
        write(str(base / "latest_checkpointed_iteration.txt"), "6")
        argv = compare_argv(corpus, tmp_path / "out", str(base), "--nproc", "1", "--quick")
        return compare_policies.main, argv + ["--num-layers", "0"]

    return [
        (
            "fit-targets --output a folder",
            tool(fit_target_loss.main, "--output", folder),
            "--output {tmp}: is a directory",
        ),
        (
            "fit-targets --output read-only",
            tool(fit_target_loss.main, "--output", read_only("t.json")),
            "t.json: cannot write in",
        ),
        (
            "fit-targets --plot a folder",
            tool(fit_target_loss.main, "--plot", folder),
            "--plot {tmp}: is a directory",
        ),
        (
            "fit-targets --budget-tokens -5",
            tool(fit_target_loss.main, "--budget-tokens", "-5"),
            "--budget-tokens -5: must be finite and > 0",
        ),
        (
            "fit-targets --budget-tokens 0",
            tool(fit_target_loss.main, "--budget-tokens", "0"),
            "--budget-tokens 0: must be finite and > 0",
        ),
        (
            "fit-dcpt --output read-only",
            tool(fit_dcpt_law.main, "--output", read_only("d.json"), trajectory=four_domains),
            "d.json: cannot write in",
        ),
        (
            "fit-dcpt --min-weight 0.5, 4 domains",
            tool(fit_dcpt_law.main, "--min-weight", "0.5", trajectory=four_domains),
            "--min-weight 0.5: must be below 1/4 with 4 domains",
        ),
        (
            "average-weights --json a folder",
            tool(average_weights.main, "--json", folder),
            "--json {tmp}: is a directory",
        ),
        (
            "average-weights --json read-only",
            tool(average_weights.main, "--json", read_only("a.json")),
            "a.json: cannot write in",
        ),
        (
            "compare: a bad entry flag after --",
            compare_bad_entry_flag,
            "velocitune-compare: error: a run stopped ({tmp}/out/runs/cpt/seed1/log.txt): "
            "--num-layers: 0 must be >= 1",
        ),
        (
            "plot-weights --output read-only",
            tool(plot_weights.main, "--output", read_only("w.png")),
            "w.png: cannot write in",
        ),
    ]


TOOLS = _tool_cases()


@pytest.mark.parametrize("name, setup, message", TOOLS, ids=[c[0] for c in TOOLS])
def test_tool_error_is_one_line(corpus, tmp_path, capsys, name, setup, message):
    main, argv = setup(tmp_path, corpus)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert rc == 2, captured.err
    assert message.format(tmp=tmp_path) in line, line


def test_the_reliability_page_counts_the_cases():
    with open(os.path.join(REPO, "docs", "reliability.md"), encoding="utf-8") as f:
        text = f.read()
    total = len(FRESH) + len(RESUME) + len(TOOLS)
    expected = (
        f"{total} one-line cases: {len(FRESH)} at start-up, {len(RESUME)} at a resume, "
        f"{len(TOOLS)} of the tools"
    )
    assert expected in " ".join(text.split()), expected


# ----------------------------------------------------------------- writes, ports, claims
def test_an_unwritable_checkpoint_file_is_one_line_and_the_tracker_stays(corpus, ckpt, tmp_path):
    # A real write failure inside torch.save (as a full disk): each file may hold 100 kB, the
    # shard needs more. torch reports it as a RuntimeError raised while the OSError was handled.
    import resource

    root = copy_ckpt(ckpt, tmp_path)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    argv = argv_for(corpus, root, train_iters=6, extra=("--load", root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "pretrain_gpt.py"), *argv],
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = one_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot write " in line and "iter_0000006" in line and "model_optim_rng.pt" in line
    assert "too large" in line and "it is left as it was" in line
    assert open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip() == "4"
    assert not os.path.exists(os.path.join(root, ".velocitune.lock"))


def test_atomic_write_names_the_final_file(tmp_path):
    from megatron_velocitune.core.errors import WriteError
    from megatron_velocitune.core.files import write_json, write_text

    write_text(str(tmp_path / "t.txt"), "old")
    (tmp_path / "folder").mkdir()
    with pytest.raises(WriteError, match=r"folder: it is a directory \(EISDIR\)"):
        write_json(str(tmp_path / "folder"), {"a": 1})
    with pytest.raises(WriteError, match=r"t\.txt is a file, not a folder"):
        write_text(str(tmp_path / "t.txt" / "x"), "new")
    assert (tmp_path / "t.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["folder", "t.txt"]  # no temporary file left


def _port_worker(rank, world_size, argv, mode):
    import socket

    from megatron_velocitune.training.arguments import parse_args
    from megatron_velocitune.training.pretrain import run_pretrain

    if mode == "plain":  # python pretrain_gpt.py: no torchrun environment
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            os.environ.pop(key, None)
        rc = run_pretrain("pretrain_gpt.py", parse_args(argv))
        return rc, ""
    # Another run's store on this run's MASTER_PORT.
    holder = socket.socket()
    holder.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))
    holder.listen()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = run_pretrain("pretrain_gpt.py", parse_args(argv))
    holder.close()
    return rc, err.getvalue()


def test_a_port_in_use_is_one_line_and_plain_runs_take_a_free_one(corpus, tmp_path):
    argv = argv_for(corpus, str(tmp_path / "a"), train_iters=2, extra=("--lr-warmup-iters", "0"))
    rc, err = run_distributed(_port_worker, 1, (argv, "taken"), timeout=240)[0]
    line = one_line(err)
    assert rc == 2 and "the port is in use (another run on this machine?)" in line, err
    assert line.startswith("pretrain_gpt.py: error: MASTER_PORT ")
    argv = argv_for(corpus, str(tmp_path / "b"), train_iters=2, extra=("--lr-warmup-iters", "0"))
    assert run_distributed(_port_worker, 1, (argv, "plain"), timeout=240)[0][0] == 0


def _put_claim(folder, owner, age=0.0):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".claim")
    write(path, owner if isinstance(owner, str) else json.dumps(owner))
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return str(folder)


def test_compare_claims_are_taken_over_only_from_a_gone_owner(tmp_path, capsys):
    import socket

    from megatron_velocitune.comparison.runs import claim
    from megatron_velocitune.core.processes import start_time

    host, parent = socket.gethostname(), os.getppid()  # a live process that is not us
    live = {"host": host, "pid": parent, "start_time": start_time(parent)}
    # The hang of issue 26: the claim's pid now belongs to another live process.
    reused = _put_claim(tmp_path / "reused", {**live, "start_time": "1"})
    assert claim(reused, wait=False)
    mine = json.load(open(os.path.join(reused, ".claim")))
    assert mine["pid"] == os.getpid() and mine["host"] == host and mine["start_time"]
    assert "pid {} is now another process".format(parent) in capsys.readouterr().out
    # A live owner is respected, however old its claim; another host's only while refreshed.
    assert not claim(_put_claim(tmp_path / "live", live, age=10 * 3600), wait=False)
    other = {"host": "elsewhere", "pid": parent, "start_time": "1"}
    assert not claim(_put_claim(tmp_path / "fresh", other), wait=False)
    assert claim(_put_claim(tmp_path / "old", other, age=3600), wait=False)
    assert "from process {} on elsewhere: host elsewhere, not refreshed".format(parent) in (
        capsys.readouterr().out
    )
    # An older pid-only claim: taken over once its pid is gone, or once old.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert claim(_put_claim(tmp_path / "dead", str(dead.pid)), wait=False)
    assert not claim(_put_claim(tmp_path / "pid-only", str(parent)), wait=False)
    assert claim(_put_claim(tmp_path / "pid-only-old", str(parent), age=3600), wait=False)
    # Our own claim is ours.
    assert claim(reused, wait=False)


# ----------------------------------------------------------------- silent cases
def test_a_diverged_run_warns_and_its_table_keeps_its_columns():
    from megatron_velocitune.laws.comparison import format_loss_table, parse_final_losses

    names = ["code", "a-long-domain-name"]
    text = format_loss_table(
        names, [7.0, float("nan")], [2.7e7, 6.5], [0.25, 0.75], vocab_size=1024
    )
    lines = text.splitlines()
    assert lines[0].startswith(" warning: the held-out loss at the end is above 20.8 nats")
    assert "code 2.7e+07" in lines[0] and "a-long-domain-name" not in lines[0]
    assert lines[-2].split() == ["code", "7.0000", "2.700e+07", "+2.70e+07", "0.2500"]
    assert lines[-1].split() == ["a-long-domain-name", "nan", "6.5000", "+nan", "0.7500"]
    got = parse_final_losses("log line\n" + text + "\n after")
    assert got[0] == names and got[2] == [2.7e7, 6.5] and got[3] == [0.25, 0.75]
    # A healthy run: no warning, the layout of before (10 columns a number).
    healthy = format_loss_table(["code"], [7.0], [6.9189], [1.0], vocab_size=1024)
    assert healthy.splitlines()[-1] == "   code            7.0000    6.9189   -0.0811    1.0000"


def test_the_bin_content_hash_samples_a_large_file(tmp_path, monkeypatch):
    from megatron_velocitune.data import datafiles

    path = str(tmp_path / "x.bin")
    data = bytearray(os.urandom(1 << 20))
    write(path, bytes(data), "wb")
    whole = datafiles._bin_sample(path, len(data))
    # Above the whole-file size (lowered here): 64 chunks of 4 KiB spread over the file.
    monkeypatch.setattr(datafiles, "_HASH_WHOLE", 1 << 16)
    monkeypatch.setattr(datafiles, "_BIN_CHUNK", 1 << 12)
    sampled = datafiles._bin_sample(path, len(data))
    assert sampled != whole
    data[len(data) - 10] ^= 0xFF  # inside the last chunk: told
    write(path, bytes(data), "wb")
    assert datafiles._bin_sample(path, len(data)) != sampled


def test_an_empty_last_run_names_the_earlier_runs(tmp_path, capsys):
    from megatron_velocitune.cli import plot_weights
    from megatron_velocitune.core.trajectory import TrajectoryWriter

    path = str(tmp_path / "t.jsonl")
    header = dict(
        type="header",
        domains=["a", "b"],
        policy="velocity",
        weights=[0.5, 0.5],
        update_interval=2,
        seq_length=8,
        global_batch_size=4,
        train_iters=4,
    )
    first = TrajectoryWriter(path, run_id="run-a")
    first.write(header)
    update = dict(type="update", iteration=2, consumed_samples=8, start_sample=8)
    first.write({**update, "weights": [0.6, 0.4], "skipped": False, "eval_loss": [3.0, 3.0]})
    TrajectoryWriter(path, run_id="run-b").write(header)
    assert plot_weights.main([path, "--output", str(tmp_path / "w.png")]) == 0
    err = capsys.readouterr().err
    assert "the last run in the file (run_id run-b) has no updates yet" in err
    assert "1 earlier run(s) (run-a)" in err
