"""velocitune-compare: its error lines, its frontier maths, and a real tiny comparison that
resumes with its finished runs kept.
"""

import json
import os
import subprocess
import sys

import pytest

from megatron_velocitune.cli import compare_policies as compare
from megatron_velocitune.comparison.methods import (
    DEFAULT_METHODS,
    QUICK_METHODS,
    fit_name,
    parse_method,
    run_order,
    select_methods,
)
from megatron_velocitune.comparison.report import pareto_plot, report
from megatron_velocitune.comparison.runner import method_run, train_command
from megatron_velocitune.comparison.runs import read_traj, run_command, run_dir, torchrun
from megatron_velocitune.comparison.setting import Setting
from megatron_velocitune.comparison.targets import fit_command
from megatron_velocitune.core.errors import ToolError
from megatron_velocitune.laws.comparison import (
    ParetoPoint,
    Stat,
    dominated_by,
    frontier_margin,
    frontier_spread,
    pareto_efficient,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = [
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
    "--lr",
    "1e-3",
    "--lr-warmup-iters",
    "1",
    "--hidden-dropout",
    "0",
    "--attention-dropout",
    "0",
    "--split",
    "90,10,0",
    "--num-workers",
    "1",
    "--log-interval",
    "1",
    "--eval-interval",
    "0",
]


def point(name, replay, new, spread=0.01):
    return ParetoPoint(name, Stat(replay, spread, 3), Stat(new, spread, 3))


class TestMethods:
    def test_names(self):
        m = parse_method("vt-hold-initial-floor")
        assert (m.policy, m.rule, m.floor, m.dynamic) == ("velocity", "hold-initial", True, True)
        assert parse_method("vt-budget").rule == "budget"
        assert parse_method("dbl").rule == "budget"
        assert parse_method("frontier-0.40").share == 0.4
        assert not parse_method("reweighted").dynamic
        assert parse_method("vt-tolerance").label("5%", 0.1) == "Velocitune, tolerance 5%"

    @pytest.mark.parametrize("key", ["vt-refuse", "doremi", "frontier-1.5", "frontier-x"])
    def test_unknown(self, key):
        with pytest.raises(ToolError, match=key):
            parse_method(key)

    def test_default_is_the_shipped_velocitune(self):
        m = parse_method("default")
        assert (m.policy, m.rule, m.floor, m.shipped, m.fit) == (
            "velocity",
            None,
            False,
            True,
            "default",
        )
        assert m.label("5%", 0.1) == "Velocitune, shipped defaults"
        assert DEFAULT_METHODS[:2] == ("cpt", "default")
        assert "default" in QUICK_METHODS
        assert parse_method("vt-budget").fit == "budget"
        assert parse_method("ratio").fit is None

    def test_paper_is_the_entry_policy_paper(self):
        for key in ("vt-paper", "paper"):
            m = parse_method(key)
            assert (m.key, m.policy, m.rule, m.shipped, m.fit) == (
                "vt-paper",
                "paper",
                None,
                True,
                "default",
            )
        assert "paper" not in DEFAULT_METHODS + QUICK_METHODS
        assert "vt-paper" not in DEFAULT_METHODS + QUICK_METHODS
        keys = [m.key for m in select_methods(["paper", "vt-paper", "default"], [0.4], "")]
        assert keys == ["cpt", "vt-paper", "default", "frontier-0.40"]

    def test_every_method_runs_a_policy_the_entry_accepts(self):
        from megatron_velocitune.core.policy import POLICY_NAMES

        keys = ["cpt", "default", "default-nobrake", "default-nonoise", "vt-paper", "dbl"]
        keys += ["ratio", "reweighted", "vt-budget-hold-floor", "frontier-0.4", "phase-0.8-cpt-0.5"]
        assert {parse_method(k).policy for k in keys} <= set(POLICY_NAMES)

    def test_phased_names(self):
        m = parse_method("phase-0.85-0.10-0.80")
        assert (m.policy, m.dynamic, m.share) == ("schedule", False, None)
        assert (m.phase.switch, m.phase.first, m.phase.second) == (0.85, 0.1, 0.8)
        assert m.label("5%", 0.1) == "phased, replay 0.10 -> 0.80 after 85%"
        assert parse_method("phase-0.7-cpt-0.5").phase.first is None
        assert parse_method("phase-0.7-cpt-0.5").label("", 0) == (
            "phased, replay CPT's -> 0.50 after 70%"
        )

    @pytest.mark.parametrize(
        "key", ["phase-0.85-cpt", "phase-1-0.1-0.5", "phase-x-0.1-0.5", "phase-0.5-0-0.5"]
    )
    def test_bad_phased_names(self, key):
        with pytest.raises(ToolError, match=rf"--methods {key}: a phased blend is phase-<f>"):
            parse_method(key)

    def test_run_order_puts_default_first(self):
        methods = select_methods(
            ["vt-budget", "reweighted", "vt-budget-hold", "default"], [0.1, 0.4], "vt-budget-hold"
        )
        order = [m.key for m in run_order(methods, "vt-budget-hold")]
        assert order[:2] == ["default", "vt-budget-hold"]
        assert order[2:4] == ["frontier-0.10", "frontier-0.40"]
        assert order[-2:] == ["reweighted", "cpt"]


def fake_setting(**change):
    """A :class:`Setting` without files (the commands only read it)."""
    fields = dict(
        prefixes=("/d/general", "/d/man", "/d/code"),
        weights=(0.5, 0.25, 0.25),
        load="/base",
        replay_domain="general",
        train_iters=20,
        update_interval=5,
        cpt_eval_interval=2,
        eval_iters=3,
        min_weight=0.02,
        fit_fraction=0.5,
        tolerance="5%",
        min_headroom=0.1,
        nproc=2,
        entry_args=("--seq-length", "32", "--global-batch-size", "8"),
        seq_length=32,
        global_batch_size=8,
        warmup_iters=1,
    )
    fields.update(change)
    return Setting(**fields)


FITS = {
    name: {"targets": f"/out/targets-{name}.json"}
    for name in ("default", "budget", "budget-hold", "tolerance", "hold-initial", "law-auto")
}


def command_of(key, seed=2, s=None):
    """The command ``run_all`` gives ``train_run`` for method ``key``."""
    s = s or fake_setting()
    m = parse_method(key)
    r = method_run(m, s, FITS, "/out/initial_loss_seed2.json", reweighted=[0.3, 0.3, 0.4])
    folder = run_dir("/out", m.key, seed)
    return train_command(
        "python", s, folder, seed, r.policy, r.weights, r.interval, r.extra, r.min_weight
    )


def flag(cmd, name):
    """The word after ``name`` in ``cmd`` (None when absent; it must appear at most once)."""
    assert cmd.count(name) <= 1, name
    return cmd[cmd.index(name) + 1] if name in cmd else None


class TestCommands:
    SHARED = {
        "--velocitune-update-interval": "5",
        "--velocitune-eval-iters": "3",
        "--seed": "2",
        "--train-iters": "20",
        "--load": "/base",
    }

    def test_default_passes_only_the_shared_settings_and_default_targets(self):
        cmd = command_of("default")
        for name in (
            "--velocitune-rising-rule",
            "--velocitune-min-weight",
            "--velocitune-min-headroom",
            "--velocitune-initial-loss-file",
            "--velocitune-forgetting-tolerance",
        ):
            assert name not in cmd, name
        assert flag(cmd, "--velocitune-policy") == "velocity"
        assert flag(cmd, "--velocitune-target-loss-file") == "/out/targets-default.json"
        for name, value in self.SHARED.items():
            assert flag(cmd, name) == value, name
        assert flag(cmd, "--tensorboard-dir") == "/out/runs/default/seed2/tb"
        assert "--finetune" in cmd
        # The CPT blend, the entry flags after '--', under torchrun with --nproc 2.
        assert cmd[cmd.index("--data-path") + 1 : cmd.index("--data-path") + 3] == [
            "0.500000",
            "/d/general",
        ]
        assert cmd[cmd.index("--seq-length") + 1] == "32"
        assert flag(cmd, "--nproc-per-node") == "2"

    @pytest.mark.parametrize(
        "key, off",
        [
            ("default-nobrake", ["--velocitune-brake-window", "0"]),
            ("default-nonoise", ["--velocitune-noise-multiple", "0"]),
            ("default-cap", ["--velocitune-runaway-guard", "cap"]),
            ("default-anchored", ["--velocitune-runaway-guard", "anchored"]),
        ],
    )
    def test_default_ablations_switch_one_guard_off(self, key, off):
        cmd = command_of(key)
        assert flag(cmd, off[0]) == off[1]
        assert "--velocitune-rising-rule" not in cmd and "--velocitune-min-weight" not in cmd
        assert flag(cmd, "--velocitune-target-loss-file") == "/out/targets-default.json"
        label = parse_method(key).label("5%", 0.1)
        assert label == f"Velocitune, defaults with {' '.join(off)}"

    def test_a_law_method_is_default_on_that_laws_targets(self):
        m = parse_method("default-law-auto")
        assert (m.policy, m.shipped, m.law, m.fit) == ("velocity", True, "auto", "law-auto")
        assert m.label("5%", 0.1) == "Velocitune, shipped defaults, auto-law targets"
        cmd = command_of("default-law-auto")
        assert flag(cmd, "--velocitune-target-loss-file") == "/out/targets-law-auto.json"
        for name in ("--velocitune-rising-rule", "--velocitune-initial-loss-file"):
            assert name not in cmd, name
        with pytest.raises(ToolError, match="default-law-poly"):
            parse_method("default-law-poly")

    def test_a_law_fit_passes_the_law_and_the_base_curve(self):
        s = fake_setting(
            annealing_from="/b/t.jsonl",
            base_lr_schedule="cosine:1:0.1:1:9",
            lr_schedule="constant:1:1:1:20",
        )
        cmd = fit_command("python", ["a.jsonl"], s, None, "t.json", None, "cpt")
        assert flag(cmd, "--law") == "cpt" and "--rising-domains" not in cmd
        assert flag(cmd, "--annealing-from") == "/b/t.jsonl"
        assert flag(cmd, "--base-lr-schedule") == "cosine:1:0.1:1:9"
        assert flag(cmd, "--lr-schedule") == "constant:1:1:1:20"
        assert "--plot" not in cmd
        # The default law's fit takes none of them.
        cmd = fit_command("python", ["a.jsonl"], s, None, "t.json", "t.png")
        assert "--law" not in cmd and "--annealing-from" not in cmd and "--lr-schedule" not in cmd

    def test_paper_as_default_with_its_own_policy(self):
        cmd = command_of("vt-paper")
        assert flag(cmd, "--velocitune-policy") == "paper"
        assert flag(cmd, "--velocitune-target-loss-file") == "/out/targets-default.json"
        for name in ("--velocitune-rising-rule", "--velocitune-min-weight"):
            assert name not in cmd
        assert "--velocitune-initial-loss-file" not in cmd

    def test_a_rule_method_keeps_its_comparison_flags(self):
        cmd = command_of("vt-tolerance-floor")
        assert flag(cmd, "--velocitune-rising-rule") == "tolerance"
        assert flag(cmd, "--velocitune-target-loss-file") == "/out/targets-tolerance.json"
        assert flag(cmd, "--velocitune-initial-loss-file") == "/out/initial_loss_seed2.json"
        assert flag(cmd, "--velocitune-forgetting-tolerance") == "5%"
        assert flag(cmd, "--velocitune-min-headroom") == "0.1"
        assert flag(cmd, "--velocitune-min-weight") == "0.02"
        assert flag(cmd, "--velocitune-update-interval") == "5"

    def test_static_methods(self):
        cmd = command_of("frontier-0.40")
        assert flag(cmd, "--velocitune-policy") == "static"
        assert "--velocitune-min-weight" not in cmd and "--velocitune-rising-rule" not in cmd
        assert flag(cmd, "--velocitune-update-interval") == "20"  # no update in the run
        start = cmd.index("--data-path") + 1
        assert cmd[start : start + 6] == [
            "0.400000",
            "/d/general",
            "0.300000",
            "/d/man",
            "0.300000",
            "/d/code",
        ]
        cmd = command_of("reweighted")
        assert cmd[cmd.index("--data-path") + 1] == "0.300000"
        assert flag(cmd, "--velocitune-initial-loss-file") == "/out/initial_loss_seed2.json"

    def test_phased_methods_schedule_the_second_share(self):
        cmd = command_of("phase-0.75-0.20-0.60")
        assert flag(cmd, "--velocitune-policy") == "schedule"
        assert flag(cmd, "--velocitune-update-interval") == "20"  # only the switch and the end
        assert "--velocitune-min-weight" not in cmd
        start = cmd.index("--data-path") + 1
        assert cmd[start : start + 6 : 2] == ["0.200000", "0.400000", "0.400000"]
        # After iteration 15 of 20: replay 0.6, the new domains the rest in CPT's ratio.
        assert flag(cmd, "--velocitune-blend-schedule") == "15:0.600000,0.200000,0.200000"
        assert flag(cmd, "--velocitune-initial-loss-file") == "/out/initial_loss_seed2.json"
        cmd = command_of("phase-0.75-cpt-0.60")
        start = cmd.index("--data-path") + 1
        assert cmd[start : start + 6 : 2] == ["0.500000", "0.250000", "0.250000"]

    def test_fit_command_default_rule_passes_no_rule(self):
        s = fake_setting()
        cmd = fit_command("python", ["a.jsonl", "b.jsonl"], s, None, "t.json", "t.png")
        assert "--rising-domains" not in cmd and "--forgetting-tolerance" not in cmd
        assert flag(cmd, "--fit-fraction") == "0.5"
        assert flag(cmd, "--budget-tokens") == str(20 * 8 * 32)
        assert flag(cmd, "--min-tokens") == str(8 * 32)
        assert flag(cmd, "-o") == "t.json" and flag(cmd, "--plot") == "t.png"
        assert cmd[3:5] == ["a.jsonl", "b.jsonl"]
        cmd = fit_command("python", ["a.jsonl"], s, "tolerance", "t.json", "t.png")
        assert flag(cmd, "--rising-domains") == "tolerance"
        assert flag(cmd, "--forgetting-tolerance") == "5%"
        assert fit_name(None) == "default" and fit_name("budget") == "budget"


def fake_result(key, seed, final, start=(4.0, 9.0, 9.0)):
    return {
        "key": key,
        "seed": seed,
        "domains": ["general", "man", "code"],
        "start_loss": list(start),
        "final_loss": list(final),
        "final_weights": [0.5, 0.25, 0.25],
        "wall_s": 10.0,
        "stable_at": 0,
        "trajectory": f"/nowhere/{key}/seed{seed}/tb/t.jsonl",
    }


def test_report_prints_each_seed_and_the_collapsed_runs(tmp_path):
    s = fake_setting()
    methods = [parse_method(k) for k in ("cpt", "default", "frontier-0.40")]
    results = {
        "cpt": [fake_result("cpt", 1, [4.20, 5.0, 6.0]), fake_result("cpt", 2, [4.22, 5.1, 6.1])],
        # seed 2: behind that seed's CPT by 0.031 (replay) and 0.142 (new): collapsed.
        "default": [
            fake_result("default", 1, [4.25, 4.9, 5.9]),
            fake_result("default", 2, [4.251, 5.242, 6.242]),
        ],
        # Behind on both, but by less than 0.01 on replay: not collapsed.
        "frontier-0.40": [
            fake_result("frontier-0.40", 1, [4.205, 5.5, 6.5]),
            fake_result("frontier-0.40", 2, [4.225, 5.6, 6.6]),
        ],
    }
    text = report(str(tmp_path), s, methods, results, {}, [1, 2])
    assert "- collapsed: default seed 2 (replay +0.031, new +0.142 vs that seed's CPT)\n" in text
    assert "1 of 4 runs collapsed" in text
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| method | seeds |"))
    column = lines[at].split(" | ").index("collapsed seeds")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in lines[at + 2 : at + 5]}
    assert rows["| Velocitune, shipped defaults"][column] == "1/2"
    assert rows["| static, replay 0.40"][column] == "0/2"
    assert rows["| CPT (static)"][column] == "-"
    assert "| Velocitune, shipped defaults | 2 | 4.2510 | 5.7420 | +0.0310 | +0.1420 | yes |" in (
        text
    )
    assert "| static, replay 0.40 | 1 | 4.2050 | 6.0000 | +0.0050 | +0.5000 |  |" in text
    assert (tmp_path / "table.md").read_text().strip() == text.strip()
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["collapsed"] == [
        {
            "method": "default",
            "seed": 2,
            "replay_delta": pytest.approx(0.031),
            "new_delta": pytest.approx(0.142),
        }
    ]
    seeds = table["per_seed"]["default"]
    assert [(p["seed"], p["collapsed"]) for p in seeds] == [(1, False), (2, True)]
    assert seeds[0]["replay"] == pytest.approx(4.25) and seeds[0]["new"] == pytest.approx(5.4)
    pareto_plot(str(tmp_path), s, methods, results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_report_sets_phased_blends_against_the_constant_frontier(tmp_path):
    s = fake_setting()
    keys = ("cpt", "default", "frontier-0.40", "phase-0.80-0.20-0.60", "phase-0.90-0.20-0.60")
    methods = [parse_method(k) for k in keys]

    def runs(key, replay, new):
        return [
            fake_result(key, x, [replay + d, new + d, new + d]) for x, d in ((1, 0), (2, 0.002))
        ]

    results = {
        "cpt": runs("cpt", 4.20, 5.0),  # replay share 0.5
        "frontier-0.40": runs("frontier-0.40", 4.30, 4.8),
        "default": runs("default", 4.26, 4.90),  # 0.02 above the line
        "phase-0.80-0.20-0.60": runs("phase-0.80-0.20-0.60", 4.25, 4.8),  # 0.1 below it
        "phase-0.90-0.20-0.60": runs("phase-0.90-0.20-0.60", 4.26, 4.85),  # beaten by 0.80
    }
    text = report(str(tmp_path), s, methods, results, {}, [1, 2])
    assert (
        "The phased frontier (the phased blends no other phased blend beats on both axes): "
        "phased, replay 0.20 -> 0.60 after 80%.\n"
    ) in text
    assert "2 of 2 phased blends lie below the constant frontier beyond the seed spread: " in text
    assert "after 80% (+0.1000 > spread 0.0057); phased, replay 0.20 -> 0.60 after 90%" in text
    assert "| phased, replay 0.20 -> 0.60 after 80% | 4.2510 ± 0.0014 | 4.8010 ± 0.0014 |" in text
    assert "| Velocitune, shipped defaults | 4.2610 ± 0.0014 | 4.9010 ± 0.0014 |" in text
    assert "| -0.0200 * | - |" in text  # the constant frontier beats no point on both axes
    # Against the phased frontier (one point: no line), the 80% blend beats it on both axes.
    assert (
        "| Velocitune, shipped defaults | - (outside its range) | phased, replay 0.20 -> 0.60 "
        "after 80% |"
    ) in text
    pareto_plot(str(tmp_path), s, methods, results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


class TestFrontier:
    FRONT = [point("a", 3.9, 5.2), point("b", 4.0, 5.0), point("c", 4.2, 4.8)]

    def test_spread_of_a_margin(self):
        # At 4.1 the line is at 4.9 with std 0.01; slope -1: 0.01 + 0.01 + 1 * 0.01.
        assert frontier_spread(point("vt", 4.1, 4.85), self.FRONT) == pytest.approx(0.03)
        assert frontier_spread(point("vt", 3.5, 5.0), self.FRONT) is None  # outside the range

    def test_pareto_efficient(self):
        pts = [*self.FRONT, point("d", 4.1, 5.1), point("e", 4.0, 5.0)]
        assert [p.name for p in pareto_efficient(pts)] == ["a", "b", "e", "c"]

    def test_dominated_beyond_the_spread_only(self):
        assert dominated_by(point("vt", 4.1, 5.1), self.FRONT) == "b"
        # Better than b on new, worse on replay: no frontier point beats it on both.
        assert dominated_by(point("vt", 4.05, 4.95), self.FRONT) is None
        # Behind b on both, but within the spread on replay (0.015 < 0.01 + 0.01).
        assert dominated_by(point("vt", 4.015, 5.1), self.FRONT) is None

    def test_margin_against_the_line(self):
        # At replay 4.1 the line (4.0, 5.0)-(4.2, 4.8) is at 4.9: 4.85 lies 0.05 below it.
        assert frontier_margin(point("vt", 4.1, 4.85), self.FRONT) == pytest.approx(0.05)
        assert frontier_margin(point("vt", 3.95, 5.2), self.FRONT) == pytest.approx(-0.1)
        assert frontier_margin(point("vt", 3.5, 5.0), self.FRONT) is None  # outside the range


@pytest.fixture
def base_dir(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "latest_checkpointed_iteration.txt").write_text("6")
    return str(base)


def argv(corpus, out, load, *extra, data=None, entry=None):
    data = list(corpus.prefixes) if data is None else data
    return [
        "--out",
        str(out),
        "--data-path",
        *data,
        "--load",
        load,
        "--replay-domain",
        "legal",
        "--train-iters",
        "8",
        *extra,
        "--",
        *(ENTRY + ["--tokenizer-model", corpus.tokenizer_path] if entry is None else entry),
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(data=["A"]), "--data-path A: a comparison needs two or more domains"),
        (dict(extra=("--methods", "doremi")), "--methods doremi: unknown method"),
        (
            dict(extra=("--reweight-from", "vt-tolerance", "--methods", "reweighted")),
            "--reweight-from vt-tolerance: not among --methods",
        ),
        (dict(extra=("--seeds", "1", "1")), "--seeds [1, 1]: repeated seed"),
        (dict(extra=("--methods", "cpt", "--frontier")), "--methods: nothing to compare"),
        (dict(entry=["--seq-length", "32"]), "need --global-batch-size"),
        (dict(entry=["--seed", "3"]), "--seed after '--'"),
        (dict(entry=[]), "no entry flags after '--'"),
        (dict(extra=("--tolerance", "-1")), "--tolerance '-1' must be finite and > 0"),
        (dict(extra=("--methods", "default-law-poly")), "--methods default-law-poly: unknown"),
        (dict(extra=("--annealing-from", "/no/base.jsonl")), "--annealing-from /no/base.jsonl"),
        (dict(extra=("--lr-schedule", "cosine:1e-3")), "--lr-schedule 'cosine:1e-3'"),
        (dict(extra=("--base-lr-schedule", "x:1:1:1:1")), "--base-lr-schedule 'x:1:1:1:1'"),
    ],
)
def test_one_line_errors(corpus, base_dir, tmp_path, capsys, change, message):
    data = change.get("data")
    if data is not None:
        data = [corpus.prefixes[0]] if data == ["A"] else data
        message = message.replace("A", corpus.prefixes[0], 1)
    args = argv(
        corpus,
        tmp_path / "out",
        base_dir,
        *change.get("extra", ()),
        data=data,
        entry=change.get("entry"),
    )
    assert compare.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("velocitune-compare: error:"), err
    assert message in err[0]


