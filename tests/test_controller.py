"""The controller, the evaluation and the state sidecar in one process, on real held-out text.

A one-rank gloo world holds a tiny megatron-core GPTModel (local layer spec, CPU shim); the
evaluation is checked against plain forward passes over the same samples. Controller logic that
needs chosen losses (NaN, resume) uses a scripted evaluator: the controller's own evaluator
interface, not a stand-in for megatron-core.
"""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from megatron_velocitune.control.controller import TRAJECTORY_FILE, VelocituneController
from megatron_velocitune.control.distributed import UpdateGroups, synchronize_update
from megatron_velocitune.control.evaluation import full_plan, subset_plan
from megatron_velocitune.control.state import (
    SIDECAR_NAME,
    load_controller_state,
    save_controller_state,
    sidecar_path,
)
from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.policy import (
    DEFAULT_BRAKE_WINDOW,
    DEFAULT_NOISE_MULTIPLE,
    update_weights,
)
from megatron_velocitune.core.sums import DomainSums
from megatron_velocitune.core.trajectory import read_trajectory

from .conftest import one_process_world

SEQ, MBS, EVAL_ITERS, MAX_HELDOUT = 32, 2, 2, 7
WEIGHTS = [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def world():
    """A one-process gloo world with megatron-core's parallel state (torn down after)."""
    with one_process_world() as info:
        yield info


@pytest.fixture(scope="module")
def setup(world, corpus):
    from megatron_velocitune.control.evaluation import DomainEvaluator
    from megatron_velocitune.data.builder import build_heldout_datasets
    from megatron_velocitune.training import GPTConfig, build_gpt_model
    from megatron_velocitune.training.model import initialize_layout_invariant_

    gcfg = GPTConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        seq_length=SEQ,
        vocab_size=corpus.vocab_size,
    )
    model = build_gpt_model(gcfg)
    initialize_layout_invariant_(model, gcfg, seed=7)
    datasets = build_heldout_datasets(
        corpus.prefixes,
        SEQ,
        corpus.vocab_size,
        corpus.eod_id,
        heldout_fraction=0.1,
        max_samples=MAX_HELDOUT,
    )
    evaluator = DomainEvaluator(model, datasets, len(datasets), SEQ, MBS, EVAL_ITERS)
    return model, datasets, evaluator


def _direct_sums(model, datasets, count):
    """Plain per-sample forward passes: loss sum and tokens over samples 0..count-1."""
    out = DomainSums.zeros(len(datasets))
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for d, ds in enumerate(datasets):
            for j in range(count):
                s = ds[j % len(ds)]
                t = lambda key: torch.as_tensor(np.asarray(s[key]))[None].to(device)  # noqa: E731
                losses = model(t("tokens"), t("position_ids"), None, labels=t("labels"))
                mask = t("loss_mask").double()
                out.loss_sum[d] += float((losses.double() * mask).sum())
                out.tokens[d] += float(mask.sum())
    model.train()
    return out


class ScriptedEvaluator:
    """Returns chosen mean losses (100 tokens per domain), one vector per call."""

    def __init__(self, full, updates):
        self.full = np.asarray(full, np.float64)
        self.updates = [np.asarray(u, np.float64) for u in updates]
        self.calls = []

    def evaluate(self, full=False, plan=None):
        self.calls.append("full" if full else "subset")
        mean = self.full if full else self.updates[sum(c == "subset" for c in self.calls) - 1]
        return DomainSums(mean * 100.0, np.full(mean.shape, 100.0))


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_text(self, tag, text, step):
        self.texts = getattr(self, "texts", []) + [(tag, text, step)]

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def _config(**kw):
    # The controller's mechanics on Algorithm 1 as the paper writes it (L_init on the full sets);
    # the default policy's footing, noise floor and brake have their own tests below.
    base = dict(
        policy="paper",
        update_interval=2,
        eval_iters=EVAL_ITERS,
        target_loss=[6.0, 6.0, 6.0],
        domain_names=["code", "docs", "legal"],
    )
    base.update(kw)
    return VelocituneConfig(**base)


# ---------------------------------------------------------------------------- evaluation


def test_full_evaluation_equals_direct_forward(setup):
    model, datasets, evaluator = setup
    sums = evaluator.evaluate(full=True)
    ref = _direct_sums(model, datasets, MAX_HELDOUT)  # 7 samples, micro-batches of 2: padding
    np.testing.assert_array_equal(sums.tokens, ref.tokens)
    np.testing.assert_allclose(sums.loss_sum, ref.loss_sum, rtol=1e-6)


