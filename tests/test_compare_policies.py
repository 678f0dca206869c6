"""The pure parts of benchmarks/compare_policies.py: no training here."""

import math
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import compare_policies as cp  # noqa: E402

from megatron_velocitune.laws.comparison import (  # noqa: E402
    MethodRuns,
    Stat,
    is_real_difference,
    mean_std,
    parse_final_losses,
    render_mae_table,
    render_table,
    replay_share_blend,
    stabilisation_iteration,
    summarise_method,
)


class TestStabilisation:
    def test_last_move_above_tolerance(self):
        init = [0.25, 0.75]
        w = [[0.4, 0.6], [0.45, 0.55], [0.455, 0.545], [0.46, 0.54]]
        assert stabilisation_iteration([10, 20, 30, 40], w, init) == 20

    def test_static_is_zero(self):
        w = [[0.5, 0.5]] * 3
        assert stabilisation_iteration([5, 10, 15], w, [0.5, 0.5]) == 0
        assert stabilisation_iteration([], [], [0.5, 0.5]) == 0

    def test_never_stable(self):
        w = [[0.5, 0.5], [0.6, 0.4]]
        assert stabilisation_iteration([10, 20], w, [0.5, 0.5]) is None

    def test_late_move_resets(self):
        init = [0.5, 0.5]
        w = [[0.6, 0.4], [0.6, 0.4], [0.65, 0.35], [0.65, 0.35]]
        assert stabilisation_iteration([1, 2, 3, 4], w, init) == 3

    def test_tolerance_is_inclusive(self):
        assert (
            stabilisation_iteration(
                [1, 2], [[0.51, 0.49], [0.51, 0.49]], [0.5, 0.5], tolerance=0.01 + 1e-12
            )
            == 0
        )

    def test_length_mismatch(self):
        with pytest.raises(ValueError):
            stabilisation_iteration([1], [], [1.0])


class TestReplayShare:
    def test_split_token_proportional(self):
        w = replay_share_blend([100, 200, 300, 500], [0], 0.6)
        assert w[0] == pytest.approx(0.6)
        assert w[1:] == pytest.approx(np.array([200, 300, 500]) / 1000 * 0.4)
        assert w.sum() == pytest.approx(1.0)

    def test_equals_token_blend_at_its_own_share(self):
        t = np.array([260.0, 240, 250, 250])
        w = replay_share_blend(t, [0], t[0] / t.sum())
        assert w == pytest.approx(t / t.sum())

    def test_several_replay_domains(self):
        w = replay_share_blend([1, 3, 2, 2], [0, 1], 0.5)
        assert w == pytest.approx([0.125, 0.375, 0.25, 0.25])

    @pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
    def test_bad_share(self, share):
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [0], share)

    def test_bad_replay(self):
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [0, 1], 0.5)
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [], 0.5)


class TestTableMaths:
    def test_mean_std(self):
        s = mean_std([1.0, 2.0, 3.0])
        assert s.mean == 2.0 and s.std == pytest.approx(1.0) and s.n == 3
        one = mean_std([4.0])
        assert one.n == 1 and math.isnan(one.std) and one.fmt() == "4.0000"
        assert mean_std([float("nan"), 1.0]).n == 1
        assert mean_std([]).fmt() == "-"

    def test_real_difference_needs_spread(self):
        a, b = Stat(1.0, 0.1, 3), Stat(1.25, 0.1, 3)
        assert is_real_difference(a, b)
        assert not is_real_difference(a, Stat(1.15, 0.1, 3))
        assert not is_real_difference(Stat(1.0, float("nan"), 1), Stat(5.0, 0.1, 3))

    def test_summarise(self):
        domains = ["general", "man", "code"]
        cpt = MethodRuns("CPT", [[4.0, 6.0, 5.0], [4.2, 6.2, 5.2]], [0, 0], [100.0, 110.0])
        ref = summarise_method(cpt, domains, [0])
        assert ref.mean_all.mean == pytest.approx(5.1)
        assert ref.mean_new.mean == pytest.approx(5.6)
        vt = MethodRuns(
            "VT", [[4.5, 5.8, 4.9], [4.7, 6.0, 5.1]], [30, None], [120.0, 130.0], dynamic=True
        )
        row = summarise_method(vt, domains, [0], np.array([x.mean for x in ref.per_domain]))
        assert row.worst_domain == "general"
        assert row.worst_delta.mean == pytest.approx(0.5)
        assert row.stable_at.mean == 30 and row.never_stable == 1
        text = render_table([ref, row], domains)
        assert text.count("\n") == 3
        assert "(1/2 never)" in text and "+19%" in text and "general +0.5000" in text
        assert "static" in text.splitlines()[2]

    def test_summarise_shape_check(self):
        with pytest.raises(ValueError):
            summarise_method(MethodRuns("x", [[1.0, 2.0]]), ["a", "b", "c"], [0])

    def test_mae_table(self):
        text = render_mae_table(
            ["a", "b"],
            {"a": [1e-3, 3e-3], "b": [2e-3, float("nan")]},
            {"a": 2e-3, "b": float("nan")},
        )
        assert "2.00e-03 ± 1.4e-03" in text and "all domains" in text


