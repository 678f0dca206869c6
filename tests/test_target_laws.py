"""The schedule-aware target laws, ``--law auto``'s window discipline and the ``lr`` record."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from megatron_velocitune.cli import fit_target_loss
from megatron_velocitune.control.run import learning_rate_extra
from megatron_velocitune.core.errors import InputError, ToolError
from megatron_velocitune.core.trajectory import read_trajectory
from megatron_velocitune.laws.schedule_laws import (
    LrSchedule,
    ScheduleInputs,
    annealing_law,
    cpt_law,
    fit_annealing_law,
    fit_cpt_law,
    fit_multi_power_law,
    lr_areas,
    multi_power_law,
    trajectory_schedule,
)
from megatron_velocitune.laws.target_report import (
    LAWS,
    TargetFitConfig,
    fit_base_decay,
    fit_target_losses,
)

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


def test_a_comparisons_law_targets_score_each_seed_fitted_alone(tmp_path):
    """``velocitune-compare``'s ``default-law-<law>`` targets: pooled over the seeds, and each
    seed's error from the law fitted on that seed alone (the fit tool, as a process).
    """
    import sys

    from megatron_velocitune.comparison.targets import fit_targets
    from tests.test_compare_tool import fake_setting

    rng = np.random.default_rng(1)
    paths = []
    for seed in (1, 2):
        rows = [(it, [v + rng.normal(0, 0.004) for v in row]) for it, row in _curve()]
        paths.append(_write(tmp_path / f"seed{seed}.jsonl", rows))
    s = fake_setting(
        prefixes=("/d/new", "/d/replay"),
        weights=(0.2, 0.8),
        replay_domain="replay",
        train_iters=100,
        seq_length=SEQ,
        global_batch_size=GBS,
        warmup_iters=0,
    )
    cpt = [{"seed": k, "trajectory": p} for k, p in zip((2, 1), paths[::-1])]
    fit = fit_targets(str(tmp_path), sys.executable, cpt, s, law="cpt")
    assert fit["targets"] == str(tmp_path / "targets-law-cpt.json")
    with open(fit["targets"]) as f:
        pooled = json.load(f)
    assert pooled["law_choice"] == "cpt" and pooled["laws"] == {"new": "cpt", "replay": "cpt"}
    assert fit["laws"] == pooled["laws"]
    for d in ("new", "replay"):
        assert fit["pooled"][d] == pytest.approx(pooled["fits"][d]["law_held_out_mae"]["cpt"])
        # Seed order: 1 then 2, each the cpt law fitted on that seed's run alone.
        for path, mae in zip(paths, fit["per_seed"][d]):
            alone = fit_target_losses(
                [path],
                [read_trajectory(path)],
                TargetFitConfig(law="cpt", budget_tokens=100 * GBS * SEQ, min_tokens=0),
            )
            domain = next(r for r in alone.domains if r.name == d)
            assert mae == pytest.approx(domain.laws["cpt"].mae, rel=1e-9)
            assert 0 < mae < 0.05


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


# ----------------------------------------------------------------- Megatron's LR schedule


def _megatron_lrs(spi: int, iterations: int, **kw):
    """The LR megatron-core's own scheduler holds after each iteration, and its LrSchedule.

    ``OptimizerParamScheduler`` only writes ``lr``/``weight_decay`` into ``param_groups``, so a
    bare object with one empty group stands in for the MegatronOptimizer.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    opt = SimpleNamespace(param_groups=[{}])
    sched = OptimizerParamScheduler(
        opt, start_wd=0.0, end_wd=0.0, wd_incr_steps=1, wd_incr_style="constant", **kw
    )
    ours = LrSchedule.from_scheduler(sched, spi)
    ref = []
    for _ in range(iterations):
        ref.append(opt.param_groups[0]["lr"])
        sched.step(spi)
    return ours, np.array(ref)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr_decay_style="cosine", init_lr=0.0, lr_warmup_steps=80, lr_decay_steps=800),
        dict(lr_decay_style="linear", init_lr=1e-5, lr_warmup_steps=7, lr_decay_steps=300),
        dict(lr_decay_style="constant", init_lr=2e-3, lr_warmup_steps=0, lr_decay_steps=300),
        dict(lr_decay_style="constant", init_lr=0.0, lr_warmup_steps=5, lr_decay_steps=300),
        dict(
            lr_decay_style="inverse-square-root",
            init_lr=0.0,
            lr_warmup_steps=10,
            lr_decay_steps=300,
        ),
        *[
            dict(
                lr_decay_style="WSD",
                init_lr=0.0,
                lr_warmup_steps=10,
                lr_decay_steps=300,
                wsd_decay_steps=60,
                lr_wsd_decay_style=style,
            )
            for style in ("linear", "cosine", "exponential", "minus_sqrt")
        ],
    ],
    ids=lambda kw: kw["lr_decay_style"] + str(kw.get("lr_wsd_decay_style") or ""),
)
@pytest.mark.parametrize("spi", [1, 32])
def test_lr_schedule_is_megatron_cores_scheduler(kw, spi):
    # Megatron-LM counts scheduler steps in samples (increment = global batch size): the same
    # schedule in samples, read per iteration.
    kw = dict(kw, max_lr=2e-3, min_lr=1e-4 if kw["lr_decay_style"] != "constant" else 0.0)
    for k in ("lr_warmup_steps", "lr_decay_steps", "wsd_decay_steps"):
        if k in kw:
            kw[k] *= spi
    iterations = int(kw["lr_decay_steps"] * 1.3) // spi  # past the decay: the floor
    ours, ref = _megatron_lrs(spi, iterations, **kw)
    got = ours.lr(np.arange(iterations))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert np.ptp(ref) > 0 or kw["lr_decay_style"] == "constant"
    # The header round trip keeps every field.
    assert LrSchedule.from_header(ours.to_header(), "t.jsonl") == ours


