"""The training-stream loss estimator: per-domain sums, absent domains, TP x PP x DP, resume."""

import os

import numpy as np
import pytest
import torch

from megatron_velocitune.control.controller import VelocituneController
from megatron_velocitune.control.distributed import UpdateGroups
from megatron_velocitune.control.train_stream import DomainLossAccumulator, TrainStreamEvaluator
from megatron_velocitune.core.config import VelocituneConfig
from megatron_velocitune.core.policy import velocity_update
from megatron_velocitune.core.sums import DomainSums
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.training.arguments import parse_args

from ._multiproc import run_distributed
from .test_training import base_argv


def test_accumulator_sums_by_domain_and_resets():
    acc = DomainLossAccumulator(3)
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    acc.add(torch.tensor([2, 0, 2]), losses, mask)
    acc.add(torch.tensor([0]), torch.tensor([[10.0, 10.0]]), torch.ones(1, 2))
    saved = acc.state()
    sums = acc.take()
    np.testing.assert_array_equal(sums.loss_sum, [3.0 + 20.0, 0.0, 3.0 + 6.0])
    np.testing.assert_array_equal(sums.tokens, [1.0 + 2.0, 0.0, 3.0])
    assert acc.take().tokens.sum() == 0  # a new window
    acc.load_state(saved)
    np.testing.assert_array_equal(acc.take().loss_sum, sums.loss_sum)


class _Windows:
    """Hands the controller prepared training windows (our own evaluator protocol)."""

    def __init__(self, windows):
        self.windows = list(windows)

    def evaluate(self, full=False):
        assert not full
        return self.windows.pop(0)


def test_absent_domain_keeps_its_last_estimate():
    windows = [
        DomainSums(np.array([8.0, 9.0]), np.array([2.0, 3.0])),  # means 4, 3
        DomainSums(np.array([6.0, 0.0]), np.array([2.0, 0.0])),
    ]  # domain 1 absent
    cfg = VelocituneConfig(
        update_interval=1, loss_source="train", initial_loss=[5.0, 5.0], target_loss=[2.0, 2.0]
    )
    ctrl = VelocituneController(
        cfg, [0.5, 0.5], TrainStreamEvaluator(None, None), groups=UpdateGroups.single_process()
    )
    ctrl.evaluator = _Windows(windows)
    first = ctrl.maybe_update(1, 10)
    second = ctrl.maybe_update(2, 20)
    assert not second.skipped
    np.testing.assert_array_equal(second.eval_loss, [3.0, 3.0])
    expected = velocity_update(first.weights, [3.0, 3.0], [5.0, 5.0], [2.0, 2.0])
    np.testing.assert_array_equal(second.weights, expected)


def stream_worker(rank, world_size, argv):
    from megatron_velocitune.training.loop import pretrain

    return pretrain(parse_args(argv))


@pytest.mark.slow
def test_train_stream_in_tp_pp_dp_matches_lm_loss_and_resumes_exactly(corpus, tmp_path):
    layout = [
        "--tensor-model-parallel-size",
        "2",
        "--pipeline-model-parallel-size",
        "2",
        "--velocitune-loss-source",
        "train",
        "--num-workers",
        "0",
        "--untie-embeddings-and-output-weights",
    ]
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    a = run_distributed(stream_worker, 8, (base_argv(corpus, full, extra=layout),), timeout=300)
    run_distributed(
        stream_worker,
        8,
        (
            base_argv(
                corpus, parts, extra=layout + ["--exit-interval", "3", "--save-interval", "3"]
            ),
        ),
        timeout=300,
    )
    run_distributed(
        stream_worker, 8, (base_argv(corpus, parts, extra=layout + ["--load", parts]),), timeout=300
    )
    # Every rank ends with the same blend, which moved.
    assert len({tuple(s.weights) for s in a}) == 1 and a[0].weights != [0.5, 0.3, 0.2]
    traj = read_trajectory(os.path.join(full, "tb", "velocitune_trajectory.jsonl"))
    assert traj.header["loss_source"] == "train"
    lm = next(s.lm_losses for s in a if s.lm_losses)  # a last-stage rank
    for prev, upd in zip([0] + [u["iteration"] for u in traj.updates], traj.updates):
        # All tokens of the window, by domain, average to the window's training loss.
        tokens = np.asarray(upd["eval_tokens"])
        assert tokens.sum() == (upd["iteration"] - prev) * 8 * 32
        pooled = float(np.dot(upd["eval_loss"], tokens) / tokens.sum())
        window = [lm[i] for i in range(prev + 1, upd["iteration"] + 1)]
        assert pooled == pytest.approx(np.mean(window), rel=1e-6)
    resumed = read_trajectory(os.path.join(parts, "tb", "velocitune_trajectory.jsonl"))
    assert [u["weights"] for u in resumed.updates] == [u["weights"] for u in traj.updates]
    assert [u["eval_loss"] for u in resumed.updates] == [u["eval_loss"] for u in traj.updates]