LOG = """\
 iteration      300/     300 | consumed samples: ...
 held-out loss per domain (full held-out sets), start of this run -> end:
   domain           start       end    change    weight
   general         4.5453    4.3815   -0.1638    0.6784
   man             9.8372    5.5988   -4.2383    0.1110
 saved checkpoint
"""


def test_parse_final_losses():
    names, start, end, weight = parse_final_losses(LOG)
    assert names == ["general", "man"]
    assert start == [4.5453, 9.8372] and end == [4.3815, 5.5988] and weight == [0.6784, 0.1110]
    with pytest.raises(ValueError):
        parse_final_losses("nothing here")


class TestArguments:
    def test_default_and_quick(self):
        p = cp.build_parser()
        s = cp.setting_from_args(p.parse_args(["--out", "x"]))
        assert len(s.seeds) >= 3 and s.cpt_iters > cp.QUICK.cpt_iters
        q = cp.setting_from_args(p.parse_args(["--out", "x", "--quick", "--seeds", "7"]))
        assert q.seeds == (7,) and q.base_iters == cp.QUICK.base_iters

    def test_overrides_and_errors(self):
        p = cp.build_parser()
        s = cp.setting_from_args(
            p.parse_args(["--out", "x", "--cpt-iters", "100", "--update-interval", "20"])
        )
        assert s.cpt_iters == 100 and s.update_interval == 20
        with pytest.raises(SystemExit):
            cp.setting_from_args(p.parse_args(["--out", "x", "--seeds", "1", "1"]))
        with pytest.raises(SystemExit):
            p.parse_args([])

    def test_data_path(self):
        assert cp.data_path(["a", "b"], [0.25, 0.75]) == ["0.250000", "a", "0.750000", "b"]

    def test_fit_span_over_a_decade_by_default(self):
        s = cp.Setting()
        # CPT evaluations fitted: from the end of the warmup to half the budget.
        assert (s.fit_fraction * s.cpt_iters) / s.warmup > 10


def test_parse_loop_time():
    from megatron_velocitune.laws.comparison import parse_loop_time

    line = (
        " training loop: 60 iterations in 241.5 s (4025.7 ms/iteration wall, "
        "686.2 ms/iteration CPU of this process)\n"
    )
    assert parse_loop_time("x\n" + line) == (60, 241.5, 4025.7, 686.2)
    assert parse_loop_time("nothing") is None


def test_overhead_uses_cpu_when_every_row_has_it():
    domains = ["general", "man"]
    a = summarise_method(
        MethodRuns("CPT", [[4.0, 6.0], [4.1, 6.1]], [0, 0], [100.0, 100.0], cpu_ms=[500.0, 500.0]),
        domains,
        [0],
    )
    b = summarise_method(
        MethodRuns(
            "VT",
            [[4.0, 6.0], [4.1, 6.1]],
            [10, 10],
            [300.0, 300.0],
            dynamic=True,
            cpu_ms=[600.0, 600.0],
        ),
        domains,
        [0],
    )
    text = render_table([a, b], domains)
    assert "+20%" in text and "+200%" not in text
