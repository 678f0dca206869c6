"""velocitune-plot-weights: figures written as PNG and SVG, panels, labels, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_velocitune.cli import plot_weights
from megatron_velocitune.core.trajectory import TrajectoryWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ["code", "math", "web"]


def write_run(path, policy="velocity", targets=True, skip_at=None, train_iters=600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    init, target = np.array([2.0, 1.8, 2.5]), np.array([1.5, 1.4, 2.3])
    w = np.array([0.5, 0.3, 0.2])
    writer = TrajectoryWriter(str(path))
    writer.write(
        dict(
            type="header",
            domains=DOMAINS,
            policy=policy,
            weights=w.tolist(),
            initial_loss=init.tolist(),
            target_loss=target.tolist() if targets else None,
            seq_length=8,
            global_batch_size=4,
            train_iters=train_iters,
            update_interval=100,
            prefixes=[f"/d/{d}" for d in DOMAINS],
        )
    )
    for it in range(100, 601, 100):
        loss = target + (init - target) * np.exp(-it / np.array([200.0, 400.0, 800.0]))
        vel = np.clip((loss - target) / (init - target), 0, 1)
        skipped = it == skip_at
        if skipped:
            loss = loss * np.nan
        elif policy == "velocity":
            w = w * np.exp(vel)
            w = w / w.sum()
        writer.write(
            dict(
                type="update",
                iteration=it,
                consumed_samples=it * 4,
                consumed_tokens=it * 32,
                domain_tokens=None,
                eval_loss=loss.tolist(),
                velocity=vel.tolist() if targets and not skipped else None,
                weights=w.tolist(),
                start_sample=it * 4,
                skipped=skipped,
            )
        )
    return str(path)


def _assert_figures(stem):
    png, svg = stem + ".png", stem + ".svg"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000
    with open(svg, encoding="utf-8") as f:
        text = f.read()
    assert "<svg" in text and len(text) > 5000
    return text


def test_two_runs_overlaid(tmp_path, capsys):
    vt = write_run(str(tmp_path / "vt" / "trajectory.jsonl"), skip_at=300)
    cpt = write_run(str(tmp_path / "cpt" / "trajectory.jsonl"), policy="static")
    out = tmp_path / "figs" / "weights.png"
    assert plot_weights.main([vt, cpt, "--output", str(out), "--labels", "Velocitune", "CPT"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "Velocitune:" in printed
    svg = _assert_figures(str(tmp_path / "figs" / "weights"))
    for text in ["Velocitune", "CPT", "code", "target loss", "velocity", "held-out loss"]:
        assert text in svg


def test_columns_panels_and_default_labels(tmp_path, capsys):
    a = write_run(str(tmp_path / "run-a" / "trajectory.jsonl"), targets=False)
    b = write_run(str(tmp_path / "run-b" / "trajectory.jsonl"), train_iters=1000)  # stopped early
    out = tmp_path / "cols"  # no extension: both added
    assert (
        plot_weights.main(
            [
                a,
                b,
                "-o",
                str(out),
                "--layout",
                "columns",
                "--panels",
                "weights,velocity",
                "--title",
                "t1",
            ]
        )
        == 0
    )
    svg = _assert_figures(str(out))
    assert "run-a" in svg and "run-b" in svg and "no velocity recorded" in svg
    assert "held-out loss" not in svg


def test_weight_steps(tmp_path):
    from megatron_velocitune.core.trajectory import read_trajectory

    # Planned 600 iterations, updates every 100 (the one at 300 skipped): the header's blend over
    # [0, 100), ..., the blend chosen at 600 (never trained) is the last point, at 600.
    t = read_trajectory(write_run(str(tmp_path / "a" / "t.jsonl"), skip_at=300))
    x, w = plot_weights.weight_steps(t)
    assert x.tolist() == [0, 100, 200, 400, 500, 600]
    np.testing.assert_allclose(w[0], [0.5, 0.3, 0.2])
    np.testing.assert_allclose(w[-1], t.updates[-1]["weights"])
    np.testing.assert_allclose(w[2], t.updates[1]["weights"])  # 200 holds through the skip
    assert w[1][0] < 0.5  # code, the fastest domain, lost weight at 100
    # A run that stopped before its planned end: to its last update.
    t = read_trajectory(write_run(str(tmp_path / "b" / "t.jsonl"), train_iters=2000))
    assert plot_weights.weight_steps(t)[0][-1] == 600


def test_output_paths():
    assert plot_weights.output_paths("x/w.png") == ["x/w.png", "x/w.svg"]
    assert plot_weights.output_paths("w.svg") == ["w.png", "w.svg"]
    assert plot_weights.output_paths("w.v2") == ["w.v2.png", "w.v2.svg"]


def test_errors(tmp_path, capsys):
    def err(argv):
        assert plot_weights.main(argv) == 2
        e = capsys.readouterr().err
        assert e.startswith("velocitune-plot-weights: error: ") and e.count("\n") == 1, e
        return e

    good = write_run(str(tmp_path / "r" / "trajectory.jsonl"))
    out = str(tmp_path / "o.png")
    assert "no such file" in err([str(tmp_path / "missing.jsonl"), "-o", out])
    (tmp_path / "notes.txt").write_text("not json\n")
    assert "not a JSON record" in err([str(tmp_path / "notes.txt"), "-o", out])
    (tmp_path / "no_header.jsonl").write_text('{"type": "update", "iteration": 3}\n')
    assert "no header record" in err([str(tmp_path / "no_header.jsonl"), "-o", out])
    (tmp_path / "bad.jsonl").write_text('{"type": "header", "domains": ["a"]}\n')
    assert "'weights'" in err([str(tmp_path / "bad.jsonl"), "-o", out])
    assert "is a directory" in err([str(tmp_path), "-o", out])
    assert "--panels" in err([good, "--panels", "weights,speed", "-o", out])
    assert "--labels" in err([good, "--labels", "a", "b", "-o", out])
    assert not os.path.exists(out)


def test_help_runs_as_a_script():
    # The checkout wrapper, as a user runs it without installing the package.
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "plot_weights.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "usage: velocitune-plot-weights" in res.stdout
    assert "--panels" in res.stdout and "--labels" in res.stdout


@pytest.mark.parametrize(
    "name", ["fit_target_loss", "fit_dcpt_law", "prepare_corpus", "plot_weights", "average_weights"]
)
def test_console_scripts_point_at_the_package(name):
    # setup.py's console_scripts must name importable modules (tools/ is not a package).
    import importlib
    import re

    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    targets = dict(re.findall(r'"(velocitune-[\w-]+)=([\w.]+:\w+)"', setup))
    assert f"megatron_velocitune.cli.{name}:main" in targets.values()
    for target in targets.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
