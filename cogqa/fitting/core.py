"""The generic fitter: Huber loss of log residuals, a log-sum-exp problem, L-BFGS-B from a grid of starts.

Every fit form writes its prediction as ``log L_hat = LSE_k(X[k] @ theta)``; this module minimises the summed
Huber(delta = 1e-3) of ``log L - log L_hat`` (loss in nats/token) within box bounds on theta.
"""

from __future__ import annotations

import contextlib
import itertools
import math  # noqa: F401
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import require

HUBER_DELTA = 1e-3
E_FLOOR = 1e-4  # nats per token: lower bound of every irreducible-loss coefficient


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss of residuals ``r`` (here in log-loss units): quadratic within ``delta``, linear outside."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass
class _Problem:
    """log L_hat = LSE_k(X[k] @ theta); y = log L; box bounds on theta."""

    X: np.ndarray  # (K terms, n rows, p params)
    y: np.ndarray  # (n,)
    lower: np.ndarray
    upper: np.ndarray
    delta: float = HUBER_DELTA

    def predict_log(self, theta: np.ndarray) -> np.ndarray:
        t = self.X @ theta  # (K, n)
        m = t.max(axis=0)
        return m + np.log(np.exp(t - m).sum(axis=0))

    def __post_init__(self) -> None:
        self._rows = np.ascontiguousarray(self.X.reshape(-1, self.X.shape[2]))  # (K n, p): one GEMV per call

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(summed Huber loss of the log residuals, its gradient in theta). With c = min(|r|, delta) the Huber
        loss of r is c (|r| - c / 2) and its derivative in r is sign(r) c (the clipped residual)."""
        K, n = self.X.shape[:2]
        t = (self._rows @ theta).reshape(K, n)
        m = t.max(axis=0)
        w = np.exp(t - m)
        s = w.sum(axis=0)
        r = self.y - m - np.log(s)
        a = np.abs(r)
        c = np.minimum(a, self.delta)
        f = float(c @ (a - 0.5 * c))
        w *= np.copysign(c, r) / s  # d huber / d pred = -clip(r), times the softmax weight of each term
        return f, -(w.ravel() @ self._rows)


def _minimise(problem: _Problem, starts: np.ndarray) -> tuple[np.ndarray, float]:
    """Best (theta, objective) of L-BFGS-B runs from every row of ``starts``."""
    import scipy.optimize  # noqa: F401  (load scipy's BLAS before limiting its threads)

    bounds = list(zip(problem.lower, problem.upper))
    with _one_blas_thread():
        best_x, best_f = _minimise_from(problem, starts, bounds)
    require(
        best_x is not None, "fit: the optimiser failed from every starting point; check the data for extreme values"
    )
    return best_x, best_f


def _one_blas_thread():
    """L-BFGS-B's tiny matrix products are ~15x slower with a multi-threaded BLAS on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimise_from(problem: _Problem, starts: np.ndarray, bounds) -> tuple[np.ndarray | None, float]:
    from scipy.optimize import minimize

    best_x, best_f = None, np.inf
    for x0 in starts:
        x0 = np.clip(x0, problem.lower, problem.upper)
        res = minimize(
            problem.objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxfun": 40000, "maxcor": 20},
        )
        if np.isfinite(res.fun) and res.fun < best_f:
            best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
    return best_x, best_f


def _rank_starts(problem: _Problem, grid: np.ndarray, keep: int | None) -> np.ndarray:
    """The grid points, best initial objective first, at most ``keep`` of them (all when None)."""
    if keep is None or keep >= len(grid):
        return grid
    g = np.clip(grid, problem.lower, problem.upper)
    # objective of every grid point, a block of points at a time: [points, terms, rows] stays under ~32 MB
    block = max(1, int(4e6 // (problem.X.shape[0] * problem.X.shape[1])))
    f = np.concatenate([_grid_objectives(problem, g[i : i + block]) for i in range(0, len(g), block)])
    return g[np.argsort(f, kind="stable")[:keep]]


def _grid_objectives(problem: _Problem, points: np.ndarray) -> np.ndarray:
    """Summed Huber loss of the log residuals at each of ``points`` [G, P] (fitted space): [G]."""
    t = np.einsum("knp,gp->gkn", problem.X, points)
    m = t.max(axis=1, keepdims=True)
    pred = m[:, 0, :] + np.log(np.exp(t - m).sum(axis=1))
    return huber(problem.y[None, :] - pred, problem.delta).sum(axis=1)


def _at_bound(problem: _Problem, theta: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    span = np.maximum(problem.upper - problem.lower, 1.0)
    return (np.abs(theta - problem.lower) <= tol * span) | (np.abs(theta - problem.upper) <= tol * span)


def _r2(loss: np.ndarray, pred: np.ndarray) -> float | None:
    ss_tot = float(((loss - loss.mean()) ** 2).sum())
    if ss_tot <= 0:
        return None
    return 1.0 - float(((loss - pred) ** 2).sum()) / ss_tot


def _grid(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), dtype=float)


def _as_positive(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    require(arr.size > 0, f"{name}: no values")
    require(np.isfinite(arr).all(), f"{name}: non-finite values (NaN/inf)")
    require((arr > 0).all(), f"{name}: values must be > 0")
    return arr


def _e_upper(loss: np.ndarray) -> float:
    return float(np.log(loss.max()))


def _starts(problem: _Problem, grid: np.ndarray, how: str | int, extra: np.ndarray | None) -> np.ndarray:
    ok = how == "full" or (
        isinstance(how, (int, np.integer))
        and not isinstance(how, bool)
        and (how > 0 or (how == 0 and extra is not None))
    )
    require(ok, f"grid: expected 'full' or a positive number of starting points, got {how!r}")
    if how == 0:
        return np.atleast_2d(np.asarray(extra, dtype=float))
    x0 = _rank_starts(problem, grid, None if how == "full" else how)
    if extra is not None:
        x0 = np.vstack([np.atleast_2d(np.asarray(extra, dtype=float)), x0])
    return x0


@dataclass(eq=False)
class LawFit(Mapping):
    """One fitted law. Reads like the dict of its public ``entries`` (coefficients, ``r2``, ``n_points``,
    ``objective`` = summed Huber of log residuals, ``at_bound`` = coefficient names on their bounds, and for
    shared-E fits ``E`` and ``groups``); ``theta`` is the optimum in the fitted (log) space, the starting point
    of bootstrap refits, and ``predicted`` the fitted loss of each row (nats/token)."""

    entries: dict[str, Any]
    theta: np.ndarray
    predicted: np.ndarray = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
