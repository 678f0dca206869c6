"""Piecewise greedy blending: the index maths behind :class:`VelocityBlendedDataset`.

megatron-core's static ``BlendedDataset`` maps global sample ``i`` to ``(dataset_index[i],
dataset_sample_index[i])`` with a greedy rule over the whole run: at position ``i`` draw the
domain ``d`` maximising ``w_d * max(i, 1) - count_d`` (ties to the lower index), and the j-th
draw of domain ``d`` is sample ``j`` of that domain. Here the weights change over the run, so
the run is cut into *segments* ``[start_k, start_{k+1})``, each with its own weights:

* inside a segment the greedy rule runs on *segment-local* positions and counts (megatron-core's
  own ``helpers.build_blending_indices`` on slice views of the global arrays), so a segment's
  per-domain counts track its weights exactly as a static blend of that length would, with no
  catch-up burst for what earlier segments drew;
* the per-domain draw counts are carried across segments (``counts`` at a segment's start =
  counts at the previous start + what the previous segment drew), so the j-th draw of domain
  ``d`` *counted from the start of the run* is ``datasets[d][j]``, as in megatron-core;
* a draw past a domain's length wraps: draw ``j`` reads ``datasets[d][j % len(datasets[d])]``.
  A megatron-core ``GPTDataset`` always spans whole shuffled epochs of its documents, so the
  wrap replays the same multi-epoch order again and never raises ``IndexError``, whatever the
  weights.

Only the open (last) segment grows with the run, and it is materialised lazily up to a horizon
that doubles on demand, so a weight update costs O(samples since the last update + the next
window), independent of how long the run already is. The index arrays are the static blend's
(``int16`` + ``int64`` per sample, allocated with ``numpy.empty`` so untouched pages are never
committed).

Pure index maths: numpy and megatron-core's C++ blending helper; no torch.distributed, no I/O.
"""

import bisect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "DEFAULT_UPDATE_WINDOW",
    "STATE_VERSION",
    "BlendIndex",
    "Segment",
    "check_blend_weights",
    "greedy_blend",
]

# First horizon of a segment when the caller gives no update window: one Velocitune window of
# the paper's SystemStack setting is 150 steps x 256 samples = 38,400; 2^16 covers it.
DEFAULT_UPDATE_WINDOW = 1 << 16
# The horizon overshoots the expected update window by this fraction so that data-loader
# prefetch past the update position does not force a doubling rebuild.
_HORIZON_SLACK = 0.25
STATE_VERSION = 1


#: A blend whose sum is this close to one is already normalised and is used bit for bit as it
#: is: dividing by a sum of ``1 +- ulp`` would move its last bits, and a blend normalised at
#: the entry, checked again by the controller, the dataset and the saved state, must stay the
#: same float64 values everywhere (normalising is not idempotent in floating point; this is).
NORMALISED_TOLERANCE = 1e-12


def check_blend_weights(
    weights: Sequence[float],
    num_datasets: Optional[int],
    normalize: bool = True,
    what: str = "blend weights",
    allow_zero: bool = False,
) -> np.ndarray:
    """The one validation of a blend, with its one normalisation (as megatron-core does it).

    megatron-core's ``datasets.utils.normalize`` divides a float64 array by its sum; doing the
    same float operations here keeps the first segment bit-identical to the static blend. A
    blend already normalised (sum within :data:`NORMALISED_TOLERANCE` of one) is returned
    unchanged, so calling this again on its own output changes nothing.

    Args:
        weights (Sequence[float]): one weight per dataset, finite and > 0 (any positive sum).
        num_datasets (Optional[int]): the number of datasets blended (None: any).
        normalize (bool): divide by the sum (else only check the sum is 1 within 1e-9: saved
            weights, used as they are).
        what (str): what the weights are, for the error message (a flag, a file, a record).
        allow_zero (bool): accept zero weights (not all): a mixture to average over, which
            need not sample every domain; a sampling blend needs every weight > 0.

    Returns:
        np.ndarray: the float64 weights, normalised.

    Raises:
        ValueError: wrong length, or a weight that is not finite and > 0.
    """
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {weights!r} are not numbers") from None
    if w.ndim != 1 or w.size == 0 or (num_datasets is not None and w.shape[0] != num_datasets):
        n = num_datasets or "some"
        raise ValueError(
            f"{what} {np.ravel(w).tolist()} must be {n} numbers, one per dataset "
            f"(expected {n} weights, got {w.size})"
        )
    if not np.all(np.isfinite(w)) or not np.all(w >= 0.0 if allow_zero else w > 0.0):
        rule = ">= 0, not all zero" if allow_zero else "> 0"
        raise ValueError(f"{what} {w.tolist()} must all be finite and {rule}")
    if not np.any(w > 0.0):
        raise ValueError(f"{what} {w.tolist()} must not all be zero")
    total = float(np.sum(w))
    if not normalize:
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"{what} {w.tolist()} sum to {total}, not 1 (weights used as given, not "
                f"normalised, must be normalised: these do not sum to 1)"
            )
        return w
    if abs(total - 1.0) <= NORMALISED_TOLERANCE:
        return w
    return w / np.sum(w)


