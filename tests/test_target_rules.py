"""The rules for domains with little or negative headroom, against hand-computed values."""

import numpy as np
import pytest

from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.policy import (
    Guards,
    TargetRuleError,
    Tolerance,
    domain_velocity,
    forgetting_velocity,
    hold_initial_target,
    resolve_targets,
    tolerance_target,
    update_weights,
    velocity,
    velocity_update,
)

# A replay domain (initial 4.0) and a new domain (initial 6.0, target 4.5).
INITIAL = [4.0, 6.0]


class TestForgettingBudget:
    def test_share_of_the_budget_used(self):
        # Budget 4.0 -> 4.2: 4.05 has used a quarter of it, 4.3 all of it, 3.9 none.
        v = forgetting_velocity([4.05, 4.3, 3.9], [4.0] * 3, [4.2] * 3)
        assert v == pytest.approx([0.25, 1.0, 0.0])

    def test_domain_velocity_picks_the_rule_by_side(self):
        # replay: (4.1 - 4.0) / (4.2 - 4.0) = 0.5; new: (5.0 - 4.5) / (6.0 - 4.5) = 1/3.
        v = domain_velocity([4.1, 5.0], INITIAL, [4.2, 4.5])
        assert v == pytest.approx([0.5, 1.0 / 3.0])

    def test_is_algorithm_1_to_the_bit_when_every_target_is_below(self):
        rng = np.random.default_rng(0)
        ini = rng.uniform(3, 8, 50)
        tgt = ini - rng.uniform(0.01, 2, 50)
        cur = ini + rng.normal(0, 1, 50)
        np.testing.assert_array_equal(domain_velocity(cur, ini, tgt), velocity(cur, ini, tgt))

    def test_update_on_the_budget(self):
        # V = [0.5, 1/3]: w <- normalize([0.5 e^0.5, 0.5 e^(1/3)]).
        w = velocity_update([0.5, 0.5], [4.1, 5.0], INITIAL, [4.2, 4.5])
        a, b = np.exp(0.5), np.exp(1.0 / 3.0)
        assert w == pytest.approx([a / (a + b), b / (a + b)])
        assert update_weights("velocity", [0.5, 0.5], [4.1, 5.0], INITIAL, [4.2, 4.5]) == (
            pytest.approx(w)
        )


class TestHeadroomFloor:
    def test_floor_widens_a_tiny_gap(self):
        # hold-initial gap 0.04: 4.02 reads V = (4.02 - 3.96) / 0.04 -> 1 unfloored,
        # (4.02 - 3.96) / 0.2 = 0.3 with a 0.2-nat floor.
        assert domain_velocity([4.02], [4.0], [3.96]) == pytest.approx([1.0])
        assert domain_velocity([4.02], [4.0], [3.96], min_headroom=0.2) == pytest.approx([0.3])

    def test_floor_on_a_budget_and_no_effect_on_a_wide_gap(self):
        # budget 0.05 floored to 0.25: (4.1 - 4.0) / 0.25 = 0.4; the new domain's 1.5 stays.
        v = domain_velocity([4.1, 5.0], INITIAL, [4.05, 4.5], min_headroom=0.25)
        assert v == pytest.approx([0.4, 1.0 / 3.0])

    def test_reaches_the_policy(self):
        w = update_weights(
            "velocity", [0.5, 0.5], [4.02, 5.0], INITIAL, [3.96, 4.5], guards=Guards(headroom=0.2)
        )
        a, b = np.exp(0.3), np.exp(1.0 / 3.0)
        assert w == pytest.approx([a / (a + b), b / (a + b)])


class TestResolve:
    def test_budget_keeps_a_target_above_initial(self):
        r = resolve_targets(INITIAL, [4.2, 4.5], "budget", names=["general", "code"])
        assert r.targets == [4.2, 4.5] and r.rules == ["budget", "progress"]

    def test_hold_initial(self):
        r = resolve_targets(INITIAL, [4.2, 4.5], "hold-initial", margin=0.02)
        assert r.targets == pytest.approx([3.92, 4.5]) and r.rules == ["hold-initial", "progress"]
        assert hold_initial_target(4.0, 0.02) == pytest.approx(3.92)
        # A prediction below the initial loss but within the margin is held too.
        r = resolve_targets([4.0], [3.99], "hold-initial")
        assert r.targets == pytest.approx([3.96]) and r.rules == ["hold-initial"]

    @pytest.mark.parametrize("text, nats", [("0.05", 0.05), ("2%", 0.08)])
    def test_tolerance_in_nats_or_relative(self, text, nats):
        tol = Tolerance.parse(text)
        assert tolerance_target(4.0, tol) == pytest.approx(4.0 + nats)
        r = resolve_targets(INITIAL, [4.2, 4.5], "tolerance", tolerance=tol)
        assert r.targets == pytest.approx([4.0 + nats, 4.5])
        assert r.rules == ["tolerance", "progress"] and str(tol) == text

    def test_refuse(self):
        with pytest.raises(
            TargetRuleError,
            match=r"target 4.2 for domain 'general' is not "
            r"below the initial loss 4.0 \(rule refuse",
        ):
            resolve_targets(INITIAL, [4.2, 4.5], "refuse", names=["general", "code"])

    def test_budget_refuses_a_target_equal_to_initial(self):
        with pytest.raises(
            TargetRuleError,
            match=r"target 4.0 for domain 'general' equals its "
            r"initial loss",
        ):
            resolve_targets(INITIAL, [4.0, 4.5], "budget", names=["general", "code"])

    @pytest.mark.parametrize("text", ["0", "-0.1", "abc", "nan", "0%"])
    def test_bad_tolerance(self, text):
        with pytest.raises(ValueError, match=repr(text)):
            Tolerance.parse(text)

    def test_bad_rule_and_margin(self):
        with pytest.raises(TargetRuleError, match="rule 'clamp'"):
            resolve_targets(INITIAL, [4.2, 4.5], "clamp")
        with pytest.raises(TargetRuleError, match="margin 1.5"):
            resolve_targets(INITIAL, [4.2, 4.5], "hold-initial", margin=1.5)


