"""Robust curve fitting shared by the scaling laws (Chinchilla data term and D-CPT Law).

Both laws are fitted the way Hoffmann et al. (2022) fit Chinchilla (and, as far as could be
checked here, Que et al. (2024) the D-CPT Law, who also report the Huber loss of their fits):
minimise the Huber loss of the residuals ``log(prediction) - log(observed)`` with
L-BFGS-B inside box bounds, from every point of a small grid of starting parameters (each start
runs a few iterations, the best two then run to convergence), and keep the best optimum.
Working on log-loss makes the residuals relative (a 1% miss weighs the same on a domain at loss
1.5 as on one at 3.0); the Huber loss keeps one spiky evaluation from dragging the asymptote; the
grid of starts guards against the shallow, curved valleys these power laws have
(``E`` trades off against ``B`` and ``beta``), where a single start often stops early.

Pure numpy/scipy, no I/O. A law supplies ``model(params, x) -> (prediction, jacobian)`` with the
Jacobian of the prediction in the parameters (analytic gradients make the many starts cheap).
"""

import contextlib
import itertools
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import minimize

try:  # optional (a dev extra): see single_threaded_blas
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    threadpool_limits = None

__all__ = [
    "DEFAULT_HUBER_DELTA",
    "FitFailedError",
    "FitOutcome",
    "ModelFn",
    "fit_huber_log",
    "huber",
    "huber_log_loss",
    "r_squared",
    "single_threaded_blas",
    "start_grid",
]

# Hoffmann et al. (2022) use delta = 1e-3 on log-loss residuals (assumed the same for the D-CPT
# Law): residuals smaller than 0.1% are treated quadratically, larger ones linearly.
DEFAULT_HUBER_DELTA = 1e-3

# Predictions are clipped here before the log so that a start that wanders to a non-positive
# prediction gets a large, finite loss instead of a NaN that stops L-BFGS-B.
_TINY = 1e-12

ModelFn = Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


class FitFailedError(RuntimeError):
    """No start of the optimiser reached a finite optimum."""


@dataclass
class FitOutcome:
    """The best optimum over all starts.

    Attributes:
        params (np.ndarray): best parameters, inside the bounds.
        loss (float): mean Huber loss of the log residuals at ``params``.
        converged (bool): whether L-BFGS-B reported success for the best start.
        starts (int): how many starts were run.
        message (str): the optimiser's message for the best start.
    """

    params: np.ndarray
    loss: float
    converged: bool
    starts: int
    message: str


def single_threaded_blas():
    """A context in which BLAS runs on one thread (a no-op without threadpoolctl).

    L-BFGS-B and SLSQP call BLAS on vectors of a few parameters; a multi-threaded OpenBLAS wakes
    its thread pool for each call, which on a busy machine costs far more than the arithmetic
    (measured on 2 loaded cores: 1.3 s against 0.03 s of CPU per Chinchilla fit).

    Returns:
        a context manager.
    """
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def huber(residuals: np.ndarray, delta: float = DEFAULT_HUBER_DELTA) -> np.ndarray:
    """Elementwise Huber loss: ``r^2 / 2`` for ``|r| <= delta``, else ``delta (|r| - delta/2)``.

    Args:
        residuals (np.ndarray): residuals.
        delta (float): where the quadratic part turns linear (> 0).

    Returns:
        np.ndarray: the loss of each residual.
    """
    a = np.abs(np.asarray(residuals, dtype=np.float64))
    return np.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))


