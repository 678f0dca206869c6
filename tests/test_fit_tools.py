"""velocitune-fit-targets and velocitune-fit-dcpt (megatron_velocitune.cli) end to end on
synthetic trajectories.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_velocitune.cli import fit_dcpt_law, fit_target_loss
from megatron_velocitune.core.arguments import add_velocitune_args, config_from_args, read_loss_file
from megatron_velocitune.core.trajectory import TrajectoryWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GBS, SEQ = 16, 256


def write_run(
    path,
    domains,
    weights,
    curves,
    iters=1000,
    every=50,
    noise=5e-4,
    seed=0,
    initial=None,
    header_budget=True,
    start=None,
):
    """A static run's trajectory: ``curves[i](tokens)`` is domain i's loss."""
    rng = np.random.default_rng(seed)
    writer = TrajectoryWriter(str(path))
    header = dict(
        type="header",
        domains=domains,
        policy="static",
        weights=weights,
        initial_loss=initial,
        target_loss=None,
        update_interval=every,
    )
    if header_budget:
        header.update(seq_length=SEQ, global_batch_size=GBS, train_iters=iters)
    writer.write(header)
    for it in range(every, iters + 1, every):
        tokens = it * GBS * SEQ
        w = weights if start is None or it < start[0] else start[1]
        writer.write(
            dict(
                type="update",
                iteration=it,
                consumed_samples=it * GBS,
                consumed_tokens=tokens,
                domain_tokens=[tokens * x for x in weights],
                eval_loss=[float(c(tokens) * np.exp(rng.normal(0, noise))) for c in curves],
                velocity=None,
                weights=w,
                start_sample=it * GBS,
                skipped=False,
            )
        )
    return str(path)


CODE = (1.6, 40.0, 0.3)
MATH = (1.9, 25.0, 0.28)


def chin(e, b, beta):
    return lambda d: e + b * d ** (-beta)


def rising(d):
    return 3.0 + 0.2 * d / 4e6  # a replay domain that forgets


@pytest.fixture
def proxy(tmp_path):
    return write_run(
        tmp_path / "proxy.jsonl",
        ["code", "math", "web"],
        [0.4, 0.4, 0.2],
        [chin(*CODE), chin(*MATH), rising],
        initial=[4.0, 3.5, 3.0],
    )


# --------------------------------------------------------------------------- fit_target_loss


def test_fit_targets_hold_initial_end_to_end(tmp_path, proxy, capsys):
    out, png = tmp_path / "targets.json", tmp_path / "fit.png"
    rc = fit_target_loss.main(
        [proxy, "-o", str(out), "--plot", str(png), "--rising-domains", "hold-initial"]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "budget 4.096e+06 tokens" in text and "mean held-out absolute error" in text
    assert "hold-initial" in text
    targets = read_loss_file(str(out), ["code", "math", "web"], "test")
    budget = 1000 * GBS * SEQ
    assert targets[0] == pytest.approx(chin(*CODE)(budget), abs=5e-3)
    assert targets[1] == pytest.approx(chin(*MATH)(budget), abs=5e-3)
    assert targets[2] == pytest.approx(3.0 * 0.99)
    meta = json.loads(out.read_text())
    assert meta["fits"]["web"]["rule_applied"] and not meta["fits"]["code"]["rule_applied"]
    assert meta["fits"]["code"]["held_out_points"] == 10 and meta["fit_fraction"] == 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The file feeds --velocitune-target-loss-file and passes the target < initial check.
    parser = add_velocitune_args(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--velocitune-target-loss-file",
            str(out),
            "--velocitune-initial-loss",
            "4.0",
            "3.5",
            "3.0",
            "--velocitune-domain-names",
            "code",
            "math",
            "web",
        ]
    )
    config_from_args(args).validate(3, [0.4, 0.4, 0.2])


def test_fit_targets_refuse_rejects_a_rising_domain(tmp_path, proxy, capsys):
    out = tmp_path / "targets.json"
    assert fit_target_loss.main([proxy, "-o", str(out), "--rising-domains", "refuse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'web'" in err[0] and "not below the initial loss" in err[0]
    assert "--rising-domains" in err[0] and "rule refuse" in err[0]
    assert not out.exists()


def test_fit_targets_budget_keeps_the_rise_by_default(tmp_path, capsys):
    # A replay domain that forgets and levels off: 3.0 + 0.3 * (1 - (D / 1e5)^-0.3).
    def forgets(d):
        return 3.3 - 0.3 * (d / 1e5) ** -0.3

    proxy = write_run(
        tmp_path / "proxy.jsonl",
        ["code", "web"],
        [0.8, 0.2],
        [chin(*CODE), forgets],
        initial=[4.0, 3.0],
    )
    out = tmp_path / "targets.json"
    assert fit_target_loss.main([proxy, "-o", str(out)]) == 0
    assert "kept as a forgetting budget" in capsys.readouterr().out  # budget-hold's target
    meta = json.loads(out.read_text())
    budget = 1000 * GBS * SEQ
    # The mirrored law extrapolates the rise: the budget is what the proxy forgets by the end.
    assert meta["losses"]["web"] == pytest.approx(forgets(budget), abs=5e-3)
    assert meta["losses"]["web"] > 3.0 and meta["fits"]["web"]["B"] < 0
    assert meta["rules"] == {"code": "progress", "web": "budget-hold"}
    assert meta["rising_domains"] == "budget-hold"


def test_fit_targets_tolerance_rule(tmp_path, proxy):
    out = tmp_path / "targets.json"
    argv = [proxy, "-o", str(out), "--rising-domains", "tolerance"]
    assert fit_target_loss.main([*argv, "--forgetting-tolerance", "2%"]) == 0
    meta = json.loads(out.read_text())
    assert meta["losses"]["web"] == pytest.approx(3.0 * 1.02)
    assert meta["rules"]["web"] == "tolerance" and meta["forgetting_tolerance"] == "2%"


def test_fit_targets_subset_pooling_fraction_and_budget(tmp_path, proxy, capsys):
    second = write_run(
        tmp_path / "seed1.jsonl",
        ["web", "code", "math"],
        [0.2, 0.4, 0.4],
        [rising, chin(*CODE), chin(*MATH)],
        seed=1,
    )
    out = tmp_path / "t.json"
    rc = fit_target_loss.main(
        [
            proxy,
            second,
            "--domains",
            "code",
            "math",
            "-o",
            str(out),
            "--fit-fraction",
            "1.0",
            "--budget-tokens",
            "8e6",
        ]
    )
    assert rc == 0
    meta = json.loads(out.read_text())
    assert list(meta["losses"]) == ["code", "math"] and meta["budget_tokens"] == 8e6
    assert meta["fits"]["code"]["held_out_points"] == 0  # everything fitted
    assert meta["losses"]["code"] == pytest.approx(chin(*CODE)(8e6), abs=5e-3)
    assert "40/0" in capsys.readouterr().out  # both files' 20 points pooled


def test_fit_targets_initial_loss_file_overrides_header(tmp_path, proxy, capsys):
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"losses": {"code": 1.9, "math": 3.5, "web": 3.5}}))
    # code's target (~2.02) is now above its initial loss 1.9: refused; web passes (3.06 < 3.5).
    rc = fit_target_loss.main(
        [proxy, "--initial-loss-file", str(init), "--rising-domains", "refuse"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "'code'" in err and "'web'" not in err


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--fit-fraction", "0.1"], "need at least 4 points"),
        (["--fit-fraction", "1.5"], "--fit-fraction"),
        (["--margin", "0"], "--margin"),
        (["--rising-domains", "tolerance"], "--forgetting-tolerance None goes with"),
        (["--forgetting-tolerance", "0.1"], "goes with, and only with, --rising-domains"),
        (["--domains", "stack"], "no domains ['stack']"),
        (["--min-tokens", "1.7e6"], "need at least 4 points"),
    ],
)
def test_fit_targets_one_line_errors(proxy, capsys, argv_tail, message):
    assert fit_target_loss.main([proxy, *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("velocitune-fit-targets")


def test_fit_targets_missing_budget_and_bad_files(tmp_path, capsys):
    nob = write_run(tmp_path / "nob.jsonl", ["a"], [1.0], [chin(*CODE)], header_budget=False)
    assert fit_target_loss.main([nob]) == 2
    assert "--budget-tokens" in capsys.readouterr().err
    assert fit_target_loss.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read trajectory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "update", "iteration": 1}\n')
    assert fit_target_loss.main([str(bad)]) == 2
    assert "no header record" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fit_dcpt_law


def dcpt(E, B, eta, beta, C, gamma, eps=0.01):
    return lambda d, r: E + B * r**eta / d**beta + C / (r + eps) ** gamma


CODE_LAW = dcpt(1.5, 300.0, 0.4, 0.35, 0.25, 0.5)
MATH_LAW = dcpt(1.2, 100.0, 0.2, 0.3, 0.1, 0.4)
WEB_LAW = dcpt(2.4, 50.0, 0.3, 0.3, 0.08, 0.6)


@pytest.fixture
def two_domain_runs(tmp_path):
    paths = []
    for i, r in enumerate([0.2, 0.4, 0.6, 0.8, 0.5]):
        paths.append(
            write_run(
                tmp_path / f"r{i}.jsonl",
                ["code", "web"],
                [r, 1 - r],
                [lambda d, r=r: CODE_LAW(d, r), lambda d, r=r: WEB_LAW(d, 1 - r)],
                iters=1000,
                every=100,
                seed=i,
                initial=[3.5, 2.75],
            )
        )
    return paths


def test_fit_dcpt_two_domains_end_to_end(tmp_path, two_domain_runs, capsys):
    out, png = tmp_path / "dcpt.json", tmp_path / "dcpt.png"
    rc = fit_dcpt_law.main(
        [
            *two_domain_runs,
            "--replay",
            "web",
            "--budget-tokens",
            "1e9",
            "--data-prefix",
            "code=data/code_text_document",
            "--domain-tokens",
            "code=1e8",
            "--rising-domains",
            "hold-initial",
            "-o",
            str(out),
            "--plot",
            str(png),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "left-out run:" in text and "r4.jsonl" in text
    line = next(x for x in text.splitlines() if x.startswith("--data-path "))
    parts = line.split()[1:]
    assert parts[1::2] == ["data/code_text_document", "web"]
    assert sum(float(w) for w in parts[0::2]) == pytest.approx(1.0)
    # Ground truth: the largest code share whose web loss stays within 1% of 2.75.
    grid = np.linspace(0.001, 0.999, 999)
    feasible = grid[WEB_LAW(1e9, 1 - grid) <= 2.75 * 1.01]
    assert float(parts[0]) == pytest.approx(feasible.max(), abs=0.03)
    assert "data-limited code" in text and "predicted loss over D" in text
    # R^2 and left-out error columns: the left-out run is predicted within 1e-2.
    row = next(x for x in text.splitlines() if x.startswith("code "))
    assert float(row.split()[7]) > 0.999 and float(row.split()[9]) < 1e-2
    meta = json.loads(out.read_text())
    assert meta["losses"]["web"] == pytest.approx(2.75 * 0.99)
    assert meta["blend"]["code"] == pytest.approx(float(parts[0]), abs=1e-3)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_fit_dcpt_given_blend_sets_the_targets(tmp_path, two_domain_runs, capsys):
    out = tmp_path / "given.json"
    rc = fit_dcpt_law.main(
        [
            *two_domain_runs,
            "--replay",
            "web",
            "--budget-tokens",
            "1e9",
            "--blend",
            "code=3",
            "--blend",
            "web=1",
            "-o",
            str(out),
        ]
    )
    assert rc == 0 and "using --blend 0.7500 code 0.2500 web" in capsys.readouterr().out
    meta = json.loads(out.read_text())
    assert meta["blend"] == {"code": 0.75, "web": 0.25}
    # web at a 25% share stays below its initial loss here, so no rule is needed; the targets
    # are the law's predictions, close to the true law's.
    assert meta["losses"]["code"] == pytest.approx(CODE_LAW(1e9, 0.75), rel=0.01)
    assert meta["losses"]["web"] == pytest.approx(WEB_LAW(1e9, 0.25), rel=0.01)


def test_fit_dcpt_fit_fraction_extrapolates_in_D(tmp_path, two_domain_runs, capsys):
    # Fitted on the first half of every run only, the law still predicts the full-budget
    # losses (the left-out run is scored on all its evaluations, the second half included).
    budget = 1000 * GBS * SEQ
    out = tmp_path / "half.json"
    rc = fit_dcpt_law.main(
        [
            *two_domain_runs,
            "--replay",
            "web",
            "--fit-fraction",
            "0.5",
            "--blend",
            "code=0.3",
            "--blend",
            "web=0.7",
            "--rising-domains",
            "hold-initial",
            "-o",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and f"fit on points <= {budget / 2:.6g} tokens (0.5)" in text
    row = next(x for x in text.splitlines() if x.startswith("code "))
    assert float(row.split()[9]) < 1e-2 and float(row.split()[10]) < 2e-2
    meta = json.loads(out.read_text())
    assert meta["fit_fraction"] == 0.5
    assert meta["losses"]["code"] == pytest.approx(CODE_LAW(budget, 0.3), rel=0.01)


def test_fit_dcpt_three_domains_blend(tmp_path, capsys):
    blends = [(0.3, 0.3, 0.4), (0.5, 0.2, 0.3), (0.2, 0.6, 0.2), (0.6, 0.3, 0.1), (0.1, 0.2, 0.7)]
    paths = [
        write_run(
            tmp_path / f"b{i}.jsonl",
            ["code", "math", "web"],
            list(w),
            [
                lambda d, r=w[0]: CODE_LAW(d, r),
                lambda d, r=w[1]: MATH_LAW(d, r),
                lambda d, r=w[2]: WEB_LAW(d, r),
            ],
            iters=600,
            every=100,
            seed=i,
            initial=[3.5, 2.8, 2.75],
        )
        for i, w in enumerate(blends)
    ]
    rc = fit_dcpt_law.main([*paths, "--replay", "web", "--budget-tokens", "1e9"])
    text = capsys.readouterr().out
    assert rc == 0 and "blend minimising the mean relative loss" in text
    parts = next(x for x in text.splitlines() if x.startswith("--data-path ")).split()[1:]
    assert parts[1::2] == ["code", "math", "web"]
    w = [float(v) for v in parts[0::2]]
    assert sum(w) == pytest.approx(1.0) and min(w) >= 0.01
    assert WEB_LAW(1e9, w[2]) <= 2.75 * 1.01 + 2e-3  # the replay constraint holds (true law)


def test_fit_dcpt_failed_left_out_refit_skips_the_validation(tmp_path, capsys):
    # Three runs of five evaluations: 15 points fit the law (12+ needed), the two runs left
    # for the validation refit only 10; the refit fails and the tool skips the left-out
    # error with a note instead of stopping.
    paths = [
        write_run(
            tmp_path / f"short{i}.jsonl",
            ["code", "web"],
            [r, 1 - r],
            [lambda d, r=r: CODE_LAW(d, r), lambda d, r=r: WEB_LAW(d, 1 - r)],
            iters=500,
            every=100,
            seed=i,
            initial=[3.5, 2.75],
        )
        for i, r in enumerate([0.2, 0.5, 0.8])
    ]
    rc = fit_dcpt_law.main([*paths, "--replay", "web", "--budget-tokens", "1e9"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    notes = [x for x in captured.out.splitlines() if x.startswith("note: domain")]
    assert len(notes) == 2 and all("no left-out error" in x for x in notes)
    row = next(x for x in captured.out.splitlines() if x.startswith("code "))
    assert row.split()[-2:] == ["-", "-"]
    assert "--data-path " in captured.out


def test_fit_dcpt_errors(tmp_path, two_domain_runs, capsys):
    def err(argv):
        assert fit_dcpt_law.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("velocitune-fit-dcpt: error:")
        return lines[0]

    assert "2 or more blends" in err([two_domain_runs[0], two_domain_runs[0]])
    assert "not domains" in err([*two_domain_runs, "--replay", "stack"])
    moving = write_run(
        tmp_path / "moving.jsonl",
        ["code", "web"],
        [0.5, 0.5],
        [lambda d: CODE_LAW(d, 0.5), lambda d: WEB_LAW(d, 0.5)],
        start=(300, [0.6, 0.4]),
    )
    assert "needs static runs" in err([*two_domain_runs[:2], moving])
    # The replay target is above the initial loss (the tolerance lets it rise): refused.
    assert "--blend needs" in err([*two_domain_runs, "--blend", "code=1"])
    assert "--fit-fraction 0.0 must be in (0, 1]" in err([*two_domain_runs, "--fit-fraction", "0"])
    # Numbers out of range (NaN too) and outputs that cannot be written: before any work.
    for flags, message in (
        (["--tolerance", "nan"], "--tolerance nan: must be finite and >= 0"),
        (["--budget-tokens", "0"], "--budget-tokens 0: must be finite and > 0"),
        (["--budget-tokens", "-5"], "--budget-tokens -5: must be finite and > 0"),
        (["--min-weight", "0.5"], "--min-weight 0.5: must be below 1/2 with 2 domains"),
        (["--output", str(tmp_path)], f"--output {tmp_path}: is a directory"),
    ):
        assert message in err([*two_domain_runs, *flags])
    assert "not below the initial loss" in err(
        [
            *two_domain_runs,
            "--replay",
            "web",
            "--budget-tokens",
            "1e9",
            "--rising-domains",
            "refuse",
            "-o",
            str(tmp_path / "x.json"),
        ]
    )
    assert not (tmp_path / "x.json").exists()


def test_help_runs_as_a_script():
    # One subprocess (a standalone checkout run: the tool finds the package itself); the other
    # tool's --help in process, to keep the suite fast.
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "fit_target_loss.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "usage: velocitune-fit-targets" in res.stdout
    assert "--rising-domains" in res.stdout


def test_dcpt_help(capsys):
    with pytest.raises(SystemExit) as e:
        fit_dcpt_law.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: velocitune-fit-dcpt" in out and "--data-prefix" in out