class TestConfig:
    """One line naming the flag, the domain and the values."""

    def cfg(self, **kw):
        # Given absolute targets and L_init are checked at start-up on the paper's footing; on
        # the subset footing they are checked once L_init is measured (the controller).
        kw.setdefault("policy", "paper")
        return VelocituneConfig(
            initial_loss=INITIAL, target_loss=[4.2, 4.5], domain_names=["general", "code"], **kw
        )

    def test_budget_hold_is_the_default_and_accepts_a_target_above(self):
        self.cfg().validate(2, [0.5, 0.5])
        assert VelocituneConfig().rising_rule == "budget-hold"

    def test_refuse_names_flag_domain_and_values(self):
        with pytest.raises(VelocituneConfigError) as e:
            self.cfg(rising_rule="refuse").validate(2, [0.5, 0.5])
        msg = str(e.value)
        assert msg.startswith("--velocitune-target-loss: target 4.2 for domain 'general'")
        assert "initial loss 4.0" in msg and "--velocitune-rising-rule" in msg
        assert "\n" not in msg

    @pytest.mark.parametrize(
        "kw, match",
        [
            (
                dict(rising_rule="tolerance"),
                r"--velocitune-rising-rule tolerance needs "
                r"--velocitune-forgetting-tolerance",
            ),
            (
                dict(forgetting_tolerance=Tolerance(0.1)),
                r"--velocitune-forgetting-tolerance: "
                r"0.1 is read only by",
            ),
            (dict(min_headroom=-1.0), r"--velocitune-min-headroom: -1.0"),
            (dict(target_margin=0.0), r"--velocitune-target-margin: 0.0"),
            (dict(rising_rule="clamp"), r"--velocitune-rising-rule: 'clamp'"),
        ],
    )
    def test_bad_rule_flags(self, kw, match):
        with pytest.raises(VelocituneConfigError, match=match):
            self.cfg(**kw)

    def test_equal_target_under_budget(self):
        cfg = VelocituneConfig(
            policy="paper",
            initial_loss=INITIAL,
            target_loss=[4.0, 4.5],
            domain_names=["general", "code"],
        )
        with pytest.raises(
            VelocituneConfigError,
            match=r"target 4.0 for domain 'general' "
            r"equals its initial loss: no headroom either way \(rule budget-hold",
        ):
            cfg.validate(2, [0.5, 0.5])


class TestHeldBudget:
    def test_at_the_budget_it_keeps_pace(self):
        from megatron_velocitune.core.policy import held_budget_velocity

        # new domains: V = (5.0 - 4.5) / 1.5 = 1/3 and (5.5 - 4.5) / 1.5 = 2/3, weights 0.2 / 0.6:
        # pace = (0.2 / 3 + 0.6 * 2 / 3) / 0.8 = 0.5833; the replay domain at its budget 4.2.
        init, tgt = [4.0, 6.0, 6.0], [4.2, 4.5, 4.5]
        w = [0.2, 0.2, 0.6]
        pace = (0.2 / 3 + 0.6 * 2 / 3) / 0.8
        v = held_budget_velocity([4.2, 5.0, 5.5], init, tgt, w)
        assert v == pytest.approx([pace, 1 / 3, 2 / 3])
        # 0.05 past the budget (a quarter of it): pace + 0.25; at the start: pace - 1 -> 0.
        assert held_budget_velocity([4.25, 5.0, 5.5], init, tgt, w)[0] == pytest.approx(pace + 0.25)
        assert held_budget_velocity([4.0, 5.0, 5.5], init, tgt, w)[0] == 0.0
        # At the budget the update leaves its weight's ratio to the pace-weighted others as is.
        new = update_weights(
            "velocity", w, [4.2, 5.0, 5.5], init, tgt, guards=Guards(hold_budget=True)
        )
        e = np.array(w) * np.exp([pace, 1 / 3, 2 / 3])
        assert new == pytest.approx(e / e.sum())

    def test_without_budget_domains_it_is_the_domain_velocity(self):
        from megatron_velocitune.core.policy import held_budget_velocity

        args = ([5.0, 5.5], [6.0, 6.0], [4.5, 4.5])
        assert held_budget_velocity(*args, [0.5, 0.5]) == pytest.approx(domain_velocity(*args))

    def test_resolves_like_budget(self):
        r = resolve_targets(INITIAL, [4.2, 4.5], "budget-hold", names=["general", "code"])
        assert r.targets == [4.2, 4.5] and r.rules == ["budget-hold", "progress"]
