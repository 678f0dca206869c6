"""benchmarks/regime_table.py: the footing issue's checks per regime, on a synthetic table."""

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import regime_table  # noqa: E402


def _stat(mean, std=0.01):
    return {"mean": mean, "std": std, "n": 3}


def _table():
    seeds = {
        "cpt": [(1, 4.10, 4.70), (2, 4.09, 4.71), (3, 4.08, 4.72)],
        # Seed 2 ends behind its own CPT on both axes: collapsed.
        "default": [(1, 4.05, 4.69), (2, 4.12, 4.80), (3, 4.07, 4.70)],
    }
    per_seed = {
        k: [{"method": k, "seed": s, "replay": a, "new": b, "collapsed": False} for s, a, b in v]
        for k, v in seeds.items()
    }
    per_seed["default"][1]["collapsed"] = True
    return {
        "pareto": {
            "cpt": {"name": "cpt", "replay": _stat(4.09), "new": _stat(4.71)},
            "default": {"name": "default", "replay": _stat(4.08, 0.03), "new": _stat(4.73, 0.05)},
            "frontier-0.10": {"name": "f1", "replay": _stat(4.25), "new": _stat(4.61)},
            "frontier-0.70": {"name": "f7", "replay": _stat(3.95), "new": _stat(5.00)},
        },
        "per_seed": per_seed,
        "base_new_loss": 5.21,
    }


def test_row_counts_collapses_and_gain():
    row = regime_table.regime_row("demo/realistic", _table(), "default")
    assert row["collapsed"] == 1 and row["dominated"] is None
    assert row["gain_share"] == (5.21 - 4.73) / (5.21 - 4.71)
    seed2 = row["seeds"][1]
    assert seed2[0] == 2 and abs(seed2[3] - 0.03) < 1e-12 and abs(seed2[4] - 0.09) < 1e-12
    text = regime_table.render([row], "default")
    assert "s2: 4.120 / 4.800 (+0.030 / +0.090) **collapsed**" in text
    assert "| 1/3 |" in text and "96%" in text


def test_a_regime_without_the_method_is_skipped():
    table = _table()
    del table["pareto"]["default"]
    assert regime_table.regime_row("x", table, "default") is None