def test_subset_is_fixed_and_matches_direct_forward(setup):
    model, datasets, evaluator = setup
    a, b = evaluator.evaluate(), evaluator.evaluate()
    np.testing.assert_array_equal(a.to_vector(), b.to_vector())
    ref = _direct_sums(model, datasets, EVAL_ITERS * MBS)
    np.testing.assert_array_equal(a.tokens, ref.tokens)
    np.testing.assert_allclose(a.loss_sum, ref.loss_sum, rtol=1e-6)


@pytest.mark.parametrize("dp", [1, 2, 3])
def test_plans_split_samples_disjointly_over_dp_ranks(dp):
    subset = [
        np.concatenate([subset_plan(2, 3, MBS, r, dp).sample_indices(1, mb) for mb in range(3)])
        for r in range(dp)
    ]
    assert sorted(np.concatenate(subset).tolist()) == list(range(3 * MBS * dp))
    lengths = [7, 10, 1]
    plans = [full_plan(lengths, MBS, r, dp) for r in range(dp)]
    assert len({p.num_microbatches for p in plans}) == 1  # same count on every DP rank
    for d, n in enumerate(lengths):
        idx = np.concatenate(
            [p.sample_indices(d, mb) for p in plans for mb in range(p.num_microbatches[d])]
        )
        assert sorted(idx[idx >= 0].tolist()) == list(range(n))  # each sample exactly once


# ---------------------------------------------------------------------------- controller


def test_initial_loss_measured_then_policy_updates(setup, tmp_path):
    _, _, evaluator = setup
    received, tb = [], RecordingWriter()
    controller = VelocituneController(
        _config(log_dir=str(tmp_path)),
        WEIGHTS,
        evaluator,
        sinks=[lambda w, s: received.append((w.tolist(), s))],
        seq_length=SEQ,
        tensorboard_writer=tb,
        header_extra={"global_batch_size": 8},
    )
    assert controller.maybe_update(0, 0) is None
    full = evaluator.evaluate(full=True).mean()
    np.testing.assert_array_equal(controller.initial_loss, full)

    w = np.asarray(WEIGHTS)
    for it in range(1, 7):
        decision = controller.maybe_update(it, it * 8)
        if it % 2:
            assert decision is None
            continue
        w = update_weights("paper", w, decision.eval_loss, full, np.full(3, 6.0))
        np.testing.assert_array_equal(decision.weights, w)
        assert received[-1] == (w.tolist(), it * 8)
    assert len(received) == 3
    assert evaluator.evaluate().mean().tolist() == decision.eval_loss.tolist()
    assert not np.allclose(w, WEIGHTS) and abs(w.sum() - 1.0) < 1e-12

    traj = read_trajectory(os.path.join(str(tmp_path), TRAJECTORY_FILE))
    assert traj.header["initial_loss"] == full.tolist()
    assert traj.header["global_batch_size"] == 8 and traj.header["seq_length"] == SEQ
    assert traj.column("iteration") == [2, 4, 6]
    assert traj.column("consumed_tokens") == [16 * SEQ, 32 * SEQ, 48 * SEQ]
    assert traj.column("weights")[-1] == w.tolist()
    tags = {tag for tag, _, _ in tb.scalars}
    for kind in ("weight", "eval-loss", "velocity"):
        for name in ("code", "docs", "legal"):
            assert f"velocitune/{kind}/{name}" in tags
            assert f"velocitune/{kind}/{name} vs samples" in tags
    assert ("velocitune/weight/code vs samples", w[0], 48) in tb.scalars


