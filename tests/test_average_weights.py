"""weight_history (the time-averaging maths) and velocitune-average-weights, on hand-computed
runs.
"""

import json
from decimal import Decimal

import numpy as np
import pytest

from megatron_velocitune.cli import average_weights
from megatron_velocitune.core.trajectory import TrajectoryWriter
from megatron_velocitune.core.weight_history import blend_spans, run_history, time_averaged_weights


# ------------------------------------------------------------------ the pure maths
def test_time_average_by_hand():
    # [0.5, 0.5] for 300 samples, [0.2, 0.8] for 600, [0.6, 0.4] for 100:
    # (150 + 120 + 60, 150 + 480 + 40) / 1000 = (0.33, 0.67).
    avg = time_averaged_weights([0.5, 0.5], [(300, [0.2, 0.8]), (900, [0.6, 0.4])], 1000)
    np.testing.assert_allclose(avg, [0.33, 0.67], atol=1e-15)


def test_spans_cover_the_run_exactly():
    spans = blend_spans([1, 3], [(0, [1, 1]), (40, [2, 2]), (40, [1, 4]), (100, [1, 0])], 100)
    # Normalised; an update at 0 replaces the header's blend; of two at 40 the last wins; one at
    # the end was never in force.
    assert [(s.start, s.end) for s in spans] == [(0, 40), (40, 100)]
    np.testing.assert_allclose(spans[0].weights, [0.5, 0.5])
    np.testing.assert_allclose(spans[1].weights, [0.2, 0.8])
    assert sum(s.length for s in spans) == 100
    np.testing.assert_allclose(time_averaged_weights([1, 3], [], 7), [0.25, 0.75])


@pytest.mark.parametrize(
    "updates, end, match",
    [
        ([(50, [0.5, 0.5]), (20, [0.5, 0.5])], 100, "before the previous"),
        ([(-1, [0.5, 0.5])], 100, "non-negative"),
        ([(10, [0.5, 0.3, 0.2])], 100, "expected 2 weights"),
        ([(10, [0.5, float("nan")])], 100, "finite"),
        ([], 0, "positive"),
    ],
)
def test_bad_histories(updates, end, match):
    with pytest.raises(ValueError, match=match):
        time_averaged_weights([0.5, 0.5], updates, end)


# ------------------------------------------------------------------ trajectories
GBS = 10
UPDATES = [  # iteration, weights, skipped
    (30, [0.2, 0.8], False),
    (60, [0.9, 0.1], True),  # a skipped update: its weights never applied
    (90, [0.6, 0.4], False),
]


def write_run(
    path,
    train_iters=100,
    updates=UPDATES,
    header_extra=None,
    weights=(0.5, 0.5),
    domains=("code", "web"),
):
    writer = TrajectoryWriter(str(path))
    header = dict(
        type="header",
        domains=list(domains),
        policy="velocity",
        weights=list(weights),
        initial_loss=None,
        target_loss=None,
        seq_length=8,
        global_batch_size=GBS,
        train_iters=train_iters,
        update_interval=30,
    )
    header.update(header_extra or {})
    writer.write(header)
    for it, w, skipped in updates:
        writer.write(
            dict(
                type="update",
                iteration=it,
                consumed_samples=it * GBS,
                consumed_tokens=it * GBS * 8,
                domain_tokens=None,
                eval_loss=[2.0] * len(w),
                velocity=None,
                weights=w,
                start_sample=it * GBS,
                skipped=skipped,
            )
        )
    return str(path)


def _blend(out):
    line = [ln for ln in out.splitlines() if ln.startswith("--data-path ")][-1]
    parts = line.split()[1:]
    return [Decimal(w) for w in parts[::2]], parts[1::2]


def test_completed_run(tmp_path, capsys):
    run = write_run(tmp_path / "t.jsonl")
    h = run_history(*_read(run))
    assert h.completed and h.end == 1000 and h.skipped == 1 and len(h.updates) == 2
    assert average_weights.main([run]) == 0
    out = capsys.readouterr().out
    assert "train_iters 100 x global_batch_size 10" in out and "reached its last update" in out
    assert "1 skipped" in out
    row = [ln.split() for ln in out.splitlines() if ln.startswith("code")][0]
    assert row == ["code", "0.500000", "0.600000", "0.330000"]
    weights, prefixes = _blend(out)
    assert weights == [Decimal("0.330000"), Decimal("0.670000")] and prefixes == ["code", "web"]


