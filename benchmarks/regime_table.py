"""One table over regimes: each regime's CPT, a method's seed mean and every seed's point.

Reads the ``table.json`` that ``velocitune-compare`` (or ``benchmarks/compare_policies.py``)
wrote under each regime's ``--out`` and prints, per regime, the checks of the footing issue's
"Done when": no seed collapsed (behind its own seed's CPT on both axes by more than 0.01 nats),
the seed mean not dominated by the static frontier (CPT and the ``frontier-*`` points) beyond the
seed spread, and the mean new-domain gain as a share of CPT's (where CPT's gain is > 0.1 nats).

Usage::

    .venv/bin/python benchmarks/regime_table.py demo/realistic=/tmp/compare \\
        debian2/realistic=/tmp/d2-real --method default
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_velocitune.laws.comparison import (  # noqa: E402
    ParetoPoint,
    Stat,
    dominated_by,
    frontier_margin,
)

#: CPT's gain below which the 80%-of-CPT's-gain check does not apply (nats).
MIN_CPT_GAIN = 0.1


def _point(name: str, entry: dict) -> ParetoPoint:
    return ParetoPoint(name, Stat(**entry["replay"]), Stat(**entry["new"]))


def regime_row(name: str, table: dict, method: str) -> Optional[Dict[str, object]]:
    """The checks of one regime for ``method`` (None when it has no runs there).

    Args:
        name (str): the regime's name.
        table (dict): the regime's ``table.json``.
        method (str): the method's key (``default``).

    Returns:
        Optional[Dict[str, object]]: the row's values.
    """
    pareto = table["pareto"]
    if method not in pareto or "cpt" not in pareto:
        return None
    point = _point(method, pareto[method])
    frontier = [_point(k, v) for k, v in pareto.items() if k == "cpt" or k.startswith("frontier-")]
    cpt = {p["seed"]: p for p in table["per_seed"]["cpt"]}
    seeds = []
    for p in table["per_seed"][method]:
        ref = cpt.get(p["seed"])
        seeds.append(
            (
                p["seed"],
                p["replay"],
                p["new"],
                None if ref is None else p["replay"] - ref["replay"],
                None if ref is None else p["new"] - ref["new"],
                p["collapsed"],
            )
        )
    base = table["base_new_loss"]
    cpt_gain = base - pareto["cpt"]["new"]["mean"]
    gain = base - point.new.mean
    return {
        "regime": name,
        "cpt": _point("cpt", pareto["cpt"]),
        "point": point,
        "seeds": seeds,
        "collapsed": sum(s[-1] for s in seeds),
        "dominated": dominated_by(point, frontier),
        "margin": frontier_margin(point, frontier),
        "cpt_gain": cpt_gain,
        "gain_share": gain / cpt_gain if cpt_gain > 0 else float("nan"),
        "frontier_points": len(frontier),
    }


def render(rows: Sequence[Dict[str, object]], method: str) -> str:
    """The Markdown table."""
    out = [
        f"| regime | CPT replay / new | `{method}` replay / new (mean ± std) | each seed: "
        "replay / new (vs its CPT) | collapsed | dominated by frontier | vs frontier line | "
        "gain, share of CPT's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpt, p = r["cpt"], r["point"]
        seeds = "<br>".join(
            f"s{s}: {a:.3f} / {b:.3f} ({da:+.3f} / {db:+.3f}){' **collapsed**' if c else ''}"
            for s, a, b, da, db, c in r["seeds"]
        )
        margin = "-" if r["margin"] is None else f"{r['margin']:+.3f}"
        share = r["gain_share"]
        applies = r["cpt_gain"] > MIN_CPT_GAIN
        gain = (
            "-"
            if math.isnan(share)
            else f"{share:.0%}" + ("" if applies else f" (CPT gains {r['cpt_gain']:.3f}: n/a)")
        )
        out.append(
            f"| {r['regime']} | {cpt.replay.fmt(3)} / {cpt.new.fmt(3)} | {p.replay.fmt(3)} / "
            f"{p.new.fmt(3)} | {seeds} | {r['collapsed']}/{len(r['seeds'])} | "
            f"{r['dominated'] or 'no'} | {margin} | {gain} |"
        )
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table of the regimes given as NAME=OUT."""
    p = argparse.ArgumentParser(prog="regime_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("regimes", nargs="+", help="NAME=OUT: a regime's name and its --out folder.")
    p.add_argument("--method", default="default", help="The method to check (default: default).")
    args = p.parse_args(argv)
    rows: List[Dict[str, object]] = []
    for spec in args.regimes:
        name, sep, out = spec.partition("=")
        if not sep:
            p.error(f"{spec!r}: give NAME=OUT")
        path = os.path.join(out, "table.json")
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"{path}: {e}")
        row = regime_row(name, table, args.method)
        if row is None:
            print(f"{name}: no {args.method} or cpt runs in {path}", file=sys.stderr)
            continue
        rows.append(row)
    print(render(rows, args.method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
