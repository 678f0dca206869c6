"""The ``schedule`` policy: a phased blend via the update path, exact resume, one-line errors."""

import argparse
import json
import os

import numpy as np
import pytest

from megatron_velocitune.control.controller import VelocituneController
from megatron_velocitune.core.arguments import add_velocitune_args, config_from_args
from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.schedule import BlendSchedule
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.schedule_laws import LR_SCHEDULE_KEY, LrSchedule

from ._multiproc import run_distributed
from .test_controller import ScriptedEvaluator
from .test_training import base_argv, train_worker

WEIGHTS = [0.5, 0.3, 0.2]


def parse(*argv):
    return add_velocitune_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_blend_after_is_the_latest_started_phase():
    s = BlendSchedule.parse(["3:1,1,2", "7:0.8,0.1,0.1"], 3)
    assert s.iterations == (3, 7)
    np.testing.assert_array_equal(s.blend_after(0, WEIGHTS), WEIGHTS)
    np.testing.assert_array_equal(s.blend_after(2, WEIGHTS), WEIGHTS)
    np.testing.assert_array_equal(s.blend_after(3, WEIGHTS), [0.25, 0.25, 0.5])
    np.testing.assert_array_equal(s.blend_after(6, WEIGHTS), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(s.blend_after(7, WEIGHTS), [0.8, 0.1, 0.1])
    assert s.to_json() == [[3, [0.25, 0.25, 0.5]], [7, list(s.blends[1])]]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--velocitune-policy", "schedule"], r"policy schedule needs --velocitune-blend-schedule"),
        (["--velocitune-blend-schedule", "3:1,1,1"], r"read by --velocitune-policy schedule"),
        (["--velocitune-blend-schedule", "x:1,1,1"], r"schedule x:1,1,1: a phase is ITER:W1"),
        (["--velocitune-blend-schedule", "5"], r"schedule 5: a phase is ITER:W1"),
        (["--velocitune-blend-schedule", "0:1,1,1"], r"schedule 0:1,1,1: a phase is"),
        (["--velocitune-blend-schedule", "5:1,1,1", "5:1,2,1"], r"5:1,2,1: iteration 5 is not"),
        (["--velocitune-blend-schedule", "5:1,1,1", "4:1,2,1"], r"4:1,2,1: iteration 4 is not"),
        (["--velocitune-blend-schedule", "5:1,1"], r"5:1,1: weights \[1.0, 1.0\] must be 3"),
        (["--velocitune-blend-schedule", "5:1,0,1"], r"5:1,0,1: weights .* must all be"),
        (["--velocitune-blend-schedule", "5:1,nan,1"], r"5:1,nan,1: weights .* must all be"),
        (["--velocitune-blend-schedule", "5:1,a,1"], r"5:1,a,1: weights .* are not numbers"),
        (["--velocitune-blend-schedule", "8:1,1,1"], r"iteration 8 never applies .* 8"),
    ],
)
def test_bad_schedules_are_one_line(argv, match):
    policy = [] if "--velocitune-policy" in argv else ["--velocitune-policy", "schedule"]
    if argv[:2] == ["--velocitune-blend-schedule", "3:1,1,1"]:
        policy = ["--velocitune-policy", "static"]
    args = parse(*policy, *argv)
    args.train_iters = 8
    with pytest.raises(VelocituneConfigError, match=match) as info:
        config_from_args(args).validate(3, WEIGHTS)
    assert "\n" not in str(info.value)


def _controller(phases, interval=4):
    config = VelocituneConfig(
        policy="schedule", update_interval=interval, eval_iters=1, blend_phases=phases
    )
    losses = [[7.0, 7.0, 7.0]] * 10
    sinks = []
    controller = VelocituneController(
        config, WEIGHTS, ScriptedEvaluator([7.0] * 3, losses), sinks=[lambda w, s: sinks.append(s)]
    )
    return controller, sinks


def test_the_blend_switches_after_each_phase_whatever_m():
    controller, starts = _controller(["3:0.8,0.1,0.1", "6:0.1,0.1,0.8"], interval=4)
    for it in range(0, 9):
        controller.maybe_update(it, it * 8)
    # Updates at the phases (3, 6) and every m (4, 8); the blend changes only at the phases.
    assert [r["iteration"] for r in controller.history] == [3, 4, 6, 8]
    assert starts == [24, 48]
    np.testing.assert_allclose(controller.history[0]["weights"], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(controller.history[1]["weights"], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(controller.weights, [0.1, 0.1, 0.8])
    # The phases are part of what a resume must match.
    assert controller.config.guards_identity()["blend_schedule"][0][0] == 3


@pytest.mark.slow
def test_two_ranks_switch_together_and_resume_across_a_switch_is_exact(corpus, tmp_path):
    """2 ranks; the phase at iteration 5; a run stopped at 4 and resumed equals a straight one."""
    schedule = (
        "--velocitune-policy",
        "schedule",
        "--velocitune-blend-schedule",
        "5:0.05,0.05,0.9",
        "--velocitune-update-interval",
        "8",
    )
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    straight = run_distributed(
        train_worker, 2, (base_argv(corpus, full, extra=schedule),), timeout=300
    )
    first = run_distributed(
        train_worker,
        2,
        (base_argv(corpus, parts, extra=schedule + ("--exit-interval", "4")),),
        timeout=300,
    )
    second = run_distributed(
        train_worker,
        2,
        (base_argv(corpus, parts, extra=schedule + ("--load", parts)),),
        timeout=300,
    )
    for rank in range(2):
        assert straight[rank]["seen"] == first[rank]["seen"] + second[rank]["seen"]
        # Every rank switched after iteration 5 (8 samples a step, 4 per rank).
        assert straight[rank]["summary"].weights == pytest.approx([0.05, 0.05, 0.9])
    seen = [ds for rank in range(2) for (_, ds, _) in straight[rank]["seen"]]
    before = [ds for rank in range(2) for (_, ds, _) in straight[rank]["seen"][:20]]
    after = [ds for rank in range(2) for (_, ds, _) in straight[rank]["seen"][20:]]
    assert len(seen) == 64 and before.count(2) < 10 and after.count(2) >= 20
    a, c = straight[1]["summary"], second[1]["summary"]
    assert a.lm_losses == {**first[1]["summary"].lm_losses, **c.lm_losses}

    def sidecar(root):
        with open(os.path.join(root, "iter_0000008", "velocitune_state.json")) as f:
            return json.load(f)

    assert sidecar(full)["history"] == sidecar(parts)["history"]
    assert [r["iteration"] for r in sidecar(full)["history"]] == [5, 8]
    traj = read_trajectory(os.path.join(parts, "tb", "velocitune_trajectory.jsonl"))
    assert [u["iteration"] for u in traj.updates] == [5, 8]
    assert traj.header["blend_schedule"] == [[5, pytest.approx([0.05, 0.05, 0.9])]]
    # The header carries the run's whole LR schedule: it gives the LR every record measured.
    schedule = LrSchedule.from_header(traj.header[LR_SCHEDULE_KEY], "trajectory")
    recorded = [u["lr"] for u in traj.updates]
    np.testing.assert_allclose(schedule.lr(np.array([5, 8])), recorded, rtol=1e-12)
