"""Pure maths of the policy comparison (``velocitune-compare``): no processes, no files.

* :func:`stabilisation_iteration` - when a run's weights stop moving.
* :func:`replay_share_blend` - a static blend with a given replay share, the new domains split
  in their token-proportional ratio.
* :func:`summarise_method` / :func:`render_table` - mean and spread over seeds, the one table.
* :func:`format_loss_table` / :func:`parse_final_losses` - the end-of-run loss table that
  ``examples/pretrain_gpt.py`` prints, and its reader (one home for its layout);
  :func:`diverged_loss_warning` - the warning of a loss far above a uniform guess's.
* :class:`ParetoPoint`, :func:`dominated_by`, :func:`frontier_margin` - a method against the
  static frontier (replay-domain loss vs mean new-domain loss, both lower is better).
* :class:`SeedPoint`, :func:`seed_points`, :func:`collapse_of`, :func:`find_collapses`,
  :func:`render_seed_table` - each seed's point in that plane, and the runs that ended behind
  the same seed's CPT run on both axes (:data:`COLLAPSE_TOLERANCE`).
* :func:`fixed_share_blend` - a blend with given shares for some domains, the others splitting
  the rest in their token ratio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "COLLAPSE_TOLERANCE",
    "STABLE_TOLERANCE",
    "Collapse",
    "MethodRuns",
    "MethodSummary",
    "ParetoPoint",
    "SeedPoint",
    "DIVERGED_MULTIPLE",
    "collapse_of",
    "diverged_loss_warning",
    "dominated_by",
    "find_collapses",
    "fixed_share_blend",
    "format_loss_table",
    "frontier_margin",
    "frontier_spread",
    "pareto_efficient",
    "Stat",
    "is_real_difference",
    "mean_std",
    "parse_final_losses",
    "parse_loop_time",
    "render_mae_table",
    "render_seed_table",
    "render_table",
    "replay_share_blend",
    "seed_points",
    "stabilisation_iteration",
    "summarise_method",
]

#: A run's weights are stable once no later update moves any weight by more than this (absolute).
STABLE_TOLERANCE = 0.01

#: A run has collapsed when it ends behind the same seed's CPT run by more than this many nats on
#: both axes of the Pareto plane (replay-domain loss and mean new-domain loss).
COLLAPSE_TOLERANCE = 0.01


def stabilisation_iteration(
    iterations: Sequence[int],
    weights: Sequence[Sequence[float]],
    initial: Sequence[float],
    tolerance: float = STABLE_TOLERANCE,
) -> Optional[int]:
    """The iteration after which no update moves any domain weight by more than ``tolerance``.

    With ``w_0`` the starting blend and ``w_k`` the blend chosen at update ``k`` (at iteration
    ``t_k``), the change of update ``k`` is ``max_i |w_k[i] - w_{k-1}[i]|``. The weights are
    stable from the last update whose change exceeds ``tolerance``: the result is that update's
    iteration, 0 when no update ever exceeds it (a static run), and None when the run's last
    update still exceeds it (never stable within the run).

    Args:
        iterations (Sequence[int]): iteration of each applied update, increasing.
        weights (Sequence[Sequence[float]]): the blend chosen at each update.
        initial (Sequence[float]): the blend before the first update.
        tolerance (float): largest absolute per-domain move counted as "not moving".

    Returns:
        Optional[int]: the stabilisation iteration, or None.
    """
    if len(iterations) != len(weights):
        raise ValueError(f"{len(iterations)} iterations but {len(weights)} weight vectors")
    if not weights:
        return 0
    w = np.vstack([np.asarray(initial, np.float64)] + [np.asarray(x, np.float64) for x in weights])
    change = np.abs(np.diff(w, axis=0)).max(axis=1)
    moving = np.flatnonzero(change > tolerance)
    if moving.size == 0:
        return 0
    last = int(moving[-1])
    if last == len(iterations) - 1:
        return None
    return int(iterations[last])


def replay_share_blend(
    tokens: Sequence[float], replay: Sequence[int], replay_share: float
) -> np.ndarray:
    """A static blend whose replay domains get ``replay_share`` in all.

    The replay domains split ``replay_share`` in their token-proportional ratio, the other
    (new) domains split ``1 - replay_share`` in theirs. With one replay domain and
    ``replay_share`` = Velocitune's time-averaged replay weight, this blend differs from CPT
    only in how much replay it has, not in changing over time.

    Args:
        tokens (Sequence[float]): each domain's token count (the CPT blend's basis).
        replay (Sequence[int]): indices of the replay domains.
        replay_share (float): total weight of the replay domains, in (0, 1).

    Returns:
        np.ndarray: the blend, summing to 1.
    """
    t = np.asarray(tokens, np.float64)
    if t.ndim != 1 or t.size < 2 or np.any(t <= 0):
        raise ValueError(f"tokens must be >= 2 positive counts, got {list(tokens)}")
    if not 0.0 < replay_share < 1.0:
        raise ValueError(f"replay share {replay_share} must be in (0, 1)")
    is_replay = np.zeros(t.size, bool)
    is_replay[list(replay)] = True
    if not is_replay.any() or is_replay.all():
        raise ValueError(f"replay indices {list(replay)} must name some but not all domains")
    out = np.empty_like(t)
    out[is_replay] = replay_share * t[is_replay] / t[is_replay].sum()
    out[~is_replay] = (1.0 - replay_share) * t[~is_replay] / t[~is_replay].sum()
    return out / out.sum()


def fixed_share_blend(tokens: Sequence[float], shares: Dict[int, float]) -> np.ndarray:
    """A static blend in which some domains get a fixed share each, the others splitting the
    rest in their token-proportional ratio.

    ``{replay: g}`` is :func:`replay_share_blend` with one replay domain; ``{replay: 0.5,
    first_new: 0.4}`` gives the other domains 0.1 in all.

    Args:
        tokens (Sequence[float]): each domain's token count.
        shares (Dict[int, float]): domain index -> its share, each > 0, in all < 1.

    Returns:
        np.ndarray: the blend, summing to 1.

    Raises:
        ValueError: bad counts, an index out of range, a share not in (0, 1), shares summing to
            1 or more, or no domain left to split the rest.
    """
    t = np.asarray(tokens, np.float64)
    if t.ndim != 1 or t.size < 2 or np.any(t <= 0):
        raise ValueError(f"tokens must be >= 2 positive counts, got {list(tokens)}")
    if not shares:
        raise ValueError("no fixed shares given")
    for i, g in shares.items():
        if not 0 <= i < t.size:
            raise ValueError(f"domain index {i} out of range for {t.size} domains")
        if not 0.0 < g < 1.0:
            raise ValueError(f"share {g} of domain {i} must be in (0, 1)")
    fixed = float(sum(shares.values()))
    rest = np.ones(t.size, bool)
    rest[list(shares)] = False
    if fixed >= 1.0 or not rest.any():
        raise ValueError(f"fixed shares {shares} must sum below 1 and leave a domain for the rest")
    out = np.zeros_like(t)
    for i, g in shares.items():
        out[i] = g
    out[rest] = (1.0 - fixed) * t[rest] / t[rest].sum()
    return out / out.sum()


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; nan for one value) over seeds."""

    mean: float
    std: float
    n: int

    def fmt(self, digits: int = 4) -> str:
        """``mean ± std`` (just the mean for one seed)."""
        if math.isnan(self.mean):
            return "-"
        if self.n < 2 or math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Sequence[float]) -> Stat:
    """:class:`Stat` of ``values`` (nan values are dropped)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if v.size == 0:
        return Stat(float("nan"), float("nan"), 0)
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return Stat(float(v.mean()), std, int(v.size))


def is_real_difference(a: Stat, b: Stat) -> bool:
    """True when ``|a.mean - b.mean|`` exceeds the seed spread ``a.std + b.std``.

    Two runs' mean ± std intervals then do not overlap. With fewer than two seeds on either
    side there is no spread, and no difference is called real.
    """
    if a.n < 2 or b.n < 2:
        return False
    return abs(a.mean - b.mean) > a.std + b.std


@dataclass
class MethodRuns:
    """One method's finished runs (one entry per seed, same order everywhere).

    Attributes:
        name (str): the method's label in the table.
        final_loss (List[List[float]]): per seed, each domain's final held-out loss.
        stable_at (List[Optional[int]]): per seed, :func:`stabilisation_iteration`.
        wall_s (List[float]): per seed, the run's wall time in seconds.
        dynamic (bool): the policy changes weights (stabilisation is meaningful).
        cpu_ms (List[float]): per seed, the training loop's CPU time per iteration (ms) of the
            last rank (evaluations inside the loop included; start-up and final evaluation
            not), nan when the run did not report it.
    """

    name: str
    final_loss: List[List[float]]
    stable_at: List[Optional[int]] = field(default_factory=list)
    wall_s: List[float] = field(default_factory=list)
    dynamic: bool = False
    cpu_ms: List[float] = field(default_factory=list)


@dataclass
class MethodSummary:
    """A method's row: every column as a :class:`Stat` over seeds."""

    name: str
    per_domain: List[Stat]
    mean_all: Stat
    mean_new: Stat
    worst_domain: str
    worst_delta: Stat
    stable_at: Stat
    never_stable: int
    wall_s: Stat
    seeds: int
    dynamic: bool
    cpu_ms: Stat = Stat(float("nan"), float("nan"), 0)


