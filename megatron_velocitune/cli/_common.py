"""Helpers shared by the trajectory tools: one-line errors and checked trajectory reading."""

import math
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from megatron_velocitune.core.errors import ToolError, VelocituneConfigError, VelocituneError
from megatron_velocitune.core.files import output_problem
from megatron_velocitune.core.trajectory import Trajectory, read_trajectory


def load_trajectory(path: str) -> Trajectory:
    """Read a trajectory and check the fields the tools use, raising :class:`ToolError`."""
    try:
        t = read_trajectory(path)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ToolError(f"{path}: is a directory, not a trajectory .jsonl file") from None
    except UnicodeDecodeError:
        raise ToolError(f"{path}: not a text file (is this a velocitune trajectory?)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToolError(f"cannot read trajectory {path!r}: {e}") from None
    h = t.header
    domains, weights = h.get("domains"), h.get("weights")
    if not isinstance(domains, list) or not domains:
        raise ToolError(f"{path}: the header has no 'domains' list (not a velocitune trajectory?)")
    if not isinstance(weights, list) or len(weights) != len(domains):
        raise ToolError(
            f"{path}: the header's 'weights' must give one weight per domain "
            f"{domains}, got {weights!r}"
        )
    if not t.updates and t.earlier_runs:
        # Not an error (a run that just started), but what is drawn or averaged is then the
        # header's blend alone, while the updates a user may expect belong to another run.
        print(
            f"note: {path}: the last run in the file (run_id {h.get('run_id')}) has no updates "
            f"yet; the file also holds {len(t.earlier_runs)} earlier run(s) "
            f"({', '.join(map(str, t.earlier_runs))}), which the tools do not read (one run per "
            "trajectory: give each run its own --velocitune-log-dir)",
            file=sys.stderr,
        )
    for u in t.updates:
        w = u.get("weights")
        if not isinstance(w, list) or len(w) != len(domains):
            raise ToolError(
                f"{path}: the update at iteration {u.get('iteration')} has "
                f"weights {w!r}, not one per domain {domains}"
            )
    return t


def read_trajectories(paths: Sequence[str]) -> List[Trajectory]:
    """Read trajectories as the fit tools do: an unreadable file is one :class:`ToolError`."""
    runs = []
    for path in paths:
        try:
            runs.append(read_trajectory(path))
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot read trajectory {path!r}: {e}") from None
    return runs


def read_initial_loss_file(path: str, names: Sequence[str]) -> List[Optional[float]]:
    """``--initial-loss-file``'s losses of ``names``; a bad file is one :class:`ToolError`."""
    from megatron_velocitune.core.arguments import read_loss_file

    try:
        return read_loss_file(path, names, "--initial-loss-file")
    except VelocituneConfigError as e:
        raise ToolError(str(e)) from None


def check_outputs(**flags: Optional[str]) -> None:
    """Refuse, before any work, an output flag (``output="x.json"`` is ``--output``) that names
    a folder or an unwritable place.

    Raises:
        ToolError: the first such flag, with its value and why.
    """
    for name, path in flags.items():
        problem = None if path is None else output_problem(path)
        if problem:
            raise ToolError(f"--{name.replace('_', '-')} {path}: {problem}")


def check_numbers(*checks: Tuple[str, Optional[float], Callable[[float], bool], str]) -> None:
    """Refuse, before any work, a number flag out of its range (NaN included).

    Args:
        *checks: ``(flag, value, ok, rule)``: the flag, its value (None: not given, not
            checked), the test of a finite value and the rule the error line states
            (``"finite and > 0"``).

    Raises:
        ToolError: the first value that is not finite or fails its test.
    """
    for flag, value, ok, rule in checks:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise ToolError(f"{flag} {value:g}: must be {rule}")


def load_trajectories(paths: Sequence[str]) -> List[Trajectory]:
    return [load_trajectory(p) for p in paths]


def run_tool(prog: str, run: Callable[[], int]) -> int:
    """Run ``run()``; a user error (:class:`VelocituneError`) is ``prog: error: ...``, status 2."""
    try:
        return run()
    except VelocituneError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def add_rising_rule_args(parser, what: str = "") -> None:
    """``--rising-domains``, ``--margin`` and ``--forgetting-tolerance``: the target of a domain
    whose prediction is not below its initial loss (the entry's ``--velocitune-rising-rule``).
    """
    from megatron_velocitune.core.arguments import tolerance_arg
    from megatron_velocitune.core.policy import (
        DEFAULT_RISING_RULE,
        DEFAULT_TARGET_MARGIN,
        RISING_RULES,
    )

    parser.add_argument(
        "--rising-domains",
        choices=RISING_RULES,
        default=DEFAULT_RISING_RULE,
        help=f"{what}What a domain whose predicted target is not below its initial loss gets: "
        "budget (keep the prediction of its rise at the budget as a forgetting budget; the "
        "default), budget-hold (the same target, the domain held at it), tolerance (initial + "
        "--forgetting-tolerance), hold-initial (initial * (1 - --margin): any forgetting then "
        "reads velocity 1) or refuse (an error). Run the entry with the same "
        "--velocitune-rising-rule.",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_TARGET_MARGIN,
        help="Relative margin of the hold-initial rule (default: %(default)s).",
    )
    parser.add_argument(
        "--forgetting-tolerance",
        type=tolerance_arg,
        default=None,
        help="The tolerance rule's forgetting budget: nats (0.05) or a share "
        "of the initial loss (2%%).",
    )


def check_rising_rule_args(args) -> None:
    """The one-line errors of :func:`add_rising_rule_args`'s flags."""
    if not 0.0 < args.margin < 1.0:
        raise ToolError(f"--margin {args.margin} must be in (0, 1)")
    if (args.rising_domains == "tolerance") != (args.forgetting_tolerance is not None):
        raise ToolError(
            f"--forgetting-tolerance {args.forgetting_tolerance} goes with, and only with, "
            f"--rising-domains tolerance (got --rising-domains {args.rising_domains})"
        )


def parse_name_value(flag: str, cast: Callable[[str], object] = str) -> Callable[[str], tuple]:
    """An argparse type for ``NAME=VALUE``, the value passed through ``cast``."""
    import argparse

    def parse(text: str) -> tuple:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected NAME=VALUE")
        try:
            return name, cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: bad value {value!r}") from None

    return parse


def optional_floats(values: Optional[Sequence]) -> Optional[List[float]]:
    """A list of floats with None (JSON null) as NaN; None stays None."""
    if values is None:
        return None
    return [float("nan") if v is None else float(v) for v in values]