def test_missing_base_and_unknown_replay_domain(corpus, tmp_path, base_dir, capsys):
    args = argv(corpus, tmp_path / "o", str(tmp_path / "nobase"))
    assert compare.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--load {tmp_path / 'nobase'}: no base checkpoint" in err
    args = argv(corpus, tmp_path / "o", base_dir)
    args[args.index("legal")] = "web"
    assert compare.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--replay-domain web: not a domain" in err


def test_empty_method_list_is_refused_by_argparse(corpus, tmp_path, base_dir, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(argv(corpus, tmp_path / "o", base_dir, "--methods"))
    assert e.value.code == 2 and "--methods: expected at least one argument" in (
        capsys.readouterr().err
    )


def test_another_setting_in_the_same_out(corpus, tmp_path, base_dir, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "compare_setting.json").write_text(json.dumps({"train_iters": 99}))
    assert compare.main(argv(corpus, out, base_dir, "--report-only")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds runs of another setting" in err
    assert "'train_iters': (99, 8)" in err


def test_help():
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "compare_policies.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "usage: velocitune-compare" in res.stdout
    for flag in ("--frontier", "--replay-domain", "--methods", "--quick", "--load"):
        assert flag in res.stdout


# ----------------------------------------------------------------------------- a real run


def _train_base(corpus, base):
    cmd = (
        torchrun(sys.executable, 2)
        + ENTRY
        + [
            "--tokenizer-model",
            corpus.tokenizer_path,
            "--data-path",
            *corpus.prefixes,
            "--train-iters",
            "6",
            "--velocitune-policy",
            "static",
            "--velocitune-update-interval",
            "3",
            "--velocitune-eval-iters",
            "1",
            "--save",
            base,
        ]
    )
    run_command(cmd, os.path.join(os.path.dirname(base), "base.log"))


@pytest.mark.slow
def test_a_tiny_comparison_resumes_with_finished_runs_kept(corpus, tmp_path, capsys):
    base = str(tmp_path / "base")
    _train_base(corpus, base)
    out = tmp_path / "cmp"
    args = argv(
        corpus,
        out,
        base,
        "--methods",
        "vt-budget",
        "--frontier",
        "0.5",
        "--seeds",
        "1",
        "--update-interval",
        "2",
        "--cpt-eval-interval",
        "1",
        "--eval-iters",
        "1",
        "--min-weight",
        "0.05",
    )
    assert compare.main(args) == 0
    text = capsys.readouterr().out
    assert "| CPT (static) |" in text and "| Velocitune, budget |" in text
    assert "| static, replay 0.50 |" in text and "### Against the static frontier" in text
    table = json.loads((out / "table.json").read_text())
    assert set(table["pareto"]) == {"cpt", "vt-budget", "frontier-0.50"}
    # The frontier point's blend gives the replay domain its share, the rest in CPT's ratio.
    front = json.loads((out / "runs" / "frontier-0.50" / "seed1" / "result.json").read_text())
    legal = table["setting"]["prefixes"].index(
        next(p for p in table["setting"]["prefixes"] if p.endswith("legal"))
    )
    assert front["blend"][legal] == pytest.approx(0.5)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "weights_by_method.png").exists()
    header = read_traj(
        str(out / "runs" / "vt-budget" / "seed1" / "tb" / "velocitune_trajectory.jsonl")
    ).header
    assert header["rising_rule"] == "budget" and len(header["target_rules"]) == 3

    # Killed after CPT and the frontier: only the missing run runs again.
    kept = {
        k: os.path.getmtime(out / "runs" / k / "seed1" / "result.json")
        for k in ("cpt", "frontier-0.50")
    }
    os.remove(out / "runs" / "vt-budget" / "seed1" / "result.json")
    assert compare.main(args) == 0
    text = capsys.readouterr().out
    assert "run vt-budget seed 1" in text and "run cpt seed 1" not in text
    assert "run frontier-0.50" not in text
    for k, mtime in kept.items():
        assert os.path.getmtime(out / "runs" / k / "seed1" / "result.json") == mtime