def greedy_blend(
    dataset_index: np.ndarray, dataset_sample_index: np.ndarray, weights: np.ndarray
) -> None:
    """Fill two arrays with megatron-core's greedy static blend of ``weights``.

    Position ``i`` (local to the arrays) gets the domain maximising ``w_d * max(i, 1) -
    count_d`` and that domain's running count; this is ``BlendedDataset``'s own index.

    Args:
        dataset_index (np.ndarray): int16, C-contiguous, written in place.
        dataset_sample_index (np.ndarray): int64, C-contiguous, same length, written in place.
        weights (np.ndarray): float64 weights on the simplex.
    """
    # The pybind11 helper silently converts an array of any other dtype or layout into a
    # temporary copy and writes there, so the caller would see nothing: refuse instead.
    for name, arr, dtype in (
        ("dataset_index", dataset_index, np.int16),
        ("dataset_sample_index", dataset_sample_index, np.int64),
    ):
        if arr.dtype != dtype or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise TypeError(f"{name} must be a writeable C-contiguous {np.dtype(dtype)} array")
    n = dataset_index.shape[0]
    if dataset_sample_index.shape[0] != n:
        raise ValueError("dataset_index and dataset_sample_index differ in length")
    if n == 0:
        return
    from megatron.core.datasets import helpers  # the prebuilt C++ extension of the wheel

    helpers.build_blending_indices(
        dataset_index,
        dataset_sample_index,
        np.ascontiguousarray(weights, np.float64),
        weights.shape[0],
        n,
        False,
    )


@dataclass
class Segment:
    """One stretch of the run drawn with fixed weights.

    Attributes:
        start (int): the first global sample drawn with ``weights``.
        weights (np.ndarray): float64 weights on the simplex.
        counts (np.ndarray): int64 draws per domain over all samples before ``start``; the
            offsets that make the j-th draw of a domain (counted from the run's start) its
            sample ``j``.
    """

    start: int
    weights: np.ndarray
    counts: np.ndarray


