"""The schedule-aware target laws, ``--law auto``'s window discipline and the ``lr`` record."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from megatron_velocitune.control.run import learning_rate_extra
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.schedule_laws import (
    ScheduleInputs,
    annealing_law,
    cpt_law,
    fit_annealing_law,
    fit_cpt_law,
    lr_areas,
)
from megatron_velocitune.laws.target_report import TargetFitConfig, fit_target_losses

GBS, SEQ = 4, 8


def _cosine(n: int, warmup: int, peak: float, floor: float) -> np.ndarray:
    steps = np.arange(1, n + 1, dtype=np.float64)
    decay = floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * (steps - warmup) / (n - warmup)))
    return np.where(steps <= warmup, peak * steps / warmup, decay)


def test_annealing_area_matches_a_hand_computation_for_warmup_and_cosine():
    lrs = _cosine(12, warmup=3, peak=1.0, floor=0.1)
    s1, s2 = lr_areas(lrs, decay=0.9)
    # By hand: m_i = 0.9 m_{i-1} + max(eta_{i-1} - eta_i, 0), S2 the running sum; the warm-up
    # (rising LR) adds nothing.
    m, hand_s2, acc = 0.0, [], 0.0
    for i, eta in enumerate(lrs):
        drop = 0.0 if i == 0 else max(lrs[i - 1] - eta, 0.0)
        m = 0.9 * m + drop
        acc += m
        hand_s2.append(acc)
    np.testing.assert_allclose(s1, np.cumsum(lrs))
    np.testing.assert_allclose(s2, hand_s2)
    assert np.all(s2[:3] == 0.0) and s2[-1] > 0.0
    # Three steps written out: warm-up 1/3, 2/3, 1; then the cosine's first drop d4 = 1 - eta_4.
    d4 = 1.0 - lrs[3]
    assert s2[3] == pytest.approx(d4)
    assert s2[4] == pytest.approx(d4 + (0.9 * d4 + lrs[3] - lrs[4]))


def _rel(fit: dict, truth: dict, names):
    return max(abs(fit[n] - truth[n]) / abs(truth[n]) for n in names)


def test_the_annealing_law_recovers_its_parameters():
    lrs = _cosine(2000, warmup=50, peak=1e-3, floor=1e-5)
    s1, s2 = lr_areas(lrs)
    idx = np.arange(100, 2000, 40)
    x = ScheduleInputs(idx * 1.0, s1[idx], s2[idx])
    truth = dict(L0=2.5, A=0.6, alpha=0.5, C=0.5)
    y = annealing_law(truth["L0"], truth["A"], truth["alpha"], truth["C"], x.s1, x.s2)
    fit = fit_annealing_law(x, y)
    # The fit works on S1 / scale: A and C come back in those units.
    p = dict(fit.params)
    p["A"] = p["A"] * fit.scale ** p["alpha"]
    p["C"] = p["C"] / fit.scale
    assert _rel(p, truth, ["L0", "A", "alpha", "C"]) < 0.02


def test_the_annealing_coefficient_is_fixed_at_zero_under_a_constant_lr():
    s1 = np.arange(5, 105, 5.0)
    x = ScheduleInputs(s1, s1, np.zeros_like(s1))
    fit = fit_annealing_law(x, annealing_law(3.0, 1.0, 0.4, 0.0, s1, 0.0))
    assert fit.params["C"] == 0.0 and "constant LR" in fit.notes[0]


@pytest.mark.parametrize("B", [0.15, -0.4])
def test_the_cpt_law_recovers_its_shift_parameters(B):
    # One constant-LR curve cannot separate the hidden pre-training term from the shift (both
    # are power laws of S1); with no pre-training progress left (A = 0, a saturated base) the
    # shift's three parameters are identified and must come back, with their sign.
    s1 = np.linspace(0.02, 1.0, 40)
    x = ScheduleInputs(s1, s1, np.zeros_like(s1))
    truth = dict(B=B, E=8.0, beta=0.7)
    y = cpt_law(4.0, 0.0, 0.5, 0.0, B, truth["E"], truth["beta"], 2.0, s1, 0)
    fit = fit_cpt_law(x, y, 4.0, s1_pt=2.0)
    assert fit.params["B"] * B > 0  # a rising replay domain, a falling new one
    assert _rel(fit.params, truth, ["B", "E", "beta"]) < 0.02
    assert float(fit.predict(ScheduleInputs(np.zeros(1), np.zeros(1), np.zeros(1)))[0]) == 4.0


def test_the_full_cpt_law_reproduces_its_curve():
    s1 = np.linspace(0.02, 1.0, 40)
    x = ScheduleInputs(s1, s1, np.zeros_like(s1))
    y = cpt_law(4.0, 0.8, 0.6, 0.0, -0.4, 8.0, 0.7, 2.0, s1, 0)
    fit = fit_cpt_law(x, y, 4.0, s1_pt=2.0)
    np.testing.assert_allclose(fit.predict(x), y, atol=2e-3)


def _write(path, losses, lr=True):
    """A static proxy trajectory: one domain falling, one rising, every 5 of 100 iterations."""
    header = dict(
        type="header",
        domains=["new", "replay"],
        footing="full",
        initial_loss=[5.0, 3.0],
        global_batch_size=GBS,
        seq_length=SEQ,
        train_iters=100,
    )
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for it, row in losses:
            rec = dict(
                type="update",
                iteration=it,
                consumed_tokens=it * GBS * SEQ,
                eval_loss=list(row),
                **({"lr": 1e-3} if lr else {}),
            )
            f.write(json.dumps(rec) + "\n")
    return str(path)


def _curve():
    its = np.arange(5, 105, 5)
    s = its / 100.0
    new = cpt_law(5.0, 0.5, 0.5, 0.0, -0.6, 6.0, 0.8, 1.5, s, 0)
    replay = cpt_law(3.0, 0.0, 0.5, 0.0, 0.2, 20.0, 1.0, 1.5, s, 0)
    noise = np.random.default_rng(0).normal(0, 0.005, (its.size, 2))
    return list(zip(its.tolist(), (np.stack([new, replay], 1) + noise).tolist()))


def test_auto_never_looks_past_the_fit_window(tmp_path):
    rows = _curve()
    clean = _write(tmp_path / "clean.jsonl", rows)
    # Poison every evaluation after the window (iteration > 50): the choice and the targets
    # are made from the window alone, so they must not move.
    poisoned = [(it, [v * 3.0 for v in row]) if it > 50 else (it, row) for it, row in rows]
    bad = _write(tmp_path / "bad.jsonl", poisoned)
    config = TargetFitConfig(law="auto", rising_rule="budget-hold")
    a = fit_target_losses([clean], [read_trajectory(clean)], config)
    b = fit_target_losses([bad], [read_trajectory(bad)], config)
    assert [d.law for d in a.domains] == [d.law for d in b.domains]
    for da, db in zip(a.domains, b.domains):
        assert da.target == pytest.approx(db.target, rel=1e-9)
        for law in da.laws:
            assert da.laws[law].validation_mae == pytest.approx(db.laws[law].validation_mae)
            assert not math.isnan(da.laws[law].validation_mae)
        # ... while the held-out error (after the window) does see the poison.
        assert db.laws[db.law].mae > 10 * da.laws[da.law].mae
    fields = a.loss_file_fields(config, [clean])
    assert fields["laws"] == {d.name: d.law for d in a.domains}


def test_a_trajectory_without_lr_stops_a_schedule_aware_law_with_one_line(tmp_path):
    path = _write(tmp_path / "old.jsonl", _curve(), lr=False)
    with pytest.raises(ToolError) as e:
        fit_target_losses([path], [read_trajectory(path)], TargetFitConfig(law="cpt"))
    message = str(e.value)
    assert "\n" not in message and os.path.basename(path) in message
    assert "--law chinchilla" in message
    # The tokens-as-clock fallback a constant-LR proxy may take instead.
    config = TargetFitConfig(law="cpt", constant_lr=True, rising_rule="budget-hold")
    report = fit_target_losses([path], [read_trajectory(path)], config)
    assert [d.law for d in report.domains] == ["cpt", "cpt"]


def test_an_update_record_carries_the_optimizers_learning_rate():
    optimizer = SimpleNamespace(param_groups=[{"lr": 2.5e-4}, {"lr": 1.0}])
    assert learning_rate_extra(optimizer) == {"lr": 2.5e-4}
    assert learning_rate_extra(None) is None