def test_initial_and_update_losses_share_the_subset(setup, tmp_path):
    _, _, evaluator = setup
    controller = VelocituneController(
        VelocituneConfig(
            policy="velocity",
            update_interval=2,
            eval_iters=EVAL_ITERS,
            target_loss=[6.0] * 3,
            domain_names=["code", "docs", "legal"],
            log_dir=str(tmp_path),
        ),
        WEIGHTS,
        evaluator,
        seq_length=SEQ,
    )
    controller.maybe_update(0, 0)
    subset, full = evaluator.evaluate(), evaluator.evaluate(full=True)
    # L_init is the subset's (the same samples every update reads), the full value is kept.
    np.testing.assert_array_equal(controller.initial_loss, subset.mean())
    np.testing.assert_array_equal(controller.initial_loss_full, full.mean())
    assert not np.array_equal(controller.initial_loss, controller.initial_loss_full)
    decision = controller.maybe_update(2, 16)
    # The model did not train: the update reads exactly L_init, so every velocity is 1.
    np.testing.assert_array_equal(decision.eval_loss, controller.initial_loss)
    assert controller.history[-1]["velocity"] == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(controller.history[-1]["eval_stderr"], subset.stderr())
    header = read_trajectory(os.path.join(str(tmp_path), TRAJECTORY_FILE)).header
    assert header["footing"] == "subset"
    assert header["initial_loss"] == subset.mean().tolist()
    assert header["initial_loss_full"] == full.mean().tolist()
    assert header["rule_knobs"]["noise_multiple"] == DEFAULT_NOISE_MULTIPLE
    assert header["rule_knobs"]["brake_window"] == DEFAULT_BRAKE_WINDOW


def test_target_not_below_measured_initial_loss_fails_clearly(setup):
    _, _, evaluator = setup
    controller = VelocituneController(
        _config(target_loss=[6.0, 99.0, 6.0], rising_rule="refuse"), WEIGHTS, evaluator
    )
    with pytest.raises(
        VelocituneConfigError, match=r"target 99.0 for domain 'docs' is not below .*rule refuse"
    ):
        controller.maybe_update(0, 0)


def test_target_above_measured_initial_loss_is_a_budget(setup, tmp_path):
    _, _, evaluator = setup
    tb = RecordingWriter()
    controller = VelocituneController(
        _config(target_loss=[6.0, 99.0, 6.0], rising_rule="budget", log_dir=str(tmp_path)),
        WEIGHTS,
        evaluator,
        tensorboard_writer=tb,
    )
    controller.initialize(0, 0)
    assert tb.texts == [
        ("velocitune/target-rules", "rule budget: code=progress docs=budget legal=progress", 0)
    ]
    assert controller.target_rules == ["progress", "budget", "progress"]
    assert controller.describe_rules() == "code=progress docs=budget legal=progress"
    header = read_trajectory(str(tmp_path / "velocitune_trajectory.jsonl")).header
    assert header["rising_rule"] == "budget"
    assert header["target_rules"] == ["progress", "budget", "progress"]
    assert header["target_loss"] == [6.0, 99.0, 6.0]


def test_no_initial_loss_at_a_resumed_iteration_fails_clearly(world):
    controller = VelocituneController(_config(), WEIGHTS, ScriptedEvaluator([7, 7, 7], []))
    with pytest.raises(VelocituneConfigError, match="iteration 300"):
        controller.maybe_update(300, 2400)


def test_non_finite_loss_skips_update_and_keeps_weights(world):
    evaluator = ScriptedEvaluator(
        [7.0, 7.0, 7.0], [[6.5, 6.8, 6.9], [6.4, np.nan, 6.9], [6.3, 6.7, np.inf], [6.2, 6.6, 6.8]]
    )
    received = []
    controller = VelocituneController(
        _config(update_interval=1), WEIGHTS, evaluator, sinks=[lambda w, s: received.append(s)]
    )
    controller.maybe_update(0, 0)
    controller.maybe_update(1, 10)
    kept = controller.weights.copy()
    for it in (2, 3):
        with pytest.warns(RuntimeWarning, match=f"iteration {it} skipped"):
            decision = controller.maybe_update(it, it * 10)
        assert decision.skipped
        np.testing.assert_array_equal(controller.weights, kept)
    assert not controller.maybe_update(4, 40).skipped
    assert received == [10, 40]
    assert [r["skipped"] for r in controller.history] == [False, True, True, False]
    assert np.isfinite(controller.weights).all()


def test_policy_failure_raises_instead_of_hanging(world):
    groups = UpdateGroups.from_parallel_state()
    sums = DomainSums(np.array([7.0, 7.0]), np.array([1.0, 1.0]))

    def broken(mean, stderr):
        raise ValueError("bad policy")

    with pytest.raises(RuntimeError, match="policy failed.*bad policy"):
        synchronize_update(sums, np.array([0.5, 0.5]), broken, 1, 8, groups)


