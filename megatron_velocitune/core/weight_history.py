"""The blends a run trained on, over time: spans, time-averaged weights (pure numbers, no I/O).

A run starts with the header's weights at position 0; each applied update puts its weights in
force from its start position until the next applied update (or the end of the run). The
time-averaged blend (the paper's Tables 9 and 10, the "reweighted static" ablation) weights each
blend by the length of its span::

    w_avg = sum_k (end_k - start_k) * w_k / (end - 0)

Positions are in one unit throughout: global samples (``start_sample``, ``consumed_samples``,
``train_iters * global_batch_size``) or iterations (``iteration``, ``train_iters``); with a
constant global batch size both give the same average.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.blending import check_blend_weights

__all__ = [
    "BlendSpan",
    "RunHistory",
    "UNITS",
    "blend_spans",
    "run_history",
    "time_averaged_weights",
]

UNITS = ("samples", "iterations")


@dataclass(frozen=True)
class BlendSpan:
    """One blend and the half-open stretch ``[start, end)`` it was in force for."""

    start: float
    end: float
    weights: np.ndarray

    @property
    def length(self) -> float:
        return self.end - self.start


def _blend(weights: Sequence[float], k: Optional[int], what: str) -> np.ndarray:
    return check_blend_weights(weights, k, what=f"{what}: weights", allow_zero=True)


def blend_spans(
    initial_weights: Sequence[float],
    updates: Sequence[Tuple[float, Sequence[float]]],
    end: float,
) -> List[BlendSpan]:
    """The blends in force over ``[0, end)``, in order.

    Args:
        initial_weights (Sequence[float]): the blend from position 0 (normalised here).
        updates (Sequence[Tuple[float, Sequence[float]]]): the applied updates as
            ``(start, weights)``, by non-decreasing ``start``; skipped updates must be left out.
            An update starting at or after ``end`` was never in force and is dropped; of several
            at one start the last wins.
        end (float): where the run stopped (> 0).

    Returns:
        List[BlendSpan]: spans of positive length covering ``[0, end)`` exactly.

    Raises:
        ValueError: a negative or decreasing start, ``end <= 0``, or a bad blend.
    """
    if not np.isfinite(end) or end <= 0:
        raise ValueError(f"end {end} must be a positive position (the run trained on nothing?)")
    current = _blend(initial_weights, None, "initial blend")
    k = current.size
    spans: List[BlendSpan] = []
    position = 0.0
    for n, (start, weights) in enumerate(updates):
        w = _blend(weights, k, f"update {n} (start {start})")
        if not np.isfinite(start) or start < 0:
            raise ValueError(f"update {n}: start {start} must be a non-negative position")
        if start < position:
            raise ValueError(f"update {n}: start {start} is before the previous one ({position})")
        if start >= end:
            break
        if start > position:
            spans.append(BlendSpan(position, float(start), current))
            position = float(start)
        current = w
    spans.append(BlendSpan(position, float(end), current))
    return spans


def time_averaged_weights(
    initial_weights: Sequence[float],
    updates: Sequence[Tuple[float, Sequence[float]]],
    end: float,
) -> np.ndarray:
    """Each blend weighted by how long it was in force over ``[0, end)``.

    Arguments as :func:`blend_spans`.

    Returns:
        np.ndarray: the time-averaged blend (sums to 1).
    """
    spans = blend_spans(initial_weights, updates, end)
    total = sum(s.length * s.weights for s in spans)
    return total / total.sum()


@dataclass(frozen=True)
class RunHistory:
    """A trajectory's weight history in one unit, ready for :func:`blend_spans`.

    Attributes:
        unit (str): ``"samples"`` or ``"iterations"``.
        initial (np.ndarray): the header's blend.
        updates (List[Tuple[float, np.ndarray]]): applied updates ``(start, weights)``.
        skipped (int): update records that were skipped (their weights are ignored).
        end (Optional[float]): where the average stops; None when it cannot be known.
        completed (bool): the run reached its last due update, so ``end`` is the planned one.
        reason (str): one sentence saying where ``end`` comes from.
    """

    unit: str
    initial: np.ndarray
    updates: List[Tuple[float, np.ndarray]]
    skipped: int
    end: Optional[float]
    completed: bool
    reason: str

    @property
    def final(self) -> np.ndarray:
        """The blend after the last applied update (the initial one if none)."""
        return self.updates[-1][1] if self.updates else self.initial


def run_history(
    header: Dict[str, Any],
    records: Sequence[Dict[str, Any]],
    unit: str = "samples",
    end: Optional[float] = None,
) -> RunHistory:
    """Applied updates and the end position of a run, from its trajectory records.

    The end is ``end`` when given; else the planned ``train_iters`` (times ``global_batch_size``
    for samples) when the run recorded its last due update (the largest multiple of
    ``update_interval`` up to ``train_iters``); else, the run having stopped early (or the header
    lacking the plan), the position of the last update record, the furthest point the
    trajectory proves the run reached.

    Args:
        header (Dict[str, Any]): the header record.
        records (Sequence[Dict[str, Any]]): update records by increasing iteration.
        unit (str): ``"samples"`` or ``"iterations"``.
        end (Optional[float]): an explicit end position in ``unit``.

    Returns:
        RunHistory: the history.
    """
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} must be one of {UNITS}")
    key = "start_sample" if unit == "samples" else "iteration"
    initial = _blend(header["weights"], len(header["domains"]), "header")
    updates, skipped = [], 0
    for r in records:
        if r.get("skipped"):
            skipped += 1
            continue
        start = r.get(key)
        if start is None and unit == "samples":
            start = r.get("consumed_samples")
        if start is None:
            raise ValueError(f"update at iteration {r.get('iteration')}: no {key}")
        updates.append(
            (
                float(start),
                _blend(r["weights"], initial.size, f"update at iteration {r.get('iteration')}"),
            )
        )

    iters, gbs, interval = (
        header.get(k) for k in ("train_iters", "global_batch_size", "update_interval")
    )
    planned = None
    if iters and (gbs or unit == "iterations"):
        planned = float(iters) * (float(gbs) if unit == "samples" else 1.0)
    last = records[-1] if records else None
    last_pos = None
    if last is not None:
        last_pos = last.get("consumed_samples") if unit == "samples" else last.get("iteration")
        last_pos = None if last_pos is None else float(last_pos)
    last_due = (int(iters) // int(interval)) * int(interval) if iters and interval else None

    if end is not None:
        completed = planned is not None and end >= planned
        return RunHistory(
            unit, initial, updates, skipped, float(end), completed, f"{unit} 0 to {end:g}, as given"
        )
    last_it = None if last is None else last.get("iteration")
    if planned is not None and (
        last_due is None or last_due == 0 or (last_it is not None and int(last_it) >= last_due)
    ):
        what = (
            f"train_iters {iters} x global_batch_size {gbs}"
            if unit == "samples"
            else f"train_iters {iters}"
        )
        return RunHistory(
            unit,
            initial,
            updates,
            skipped,
            planned,
            True,
            f"{unit} 0 to {planned:g} ({what}): the run reached its last update",
        )
    if last_pos is not None and last_pos > 0:
        key_end = "consumed_samples" if unit == "samples" else "iteration"
        why = (
            f"the run stopped early (last update at iteration {last_it} of {iters})"
            if planned is not None
            else "the header has no train_iters/global_batch_size"
        )
        return RunHistory(
            unit,
            initial,
            updates,
            skipped,
            last_pos,
            False,
            f"{unit} 0 to {last_pos:g} (the last update's {key_end}): {why}; the "
            f"blend it chose is not counted",
        )
    why = (
        "the run stopped before its first update"
        if planned is not None
        else "no update records and no train_iters/global_batch_size in the header"
    )
    return RunHistory(
        unit, initial, updates, skipped, None, False, f"{why}: the end of the run is unknown"
    )