def _huber_grad(residuals: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(residuals, -delta, delta)


def huber_log_loss(
    prediction: np.ndarray, observed: np.ndarray, delta: float = DEFAULT_HUBER_DELTA
) -> float:
    """Mean Huber loss of ``log(prediction) - log(observed)`` (the fit's objective).

    Args:
        prediction (np.ndarray): predicted losses (> 0).
        observed (np.ndarray): observed losses (> 0).
        delta (float): Huber threshold.

    Returns:
        float: the mean Huber loss.
    """
    prediction = np.maximum(np.asarray(prediction, dtype=np.float64), _TINY)
    observed = np.asarray(observed, dtype=np.float64)
    return float(np.mean(huber(np.log(prediction) - np.log(observed), delta)))


def r_squared(prediction: np.ndarray, observed: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of losses (not log-losses).

    Args:
        prediction (np.ndarray): predicted losses.
        observed (np.ndarray): observed losses.

    Returns:
        float: R^2; ``nan`` when the observations are all equal.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((observed - prediction) ** 2)) / ss_tot


def start_grid(*axes: Sequence[float]) -> List[np.ndarray]:
    """All combinations of per-parameter starting values (a Cartesian grid).

    Args:
        *axes (Sequence[float]): candidate starting values, one sequence per parameter.

    Returns:
        List[np.ndarray]: one starting vector per grid point.
    """
    return [np.array(p, dtype=np.float64) for p in itertools.product(*axes)]


def fit_huber_log(
    model: ModelFn,
    x: np.ndarray,
    observed: np.ndarray,
    starts: Sequence[np.ndarray],
    bounds: Sequence[Tuple[Optional[float], Optional[float]]],
    delta: float = DEFAULT_HUBER_DELTA,
    max_iter: int = 500,
    screen_iter: int = 25,
    polish: int = 2,
) -> FitOutcome:
    """Minimise the mean Huber loss of log residuals with L-BFGS-B from several starts.

    Args:
        model (ModelFn): ``model(params, x) -> (prediction (n,), jacobian (n, p))``.
        x (np.ndarray): inputs, passed to ``model`` unchanged (any shape the model expects).
        observed (np.ndarray): observed losses, shape (n,), all > 0.
        starts (Sequence[np.ndarray]): starting parameter vectors (clipped into ``bounds``).
        bounds (Sequence[Tuple[Optional[float], Optional[float]]]): (low, high) per parameter.
        delta (float): Huber threshold on log residuals.
        max_iter (int): L-BFGS-B iteration limit of a polished start.
        screen_iter (int): iterations every start gets first; only the ``polish`` best then
            run to ``max_iter`` (most starts of these laws end in the same valley, so running
            each to convergence mostly repeats work).
        polish (int): how many screened starts are run to convergence.

    Returns:
        FitOutcome: the best optimum over all starts.

    Raises:
        ValueError: on non-positive or non-finite observations.
        FitFailedError: when every start ends at a non-finite loss.
    """
    observed = np.asarray(observed, dtype=np.float64)
    if observed.ndim != 1 or observed.size == 0:
        raise ValueError(f"observed losses must be a non-empty vector, got shape {observed.shape}")
    if not np.all(np.isfinite(observed)) or np.any(observed <= 0.0):
        raise ValueError("observed losses must be finite and positive to fit on log-loss")
    log_obs = np.log(observed)
    n = observed.size
    lows = np.array([-np.inf if lo is None else lo for lo, _ in bounds], dtype=np.float64)
    highs = np.array([np.inf if hi is None else hi for _, hi in bounds], dtype=np.float64)

    def objective(params: np.ndarray) -> Tuple[float, np.ndarray]:
        pred, jac = model(params, x)
        safe = np.maximum(pred, _TINY)
        resid = np.log(safe) - log_obs
        loss = float(np.sum(huber(resid, delta))) / n
        # d loss / d params = mean(huber'(r) * (1/pred) * d pred / d params); zero where the
        # prediction was clipped, which pushes nothing but keeps the gradient finite.
        dr = np.where(pred > _TINY, _huber_grad(resid, delta) / safe, 0.0)
        # An elementwise sum, not ``dr @ jac``: on a busy machine a BLAS call on these tiny
        # arrays wakes OpenBLAS's thread pool and costs far more than the arithmetic.
        grad = np.sum(dr[:, None] * jac, axis=0) / n
        if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
            return 1e6, np.zeros_like(params)
        return loss, grad

    def run(p0: np.ndarray, iters: int):
        with warnings.catch_warnings():
            # Power laws overflow harmlessly at far-out trial points; the objective guards them.
            warnings.simplefilter("ignore", RuntimeWarning)
            return minimize(
                objective,
                p0,
                jac=True,
                method="L-BFGS-B",
                bounds=list(zip(lows, highs)),
                options={"maxiter": iters, "ftol": 1e-15, "gtol": 1e-12},
            )

    with single_threaded_blas():
        screened = []
        for start in starts:
            res = run(np.clip(np.asarray(start, dtype=np.float64), lows, highs), screen_iter)
            if np.isfinite(res.fun) and res.fun < 1e6:
                screened.append(res)
        screened.sort(key=lambda res: float(res.fun))
        polished = [
            res if res.success else run(res.x, max_iter) for res in screened[: max(polish, 1)]
        ]
    best: Optional[FitOutcome] = None
    for res in polished:
        loss = float(res.fun)
        if not np.isfinite(loss) or loss >= 1e6:
            continue
        if best is None or loss < best.loss:
            best = FitOutcome(
                params=np.asarray(res.x, dtype=np.float64),
                loss=loss,
                converged=bool(res.success),
                starts=len(starts),
                message=str(res.message),
            )
    if best is None:
        raise FitFailedError(f"no finite optimum from {len(starts)} starts")
    return best