def summarise_method(
    runs: MethodRuns,
    domains: Sequence[str],
    replay: Sequence[int],
    reference: Optional[np.ndarray] = None,
) -> MethodSummary:
    """Mean ± std over seeds of every column of the table.

    Args:
        runs (MethodRuns): the method's runs.
        domains (Sequence[str]): domain names in blend order.
        replay (Sequence[int]): indices of the replay domains ("new" = all others).
        reference (Optional[np.ndarray]): the reference method's (CPT) per-domain mean loss;
            the worst domain is the one this method loses most on against it (largest
            ``loss - reference``). None: the method is the reference (worst = largest 0).

    Returns:
        MethodSummary: the row.
    """
    loss = np.asarray(runs.final_loss, np.float64)
    if loss.ndim != 2 or loss.shape[1] != len(domains):
        raise ValueError(f"final_loss must be seeds x {len(domains)} domains, got {loss.shape}")
    new = [i for i in range(len(domains)) if i not in set(replay)]
    per_domain = [mean_std(loss[:, i]) for i in range(len(domains))]
    ref = np.asarray(reference, np.float64) if reference is not None else loss.mean(axis=0)
    delta = loss - ref[None, :]
    worst = int(np.argmax(delta.mean(axis=0)))
    stable = [s for s in runs.stable_at if s is not None]
    return MethodSummary(
        name=runs.name,
        per_domain=per_domain,
        mean_all=mean_std(loss.mean(axis=1)),
        mean_new=mean_std(loss[:, new].mean(axis=1)),
        worst_domain=domains[worst],
        worst_delta=mean_std(delta[:, worst]),
        stable_at=mean_std([float(s) for s in stable]),
        never_stable=sum(1 for s in runs.stable_at if s is None),
        wall_s=mean_std(runs.wall_s),
        seeds=loss.shape[0],
        dynamic=runs.dynamic,
        cpu_ms=mean_std(runs.cpu_ms),
    )


