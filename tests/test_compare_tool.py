"""velocitune-compare: its error lines, its frontier maths, and a real tiny comparison that
resumes with its finished runs kept.
"""

import json
import os
import subprocess
import sys

import pytest

from megatron_velocitune.cli import compare_policies as compare
from megatron_velocitune.cli._common import ToolError
from megatron_velocitune.laws.comparison import ParetoPoint, Stat, dominated_by, frontier_margin

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
        m = compare.parse_method("vt-hold-initial-floor")
        assert (m.policy, m.rule, m.floor, m.dynamic) == ("velocity", "hold-initial", True, True)
        assert compare.parse_method("vt-budget").rule == "budget"
        assert compare.parse_method("dbl").rule == "budget"
        assert compare.parse_method("frontier-0.40").share == 0.4
        assert not compare.parse_method("reweighted").dynamic
        assert compare.parse_method("vt-tolerance").label("5%", 0.1) == "Velocitune, tolerance 5%"

    @pytest.mark.parametrize("key", ["vt-refuse", "doremi", "frontier-1.5", "frontier-x"])
    def test_unknown(self, key):
        with pytest.raises(ToolError, match=key):
            compare.parse_method(key)


class TestFrontier:
    FRONT = [point("a", 3.9, 5.2), point("b", 4.0, 5.0), point("c", 4.2, 4.8)]

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
        compare.torchrun(sys.executable, 2)
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
    compare.run_command(cmd, os.path.join(os.path.dirname(base), "base.log"))


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
    header = compare.read_traj(
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
