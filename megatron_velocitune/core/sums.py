"""Per-domain loss sums: what an evaluation returns, what the ranks reduce, what the policy reads.

Pure numpy: the controller and its synchronisation pass these around without importing torch.

Besides the token-weighted loss, the sums carry the per-sequence moments that give each domain's
standard error with the same one reduction: for sequences ``j`` with loss sum ``s_j`` over
``n_j`` tokens, the mean is ``m = sum(s) / sum(n)`` and its (ratio-estimator) standard error is
``sqrt(sum((s_j - m n_j)^2) * N / (N - 1)) / sum(n)`` over the ``N`` sequences, where
``sum((s_j - m n_j)^2) = sum(s^2) - 2 m sum(s n) + m^2 sum(n^2)``: every term is a sum, so summing
the fields over data-parallel ranks is exact.
"""

from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np

__all__ = ["DomainSums"]


def _zeros_like_loss(num_domains: int) -> np.ndarray:
    return np.zeros(num_domains, np.float64)


@dataclass
class DomainSums:
    """Per-domain loss sums, token counts and per-sequence moments (float64).

    Attributes:
        loss_sum (np.ndarray): sum of per-token losses over unmasked tokens, per domain.
        tokens (np.ndarray): number of unmasked tokens, per domain.
        sequences (np.ndarray): number of sequences with at least one unmasked token.
        loss_sq (np.ndarray): sum over sequences of the squared sequence loss sum ``s_j^2``.
        loss_tokens (np.ndarray): sum over sequences of ``s_j * n_j``.
        tokens_sq (np.ndarray): sum over sequences of ``n_j^2``.

    The four moment fields default to zeros (a source without per-sequence losses, e.g. the
    training stream): :meth:`stderr` is then NaN, "unknown".
    """

    loss_sum: np.ndarray
    tokens: np.ndarray
    sequences: Optional[np.ndarray] = field(default=None)
    loss_sq: Optional[np.ndarray] = field(default=None)
    loss_tokens: Optional[np.ndarray] = field(default=None)
    tokens_sq: Optional[np.ndarray] = field(default=None)

    #: Number of per-domain fields on the wire (:meth:`to_vector`).
    FIELDS = 6

    def __post_init__(self) -> None:
        k = int(np.asarray(self.loss_sum).shape[0])
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(
                self,
                f.name,
                _zeros_like_loss(k) if value is None else np.asarray(value, np.float64),
            )

    @classmethod
    def zeros(cls, num_domains: int) -> "DomainSums":
        """All-zero sums (what ranks off the last pipeline stage hold)."""
        return cls(_zeros_like_loss(num_domains), _zeros_like_loss(num_domains))

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

    def stderr(self) -> np.ndarray:
        """Standard error of each domain's mean loss over its sequences (nats).

        Returns:
            np.ndarray: the ratio estimator's standard error; NaN for a domain with fewer than
            two sequences (or a source that records no per-sequence moments).
        """
        n = self.sequences
        with np.errstate(invalid="ignore", divide="ignore"):
            m = self.loss_sum / self.tokens
            spread = self.loss_sq - 2.0 * m * self.loss_tokens + m * m * self.tokens_sq
            var = np.maximum(spread, 0.0) * n / (n - 1.0) / (self.tokens * self.tokens)
            return np.where(n >= 2, np.sqrt(var), np.nan)

    def add_sequences(self, domain: int, seq_loss: np.ndarray, seq_tokens: np.ndarray) -> None:
        """Add sequences' loss sums and token counts to one domain (masked-out ones skipped).

        Args:
            domain (int): the domain index.
            seq_loss (np.ndarray): each sequence's loss sum ``s_j``.
            seq_tokens (np.ndarray): each sequence's unmasked tokens ``n_j``.
        """
        s = np.asarray(seq_loss, np.float64)
        n = np.asarray(seq_tokens, np.float64)
        real = n > 0
        s, n = s[real], n[real]
        self.loss_sum[domain] += s.sum()
        self.tokens[domain] += n.sum()
        self.sequences[domain] += s.size
        self.loss_sq[domain] += (s * s).sum()
        self.loss_tokens[domain] += (s * n).sum()
        self.tokens_sq[domain] += (n * n).sum()

    def to_vector(self) -> np.ndarray:
        """Every field, domain-major per field: the layout reduced and broadcast on the wire."""
        return np.concatenate([getattr(self, f.name) for f in fields(self)]).astype(np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> "DomainSums":
        """Inverse of :meth:`to_vector`."""
        vector = np.asarray(vector, np.float64)
        k = vector.shape[0] // cls.FIELDS
        return cls(*(np.array(vector[i * k : (i + 1) * k]) for i in range(cls.FIELDS)))