def _mark(row: Stat, ref: Stat, better_low: bool = True) -> str:
    """``*`` when the row differs from the reference by more than the seed spread."""
    return "*" if is_real_difference(row, ref) else ""


def render_table(
    rows: Sequence[MethodSummary],
    domains: Sequence[str],
    reference: int = 0,
    overhead_base: Optional[Stat] = None,
    overhead_label: str = "CPT",
    collapsed: Optional[Sequence[Optional[int]]] = None,
) -> str:
    """The comparison as one Markdown table.

    Loss cells are ``mean ± std`` over seeds; ``*`` marks a cell whose difference from the
    reference row (CPT) exceeds the seed spread (see :func:`is_real_difference`). The overhead
    compares mean training-loop CPU time per iteration (when every row has it, else mean wall
    time) with ``overhead_base`` (default: the reference row's). ``collapsed``, when given,
    adds a column: per row, how many of its seeds collapsed (:func:`find_collapses`; None: not
    applicable, as for the reference row).
    """
    if collapsed is not None and len(collapsed) != len(rows):
        raise ValueError(f"{len(collapsed)} collapse counts for {len(rows)} rows")
    ref = rows[reference]
    use_cpu = all(r.cpu_ms.n for r in rows)
    if overhead_base is None:
        overhead_base = ref.cpu_ms if use_cpu else ref.wall_s
    base = overhead_base
    head = (
        ["method", "seeds"]
        + [f"{d}" for d in domains]
        + [
            "mean (all)",
            "mean (new)",
            "worst vs CPT",
            *(["collapsed seeds"] if collapsed is not None else []),
            "stable at (iter)",
            "wall (s)",
            "loop CPU (ms/iter)",
            f"overhead vs {overhead_label}",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, r in enumerate(rows):
        cells = [r.name, str(r.seeds)]
        for s, rs in zip(r.per_domain, ref.per_domain):
            cells.append(s.fmt() + _mark(s, rs))
        cells.append(r.mean_all.fmt() + _mark(r.mean_all, ref.mean_all))
        cells.append(r.mean_new.fmt() + _mark(r.mean_new, ref.mean_new))
        cells.append("-" if r is ref else f"{r.worst_domain} {r.worst_delta.mean:+.4f}")
        if collapsed is not None:
            cells.append("-" if collapsed[n] is None else f"{collapsed[n]}/{r.seeds}")
        if not r.dynamic:
            cells.append("static")
        else:
            stable = "-" if r.stable_at.n == 0 else r.stable_at.fmt(0)
            if r.never_stable:
                stable += f" ({r.never_stable}/{r.seeds} never)"
            cells.append(stable)
        cells.append(r.wall_s.fmt(0))
        cells.append(r.cpu_ms.fmt(0) if r.cpu_ms.n else "-")
        cost = r.cpu_ms if use_cpu else r.wall_s
        if math.isnan(base.mean) or base.mean <= 0:
            cells.append("-")
        else:
            cells.append(f"{100.0 * (cost.mean / base.mean - 1.0):+.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_mae_table(
    domains: Sequence[str], per_seed: Dict[str, List[float]], pooled: Dict[str, float]
) -> str:
    """Target-fit held-out error: per domain, each CPT seed's MAE, their mean, the pooled fit's."""
    seeds = len(next(iter(per_seed.values()))) if per_seed else 0
    head = ["domain"] + [f"seed {i + 1}" for i in range(seeds)] + ["mean ± std", "pooled fit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in domains:
        vals = per_seed.get(d, [])
        s = mean_std(vals)
        cells = [d] + [f"{v:.2e}" if not math.isnan(v) else "-" for v in vals]
        cells.append(
            "-" if s.n == 0 else (f"{s.mean:.2e}" if s.n < 2 else f"{s.mean:.2e} ± {s.std:.1e}")
        )
        p = pooled.get(d, float("nan"))
        cells.append("-" if math.isnan(p) else f"{p:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    allv = [v for d in domains for v in per_seed.get(d, []) if not math.isnan(v)]
    if allv:
        pooled_all = [pooled[d] for d in domains if d in pooled and not math.isnan(pooled[d])]
        lines.append(
            "| all domains | "
            + " | ".join([""] * seeds)
            + f" | {np.mean(allv):.2e} | "
            + (f"{np.mean(pooled_all):.2e}" if pooled_all else "-")
            + " |"
        )
    return "\n".join(lines)


_LOOP = re.compile(
    r"training loop: (\d+) iterations in ([\d.]+) s \(([\d.]+) ms/iteration wall, "
    r"([\d.]+) ms/iteration CPU"
)


def parse_loop_time(text: str) -> Optional[Tuple[int, float, float, float]]:
    """``(iterations, wall s, wall ms/iter, CPU ms/iter)`` of the run's ``training loop:`` line.

    None when the run printed none (older entries).
    """
    found = _LOOP.findall(text)
    if not found:
        return None
    it, wall, wall_ms, cpu_ms = found[-1]
    return int(it), float(wall), float(wall_ms), float(cpu_ms)


#: A loss above this many times ln(vocabulary size), a uniform guess's loss, means the run has
#: diverged (a fresh model starts near 1x; a learning rate far too high reaches 1e4 and more).
DIVERGED_MULTIPLE = 3.0

_TABLE_TITLE = "held-out loss per domain (full held-out sets)"
_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|nan|inf))"
_ROW = re.compile(r"^\s+(\S+)" + 4 * (r"\s+" + _NUMBER) + r"\s*$")
# Every cell is this wide with a space before it, whatever the number: columns never touch.
_CELL = 9


def _cell(x: float, signed: bool = False) -> str:
    """``x`` in :data:`_CELL` characters after a space: 4 decimals while they fit, else
    e-notation (``2.700e+07``, ``+2.70e+07``).
    """
    text = f"{x:+.4f}" if signed else f"{x:.4f}"
    if len(text) > _CELL:
        text = f"{x:+.2e}" if signed else f"{x:.3e}"
    return " " + text.rjust(_CELL)


def diverged_loss_warning(
    what: str, names: Sequence[str], losses: Sequence[float], vocab_size: Optional[int]
) -> Optional[str]:
    """A warning line when a finite loss is far above a uniform guess's, else None.

    Args:
        what (str): which loss, for the line (``"held-out loss at the end"``).
        names (Sequence[str]): the domain names (one loss each); ``["lm"]`` for one loss.
        losses (Sequence[float]): the losses in nats per token.
        vocab_size (Optional[int]): the model's vocabulary (None: no warning).

    Returns:
        Optional[str]: ``"warning: ..."`` naming the domains and the limit, or None.
    """
    if not vocab_size or vocab_size < 2:
        return None
    limit = DIVERGED_MULTIPLE * math.log(vocab_size)
    high = [(n, x) for n, x in zip(names, losses) if math.isfinite(x) and x > limit]
    if not high:
        return None
    shown = ", ".join(f"{n} {x:.4g}" for n, x in high)
    return (
        f"warning: {what} is above {limit:.1f} nats ({shown}; the limit is "
        f"{DIVERGED_MULTIPLE:g} x ln {vocab_size}, {DIVERGED_MULTIPLE:g} x a uniform guess's "
        "loss over the vocabulary): the run has diverged (a lower --lr or --clip-grad keeps it "
        "finite)"
    )


def format_loss_table(
    names: Sequence[str],
    start: Sequence[float],
    end: Sequence[float],
    weights: Sequence[float],
    start_label: str = "start of this run",
    vocab_size: Optional[int] = None,
) -> str:
    """The end-of-run table: each domain's held-out loss at the start and end, and its weight.

    Every number takes a fixed width after a space (e-notation when 4 decimals do not fit), so
    columns never run together, even for the losses of a diverged run; :func:`parse_final_losses`
    reads it back.

    Args:
        names (Sequence[str]): domain names.
        start (Sequence[float]): the losses at the start (NaN: not measured).
        end (Sequence[float]): the losses at the end.
        weights (Sequence[float]): the final blend.
        start_label (str): what the start column is.
        vocab_size (Optional[int]): the model's vocabulary, for
            :func:`diverged_loss_warning` (None: no warning).

    Returns:
        str: the lines, a warning first when a loss has diverged.
    """
    rows = [
        f" {_TABLE_TITLE}, {start_label} -> end:",
        f"   {'domain':<12}"
        + "".join(" " + h.rjust(_CELL) for h in ("start", "end", "change", "weight")),
    ]
    for name, a, b, w in zip(names, start, end, weights):
        rows.append(f"   {name:<12}{_cell(a)}{_cell(b)}{_cell(b - a, signed=True)}{_cell(w)}")
    warning = diverged_loss_warning("the held-out loss at the end", names, end, vocab_size)
    return "\n".join(([" " + warning] if warning else []) + rows)


def parse_final_losses(text: str) -> Tuple[List[str], List[float], List[float], List[float]]:
    """The last end-of-run table ``held-out loss per domain ... start -> end`` in a run's output.

    Returns:
        Tuple[List[str], List[float], List[float], List[float]]: domains, start losses, end
        losses and final weights, in the printed order.

    Raises:
        ValueError: no such table in ``text``.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _TABLE_TITLE in line]
    if not starts:
        raise ValueError("no 'held-out loss per domain' table in the run's output")
    names: List[str] = []
    start: List[float] = []
    end: List[float] = []
    weight: List[float] = []
    for line in lines[starts[-1] + 2 :]:
        m = _ROW.match(line)
        if not m:
            break
        names.append(m.group(1))
        start.append(float(m.group(2)))
        end.append(float(m.group(3)))
        weight.append(float(m.group(5)))
    if not names:
        raise ValueError("the 'held-out loss per domain' table has no rows")
    return names, start, end, weight


@dataclass(frozen=True)
class ParetoPoint:
    """A method in the (replay loss, mean new-domain loss) plane, each a :class:`Stat`."""

    name: str
    replay: Stat
    new: Stat


def dominated_by(point: ParetoPoint, frontier: Sequence[ParetoPoint]) -> Optional[str]:
    """The frontier point that beats ``point`` on both axes beyond the seed spread, if any.

    A frontier point ``F`` dominates ``P`` when it is lower on both axes and each difference
    is real (:func:`is_real_difference`: larger than the two seed spreads together).

    Returns:
        Optional[str]: the dominating point's name (the one with the largest summed margin),
        or None.
    """
    best, best_margin = None, 0.0
    for f in frontier:
        if f.name == point.name:
            continue
        if (
            f.replay.mean < point.replay.mean
            and f.new.mean < point.new.mean
            and is_real_difference(f.replay, point.replay)
            and is_real_difference(f.new, point.new)
        ):
            margin = (point.replay.mean - f.replay.mean) + (point.new.mean - f.new.mean)
            if best is None or margin > best_margin:
                best, best_margin = f.name, margin
    return best


def frontier_margin(point: ParetoPoint, frontier: Sequence[ParetoPoint]) -> Optional[float]:
    """How far below the frontier's line ``point`` lies on the new-domain axis (nats).

    The frontier's points, sorted by replay loss, are joined by straight lines; the result is
    that line's new-domain loss at ``point``'s replay loss minus ``point``'s own: positive
    when the method beats every static blend of the same replay loss, negative when it lies
    above the line. None outside the frontier's replay-loss range (nothing to compare with).
    """
    pts = sorted((f.replay.mean, f.new.mean) for f in frontier if f.name != point.name)
    if len(pts) < 2:
        return None
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    x = point.replay.mean
    if not xs[0] <= x <= xs[-1]:
        return None
    return float(np.interp(x, xs, ys) - point.new.mean)


def frontier_spread(point: ParetoPoint, frontier: Sequence[ParetoPoint]) -> Optional[float]:
    """The seed spread a :func:`frontier_margin` must exceed to be real.

    The point's new-domain std, plus the line's at the point's replay loss (its two ends'
    stds interpolated), plus the point's replay std times the line's slope there (moving the
    point by its replay spread moves the line under it). None where the margin is None.
    """
    pts = sorted(
        ((f.replay.mean, f.new.mean, f.new.std) for f in frontier if f.name != point.name),
        key=lambda p: p[0],
    )
    if len(pts) < 2 or point.replay.n < 2 or point.new.n < 2:
        return None
    xs = np.array([p[0] for p in pts])
    x = point.replay.mean
    if not xs[0] <= x <= xs[-1]:
        return None
    j = int(np.clip(np.searchsorted(xs, x), 1, len(pts) - 1))
    (x0, y0, s0), (x1, y1, s1) = pts[j - 1], pts[j]
    slope = 0.0 if x1 == x0 else (y1 - y0) / (x1 - x0)
    line_std = float(np.interp(x, [x0, x1], [s0, s1])) if x1 != x0 else max(s0, s1)
    return float(point.new.std + line_std + abs(slope) * point.replay.std)


def pareto_efficient(points: Sequence[ParetoPoint]) -> List[ParetoPoint]:
    """The points no other point beats on both axes (by the seed means), by replay loss."""
    kept = [
        p
        for p in points
        if not any(
            q is not p
            and q.replay.mean <= p.replay.mean
            and q.new.mean <= p.new.mean
            and (q.replay.mean, q.new.mean) != (p.replay.mean, p.new.mean)
            for q in points
        )
    ]
    return sorted(kept, key=lambda p: p.replay.mean)


@dataclass(frozen=True)
class SeedPoint:
    """One run (a method on one seed) in the (replay loss, mean new-domain loss) plane.

    Attributes:
        method (str): the method's key.
        seed (int): the dataset seed.
        replay (float): the replay domain's final held-out loss (several: their mean).
        new (float): the mean final held-out loss of the other (new) domains.
    """

    method: str
    seed: int
    replay: float
    new: float


def seed_points(
    method: str,
    seeds: Sequence[int],
    final_loss: Sequence[Sequence[float]],
    replay: Sequence[int],
) -> List[SeedPoint]:
    """Each seed's point of one method.

    Args:
        method (str): the method's key.
        seeds (Sequence[int]): the seed of each run.
        final_loss (Sequence[Sequence[float]]): per run, each domain's final held-out loss.
        replay (Sequence[int]): indices of the replay domains ("new" = all others).

    Returns:
        List[SeedPoint]: one point per run, in the given order.
    """
    loss = np.asarray(final_loss, np.float64)
    if loss.ndim != 2 or loss.shape[0] != len(seeds):
        raise ValueError(f"final_loss must be {len(seeds)} runs x domains, got {loss.shape}")
    is_replay = np.zeros(loss.shape[1], bool)
    is_replay[list(replay)] = True
    if not is_replay.any() or is_replay.all():
        raise ValueError(f"replay indices {list(replay)} must name some but not all domains")
    return [
        SeedPoint(method, int(x), float(row[is_replay].mean()), float(row[~is_replay].mean()))
        for x, row in zip(seeds, loss)
    ]


@dataclass(frozen=True)
class Collapse:
    """A run that ended behind its seed's CPT run on both axes.

    Attributes:
        method (str): the method's key.
        seed (int): the seed.
        replay_delta (float): its replay loss minus CPT's (nats, > the tolerance).
        new_delta (float): its mean new-domain loss minus CPT's (nats, > the tolerance).
    """

    method: str
    seed: int
    replay_delta: float
    new_delta: float

    def line(self, label: Optional[str] = None) -> str:
        """``collapsed: <method> seed <n> (replay +0.031, new +0.142 vs that seed's CPT)``."""
        return (
            f"collapsed: {label or self.method} seed {self.seed} (replay "
            f"{self.replay_delta:+.3f}, new {self.new_delta:+.3f} vs that seed's CPT)"
        )


def collapse_of(
    point: SeedPoint, cpt: SeedPoint, tolerance: float = COLLAPSE_TOLERANCE
) -> Optional[Collapse]:
    """``point`` as a :class:`Collapse` when the same seed's CPT run dominates it on both axes
    by more than ``tolerance`` nats, else None.

    Args:
        point (SeedPoint): the run.
        cpt (SeedPoint): the CPT run of the same seed.
        tolerance (float): the margin each axis must exceed (nats).

    Returns:
        Optional[Collapse]: the collapse, or None.

    Raises:
        ValueError: the two points are of different seeds.
    """
    if point.seed != cpt.seed:
        raise ValueError(f"seed {point.seed} compared with CPT's seed {cpt.seed}")
    d_replay, d_new = point.replay - cpt.replay, point.new - cpt.new
    if d_replay > tolerance and d_new > tolerance:
        return Collapse(point.method, point.seed, d_replay, d_new)
    return None


def find_collapses(
    points: Sequence[SeedPoint],
    cpt: Sequence[SeedPoint],
    tolerance: float = COLLAPSE_TOLERANCE,
) -> List[Collapse]:
    """The collapsed runs among ``points`` (:func:`collapse_of`), in their order.

    A point of a seed without a CPT run, and a CPT point itself, is never collapsed.
    """
    by_seed = {c.seed: c for c in cpt}
    found = []
    for p in points:
        ref = by_seed.get(p.seed)
        if ref is None or p is ref or p.method == ref.method:
            continue
        c = collapse_of(p, ref, tolerance)
        if c is not None:
            found.append(c)
    return found


def render_seed_table(
    points: Sequence[SeedPoint],
    cpt: Sequence[SeedPoint],
    labels: Dict[str, str],
    tolerance: float = COLLAPSE_TOLERANCE,
) -> str:
    """Every run's point as one Markdown table, with its distance from its seed's CPT run.

    Columns: method, seed, replay loss, mean new-domain loss, each minus that seed's CPT
    value, and ``collapsed`` where :func:`collapse_of` says so.
    """
    by_seed = {c.seed: c for c in cpt}
    collapsed = {(c.method, c.seed) for c in find_collapses(points, cpt, tolerance)}
    head = ["method", "seed", "replay loss", "mean new loss", "replay vs CPT", "new vs CPT"]
    head.append("collapsed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        ref = by_seed.get(p.seed)
        same = ref is None or p.method == ref.method
        cells = [
            labels.get(p.method, p.method),
            str(p.seed),
            f"{p.replay:.4f}",
            f"{p.new:.4f}",
            "-" if same else f"{p.replay - ref.replay:+.4f}",
            "-" if same else f"{p.new - ref.new:+.4f}",
            "yes" if (p.method, p.seed) in collapsed else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