def test_a_malformed_header_schedule_is_one_line_naming_the_file():
    good = LrSchedule(2e-3, 1e-4, 80, 800, "cosine").to_header()
    for bad in ("cosine", dict(good, decay_style="exp"), {k: good[k] for k in ("max_lr",)}):
        with pytest.raises(InputError) as e:
            LrSchedule.from_header(bad, "runs/p/velocitune_trajectory.jsonl")
        assert "\n" not in str(e.value) and "runs/p/velocitune_trajectory.jsonl" in str(e.value)
        assert "lr_schedule" in str(e.value)
    assert LrSchedule.from_spec("cosine:2e-3:1e-4:80:800", "--x") == LrSchedule(
        2e-3, 1e-4, 80, 800, "cosine"
    )
    with pytest.raises(InputError, match="--base-lr-schedule 'cosine:2e-3'"):
        LrSchedule.from_spec("cosine:2e-3", "--base-lr-schedule")


def _sched_traj(path, schedule, stop, lr_field, budget_iters=100, lie=1.0):
    header = dict(
        type="header",
        domains=["a"],
        footing="full",
        initial_loss=[5.0],
        global_batch_size=GBS,
        seq_length=SEQ,
        train_iters=budget_iters,
        **({"lr_schedule": schedule.to_header()} if schedule else {}),
    )
    ref = schedule or LrSchedule(1e-3, 1e-4, 10, budget_iters, "cosine")
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for it in range(5, stop + 1, 5):
            rec = dict(
                type="update",
                iteration=it,
                consumed_tokens=it * GBS * SEQ,
                eval_loss=[5.0 - 0.01 * it],
            )
            if lr_field:
                rec["lr"] = float(ref.lr(it)) * lie
            f.write(json.dumps(rec) + "\n")
    return str(path)


