"""Per-domain loss sums: what an evaluation returns, what the ranks reduce, what the policy reads.

Pure numpy: the controller and its synchronisation pass these around without importing torch.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["DomainSums"]


@dataclass
class DomainSums:
    """Per-domain loss sums and token counts (float64).

    Attributes:
        loss_sum (np.ndarray): sum of per-token losses over unmasked tokens, per domain.
        tokens (np.ndarray): number of unmasked tokens, per domain.
    """

    loss_sum: np.ndarray
    tokens: np.ndarray

    @classmethod
    def zeros(cls, num_domains: int) -> "DomainSums":
        """All-zero sums (what ranks off the last pipeline stage hold)."""
        return cls(np.zeros(num_domains, np.float64), np.zeros(num_domains, np.float64))

    @property
    def num_domains(self) -> int:
        return int(self.loss_sum.shape[0])

    def mean(self, fallback: Optional[np.ndarray] = None) -> np.ndarray:
        """Mean loss per token, per domain.

        Args:
            fallback (Optional[np.ndarray]): the value of a domain without tokens (the
                previous estimate, for the training-stream source); NaN when None.
        """
        missing = np.nan if fallback is None else np.asarray(fallback, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.tokens > 0, self.loss_sum / np.maximum(self.tokens, 1), missing)

    def to_vector(self) -> np.ndarray:
        """``[loss_sum..., tokens...]``, the layout reduced and broadcast on the wire."""
        return np.concatenate([self.loss_sum, self.tokens]).astype(np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> "DomainSums":
        """Inverse of :meth:`to_vector`."""
        k = vector.shape[0] // 2
        return cls(np.array(vector[:k], np.float64), np.array(vector[k:], np.float64))
