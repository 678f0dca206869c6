"""The megatron-core training entry: flags; stop at N/2 + resume == uninterrupted, bit for bit."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.training.arguments import parse_args

from ._multiproc import run_distributed


def base_argv(corpus, save, train_iters=8, extra=()):
    data_path = []
    for w, p in zip([0.5, 0.3, 0.2], corpus.prefixes):
        data_path += [str(w), p]
    return [
        "--num-layers",
        "2",
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "4",
        "--seq-length",
        "32",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "8",
        "--train-iters",
        str(train_iters),
        "--lr",
        "1e-3",
        "--lr-warmup-iters",
        "2",
        "--hidden-dropout",
        "0.1",
        "--attention-dropout",
        "0.1",
        "--log-interval",
        "1",
        "--eval-interval",
        "4",
        "--eval-iters",
        "1",
        "--data-path",
        *data_path,
        "--split",
        "90,10,0",
        "--tokenizer-model",
        corpus.tokenizer_path,
        "--num-workers",
        "2",
        "--save",
        save,
        "--save-interval",
        "4",
        "--tensorboard-dir",
        os.path.join(save, "tb"),
        "--velocitune-policy",
        "velocity",
        "--velocitune-update-interval",
        "2",
        "--velocitune-eval-iters",
        "1",
        "--velocitune-target-loss",
        "1.0",
        "3.0",
        "5.0",
        *extra,
    ]


def train_worker(rank, world_size, argv):
    from megatron_velocitune.training.loop import pretrain

    seen = []

    def hook(dp_rank, batch):
        for ds_id, tokens in zip(batch["dataset_id"].tolist(), batch["tokens"].numpy()):
            seen.append((dp_rank, int(ds_id), hashlib.sha1(tokens.tobytes()).hexdigest()))

    summary = pretrain(parse_args(argv), batch_hook=hook)
    return {"summary": summary, "seen": seen}


def load_shard(save, iteration):
    path = os.path.join(save, f"iter_{iteration:07d}", "mp_rank_00_000", "model_optim_rng.pt")
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted_run(corpus, tmp_path):
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    uninterrupted = run_distributed(train_worker, 2, (base_argv(corpus, full),), timeout=300)
    first = run_distributed(
        train_worker, 2, (base_argv(corpus, parts, extra=("--exit-interval", "4")),), timeout=300
    )
    second = run_distributed(
        train_worker, 2, (base_argv(corpus, parts, extra=("--load", parts)),), timeout=300
    )
    for rank in range(2):
        # What each rank trained on: domain and exact tokens of every sample, in order.
        assert uninterrupted[rank]["seen"] == first[rank]["seen"] + second[rank]["seen"]
        assert len(uninterrupted[rank]["seen"]) == 8 * 8 // 2
    a, b, c = (r[1]["summary"] for r in (uninterrupted, first, second))
    assert b.iteration == 4 and c.iteration == 8
    assert a.lm_losses == {**b.lm_losses, **c.lm_losses}
    assert a.weights == c.weights and a.weights != [0.5, 0.3, 0.2]
    ids = [s[1] for s in uninterrupted[0]["seen"]]
    assert len(set(ids)) == 3

    # The weight history and the model, optimizer and RNG state at N are identical.
    def sidecar(root):
        return json.load(open(os.path.join(root, "iter_0000008", "velocitune_state.json")))

    assert sidecar(full)["history"] == sidecar(parts)["history"]
    assert len(sidecar(full)["history"]) == 4
    x, y = load_shard(full, 8), load_shard(parts, 8)
    for k in x["model"]:
        if isinstance(x["model"][k], torch.Tensor):
            assert torch.equal(x["model"][k], y["model"][k]), k
    # The trajectory of the resumed run holds each update once.
    traj = read_trajectory(os.path.join(parts, "tb", "velocitune_trajectory.jsonl"))
    assert [u["iteration"] for u in traj.updates] == [2, 4, 6, 8]
    # A dynamic held-out run logs the training-stream estimate beside its own.
    assert all(len(u["train_loss"]) == 3 for u in traj.updates)
    np.testing.assert_array_equal(traj.updates[-1]["weights"], a.weights)


def test_unsupported_flag_is_one_clear_line(capsys, corpus, tmp_path):
    with pytest.raises(SystemExit) as info:
        parse_args(
            base_argv(corpus, str(tmp_path)) + ["--num-layers-per-virtual-pipeline-stage", "2"]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--num-layers-per-virtual-pipeline-stage" in err
    assert "not supported by this megatron-core entry" in err


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--global-batch-size", "0", "--global-batch-size: 0 must be >= 1"),
        ("--lr-warmup-fraction", "1.5", "--lr-warmup-fraction: 1.5"),
        ("--max-position-embeddings", "64", "--max-position-embeddings 64 must equal"),
    ],
)
def test_bad_values_name_the_flag(capsys, corpus, tmp_path, flag, value, match):
    with pytest.raises(SystemExit):
        parse_args(base_argv(corpus, str(tmp_path)) + [flag, value])
    assert match in capsys.readouterr().err


def measure_worker(rank, world_size, argv, output):
    from megatron_velocitune.cli.measure_initial_loss import main

    return main(argv + ["--output", output])


@pytest.mark.slow
def test_measure_initial_loss_writes_what_a_run_measures(corpus, tmp_path):
    # A static run: its steps are megatron-core's static path (no training-stream sums).
    argv = base_argv(
        corpus, str(tmp_path / "run"), train_iters=3, extra=("--velocitune-policy", "static")
    )
    drop = {"--train-iters", "--lr", "--global-batch-size", "--velocitune-target-loss"}
    tool_argv, skip = [], 0
    for a in argv:  # the tool needs no training flags: leave them out
        if skip and not a.startswith("--"):
            continue
        skip = a in drop
        if not skip:
            tool_argv.append(a)
    out = str(tmp_path / "initial.json")
    assert run_distributed(measure_worker, 2, (tool_argv, out), timeout=300) == [0, 0]
    measured = json.load(open(out))
    run = run_distributed(train_worker, 2, (argv,), timeout=300)[0]["summary"]
    assert list(measured["losses"]) == ["code", "docs", "legal"]
    assert list(measured["losses"].values()) == run.initial_loss
    traj = read_trajectory(os.path.join(tmp_path, "run", "tb", "velocitune_trajectory.jsonl"))
    assert [u["iteration"] for u in traj.updates] == [2]
    assert traj.updates[0]["eval_loss"] and "train_loss" not in traj.updates[0]