def test_the_header_schedule_carries_the_areas_to_the_budget(tmp_path):
    sched = LrSchedule(1e-3, 1e-4, 10, 100, "cosine")
    budget = 100 * GBS * SEQ
    # A proxy that stopped at iteration 50 of 100: the header's schedule gives every step up to
    # the budget; the records alone can only hold their last LR past iteration 50.
    path = _sched_traj(tmp_path / "h.jsonl", sched, 50, lr_field=True)
    x, at = trajectory_schedule(read_trajectory(path), path, budget)
    want = sched.lr(np.arange(100))  # step k runs at the LR after k - 1 steps
    s1, s2 = lr_areas(want)
    assert at.s1[0] == pytest.approx(s1[-1], rel=1e-12)
    assert at.s2[0] == pytest.approx(s2[-1], rel=1e-12)
    np.testing.assert_allclose(x.s1, s1[np.arange(5, 51, 5) - 1], rtol=1e-12)
    old = _sched_traj(tmp_path / "r.jsonl", None, 50, lr_field=True)
    _, at_old = trajectory_schedule(read_trajectory(old), old, budget)
    # Records every 5 iterations, interpolated between them, the last (iteration 50) held.
    its = np.arange(5, 51, 5)
    by_hand = np.interp(np.arange(100), its, sched.lr(its))
    assert np.all(by_hand[50:] == float(sched.lr(50)))
    assert at_old.s1[0] == pytest.approx(by_hand.sum(), rel=1e-12)
    assert at_old.s1[0] > at.s1[0] * 1.2  # the cosine's second half is far below its LR at 50
    # The same schedule given for a header without one (--lr-schedule) matches the header's.
    _, at_given = trajectory_schedule(read_trajectory(old), old, budget, schedule=sched)
    assert at_given.s1[0] == pytest.approx(at.s1[0], rel=1e-12)


def test_records_that_contradict_the_header_schedule_are_one_line_naming_the_file(tmp_path):
    sched = LrSchedule(1e-3, 1e-4, 10, 100, "cosine")
    budget = 100 * GBS * SEQ
    ok = _sched_traj(tmp_path / "ok.jsonl", sched, 50, lr_field=True, lie=1 + 5e-7)
    trajectory_schedule(read_trajectory(ok), ok, budget)  # within 1e-6 relative
    bad = _sched_traj(tmp_path / "bad.jsonl", sched, 50, lr_field=True, lie=1 + 5e-6)
    with pytest.raises(InputError) as e:
        trajectory_schedule(read_trajectory(bad), bad, budget)
    assert "\n" not in str(e.value) and "bad.jsonl" in str(e.value)
    assert "lr_schedule" in str(e.value)


# ----------------------------------------------------------------------- multi-power law


def test_the_multi_power_law_recovers_its_curve_and_identifiable_parameters():
    """A noiseless warm-up + cosine curve, fitted on all its points.

    ``L0``, ``A``, ``alpha`` and ``gamma`` come back within 2%. ``C`` and ``beta`` are not
    identifiable from one cosine curve: they trade off along a valley in which ``G`` keeps its
    shape over the ``x`` the curve covers (and ``B`` with them, within a few %), so those are
    checked through the prediction: within 1e-4 on every point and at the budget.
    """
    sched = LrSchedule(1e-3, 1e-5, 50, 2000, "cosine")
    lrs = sched.lr(np.arange(2000))
    s1, s2 = lr_areas(lrs)
    idx = np.arange(100, 2001, 50)
    x = ScheduleInputs(idx * 1.0, s1[idx - 1], s2[idx - 1], idx, lrs)
    truth = dict(L0=2.5, A=0.6, alpha=0.5, B=300.0, C=2.0, beta=0.6, gamma=0.5)
    y = multi_power_law(*truth.values(), lrs, idx)
    no_drop = multi_power_law(*dict(truth, B=0.0).values(), lrs, idx)
    assert no_drop[-1] - y[-1] > 0.05  # the decay's loss reduction is there to see
    fit = fit_multi_power_law(x, y)
    assert not fit.notes
    p = dict(fit.params)
    p["A"] = p["A"] * fit.scale ** p["alpha"]
    p["gamma"] = fit.decay_term().gamma
    assert _rel(p, truth, ["L0", "A", "alpha", "gamma"]) < 0.02
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-4)
    # Its own formula, term by term: at the first point after the peak LD is B * 0 = 0.
    assert multi_power_law(*truth.values(), lrs, [51])[0] == pytest.approx(
        2.5 + 0.6 * s1[50] ** -0.5
    )


