"""One footing, the noise-aware headroom and the brake (the default ``velocity`` policy).

Pure parts against hand computations (standard error, headroom floor, brake, targets carried
over as changes, the fit on one level); the controller on a real megatron-core model (L_init and
L_t from the same samples, the header, resume) and on scripted losses (a flat-loss domain whose
weight must stop growing); ``paper`` bit-identical to ``velocity_update``.
"""

import json
import math

import numpy as np
import pytest

from megatron_velocitune.control.controller import VelocituneController
from megatron_velocitune.control.state import load_controller_state, save_controller_state
from megatron_velocitune.core import policy as P
from megatron_velocitune.core.arguments import read_loss_file_with_reference, write_loss_file
from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.sums import DomainSums
from megatron_velocitune.core.trajectory import read_trajectory

from .test_controller import WEIGHTS, ScriptedEvaluator

# ---------------------------------------------------------------------------- standard error


def test_stderr_by_hand_with_unequal_sequences():
    # Sequences (loss sum, tokens): the ratio estimator's standard error by its formula.
    seqs = [(10.0, 4.0), (6.0, 2.0), (9.0, 3.0), (2.0, 1.0)]
    sums = DomainSums.zeros(2)
    sums.add_sequences(1, [s for s, _ in seqs], [n for _, n in seqs])
    sums.add_sequences(1, [5.0], [0.0])  # a fully masked (padding) sequence counts for nothing
    s = np.array([a for a, _ in seqs])
    n = np.array([b for _, b in seqs])
    m = s.sum() / n.sum()
    by_hand = math.sqrt(((s - m * n) ** 2).sum() * 4 / 3) / n.sum()
    assert sums.mean()[1] == pytest.approx(m)
    assert sums.stderr()[1] == pytest.approx(by_hand, rel=1e-12)
    assert math.isnan(sums.stderr()[0])  # no sequences: unknown
    # The wire layout carries every field; summing two halves equals adding all at once.
    a, b = DomainSums.zeros(2), DomainSums.zeros(2)
    a.add_sequences(1, s[:2], n[:2])
    b.add_sequences(1, s[2:], n[2:])
    both = DomainSums.from_vector(a.to_vector() + b.to_vector())
    np.testing.assert_allclose(both.to_vector(), sums.to_vector())


def test_equal_length_stderr_is_the_textbook_one():
    rng = np.random.default_rng(0)
    per_token = rng.normal(5.0, 0.3, size=64)
    sums = DomainSums.zeros(1)
    sums.add_sequences(0, per_token * 128, np.full(64, 128.0))
    expected = np.std(per_token, ddof=1) / np.sqrt(64)
    assert sums.stderr()[0] == pytest.approx(expected, rel=1e-9)


def test_a_source_without_moments_has_unknown_stderr():
    sums = DomainSums(np.array([50.0]), np.array([10.0]))
    assert math.isnan(sums.stderr()[0])
    assert P.noise_headroom(0.02, sums.stderr(), 2.0).tolist() == [0.02]


# ---------------------------------------------------------------------------- pure policy


def test_noise_headroom_floors_each_domain():
    floor = P.noise_headroom(0.01, np.array([0.002, 0.03, np.nan]), 2.0)
    assert floor.tolist() == [0.01, 0.06, 0.01]
    # A 0.05-nat headroom read with a 0.03 standard error: V = 0.03 / 0.06, not 0.03 / 0.05.
    v = P.domain_velocity([4.98], [5.0], [4.95], floor[1:2])
    assert v.tolist() == pytest.approx([0.5])


def test_paper_policy_is_velocity_update_to_the_bit():
    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(2, 6))
        w = rng.dirichlet(np.ones(k))
        ini = rng.uniform(3.0, 6.0, k)
        tgt = ini - rng.uniform(0.01, 1.0, k)
        cur = rng.uniform(2.5, 6.5, k)
        floor = float(rng.choice([0.0, 0.01]))
        np.testing.assert_array_equal(
            P.update_weights("paper", w, cur, ini, tgt, floor),
            P.velocity_update(w, cur, ini, tgt, floor),
        )
        # Guards given to paper are ignored: it is Algorithm 1 and nothing else.
        guards = P.Guards(headroom=0.5, braked=np.ones(k, bool), initial_weights=w)
        np.testing.assert_array_equal(
            P.update_weights("paper", w, cur, ini, tgt, floor, guards),
            P.velocity_update(w, cur, ini, tgt, floor),
        )


