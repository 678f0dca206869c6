"""The time-averaged domain weights of a run, as a table and a ready ``--data-path`` blend.

Each blend the run trained on counts for the number of training samples (``--unit samples``,
the default) or iterations it was in force: the header's weights from sample 0, each applied
update's from its ``start_sample`` (skipped updates change nothing), up to
``train_iters * global_batch_size`` when the run reached its last update, else up to the last
update's ``consumed_samples`` (the output says which; ``--end`` sets it). This is the blend of the
paper's Tables 9 and 10 and of its "reweighted static" ablation: train a static run on it.

Several trajectories (seeds of one setting) are averaged each, then their mean is the blend.

Example::

    velocitune-average-weights runs/velocitune/trajectory.jsonl \\
        --data-prefix code=data/code_text_document --data-prefix web=data/web_text_document
"""

import argparse
import sys
from typing import List, Optional, Sequence

import numpy as np

from megatron_velocitune.cli._common import (
    ToolError,
    check_outputs,
    load_trajectories,
    parse_name_value,
    run_tool,
)
from megatron_velocitune.core.files import write_json
from megatron_velocitune.core.weight_history import UNITS, run_history, time_averaged_weights
from megatron_velocitune.laws.dcpt_law import format_data_path

PROG = "velocitune-average-weights"
DIGITS = 6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time-averaged domain weights of a Velocitune (or any dynamic) run: a table "
        "and a --data-path blend for a static run on them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  velocitune-average-weights runs/vt/trajectory.jsonl "
        "--data-prefix code=data/code_text_document",
    )
    p.add_argument(
        "trajectories",
        nargs="+",
        help="JSONL trajectory file(s); several (seeds) are averaged each, then meaned.",
    )
    p.add_argument(
        "--unit",
        choices=UNITS,
        default="samples",
        help="Weight each blend by the samples (default) or iterations it was in force.",
    )
    p.add_argument(
        "--end",
        type=float,
        default=None,
        help="Average up to this position (in --unit) instead of the run's end.",
    )
    p.add_argument(
        "--data-prefix",
        type=parse_name_value("--data-prefix"),
        action="append",
        default=[],
        metavar="NAME=PREFIX",
        help="The data prefix of a domain in the blend string (repeat per domain; "
        "default: the header's prefixes, else the domain names).",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="Also write the domains, the weights and the blend string as JSON here.",
    )
    return p


def _fmt(w: np.ndarray) -> List[str]:
    return [f"{x:.{DIGITS}f}" for x in w]


def run(args: argparse.Namespace) -> int:
    if args.end is not None and not args.end > 0:
        raise ToolError(f"--end {args.end:g} must be positive")
    check_outputs(json=args.json)
    trajectories = load_trajectories(args.trajectories)
    domains = trajectories[0].domains
    for path, t in zip(args.trajectories[1:], trajectories[1:]):
        if t.domains != domains:
            raise ToolError(
                f"{path}: domains {t.domains} differ from {args.trajectories[0]}'s {domains}"
            )

    averages = []
    width = max(12, max(len(d) for d in domains) + 2)
    for path, t in zip(args.trajectories, trajectories):
        try:
            h = run_history(t.header, t.updates, args.unit, args.end)
        except ValueError as e:
            raise ToolError(f"{path}: {e}") from None
        if h.end is None:
            raise ToolError(f"{path}: {h.reason}; pass --end")
        try:
            avg = time_averaged_weights(h.initial, h.updates, h.end)
        except ValueError as e:
            raise ToolError(f"{path}: {e}") from None
        averages.append(avg)
        print(
            f"{path}: policy {t.header.get('policy', '?')}, {len(h.updates)} update(s) applied, "
            f"{h.skipped} skipped"
        )
        print(f"averaged over {h.reason}")
        print(f"{'domain':<{width}}{'initial':>10}{'final':>10}{'time-avg':>10}")
        for row in zip(domains, _fmt(h.initial), _fmt(h.final), _fmt(avg)):
            print(f"{row[0]:<{width}}{row[1]:>10}{row[2]:>10}{row[3]:>10}")
        print()

    blend = np.mean(averages, axis=0)
    blend = blend / blend.sum()
    if len(averages) > 1:
        spread = np.std(averages, axis=0)
        print(f"mean over {len(averages)} runs")
        print(f"{'domain':<{width}}{'time-avg':>10}{'std':>10}")
        for d, w, s in zip(domains, _fmt(blend), _fmt(spread)):
            print(f"{d:<{width}}{w:>10}{s:>10}")
        print()

    prefixes = list(domains)
    header_prefixes = trajectories[0].header.get("prefixes")
    if isinstance(header_prefixes, list) and len(header_prefixes) == len(domains):
        prefixes = [str(p) for p in header_prefixes]
    for name, prefix in args.data_prefix:
        if name not in domains:
            raise ToolError(
                f"--data-prefix {name}={prefix}: no domain {name!r} (domains: {domains})"
            )
        prefixes[domains.index(name)] = prefix
    try:
        data_path = format_data_path(prefixes, blend, digits=DIGITS)
    except ValueError as e:
        raise ToolError(f"cannot write the blend: {e}") from None
    print(f"--data-path {data_path}")
    if args.json:
        payload = {
            "domains": domains,
            "prefixes": prefixes,
            "weights": [float(x) for x in data_path.split()[::2]],
            "per_run": [a.tolist() for a in averages],
            "unit": args.unit,
            "trajectories": list(args.trajectories),
            "data_path": data_path,
        }
        write_json(args.json, payload, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
