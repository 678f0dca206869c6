"""Phased blends: the ``schedule`` policy's blend, a pure function of the iteration.

A phased (multi-stage) blend changes at given iterations whatever the losses say, as in
two-phase pre-training (Feng et al. 2024) or a replay share raised late in the run. It is the
honest static alternative to a reactive rule, so it runs through the very path a Velocitune
update takes (``update_weights(w, start_sample)`` on the training dataset, the weight history,
the sidecar and its resume) and needs no relaunch per phase.

    --velocitune-blend-schedule ITER:W1,W2,... [ITER:W1,W2,... ...]

Each phase gives one weight per domain, in ``--data-path`` order; the ``--data-path`` weights
are the blend until the first phase. The blend of phase ``ITER:...`` applies from the first
sample after iteration ``ITER`` (like an update at iteration ``ITER``). Weights are normalised
as megatron-core normalises ``--data-path`` weights.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from megatron_velocitune.core.blending import check_blend_weights

__all__ = ["SCHEDULE_FLAG", "BlendSchedule"]

SCHEDULE_FLAG = "--velocitune-blend-schedule"


@dataclass(frozen=True)
class BlendSchedule:
    """The phases of a phased blend.

    Attributes:
        iterations (Tuple[int, ...]): the iterations after which each phase starts, increasing.
        blends (Tuple[Tuple[float, ...], ...]): each phase's blend, normalised.
    """

    iterations: Tuple[int, ...]
    blends: Tuple[Tuple[float, ...], ...]

    @classmethod
    def parse(cls, phases: Sequence[str], num_domains: int) -> "BlendSchedule":
        """Read ``ITER:W1,W2,...`` phases.

        Args:
            phases (Sequence[str]): one ``ITER:W1,...,Wk`` string per phase, in order.
            num_domains (int): ``k``, the number of domains of the blend.

        Returns:
            BlendSchedule: the schedule.

        Raises:
            ValueError: one line naming the flag and the phase at fault: not ``ITER:W,...``, an
                iteration that is not an integer >= 1 or not above the one before, or weights
                that are not ``k`` finite numbers > 0.
        """
        if not phases:
            raise ValueError(f"{SCHEDULE_FLAG}: no phases (give ITER:W1,W2,... per phase)")
        iterations, blends = [], []
        for phase in phases:
            head, sep, tail = str(phase).partition(":")
            try:
                iteration = int(head)
            except ValueError:
                iteration = 0
            if not sep or iteration < 1:
                raise ValueError(
                    f"{SCHEDULE_FLAG} {phase}: a phase is ITER:W1,W2,... with ITER an integer "
                    ">= 1 (the iteration after which its blend applies)"
                )
            if iterations and iteration <= iterations[-1]:
                raise ValueError(
                    f"{SCHEDULE_FLAG} {phase}: iteration {iteration} is not after the previous "
                    f"phase's {iterations[-1]} (phases in increasing order)"
                )
            blend = check_blend_weights(
                _numbers(tail), num_domains, what=f"{SCHEDULE_FLAG} {phase}: weights"
            )
            iterations.append(iteration)
            blends.append(tuple(float(w) for w in blend))
        return cls(tuple(iterations), tuple(blends))

    def blend_after(self, iteration: int, initial: Sequence[float]) -> np.ndarray:
        """The blend in force for the samples after ``iteration``.

        Args:
            iteration (int): an iteration just completed.
            initial (Sequence[float]): the blend before the first phase (``--data-path``).

        Returns:
            np.ndarray: the latest phase that started at or before ``iteration``, else
            ``initial``.
        """
        started = [b for i, b in zip(self.iterations, self.blends) if i <= iteration]
        return np.array(started[-1] if started else initial, dtype=np.float64)

    def to_json(self) -> list:
        """The phases as the trajectory header and the resume identity record them."""
        return [[i, list(b)] for i, b in zip(self.iterations, self.blends)]


def _numbers(text: str) -> list:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        return [text]
