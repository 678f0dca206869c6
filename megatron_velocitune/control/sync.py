"""How one update is decided and shared, without the transport: pure numpy, no torch.

The controller hands an :class:`UpdateSync` this rank's local per-domain sums, the blend in force
and the pure policy; the sync returns the :class:`UpdateDecision` every rank applies. Two exist:

- :class:`LocalSync` (here): one process holds everything (tools, tests, a single-rank run);
- ``DistributedSync`` (:mod:`megatron_velocitune.control.distributed`, the edge that imports
  torch): reduce over data(+context)-parallel ranks, decide on one rank, broadcast, check every
  rank agrees.

Both decide with :func:`decide` and build the decision with :func:`make_decision`, so a
single-process run and a 64-rank run skip, fail and apply for the same reasons.
"""

import enum
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Tuple

import numpy as np

from megatron_velocitune.core.sums import DomainSums

__all__ = [
    "LocalSync",
    "Policy",
    "UpdateDecision",
    "UpdateStatus",
    "UpdateSync",
    "WeightMismatchError",
    "decide",
    "make_decision",
    "raise_policy_error",
]

logger = logging.getLogger(__name__)

#: New weights from the reduced mean losses and their standard errors (the pure policy, bound
#: to the run's state).
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


class WeightMismatchError(RuntimeError):
    """Ranks disagree on the blend (or on the iteration / sample it applies from)."""


class UpdateStatus(enum.IntEnum):
    """Outcome of one update, as the deciding rank reports it."""

    APPLIED = 0
    SKIPPED = 1  # a non-finite domain loss: weights kept
    ERROR = 2  # the policy raised on the decider


@dataclass
class UpdateDecision:
    """What every rank knows after an update (identical on all ranks).

    Attributes:
        weights (np.ndarray): the blend in force from now on (the old one if skipped).
        sums (DomainSums): the globally reduced per-domain loss sums and token counts.
        skipped (bool): the update was skipped (non-finite loss somewhere); weights kept.
        reason (str): why it was skipped ("" when applied).
        fallback (Optional[np.ndarray]): loss used for a domain with no tokens.
        changed (bool): the blend differs from the one in force before (bit for bit); only
            then is the data reloaded. A static (observe-only) run never changes it.
    """

    weights: np.ndarray
    sums: DomainSums
    skipped: bool
    reason: str = ""
    fallback: Optional[np.ndarray] = None
    changed: bool = False

    @property
    def eval_loss(self) -> np.ndarray:
        """Reduced mean loss per domain (the policy's input)."""
        return self.sums.mean(self.fallback)


class UpdateSync(Protocol):
    """Reduce, decide, share and check one update (see the module docstring)."""

    @property
    def is_decider(self) -> bool:  # pragma: no cover - protocol
        """Whether this rank applies the policy and writes the trajectory."""

    def update(
        self,
        local: DomainSums,
        weights: np.ndarray,
        policy: Policy,
        iteration: int,
        consumed_samples: int,
        fallback: Optional[np.ndarray] = None,
    ) -> UpdateDecision:  # pragma: no cover - protocol
        """The decision of this update, identical on every rank (call on every rank)."""

    def reduce(self, local: DomainSums) -> DomainSums:  # pragma: no cover - protocol
        """The global sums of ``local`` (validation and diagnostics)."""


def decide(
    reduced: DomainSums, weights: np.ndarray, policy: Policy, fallback: Optional[np.ndarray]
) -> Tuple[UpdateStatus, np.ndarray, str]:
    """The deciding rank's step: the policy on the reduced mean losses, or why not.

    Args:
        reduced (DomainSums): the global sums.
        weights (np.ndarray): the blend in force.
        policy (Policy): the pure policy, called with the mean losses and their standard errors.
        fallback (Optional[np.ndarray]): the loss of a domain without tokens (else NaN).

    Returns:
        Tuple[UpdateStatus, np.ndarray, str]: the status, the new blend (the old one unless
        applied) and the policy's error (``repr``) when it raised.
    """
    mean = reduced.mean(fallback)
    if not np.isfinite(mean).all():
        return UpdateStatus.SKIPPED, weights, ""
    try:
        new = np.asarray(policy(mean, reduced.stderr()), dtype=np.float64)
        if new.shape != weights.shape or not np.isfinite(new).all():
            raise ValueError(f"policy returned {new!r} for {weights.shape[0]} domains")
    except Exception as e:  # noqa: BLE001 - every rank must learn of it, then raise
        logger.exception("velocitune policy failed on the deciding rank")
        return UpdateStatus.ERROR, weights, repr(e)
    return UpdateStatus.APPLIED, new, ""


def raise_policy_error(decider: int, iteration: int, error: str) -> None:
    """Raise the deciding rank's policy failure (on every rank, so none waits in a collective).

    Raises:
        RuntimeError: always.
    """
    raise RuntimeError(
        f"velocitune: the weight policy failed on rank {decider} at iteration "
        f"{iteration}" + (f": {error}" if error else " (see that rank's log)")
    )


def make_decision(
    status: UpdateStatus,
    weights: np.ndarray,
    candidate: np.ndarray,
    sums: DomainSums,
    iteration: int,
    fallback: Optional[np.ndarray],
    bad_elsewhere: bool = False,
    decider: int = 0,
    error: str = "",
) -> UpdateDecision:
    """Turn the decider's outcome into the decision every rank applies.

    Args:
        status (UpdateStatus): as decided.
        weights (np.ndarray): the blend in force before.
        candidate (np.ndarray): the decided blend.
        sums (DomainSums): the global sums.
        iteration (int): the update's iteration (for messages).
        fallback (Optional[np.ndarray]): as given to :func:`decide`.
        bad_elsewhere (bool): some rank saw a non-finite loss the decider did not.
        decider (int): the deciding rank (for messages).
        error (str): the policy's error.

    Returns:
        UpdateDecision: the decision.

    Raises:
        RuntimeError: the policy raised on the decider.
    """
    if status is UpdateStatus.ERROR:
        raise_policy_error(decider, iteration, error)
    if status is UpdateStatus.SKIPPED or bad_elsewhere:
        reason = "non-finite loss " + (
            f"{sums.mean(fallback).tolist()}" if status is UpdateStatus.SKIPPED else "on some rank"
        )
        warnings.warn(
            f"velocitune: update at iteration {iteration} skipped ({reason}); weights kept",
            RuntimeWarning,
            stacklevel=3,
        )
        return UpdateDecision(weights.copy(), sums, skipped=True, reason=reason, fallback=fallback)
    changed = not np.array_equal(candidate, weights)
    return UpdateDecision(candidate, sums, skipped=False, fallback=fallback, changed=changed)


class LocalSync:
    """One process holds every domain's sums: decide in place, nothing to share or check."""

    is_decider = True

    def update(
        self,
        local: DomainSums,
        weights: np.ndarray,
        policy: Policy,
        iteration: int,
        consumed_samples: int,
        fallback: Optional[np.ndarray] = None,
    ) -> UpdateDecision:
        """See :class:`UpdateSync`."""
        weights = np.asarray(weights, dtype=np.float64)
        if local.num_domains != weights.shape[0]:
            raise ValueError(f"{local.num_domains} domain losses for {weights.shape[0]} domains")
        bad = not np.isfinite(local.to_vector()).all()
        status, candidate, error = decide(local, weights, policy, fallback)
        return make_decision(
            status, weights, candidate, local, iteration, fallback, bad, error=error
        )

    def reduce(self, local: DomainSums) -> DomainSums:
        """See :class:`UpdateSync`."""
        return local
