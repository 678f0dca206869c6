"""Domain reweighting rules: Velocitune (Algorithm 1), its baselines and ablations.

Pure numpy, no torch.distributed, no I/O: every function takes the current weight vector and
per-domain losses (float64 arrays of length k, one entry per domain, in blend order) and returns
a new weight vector on the probability simplex.

    velocity(L_t, L_init, L_target) = clamp((L_t - L_target) / (L_init - L_target), 0, 1)
    velocity_update:  w <- normalize(w * exp(V))                      (Velocitune, Algorithm 1)
    dbl_update:       w <- normalize(w * exp(max(L_t - L_target, 0))) (Sheared LLaMA's DBL)
    ratio_update:     w <- normalize(w * exp(L_t / L_init))           ("without target loss")
    static_update:    w <- w                                          (CPT baseline)

With ``min_weight == 0`` (the default of these functions) the results are the formulas above to
the last bit. A positive ``min_weight`` mixes the result towards uniform just enough that every
domain keeps at least ``min_weight``: ``w <- (1 - k * min_weight) * w + min_weight``.
"""

from typing import Callable, Dict, Optional

import numpy as np

__all__ = [
    "POLICIES",
    "apply_floor",
    "dbl_update",
    "normalize",
    "ratio_update",
    "static_update",
    "update_weights",
    "velocity",
    "velocity_update",
]


def normalize(weights: np.ndarray) -> np.ndarray:
    """Scale non-negative weights to sum to one.

    Args:
        weights (np.ndarray): non-negative weights, at least one positive.

    Returns:
        np.ndarray: ``weights / weights.sum()`` as float64.
    """
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()


def apply_floor(weights: np.ndarray, min_weight: float) -> np.ndarray:
    """Mix normalised weights towards uniform so each is at least ``min_weight``.

    The mixture ``(1 - k * min_weight) * w + min_weight`` keeps the order of the weights and
    their sum, and is the identity at ``min_weight == 0``.

    Args:
        weights (np.ndarray): weights on the simplex.
        min_weight (float): the floor, in ``[0, 1 / k)``.

    Returns:
        np.ndarray: floored weights on the simplex.
    """
    if min_weight == 0.0:
        return weights
    k = weights.shape[0]
    if not 0.0 <= min_weight * k < 1.0:
        raise ValueError(f"min_weight {min_weight} must be in [0, 1/{k}) for {k} domains")
    return (1.0 - k * min_weight) * weights + min_weight


def velocity(current: np.ndarray, initial: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Learning velocity of each domain (Velocitune, Algorithm 1).

    ``V = 1`` means no progress yet from the initial loss towards the target (or forgetting:
    the loss rose above its initial value); ``V = 0`` means the target is reached.

    Args:
        current (np.ndarray): held-out loss now, ``L_t``.
        initial (np.ndarray): held-out loss of the base model, ``L_init``.
        target (np.ndarray): predicted loss at the full budget, ``L_target`` (< ``L_init``).

    Returns:
        np.ndarray: ``clamp((L_t - L_target) / (L_init - L_target), 0, 1)``.
    """
    current, initial, target = (np.asarray(a, dtype=np.float64) for a in (current, initial, target))
    return np.clip((current - target) / (initial - target), 0.0, 1.0)


def velocity_update(
    weights: np.ndarray,
    current: np.ndarray,
    initial: np.ndarray,
    target: np.ndarray,
    min_weight: float = 0.0,
) -> np.ndarray:
    """Velocitune's update: slow domains (large velocity) gain weight.

    Returns:
        np.ndarray: ``normalize(w * exp(velocity(L_t, L_init, L_target)))``, floored.
    """
    new = np.asarray(weights, dtype=np.float64) * np.exp(velocity(current, initial, target))
    return apply_floor(normalize(new), min_weight)


def dbl_update(
    weights: np.ndarray, current: np.ndarray, target: np.ndarray, min_weight: float = 0.0
) -> np.ndarray:
    """Dynamic Batch Loading (Xia et al. 2023, Sheared LLaMA), the paper's DBL baseline.

    Returns:
        np.ndarray: ``normalize(w * exp(max(L_t - L_target, 0)))``, floored.
    """
    gap = np.maximum(np.asarray(current, np.float64) - np.asarray(target, np.float64), 0.0)
    return apply_floor(normalize(np.asarray(weights, np.float64) * np.exp(gap)), min_weight)


def ratio_update(
    weights: np.ndarray, current: np.ndarray, initial: np.ndarray, min_weight: float = 0.0
) -> np.ndarray:
    """The "without target loss" ablation (Velocitune section 3.5): ``delta = L_t / L_init``.

    Returns:
        np.ndarray: ``normalize(w * exp(L_t / L_init))``, floored.
    """
    ratio = np.asarray(current, np.float64) / np.asarray(initial, np.float64)
    return apply_floor(normalize(np.asarray(weights, np.float64) * np.exp(ratio)), min_weight)


def static_update(weights: np.ndarray) -> np.ndarray:
    """The CPT baseline: the blend never changes.

    Returns:
        np.ndarray: a float64 copy of ``weights``.
    """
    return np.array(weights, dtype=np.float64)


# Each policy in one signature, so callers pick a rule by name without caring which losses it reads.
POLICIES: Dict[str, Callable[..., np.ndarray]] = {
    "velocity": lambda w, cur, ini, tgt, f: velocity_update(w, cur, ini, tgt, f),
    "dbl": lambda w, cur, ini, tgt, f: dbl_update(w, cur, tgt, f),
    "ratio": lambda w, cur, ini, tgt, f: ratio_update(w, cur, ini, f),
    "static": lambda w, cur, ini, tgt, f: static_update(w),
}


def update_weights(
    policy: str,
    weights: np.ndarray,
    current: np.ndarray,
    initial: Optional[np.ndarray],
    target: Optional[np.ndarray],
    min_weight: float = 0.0,
) -> np.ndarray:
    """Apply the named policy (one of :data:`POLICIES`).

    Args:
        policy (str): ``velocity``, ``dbl``, ``ratio`` or ``static``.
        weights (np.ndarray): the current blend.
        current (np.ndarray): held-out loss now.
        initial (Optional[np.ndarray]): initial loss (``velocity``, ``ratio``).
        target (Optional[np.ndarray]): target loss (``velocity``, ``dbl``).
        min_weight (float): weight floor.

    Returns:
        np.ndarray: the new blend.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[policy](weights, current, initial, target, min_weight)