def test_unresponsive_needs_more_than_the_initial_share_and_no_fall():
    mask = P.unresponsive(
        current=[5.0, 4.0, 3.0, 2.0],
        earlier=[5.0, 4.1, 2.9, 2.5],
        weights=[0.4, 0.4, 0.1, 0.1],
        initial_weights=[0.25, 0.25, 0.25, 0.25],
    )
    # flat and above share: braked; fell: free; rose but below share: free; fell: free.
    assert mask.tolist() == [True, False, False, False]


def test_brake_by_hand():
    w0 = np.array([0.25, 0.25, 0.5])
    w = np.array([0.45, 0.2, 0.35])
    candidate = np.array([0.55, 0.15, 0.30])
    out = P.brake(candidate, w, w0, np.array([True, False, False]), pullback=0.5)
    # The braked domain goes halfway back: 0.25 + 0.5 * 0.2 = 0.35; the others share 0.65 in
    # the candidate's proportions 0.15 : 0.30.
    np.testing.assert_allclose(out, [0.35, 0.65 / 3, 0.65 * 2 / 3])
    # A candidate already below the pull-back point is kept.
    low = np.array([0.30, 0.30, 0.40])
    np.testing.assert_allclose(P.brake(low, w, w0, np.array([True, False, False])), low)
    # Nothing braked: the candidate itself.
    assert P.brake(candidate, w, w0, np.zeros(3, bool)) is not None
    np.testing.assert_array_equal(P.brake(candidate, w, w0, np.zeros(3, bool)), candidate)


# ---------------------------------------------------------------------------- targets


def test_targets_carry_over_as_changes(tmp_path):
    path = str(tmp_path / "targets.json")
    write_loss_file(path, ["a", "b"], [4.9, 6.2], reference_initial={"a": 5.0, "b": 6.0})
    losses, reference = read_loss_file_with_reference(path, ["a", "b"], "--x")
    assert losses == [4.9, 6.2] and reference == [5.0, 6.0]
    cfg = VelocituneConfig(target_loss=losses, target_reference=reference)
    # This run's subset reads 5.1 / 5.9: the predicted changes -0.1 / +0.2 land on it.
    assert cfg.targets_for([5.1, 5.9]) == pytest.approx([5.0, 6.1])
    assert VelocituneConfig(target_loss=losses).targets_for([5.1, 5.9]) == losses
    write_loss_file(path, ["a", "b"], [4.9, 6.2], reference_initial={"a": 5.0})
    with pytest.raises(VelocituneConfigError, match=r"--x: .* has no loss for domains \['b'\]"):
        read_loss_file_with_reference(path, ["a", "b"], "--x")


def _trajectory(path, footing, initial, losses):
    header = {
        "type": "header",
        "domains": ["a"],
        "footing": footing,
        "initial_loss": [initial],
        "seq_length": 4,
        "global_batch_size": 1,
        "train_iters": 100,
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for i, loss in enumerate(losses, 1):
            rec = {"type": "update", "iteration": 10 * i, "consumed_tokens": 40 * i}
            f.write(json.dumps({**rec, "eval_loss": [loss], "weights": [1.0]}) + "\n")
    return read_trajectory(path)


def test_fit_pools_changes_not_levels(tmp_path):
    from megatron_velocitune.laws.scaling_law import common_footing

    curve = [5.0 - 0.3 * (1 - (1 + i) ** -0.5) for i in range(1, 11)]
    # Two seeds whose subsets sit 0.08 apart: the same curve, offset.
    runs = [
        _trajectory(str(tmp_path / f"s{s}.jsonl"), "subset", 5.0 + off, [c + off for c in curve])
        for s, off in ((1, -0.04), (2, 0.04))
    ]
    points, reference = common_footing(runs, ["a"])
    assert reference == pytest.approx([5.0])
    np.testing.assert_allclose(points[0].losses[:, 0], curve)
    np.testing.assert_allclose(points[1].losses[:, 0], curve)
    # Full-footing (older) runs are pooled as they are.
    old = [_trajectory(str(tmp_path / "o.jsonl"), "full", 5.0, curve)]
    assert common_footing(old, ["a"])[1] is None
    with pytest.raises(ValueError, match="mix footings"):
        common_footing(runs + old, ["a"])


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(noise_multiple=-1.0), r"^--velocitune-noise-multiple: -1.0 must be finite and >= 0$"),
        (dict(noise_multiple=math.nan), r"^--velocitune-noise-multiple: nan must be finite"),
        (dict(noise_multiple=math.inf), r"^--velocitune-noise-multiple: inf must be finite"),
        (dict(brake_window=-2), r"^--velocitune-brake-window: -2 must be an integer >= 0$"),
        (dict(min_headroom=math.nan), r"^--velocitune-min-headroom: nan must be finite"),
    ],
)
def test_bad_guard_flags_are_one_line(kw, match):
    with pytest.raises(VelocituneConfigError, match=match):
        VelocituneConfig(**kw)