class BlendIndex:
    """The global ``(dataset_index, dataset_sample_index)`` map of a blend whose weights change.

    Positions ``[lo, hi)`` are always valid in the arrays (the fast path of ``__getitem__``);
    :meth:`ensure` materialises any other position on demand.

    Args:
        weights (Sequence[float]): the blend from sample 0 on.
        size (int): the number of global samples (the blend's length).
        lengths (Sequence[int]): each dataset's length, where draws wrap around.
        update_window (Optional[int]): samples between two expected updates (``m`` times the
            global batch size); sizes the first horizon of each segment.
    """

    def __init__(
        self,
        weights: Sequence[float],
        size: int,
        lengths: Sequence[int],
        update_window: Optional[int] = None,
    ) -> None:
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size {size!r} must be an integer >= 1")
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1 or not 1 <= lengths.shape[0] < np.iinfo(np.int16).max:
            raise ValueError(f"need 1 to 32766 datasets, got lengths {lengths.tolist()}")
        if np.any(lengths < 1):
            raise ValueError(
                f"every dataset needs at least one sample, got lengths {lengths.tolist()}"
            )
        if update_window is not None and (
            not isinstance(update_window, (int, np.integer)) or update_window < 1
        ):
            raise ValueError(f"update_window {update_window!r} must be an integer >= 1")
        self.size = int(size)
        self.lengths = lengths
        self.num_datasets = int(lengths.shape[0])
        self.update_window = int(update_window or DEFAULT_UPDATE_WINDOW)
        # Memory parity with the static BlendedDataset: the same dtypes, one entry per sample.
        # numpy.empty commits pages only when a segment is materialised over them.
        self.dataset_index = np.empty(self.size, dtype=np.int16)
        self.dataset_sample_index = np.empty(self.size, dtype=np.int64)
        initial = check_blend_weights(weights, self.num_datasets)
        first = Segment(0, initial, np.zeros(self.num_datasets, np.int64))
        self._reset([first])

    # ----------------------------------------------------------------------------------------
    # Queries

    @property
    def segments(self) -> List[Segment]:
        """The weight history, one segment per weight change, by increasing start."""
        return list(self._segments)

    @property
    def weights(self) -> np.ndarray:
        """The weights of the open (last) segment."""
        return self._segments[-1].weights.copy()

    def segment_end(self, k: int) -> int:
        """The first global sample after segment ``k``."""
        return self._segments[k + 1].start if k + 1 < len(self._segments) else self.size

    def segment_of(self, position: int) -> int:
        """The number of the segment that draws global sample ``position``."""
        return bisect.bisect_right(self._starts, position) - 1

    def weights_at(self, position: int) -> np.ndarray:
        """The weights that draw global sample ``position``."""
        return self._segments[self.segment_of(position)].weights.copy()

    def counts_at(self, position: int) -> np.ndarray:
        """Draws per domain over global samples ``[0, position)``.

        Costs O(position - start of its segment): the counts at each segment start are carried,
        never recounted from sample 0.

        Args:
            position (int): in ``[0, size]``.

        Returns:
            np.ndarray: int64 counts, one per domain; they sum to ``position``.
        """
        if not 0 <= position <= self.size:
            raise IndexError(f"position {position} outside [0, {self.size}]")
        return self._counts_in(self.segment_of(position), position)

    def _counts_in(self, k: int, position: int, cap: Optional[int] = None) -> np.ndarray:
        seg = self._segments[k]
        if position <= seg.start:
            return seg.counts.copy()
        self._build(k, position, cap=cap)
        drawn = np.bincount(self.dataset_index[seg.start : position], minlength=self.num_datasets)
        return seg.counts + drawn.astype(np.int64)

    # ----------------------------------------------------------------------------------------
    # Updates

    def update(self, weights: Sequence[float], start: int) -> bool:
        """Draw global samples from ``start`` on with ``weights``.

        Samples before ``start`` never change. Giving the weights already in force is a no-op
        (no new segment), so a blend that never changes is megatron-core's static blend exactly;
        so is re-applying an update the history already holds (a replay over a restored state).
        ``start`` equal to the open segment's start replaces that segment's weights.

        Costs O(start - open segment start) to carry the counts, plus the new segment's first
        horizon (about ``update_window`` samples).

        Args:
            weights (Sequence[float]): the new blend (finite, > 0; normalised here).
            start (int): the first global sample drawn with it, in ``[open start, size]``.

        Returns:
            bool: whether a new segment was recorded (False for unchanged weights).

        Raises:
            ValueError: bad weights, or ``start`` before the open segment's start with weights
                other than the history's there (that would change samples already drawn), or
                ``start`` after ``size``.
        """
        w = check_blend_weights(weights, self.num_datasets)
        if not isinstance(start, (int, np.integer)):
            raise ValueError(f"start_sample {start!r} must be an integer")
        start = int(start)
        last = self._segments[-1]
        if start < last.start and np.array_equal(w, self.weights_at(start)):
            # Already in the history: replaying recorded updates over a restored history is safe.
            return False
        if start < last.start:
            raise ValueError(
                f"start_sample {start} is before the last weight change at sample {last.start}: "
                f"updating there would change samples already drawn"
            )
        if start > self.size:
            raise ValueError(
                f"start_sample {start} is past the end of the blend ({self.size} samples)"
            )
        if np.array_equal(w, last.weights):
            return False
        if start == last.start:
            self._segments[-1] = Segment(start, w, last.counts)
            self._built[-1] = start
        else:
            # Build the open segment exactly up to `start` (usually done already by the reads
            # that consumed it) and carry its counts into the new segment.
            counts = self._counts_in(len(self._segments) - 1, start, cap=start)
            # The open segment becomes closed at `start`; anything built past it is stale.
            self._built[-1] = min(self._built[-1], start)
            self._segments.append(Segment(start, w, counts))
            self._starts.append(start)
            self._built.append(start)
        self._build(len(self._segments) - 1, min(start + 1, self.size))
        self._refresh_fast_range(after_update=True)
        return True

    # ----------------------------------------------------------------------------------------
    # Random access

    def ensure(self, idx: int) -> int:
        """Materialise global sample ``idx`` (the slow path of ``__getitem__``).

        Args:
            idx (int): a global sample, negative counting from the end as in numpy.

        Returns:
            int: the non-negative position, now valid in the index arrays.
        """
        if idx < 0:
            idx += self.size
        if not 0 <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for a blend of {self.size} samples")
        idx = int(idx)
        k = self.segment_of(idx)
        # A past segment (unbuilt after a resume) is built together with every later one, so
        # the fast range reaches back over it and the following reads stay on the fast path;
        # a static blend would have paid this at construction anyway.
        for j in range(k, len(self._segments) - 1):
            self._build(j, self.segment_end(j))
        self._build(k, idx + 1)
        self._refresh_fast_range()
        return idx

    def materialize_all(self) -> None:
        """Build every segment to its end (tests, exports; O(size))."""
        for k in range(len(self._segments)):
            self._build(k, self.segment_end(k), exact=True)
        self._refresh_fast_range()

    def verify(self) -> None:
        """Check the carried counts against a recount of the materialised indices (O(size)).

        Raises:
            ValueError: a segment's carried counts disagree with the draws before it.
        """
        self.materialize_all()
        total = np.zeros(self.num_datasets, np.int64)
        for k, seg in enumerate(self._segments):
            if not np.array_equal(total, seg.counts):
                raise ValueError(
                    f"segment {k} at sample {seg.start} carries counts {seg.counts.tolist()} "
                    f"but the blend drew {total.tolist()} before it"
                )
            part = self.dataset_index[seg.start : self.segment_end(k)]
            total += np.bincount(part, minlength=self.num_datasets).astype(np.int64)

    # ----------------------------------------------------------------------------------------
    # State

    def state_dict(self) -> Dict[str, Any]:
        """The weight history as plain JSON-able data.

        Returns:
            Dict[str, Any]: ``{"version", "size", "num_datasets", "lengths", "segments":
            [{"start_sample", "weights", "counts"}, ...]}``. Floats are Python floats, which
            JSON round-trips exactly; ``counts`` makes a resume O(window) instead of O(run).
        """
        return {
            "version": STATE_VERSION,
            "size": self.size,
            "num_datasets": self.num_datasets,
            "lengths": self.lengths.tolist(),
            "segments": [
                {
                    "start_sample": s.start,
                    "weights": s.weights.tolist(),
                    "counts": s.counts.tolist(),
                }
                for s in self._segments
            ],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace the weight history with a saved one; every index is then reproduced exactly.

        Args:
            state (Dict[str, Any]): what :meth:`state_dict` returned (possibly through JSON).

        Raises:
            ValueError: the state belongs to a different blend or is inconsistent.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a blend state of version {STATE_VERSION}: {state!r:.200}")
        expected = {
            "size": self.size,
            "num_datasets": self.num_datasets,
            "lengths": self.lengths.tolist(),
        }
        for key, mine in expected.items():
            if state.get(key) != mine:
                raise ValueError(
                    f"blend state has {key}={state.get(key)!r:.200}, this blend has {mine!r:.200}"
                )
        raw = state.get("segments")
        if not raw:
            raise ValueError("blend state has no segments")
        segments: List[Segment] = []
        for k, item in enumerate(raw):
            start = item["start_sample"]
            counts = np.array(item["counts"], dtype=np.int64)
            if not isinstance(start, int) or not 0 <= start <= self.size:
                raise ValueError(f"blend state segment {k}: bad start_sample {start!r}")
            if segments and start <= segments[-1].start:
                raise ValueError(f"blend state segment {k}: start_sample {start} does not increase")
            if (k == 0) != (start == 0):
                raise ValueError("blend state: the first segment, and only it, starts at sample 0")
            # Counts are the draws before `start`: non-negative, summing to `start`, and never
            # decreasing from one segment to the next.
            if (
                counts.shape != (self.num_datasets,)
                or counts.min() < 0
                or int(counts.sum()) != start
            ):
                raise ValueError(
                    f"blend state segment {k}: counts {item['counts']!r} do not sum to {start}"
                )
            if segments and np.any(counts < segments[-1].counts):
                raise ValueError(f"blend state segment {k}: counts decrease")
            weights = check_blend_weights(item["weights"], self.num_datasets, normalize=False)
            segments.append(Segment(start, weights, counts))
        self._reset(segments)

    # ----------------------------------------------------------------------------------------
    # Internals

    def _reset(self, segments: List[Segment]) -> None:
        self._segments = segments
        self._starts = [s.start for s in segments]
        # _built[k]: segment k is valid in the arrays over [start_k, _built[k]).
        self._built = [s.start for s in segments]
        self.lo = self.hi = 0
        self._build(len(segments) - 1, min(segments[-1].start + 1, self.size))
        self._refresh_fast_range()

    def _horizon(self) -> int:
        return max(1, int(math.ceil(self.update_window * (1.0 + _HORIZON_SLACK))))

    def _build(self, k: int, upto: int, exact: bool = False, cap: Optional[int] = None) -> None:
        """Make segment ``k`` valid at least over ``[start_k, upto)`` (and at most to ``cap``)."""
        seg = self._segments[k]
        end = self.segment_end(k) if cap is None else min(cap, self.segment_end(k))
        have = self._built[k]
        if upto <= have:
            return
        if k < len(self._segments) - 1 or exact:
            # A closed segment never changes again: build it whole, once.
            target = end
        else:
            # The open segment grows with the run: first a horizon of about one update window,
            # then doubling, so extending it costs amortised O(segment length).
            target = max(upto, seg.start + self._horizon(), seg.start + 2 * (have - seg.start))
            target = min(target, end)
        if target <= have:
            return
        self._fill(seg, seg.start, target)
        self._built[k] = target

    def _fill(self, seg: Segment, start: int, stop: int) -> None:
        """Write global samples ``[start, stop)`` of ``seg`` (``start`` is the segment's start).

        The greedy restarts from the segment's start, so re-filling a longer stretch rewrites
        the prefix with identical values.
        """
        di = self.dataset_index[start:stop]
        dsi = self.dataset_sample_index[start:stop]
        greedy_blend(di, dsi, seg.weights)
        # Segment-local draw numbers become run-global ones: add the carried counts.
        dsi += seg.counts[di]
        # Wrap only when some domain can run past its length in this stretch (rare), keeping
        # the common case to one gather-add.
        # The greedy keeps every local count within w_d * n + 1 (its errors sum to zero).
        n = stop - start
        if np.any(seg.counts + np.floor(seg.weights * n).astype(np.int64) + 2 > self.lengths):
            np.remainder(dsi, self.lengths[di], out=dsi)

    def _refresh_fast_range(self, after_update: bool = False) -> None:
        """``[lo, hi)``: the contiguous valid stretch ending at the open segment's horizon.

        After an update the old ``lo`` stays valid whenever the segment just closed is whole
        (it always is: the update built it to its end), which keeps updates O(1) in the
        number of past segments; other callers walk back over the segments.
        """
        k = len(self._segments) - 1
        self.hi = self._built[k]
        if after_update and (
            k == 0
            or (
                self._built[k - 1] == self.segment_end(k - 1)
                and self.lo <= self._segments[k - 1].start
            )
        ):
            self.lo = min(self.lo, self._segments[k].start)
            return
        lo = self._segments[k].start
        while k > 0 and self._built[k - 1] == self.segment_end(k - 1):
            k -= 1
            lo = self._segments[k].start
        self.lo = lo
