"""The run object both drivers share, and the torch-free core.

- importing the core, the laws and the controller loads neither torch nor megatron.core (a fresh
  interpreter, so nothing else in this test process has imported them first);
- a static (observe-only) run never restarts the loader; a dynamic one restarts it exactly at the
  updates that changed the blend (not at a skipped one, not after the last iteration), on a real
  ``VelocityBlendedDataset`` over the test corpus, in one process with :class:`LocalSync`.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_velocitune.control.run import RunSettings, VelocituneRun
from megatron_velocitune.control.sync import LocalSync
from megatron_velocitune.core.sums import DomainSums

from .test_megatron_lm import _blend_config

PURE_MODULES = [
    "megatron_velocitune",
    "megatron_velocitune.core.policy",
    "megatron_velocitune.core.blending",
    "megatron_velocitune.core.config",
    "megatron_velocitune.core.arguments",
    "megatron_velocitune.core.weight_history",
    "megatron_velocitune.core.trajectory",
    "megatron_velocitune.core.files",
    "megatron_velocitune.core.sums",
    "megatron_velocitune.control.controller",
    "megatron_velocitune.control.sync",
    "megatron_velocitune.control.observers",
    "megatron_velocitune.control.resume",
    "megatron_velocitune.core.strict_json",
    "megatron_velocitune.laws.fitting",
    "megatron_velocitune.laws.scaling_law",
    "megatron_velocitune.laws.dcpt_law",
    "megatron_velocitune.laws.comparison",
    "megatron_velocitune.laws.cross_domain_law",
]


def test_core_and_controller_import_without_torch_or_megatron():
    """Also the lazy top-level names of the pure side (the torch side loads only when used)."""
    code = (
        "import sys\n"
        f"for name in {PURE_MODULES!r}:\n"
        "    __import__(name)\n"
        "import megatron_velocitune as top\n"
        "top.VelocituneConfig, top.VelocituneController, top.LocalSync, top.update_weights\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')\n"
        "               or m == 'megatron.core' or m.startswith('megatron.core.'))\n"
        "print(len(heavy), heavy[:5])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.split()[0] == "0", out


class _Scripted:
    """Mean losses per update (100 tokens per domain); NaN at the indices in ``nan_at``."""

    def __init__(self, k, nan_at=()):
        self.k, self.nan_at, self.calls = k, set(nan_at), 0

    def evaluate(self, full=False):
        if full:
            mean = np.full(self.k, 6.0)
        else:
            self.calls += 1
            mean = 6.0 - 0.2 * self.calls * np.arange(1, self.k + 1) / self.k
            if self.calls in self.nan_at:
                mean = mean * np.nan
        return DomainSums(mean * 100.0, np.full(self.k, 100.0))


def _args(tmp_path, policy, corpus):
    return argparse.Namespace(
        velocitune_policy=policy,
        velocitune_update_interval=2,
        velocitune_eval_iters=1,
        velocitune_initial_loss=None,
        velocitune_initial_loss_file=None,
        velocitune_target_loss=None if policy == "static" else [4.0] * len(corpus.prefixes),
        velocitune_target_loss_file=None,
        velocitune_min_weight=0.0,
        velocitune_domain_names=None,
        velocitune_log_dir=str(tmp_path / f"logs-{policy}"),
        seq_length=32,
        global_batch_size=4,
        train_iters=8,
        tensorboard_dir=None,
        save=None,
    )


def _dataset(corpus, tmp_path, weights, train_samples):
    from megatron_velocitune.data.builder import build_velocity_datasets

    data = build_velocity_datasets(
        _blend_config(corpus, tmp_path), train_samples=train_samples, update_window=8
    )
    assert np.allclose(data.weights, weights)
    return data


@pytest.mark.parametrize(
    "policy, nan_at, expected",
    [
        ("static", (), []),  # observe only: the blend never changes, the loader never restarts
        # updates at 2, 4, 6, 8: the second is skipped (NaN), the last is past the final draw
        ("paper", (2,), [8, 24]),
    ],
)
def test_the_loader_restarts_only_when_the_blend_changed(
    world, corpus, tmp_path, policy, nan_at, expected
):
    weights = [0.5, 0.3, 0.2]
    args = _args(tmp_path, policy, corpus)
    data = _dataset(corpus, tmp_path, weights, args.train_iters * args.global_batch_size)
    evaluator = _Scripted(len(data.prefixes), nan_at)
    frozen = dict(vars(args))
    run = VelocituneRun(
        RunSettings.from_args(args, data.prefixes),
        data.prefixes,
        data.weights,
        data.train,
        evaluator,
        lambda line: None,
        sync=LocalSync(),
    )
    assert vars(args) == frozen  # the driver's flags are read, never changed
    assert run.names == [os.path.basename(p) for p in data.prefixes]
    rebuilds = []
    run.on_blend_change(rebuilds.append)
    run.start(0, 0)
    evaluator.calls = 0  # static's L_init on the subset footing took one: the script counts updates
    decisions = []
    for iteration in range(1, args.train_iters + 1):
        consumed = iteration * args.global_batch_size
        with pytest.warns(RuntimeWarning) if iteration == 4 and nan_at else _no_warning():
            decision = run.after_iteration(iteration, consumed)
        if decision is not None:
            decisions.append(decision)
    assert len(decisions) == 4 and evaluator.calls == 4
    assert rebuilds == expected
    changed = [d.changed for d in decisions]
    assert changed == ([False] * 4 if policy == "static" else [True, False, True, True])
    if policy == "static":
        assert np.array_equal(run.weights, data.weights) and data.train.segments[-1].start == 0
    else:
        # The dataset follows every change, the last included (it draws nothing after it).
        assert np.array_equal(data.train.weights, run.weights)
    assert os.path.exists(run.trajectory_path)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