def test_footing_follows_policy_and_source():
    assert VelocituneConfig().footing == "subset"
    assert VelocituneConfig(policy="static").footing == "subset"
    assert VelocituneConfig(policy="paper", target_loss=[1.0]).footing == "full"
    assert VelocituneConfig(loss_source="train").footing == "stream"


# ---------------------------------------------------------------------------- controller


def _velocity(**kw):
    base = dict(update_interval=1, eval_iters=2, domain_names=["code", "docs", "legal"])
    base.update(kw)
    return VelocituneConfig(**base)


def test_a_resume_keeps_its_footing(world, tmp_path):
    updates = [[6.9, 6.8, 6.95], [6.8, 6.7, 6.9], [6.7, 6.6, 6.85]]
    first = VelocituneController(
        _velocity(target_loss=[6.0] * 3),
        WEIGHTS,
        ScriptedEvaluator([7.0] * 3, [[7.1] * 3] + updates),
    )
    for it in range(0, 3):
        first.maybe_update(it, it * 8)
    ckpt = str(tmp_path / "ckpt")
    save_controller_state(first, ckpt, 2)
    state = first.state_dict()
    assert state["footing"] == "subset" and state["initial_loss"] == [7.1] * 3
    assert state["initial_loss_full"] == [7.0] * 3

    resumed = VelocituneController(
        _velocity(target_loss=[6.0] * 3), WEIGHTS, ScriptedEvaluator([99.0] * 3, updates[2:])
    )
    assert load_controller_state(resumed, ckpt, 2)
    resumed.maybe_update(3, 24)
    assert resumed.evaluator.calls == ["subset"]  # nothing re-measured
    assert resumed.footing == "subset" and resumed.initial_loss.tolist() == [7.1] * 3

    # An older run's sidecar (no footing: L_init was the full sets') keeps that footing.
    del state["footing"], state["initial_loss_full"]
    older = VelocituneController(
        _velocity(target_loss=[6.0] * 3), WEIGHTS, ScriptedEvaluator([99.0] * 3, updates[2:])
    )
    older.load_state_dict(json.loads(json.dumps(state)))
    assert older.footing == "full" and older.initial_loss_full.tolist() == [7.1] * 3
    older.maybe_update(3, 24)
    assert older.evaluator.calls == ["subset"]


def test_the_brake_stops_a_flat_domain_from_compounding(world):
    """Domain 0's loss never moves while its velocity reads 1.

    Algorithm 1 compounds its weight every update; the default brakes it once it holds more
    than its initial share.
    """
    initial = [5.0, 6.0, 6.0]
    targets = [4.5, 5.0, 5.0]
    # Domains 1 and 2 learn steadily (velocity falls); domain 0 sits at L_init (velocity 1).
    updates = [[5.0, 6.0 - 0.08 * i, 6.0 - 0.08 * i] for i in range(1, 11)]
    weights = [0.3, 0.35, 0.35]

    def run(policy):
        # paper reads the given (full-set) L_init; velocity measures its subset's first.
        script = updates if policy == "paper" else [initial] + updates
        ctl = VelocituneController(
            _velocity(policy=policy, target_loss=targets, initial_loss=initial),
            weights,
            ScriptedEvaluator(initial, script),
        )
        ctl.maybe_update(0, 0)
        return [ctl.maybe_update(it, it * 8).weights[0] for it in range(1, 11)], ctl

    paper, _ = run("paper")
    braked, ctl = run("velocity")
    assert paper[-1] > 0.6 and all(b > a for a, b in zip(paper, paper[1:]))  # it runs away

    # By hand: no noise (scripted sums carry no sequences), the brake compares with the loss
    # three updates back (L_init before that).
    w0 = np.asarray(weights)
    w = w0.copy()
    history = []
    expected = []
    for cur in updates:
        v = P.domain_velocity(cur, initial, targets)
        cand = P.normalize(w * np.exp(v))
        earlier = np.asarray(history[-3]) if len(history) >= 3 else np.asarray(initial)
        mask = (w > w0) & ~(np.asarray(cur) < earlier)
        if mask.any():
            held = np.where(mask, np.minimum(cand, w0 + 0.5 * (w - w0)), cand)
            free = ~mask
            held[free] = cand[free] * (1 - held[mask].sum()) / cand[free].sum()
            cand = held
        w = cand
        history.append(cur)
        expected.append(w[0])
    np.testing.assert_allclose(braked, expected, rtol=1e-12)
    # It gained once (from its initial share), then was pulled back and never grew again.
    assert braked[0] > weights[0]
    assert all(b <= a + 1e-15 for a, b in zip(braked[1:], braked[2:]))
    assert braked[-1] < weights[0] + 0.01
    assert [r["braked"][0] for r in ctl.history][1:] == [True] * 9