def test_state_sidecar_resume_continues_the_same_trajectory(world, tmp_path):
    updates = [[6.9 - 0.1 * i, 6.8 - 0.05 * i, 6.95 - 0.2 * i] for i in range(6)]
    full = ScriptedEvaluator([7.0, 7.0, 7.0], updates)
    straight = VelocituneController(_config(update_interval=1), WEIGHTS, full)
    for it in range(0, 7):
        straight.maybe_update(it, it * 8)

    first = VelocituneController(
        _config(update_interval=1), WEIGHTS, ScriptedEvaluator([7.0, 7.0, 7.0], updates[:3])
    )
    for it in range(0, 4):
        first.maybe_update(it, it * 8)
    ckpt = str(tmp_path / "ckpt")
    path = save_controller_state(first, ckpt, 3)
    assert path == sidecar_path(ckpt, 3)
    assert path.endswith(os.path.join("iter_0000003", SIDECAR_NAME))
    assert os.listdir(os.path.dirname(path)) == [SIDECAR_NAME]  # atomic: no temp file left
    with open(os.path.join(ckpt, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("3")
    json.loads(json.dumps(first.state_dict()))  # JSON-able

    replayed = []
    resumed = VelocituneController(
        _config(update_interval=1), WEIGHTS, ScriptedEvaluator([99.0] * 3, updates[3:])
    )
    assert load_controller_state(resumed, ckpt)  # latest iteration, from Megatron's tracker
    resumed.replay(lambda w, s: replayed.append(s))
    assert replayed == [8, 16, 24]
    for it in range(3, 7):  # iteration 3 was already done: not repeated
        resumed.maybe_update(it, it * 8)
    assert resumed.evaluator.calls == ["subset"] * 3  # no initial-loss re-measurement
    assert resumed.state_dict() == straight.state_dict()
    assert not load_controller_state(resumed, str(tmp_path / "none"), 5)


def test_state_for_other_domains_is_rejected(world):
    a = VelocituneController(_config(), WEIGHTS, ScriptedEvaluator([7, 7, 7], []))
    state = a.state_dict()
    state["domains"] = ["x", "y", "z"]
    with pytest.raises(ValueError, match="domains"):
        fresh = VelocituneController(_config(), WEIGHTS, ScriptedEvaluator([7, 7, 7], []))
        fresh.load_state_dict(state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim applies only without CUDA")
def test_cpu_shim_is_idempotent_and_redirects_buffers(world):
    from megatron.core.utils import GlobalMemoryBuffer

    from megatron_velocitune.training.cpu import apply_cpu_shim, cpu_shim_applied

    assert apply_cpu_shim() and apply_cpu_shim() and cpu_shim_applied()
    buf = GlobalMemoryBuffer().get_tensor((2, 3), torch.float32, "x")
    assert buf.device.type == "cpu" and buf.shape == (2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        tracker = get_cuda_rng_tracker()
        before = torch.get_rng_state()
        with tracker.fork():
            torch.rand(3)
        assert torch.equal(before, torch.get_rng_state())  # the default stream is untouched


def test_controller_drives_the_velocity_blended_dataset(setup, corpus, tmp_path):
    """The real data plane: each new blend applies from the consumed position on."""
    from megatron_velocitune.data.builder import build_heldout_datasets
    from megatron_velocitune.data.dataset import VelocityBlendedDataset

    _, _, evaluator = setup
    train = build_heldout_datasets(
        corpus.prefixes, SEQ, corpus.vocab_size, corpus.eod_id, heldout_fraction=1.0
    )
    blend = VelocityBlendedDataset(train, WEIGHTS, 400, train[0].config, update_window=16)
    controller = VelocituneController(
        _config(log_dir=str(tmp_path)), WEIGHTS, evaluator, dataset=blend, seq_length=SEQ
    )
    for it in range(0, 7):
        controller.maybe_update(it, it * 8)
        if it:
            blend[it * 8 - 1]  # training reads up to the consumed position
    before = controller.initial_weights.tolist()
    for record in controller.history:  # the blend switches exactly at the consumed position
        np.testing.assert_array_equal(blend.weights_at(record["start_sample"] - 1), before)
        np.testing.assert_array_equal(blend.weights_at(record["start_sample"]), record["weights"])
        before = record["weights"]
    traj = read_trajectory(os.path.join(str(tmp_path), TRAJECTORY_FILE))
    assert traj.column("domain_tokens") == [
        (blend.domain_counts(s) * SEQ).tolist() for s in (16, 32, 48)
    ]