def test_iterations_unit_agrees_with_samples(tmp_path, capsys):
    run = write_run(tmp_path / "t.jsonl")
    assert average_weights.main([run, "--unit", "iterations"]) == 0
    out = capsys.readouterr().out
    assert "iterations 0 to 100 (train_iters 100)" in out
    assert _blend(out)[0] == [Decimal("0.330000"), Decimal("0.670000")]


def _read(path):
    from megatron_velocitune.core.trajectory import read_trajectory

    t = read_trajectory(path)
    return t.header, t.updates


def test_early_stopped_run(tmp_path, capsys):
    # Planned 200 iterations (last update due at 180), stopped after the update at 90:
    # (300 * 0.5 + 600 * 0.2) / 900 = 0.3; the blend chosen at 90 never trained.
    run = write_run(tmp_path / "t.jsonl", train_iters=200)
    h = run_history(*_read(run))
    assert not h.completed and h.end == 900
    assert average_weights.main([run]) == 0
    out = capsys.readouterr().out
    assert "stopped early (last update at iteration 90 of 200)" in out
    assert _blend(out)[0] == [Decimal("0.300000"), Decimal("0.700000")]
    # --end overrides: to 1000 samples is the completed run's average.
    assert average_weights.main([run, "--end", "1000"]) == 0
    assert _blend(capsys.readouterr().out)[0] == [Decimal("0.330000"), Decimal("0.670000")]


def test_no_plan_in_header_uses_last_update(tmp_path):
    run = write_run(tmp_path / "t.jsonl", header_extra=dict(train_iters=None))
    h = run_history(*_read(run))
    assert h.end == 900 and not h.completed and "no train_iters" in h.reason


def test_blend_string_sums_to_one_and_prefixes(tmp_path, capsys):
    third = [1 / 3] * 3
    run = write_run(
        tmp_path / "t.jsonl",
        weights=third,
        domains=("a", "b", "c"),
        updates=[(30, third, False)],
        header_extra=dict(prefixes=["/d/a_text", "/d/b_text", "/d/c_text"]),
    )
    out_json = tmp_path / "blend.json"
    assert average_weights.main([run, "--data-prefix", "b=/other/b", "--json", str(out_json)]) == 0
    weights, prefixes = _blend(capsys.readouterr().out)
    assert sum(weights) == 1 and all(len(str(w).split(".")[1]) == 6 for w in weights)
    assert prefixes == ["/d/a_text", "/other/b", "/d/c_text"]
    saved = json.loads(out_json.read_text())
    assert saved["prefixes"] == prefixes and abs(sum(saved["weights"]) - 1) < 1e-12


def test_several_runs_are_meaned(tmp_path, capsys):
    a = write_run(tmp_path / "a.jsonl")  # 0.33
    b = write_run(tmp_path / "b.jsonl", train_iters=200)  # 0.30
    assert average_weights.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "mean over 2 runs" in out
    assert _blend(out)[0] == [Decimal("0.315000"), Decimal("0.685000")]


def test_errors(tmp_path, capsys):
    def err(argv):
        assert average_weights.main(argv) == 2
        e = capsys.readouterr().err
        assert e.startswith("velocitune-average-weights: error: ") and e.count("\n") == 1
        return e

    assert "no such file" in err([str(tmp_path / "missing.jsonl")])
    (tmp_path / "x.jsonl").write_text('{"type": "update", "iteration": 1}\n')
    assert "no header record" in err([str(tmp_path / "x.jsonl")])
    (tmp_path / "y.txt").write_text("hello\n")
    assert "not a JSON record" in err([str(tmp_path / "y.txt")])
    run = write_run(tmp_path / "t.jsonl")
    assert "no domain 'math'" in err([run, "--data-prefix", "math=/d/math"])
    other = write_run(tmp_path / "o.jsonl", domains=("web", "code"))
    assert "differ" in err([run, other])
    never = write_run(tmp_path / "n.jsonl", train_iters=200, updates=[])
    assert "stopped before its first update" in err([never])
    assert f"--json {tmp_path}: is a directory" in err([run, "--json", str(tmp_path)])
    # A header naming a domain twice, an update without its iteration: the file, one line.
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"type": "header", "domains": ["a", "b", "a"], "weights": [0.3, 0.3, 0.4]}\n')
    assert "the header names domains ['a'] more than once" in err([str(twice)])
    headless = tmp_path / "noit.jsonl"
    header = '{"type": "header", "domains": ["a", "b"], "weights": [0.5, 0.5]}'
    headless.write_text(header + '\n{"type": "update", "weights": [0.5, 0.5]}\n')
    assert "an update record has no number 'iteration' (it has None)" in err([str(headless)])


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        average_weights.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: velocitune-average-weights" in out and "--data-prefix" in out