def test_cap_by_hand():
    # 0.8 over its bound 0.6: the 0.2 excess goes to the others in their 0.1 : 0.1 proportion.
    np.testing.assert_allclose(P.cap([0.8, 0.1, 0.1], [0.3, 0.4, 0.3]), [0.6, 0.2, 0.2])
    # A cascade: capping domain 0 at 0.5 lifts domain 1 over its 0.5 too; domain 2 takes the rest.
    np.testing.assert_allclose(
        P.cap([0.7, 0.2, 0.1], [0.25, 0.25, 0.5]), [0.5, 1 / 3, 1 / 6], rtol=1e-12
    )
    # Under every bound: unchanged.
    np.testing.assert_array_equal(P.cap([0.3, 0.3, 0.4], [0.3, 0.3, 0.4]), [0.3, 0.3, 0.4])


@pytest.mark.parametrize("guard", ["cap", "anchored"])
def test_the_other_runaway_guards_hold_a_flat_domain(world, guard):
    """The same flat-loss domain as above under ``--velocitune-runaway-guard cap|anchored``,
    against the update computed by hand: capped at twice its share, or each update from the
    initial blend (which cannot compound).
    """
    initial = [5.0, 6.0, 6.0]
    targets = [4.5, 5.0, 5.0]
    updates = [[5.0, 6.0 - 0.08 * i, 6.0 - 0.08 * i] for i in range(1, 11)]
    weights = [0.2, 0.4, 0.4]
    ctl = VelocituneController(
        _velocity(target_loss=targets, initial_loss=initial, runaway_guard=guard),
        weights,
        ScriptedEvaluator(initial, [initial] + updates),
    )
    ctl.maybe_update(0, 0)
    got = [ctl.maybe_update(it, it * 8).weights for it in range(1, 11)]
    w0 = np.asarray(weights)
    w = w0.copy()
    for cur, new in zip(updates, got):
        v = P.domain_velocity(cur, initial, targets)
        if guard == "anchored":
            w = P.normalize(w0 * np.exp(v))
        else:
            w = P.cap(P.normalize(w * np.exp(v)), w0, 2.0)
        np.testing.assert_allclose(new, w, rtol=1e-12)
    flat = [g[0] for g in got]
    if guard == "cap":
        assert max(flat) == pytest.approx(0.4) and flat[-1] == pytest.approx(0.4)
    else:  # at most e / (e w0 + (1 - w0)) times its share, whatever the number of updates
        assert max(flat) <= math.e * 0.2 / (math.e * 0.2 + 0.8) + 1e-12
    assert all(r["braked"] is None for r in ctl.history)
    assert ctl._rule_knobs()["runaway_guard"] == guard  # in the header