def test_the_multi_power_law_fixes_b_at_zero_without_an_lr_decay():
    lrs = LrSchedule(1e-3, 1e-3, 5, 200, "constant").lr(np.arange(200))
    s1, s2 = lr_areas(lrs)
    idx = np.arange(10, 101, 5)
    x = ScheduleInputs(idx * 1.0, s1[idx - 1], s2[idx - 1], idx, lrs)
    y = multi_power_law(3.0, 0.5, 0.4, 0.0, 1.0, 0.5, 0.5, lrs, idx)
    fit = fit_multi_power_law(x, y)
    assert fit.params["B"] == 0.0 and "no LR decay" in fit.notes[0]
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-3)


# ------------------------------------------------------- C from the base model's own curve


def _base_traj(path, with_schedule: bool, C=0.5):
    """A base run of 400 iterations under warm-up + cosine whose curve is the annealing law."""
    sched = LrSchedule(2e-3, 1e-4, 20, 400, "cosine")
    lrs = sched.lr(np.arange(400))
    s1, s2 = lr_areas(lrs)
    its = np.arange(25, 401, 25)
    losses = {
        "new": annealing_law(3.0, 0.4, 0.5, C, s1[its - 1], s2[its - 1]),
        "replay": annealing_law(2.5, 0.3, 0.5, C, s1[its - 1], s2[its - 1]),
    }
    header = dict(
        type="header",
        domains=["new", "replay"],
        global_batch_size=GBS,
        seq_length=SEQ,
        train_iters=400,
    )
    if with_schedule:
        header["lr_schedule"] = sched.to_header()
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for i, it in enumerate(its):
            f.write(
                json.dumps(
                    dict(
                        type="update",
                        iteration=int(it),
                        consumed_tokens=int(it) * GBS * SEQ,
                        eval_loss=[losses["new"][i], losses["replay"][i]],
                    )
                )
                + "\n"
            )
    return str(path)


def test_the_annealing_coefficient_comes_from_the_base_models_curve(tmp_path):
    base = _base_traj(tmp_path / "base.jsonl", with_schedule=True)
    decay = fit_base_decay(base, read_trajectory(base), ["new", "replay"])
    for d in decay.values():
        assert d.c == pytest.approx(0.5, rel=0.02)  # per unit of absolute annealing area
    # The proxy's fits take it (and say where from), instead of C = 0 on a constant window.
    proxy = _write(tmp_path / "proxy.jsonl", _curve())
    config = TargetFitConfig(law="annealing", rising_rule="budget-hold", base_decay=decay)
    report = fit_target_losses([proxy], [read_trajectory(proxy)], config)
    for dom in report.domains:
        fit = dom.laws["annealing"].fit
        assert fit.annealing_c() == pytest.approx(decay[dom.name].c, rel=1e-9)
        assert f"base {base}" in fit.notes[0]