def test_the_runaway_guard_flag():
    import argparse

    from megatron_velocitune.core.arguments import add_velocitune_args, config_from_args

    p = argparse.ArgumentParser()
    add_velocitune_args(p)
    args = p.parse_args(["--velocitune-target-loss", "1", "--velocitune-runaway-guard", "cap"])
    config = config_from_args(args)
    assert config.runaway_guard == "cap"
    assert config.guards_identity() == {
        "noise_multiple": 2.0,
        "brake_window": 3,
        "runaway_guard": "cap",
    }
    # The default records what sidecars from before the choice recorded.
    assert VelocituneConfig().guards_identity() == {"noise_multiple": 2.0, "brake_window": 3}
    with pytest.raises(
        VelocituneConfigError,
        match=r"^--velocitune-runaway-guard: 'slope' is not one of \['brake', 'cap', 'anchored'\]$",
    ):
        VelocituneConfig(runaway_guard="slope")


def test_a_resume_compares_the_guards_when_the_sidecar_has_them():
    from megatron_velocitune.control.resume import ResumeIdentity, check_resume
    from megatron_velocitune.core.errors import CheckpointError

    files = [{"bin_bytes": 10, "idx_bytes": 5, "idx_sha256": "ab" * 32, "bin_blake2b": "cd" * 20}]

    def ident(guards):
        return ResumeIdentity.of(
            ["/a/code"],
            files,
            update_interval=150,
            stream_dp_size=None,
            policy="velocity",
            rising_rule="budget-hold",
            rule_knobs={},
            min_weight=0.0,
            loss_source="eval",
            split="98,2,0",
            seq_length=256,
            global_batch_size=32,
            seed=1,
            guards=guards,
        )

    saved = ident({"noise_multiple": 2.0, "brake_window": 3}).to_json()
    assert check_resume(saved, ident({"noise_multiple": 2.0, "brake_window": 3}), "s") == []
    with pytest.raises(
        CheckpointError, match=r"--velocitune-runaway-guard\) \{.*'brake_window': 3"
    ):
        check_resume(saved, ident({"noise_multiple": 2.0, "brake_window": 0}), "s")
    # An older sidecar (no guards recorded) resumes; the log says they were not compared.
    older = dict(saved, guards=None)
    notes = check_resume(older, ident({"noise_multiple": 2.0, "brake_window": 3}), "s")
    assert notes == ["the sidecar records no guards (written by an older version)"]


def test_fitted_targets_land_on_the_runs_own_initial_loss(world):
    given, reference = [4.5, 5.2, 5.6], [5.0, 6.0, 6.0]
    kw = dict(target_loss=given, target_reference=reference, initial_loss=[7.0] * 3)
    subset = [5.1, 5.9, 6.2]
    ctl = VelocituneController(_velocity(**kw), WEIGHTS, ScriptedEvaluator([7.0] * 3, [subset]))
    ctl.initialize(0, 0)
    # The predicted changes -0.5 / -0.8 / -0.4 on this run's subset L_init.
    np.testing.assert_allclose(ctl.target_loss, [4.6, 5.1, 5.8])
    paper = VelocituneController(
        _velocity(policy="paper", **kw), WEIGHTS, ScriptedEvaluator([7.0] * 3, [])
    )
    paper.initialize(0, 0)
    assert paper.target_loss.tolist() == given  # the paper's absolute targets


class _NoisyEvaluator:
    """Two sequences per domain whose losses differ by 0.4 nats: a standard error of 0.2."""

    def __init__(self, means):
        self.means = [np.asarray(m, np.float64) for m in means]

    def evaluate(self, full=False, plan=None):
        mean = self.means[0] if full or len(self.means) == 1 else self.means.pop(0)
        sums = DomainSums.zeros(len(mean))
        for d, m in enumerate(mean):
            sums.add_sequences(d, [(m - 0.2) * 10, (m + 0.2) * 10], [10.0, 10.0])
        return sums


def test_the_update_line_prints_the_recorded_noise_floored_velocity(world):
    from megatron_velocitune.control.run import format_update

    ctl = VelocituneController(
        _velocity(target_loss=[4.9, 5.9, 5.9]),
        WEIGHTS,
        _NoisyEvaluator([[5.0, 6.0, 6.0], [4.95, 5.95, 5.95]]),
    )
    ctl.maybe_update(0, 0)
    decision = ctl.maybe_update(1, 8)
    # Headroom 0.1 floored to 2 x 0.2: V = 0.05 / 0.4, not 0.05 / 0.1.
    assert ctl.history[-1]["headroom_floor"] == pytest.approx([0.4] * 3)
    assert ctl.history[-1]["velocity"] == pytest.approx([0.125] * 3)
    assert format_update(ctl, decision, 1).count("v=0.125") == 3