def test_a_base_without_a_schedule_is_one_line_saying_what_to_pass(tmp_path, capsys):
    base = _base_traj(tmp_path / "base.jsonl", with_schedule=False)
    proxy = _write(tmp_path / "proxy.jsonl", _curve())
    rc = fit_target_loss.main([proxy, "--law", "annealing", "--annealing-from", base])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "base.jsonl" in err
    assert "--base-lr-schedule" in err and "--annealing-c" in err
    # Given the schedule, it runs, prints the base's C per domain and plots every law.
    png = tmp_path / "fit.png"
    rc = fit_target_loss.main(
        [
            proxy,
            "--law",
            "auto",
            "--annealing-from",
            base,
            "--base-lr-schedule",
            "cosine:2e-3:1e-4:20:400",
            "--plot",
            str(png),
            "--rising-domains",
            "budget-hold",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and png.stat().st_size > 0
    assert "base C" in out and "multi-power" in out and f"from base {base}" in out


def test_the_target_laws_benchmark_tables_every_law_and_plots_one_png_per_law(tmp_path):
    """``benchmarks/target_laws.py`` on two proxy seeds: a row per law and domain, the noise
    floor of the later evaluations, one PNG per law, and ``--seeds`` keeps only those seeds.
    """
    import importlib.util

    bench = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "target_laws.py")
    spec = importlib.util.spec_from_file_location("target_laws_bench", bench)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    rng = np.random.default_rng(3)
    sigma = 0.01
    for seed in (1, 2, 3):
        folder = tmp_path / "regime" / "runs" / "cpt" / f"seed{seed}" / "tb"
        folder.mkdir(parents=True)
        rows = [(it, [v + rng.normal(0, sigma) for v in row]) for it, row in _curve()]
        _write(folder / "velocitune_trajectory.jsonl", rows)
    text = mod.run(
        [str(tmp_path / "regime")], plot_dir=str(tmp_path), seeds_wanted=[1, 3], floor_draws=8
    )
    summary = {line.split(" | ")[1]: line for line in text.splitlines() if "| regime |" in line}
    assert set(summary) == set(LAWS) | {"auto", mod.ORACLE}
    # Columns seed1 and seed3 only.
    assert "MAE seed1 | MAE seed3 |" in text and "seed2" not in text
    # The floor estimates the noise's mean absolute size, sqrt(2/pi) * sigma (+ the curvature).
    floor = float(summary["cpt"].rstrip(" |").split(" | ")[-2])
    each = summary["cpt"].split(" | ")[4].split(" / ")
    assert len(each) == 2  # seeds 1 and 3
    assert 0.5 * math.sqrt(2 / math.pi) * sigma < floor < 1.6 * math.sqrt(2 / math.pi) * sigma
    # The extrapolation floor (a right law refitted on noisy copies of the window) misses by
    # at least the later points' own noise, and by more (its extrapolation) but not wildly.
    extrapolation = [float(v) for v in summary["cpt"].rstrip(" |").split(" | ")[-1].split(" / ")]
    assert len(extrapolation) == 2
    for v in extrapolation:
        assert 0.8 * math.sqrt(2 / math.pi) * sigma < v < 5 * sigma
    for law in LAWS:
        png = tmp_path / f"target_laws_{law}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", law


def test_the_cpt_multi_power_law_recovers_its_shift_under_the_base_runs_loss_reduction():
    """The CPT law's shift with the multi-power loss reduction as its annealing term: on warm-up
    + cosine, with ``LD`` given (from the base run), the shift's parameters come back within 2%;
    under a constant LR it is the CPT law (``LD = 0``).
    """
    from megatron_velocitune.laws.schedule_laws import (
        DecayTerm,
        fit_cpt_multi_power_law,
        loss_reduction,
    )

    n = 200
    lrs = _cosine(n, 5, 1e-3, 1e-4)
    s1, s2 = lr_areas(lrs)
    steps = np.arange(5, n + 1, 5)
    x = ScheduleInputs(steps * 1.0, s1[steps - 1], s2[steps - 1], steps, lrs)
    decay = DecayTerm(B=1500.0, C=2.5, beta=0.8, gamma=0.0)
    ld = loss_reduction(decay, x)
    assert ld[0] == 0.0 and np.all(np.diff(ld) >= -1e-12) and ld[-1] > 0.05  # the cosine's drop
    truth = dict(B=-0.4, E=8.0, beta=0.7)
    scale = float(x.s1.max())
    y = cpt_law(5.0, 0.0, 0.5, 0.0, truth["B"], truth["E"], truth["beta"], 2.0, x.s1 / scale, 0)
    y = y - ld
    fit = fit_cpt_multi_power_law(x, y, 5.0, decay, s1_pt=2.0 * scale)
    assert fit.law == "cpt-multi-power" and "loss reduction fixed" in fit.notes[0]
    assert _rel(fit.params, truth, ["B", "E", "beta"]) < 0.02
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-4)
    # Constant LR: no drop, no reduction: the CPT law's own fit.
    flat = np.full(n, 1e-3)
    c1, c2 = lr_areas(flat)
    xc = ScheduleInputs(steps * 1.0, c1[steps - 1], c2[steps - 1], steps, flat)
    assert np.all(loss_reduction(decay, xc) == 0.0)
    yc = cpt_law(5.0, 0.0, 0.5, 0.0, -0.4, 8.0, 0.7, 2.0, xc.s1 / xc.s1.max(), 0)
    a = fit_cpt_multi_power_law(xc, yc, 5.0, decay, s1_pt=2.0 * xc.s1.max())
    b = fit_cpt_law(xc, yc, 5.0, s1_pt=2.0 * xc.s1.max())
    np.testing.assert_allclose(a.predict(xc), b.predict(xc), atol=1e-9)
