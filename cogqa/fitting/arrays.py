"""The laws on arrays: fit Chinchilla, the paper's Eq. 7 (per H and with a shared E), Appendix I's head law
and the joint law across head configurations (N in parameters, D in tokens, loss in nats/token)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import require
from .core import E_FLOOR, LawFit, _as_positive, _at_bound, _e_upper, _grid, _minimise, _Problem, _r2, _starts

CHINCHILLA_GRID = (
    np.arange(0, 30, 5.0),
    np.arange(0, 30, 5.0),
    np.arange(-1, 1.5, 0.5),
    np.arange(0, 2.5, 0.5),
    np.arange(0, 2.5, 0.5),
)


def _finish(
    problem: _Problem, theta: np.ndarray, f: float, loss: np.ndarray, coefs: dict[str, float], names: list[str]
) -> LawFit:
    pred = np.exp(problem.predict_log(theta))
    out: dict[str, Any] = dict(coefs)
    out["r2"] = _r2(loss, pred)
    out["n_points"] = int(loss.size)
    out["objective"] = f
    out["at_bound"] = [n for n, hit in zip(names, _at_bound(problem, theta)) if hit]
    return LawFit(out, theta, pred)


def _chinchilla_problem(N, D, loss) -> _Problem:
    lnN, lnD, one, zero = np.log(N), np.log(D), np.ones_like(N), np.zeros_like(N)
    # theta = (a = ln A, b = ln B, e = ln E, alpha, beta)
    X = np.stack(
        [
            np.stack([one, zero, zero, -lnN, zero], axis=1),
            np.stack([zero, one, zero, zero, -lnD], axis=1),
            np.stack([zero, zero, one, zero, zero], axis=1),
        ]
    )
    lower = np.array([-30.0, -30.0, math.log(E_FLOOR), 0.0, 0.0])
    upper = np.array([100.0, 100.0, _e_upper(loss), 5.0, 5.0])
    return _Problem(X, np.log(loss), lower, upper)


def _chinchilla_coefs(theta: np.ndarray) -> dict[str, float]:
    return {
        "A": math.exp(theta[0]),
        "B": math.exp(theta[1]),
        "E": math.exp(theta[2]),
        "alpha": float(theta[3]),
        "beta": float(theta[4]),
    }


def fit_chinchilla(N, D, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> LawFit:
    """Fit ``L = E + A / N^alpha + B / D^beta`` (N parameters, D tokens, L nats/token).

    Returns {"E", "A", "B", "alpha", "beta", "r2", "n_points", "objective" (summed Huber of log
    residuals), "at_bound" (coefficient names on their bounds)}. ``grid``: "full" starts L-BFGS-B from
    every point of Hoffmann et al.'s grid (ln A, ln B in {0,5,..,25}, ln E in {-1,..,1}, alpha, beta in
    {0,..,2}: 4,500 starts); an integer k starts from the k grid points with the lowest initial objective.
    ``starts`` (rows of ln A, ln B, ln E, alpha, beta) are tried in addition.
    """
    N, D, loss = _as_positive(N, "N"), _as_positive(D, "D (tokens)"), _as_positive(loss, "loss")
    require(N.size == D.size == loss.size, "fit_chinchilla: N, D and loss must have the same length")
    require(loss.size >= 6, f"fit_chinchilla: {loss.size} points for 5 coefficients; need at least 6")
    problem = _chinchilla_problem(N, D, loss)
    x0 = _starts(problem, _grid(*CHINCHILLA_GRID), grid, starts)
    theta, f = _minimise(problem, x0)
    return _finish(problem, theta, f, loss, _chinchilla_coefs(theta), ["A", "B", "E", "alpha", "beta"])


N_GRID = (np.arange(0.0, 30.0, 2.5), np.array([0.05, 0.1, 0.2, 0.3, 0.5, 1.0]), np.arange(-1, 1.5, 0.5))


def _n_problem(N: np.ndarray, loss: np.ndarray, group: np.ndarray, n_groups: int, shared_E: bool) -> _Problem:
    """theta = (c_1, b_1, e_1, c_2, b_2, e_2, ...) or with shared E (c_1, b_1, c_2, b_2, ..., e)."""
    per = 2 if shared_E else 3
    p = per * n_groups + (1 if shared_E else 0)
    n = N.size
    X = np.zeros((2, n, p))
    rows = np.arange(n)
    X[0, rows, per * group] = 1.0
    X[0, rows, per * group + 1] = -np.log(N)
    X[1, rows, (p - 1) if shared_E else (per * group + 2)] = 1.0
    lower, upper = np.empty(p), np.empty(p)
    for g in range(n_groups):
        lower[per * g : per * g + 2] = (-50.0, 1e-3)
        upper[per * g : per * g + 2] = (200.0, 5.0)
        if not shared_E:
            lower[per * g + 2], upper[per * g + 2] = math.log(E_FLOOR), _e_upper(loss[group == g])
    if shared_E:
        lower[-1], upper[-1] = math.log(E_FLOOR), _e_upper(loss)
    return _Problem(X, np.log(loss), lower, upper)


def fit_power_law(N, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> LawFit:
    """Fit the paper's Eq. 7 ``L = (a / N)^b + E`` for one head configuration (N parameters, L nats/token).

    Returns {"a" (parameters), "b", "E" (nats/token), "r2", "n_points", "objective", "at_bound"}.
    Fitted as LSE(c - b ln N, ln E) with c = b ln a, from the grid c in {0, 2.5, .., 27.5},
    b in {0.05, .., 1}, ln E in {-1, .., 1} (``grid`` as in :func:`fit_chinchilla`).
    """
    N, loss = _as_positive(N, "N"), _as_positive(loss, "loss")
    require(N.size == loss.size, "fit_power_law: N and loss must have the same length")
    require(loss.size >= 4, f"fit_power_law: {loss.size} points for 3 coefficients; need at least 4")
    problem = _n_problem(N, loss, np.zeros(N.size, dtype=int), 1, False)
    theta, f = _minimise(problem, _starts(problem, _grid(*N_GRID), grid, starts))
    c, b, e = theta
    return _finish(problem, theta, f, loss, {"a": _a_from(c, b), "b": float(b), "E": math.exp(e)}, ["a", "b", "E"])


def _a_from(c: float, b: float) -> float:
    """a = exp(c / b) in parameters; a one-line error when a degenerate fit (b -> 0) makes it overflow. When it
    would underflow (c / b < -700: loss flat or rising with N, b on its lower bound) a is held at exp(-700), the
    smallest value a law file can carry (a must be > 0); such a group is flagged at its bound and as rising."""
    require(
        c / b < 700,
        f"fit: a = exp({c / b:.0f}) parameters overflows (b = {b:.3g}): the losses barely fall with N; "
        "check the data or fit with --form heads / a wider range of sizes",
    )
    return math.exp(max(c / b, -700.0))


def fit_power_law_shared_E(N, loss, group, grid_per_group: str | int = 32, starts: np.ndarray | None = None) -> LawFit:
    """Joint fit of ``L = (a_g / N)^b_g + E`` with one E for all groups g = 0..G-1 (integer labels).

    Returns {"E", "groups": [{"a", "b", "r2", "n_points", "at_bound"}...], "objective", "at_bound"}.
    Starts: each group's own fit (c, b) with the median of their ln E, plus the grid on ln E.
    """
    N, loss = _as_positive(N, "N"), _as_positive(loss, "loss")
    group = np.asarray(group, dtype=int).ravel()
    n_groups = int(group.max()) + 1
    problem = _n_problem(N, loss, group, n_groups, True)
    if starts is None:
        own = [_own_start(N[group == g], loss[group == g], loss.min(), grid_per_group) for g in range(n_groups)]
        cb = np.concatenate([t[:2] for t in own])
        es = [float(np.median([t[2] for t in own]))] + list(N_GRID[2]) + [math.log(max(E_FLOOR, 0.9 * loss.min()))]
        starts = np.array([np.concatenate([cb, [e]]) for e in es])
    theta, f = _minimise(problem, np.atleast_2d(starts))
    pred = np.exp(problem.predict_log(theta))
    hits = _at_bound(problem, theta)
    groups = []
    for g in range(n_groups):
        c, b = theta[2 * g], theta[2 * g + 1]
        m = group == g
        names = [n for n, hit in zip(("a", "b"), hits[2 * g : 2 * g + 2]) if hit]
        groups.append(
            {
                "a": _a_from(c, b),
                "b": float(b),
                "r2": _r2(loss[m], pred[m]),
                "n_points": int(m.sum()),
                "at_bound": names,
            }
        )
    values = {
        "E": math.exp(theta[-1]),
        "groups": groups,
        "objective": f,
        "at_bound": ["E"] if hits[-1] else [],
        "r2": _r2(loss, pred),
        "n_points": int(loss.size),
    }
    return LawFit(values, theta, pred)


def _own_start(N: np.ndarray, loss: np.ndarray, loss_min: float, grid) -> np.ndarray:
    """(c, b, ln E) of one group: its own fit, or with < 4 points a straight line through log(L - 0.9 min L)."""
    if loss.size >= 4 and np.unique(N).size >= 2:
        return fit_power_law(N, loss, grid=grid).theta
    E0 = 0.9 * loss_min
    slope, icept = np.polyfit(np.log(N), np.log(loss - E0), 1) if np.unique(N).size >= 2 else (-0.3, 0.0)
    b = float(np.clip(-slope, 0.01, 2.0))
    return np.array([float(icept), b, math.log(E0)])


HEAD_GRID = (
    np.array([-3.0, -2.0, -1.0, 0.0, 1.0]),
    np.array([-1.0, -0.5, -0.2, -0.1, -0.03, 0.1]),
    np.arange(-1, 1.5, 0.5),
)


def _head_problem(n_heads: np.ndarray, loss: np.ndarray) -> _Problem:
    one, zero = np.ones_like(n_heads), np.zeros_like(n_heads)
    X = np.stack([np.stack([one, np.log(n_heads), zero], axis=1), np.stack([zero, zero, one], axis=1)])
    lower = np.array([-30.0, -5.0, math.log(E_FLOOR)])
    upper = np.array([30.0, 5.0, _e_upper(loss)])
    return _Problem(X, np.log(loss), lower, upper)


def fit_head_law(n_heads, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> LawFit:
    """Fit Appendix I's head law ``L(n_h) = a n_h^b + c`` at one model size (L and c in nats/token).

    Returns {"a", "b", "c", "r2", "n_points", "objective", "at_bound"}. Fitted as LSE(ln a + b ln n_h, ln c)
    with a > 0, c >= 1e-4, b in [-5, 5].
    """
    n_heads, loss = _as_positive(n_heads, "n_heads"), _as_positive(loss, "loss")
    require(n_heads.size == loss.size, "fit_head_law: n_heads and loss must have the same length")
    require(loss.size >= 4, f"fit_head_law: {loss.size} points for 3 coefficients; need at least 4")
    require(np.unique(n_heads).size >= 3, "fit_head_law: needs at least 3 distinct head counts")
    problem = _head_problem(n_heads, loss)
    theta, f = _minimise(problem, _starts(problem, _grid(*HEAD_GRID), grid, starts))
    return _finish(
        problem,
        theta,
        f,
        loss,
        {"a": math.exp(theta[0]), "b": float(theta[1]), "c": math.exp(theta[2])},
        ["a", "b", "c"],
    )


JOINT_GRID = (
    np.arange(0.0, 25.0, 5.0),
    np.array([0.1, 0.3, 0.6]),
    np.array([-1.0, 0.0, 0.5]),
    np.array([-4.0, -2.0, -1.0]),
    np.array([0.3, 1.0]),
    np.array([-4.0, -2.0]),
    np.array([0.3, 1.0]),
)
JOINT_NAMES = ("a", "b", "E", "A", "g", "B", "k")  # fitted as (c, b, e_inf, ln A, g, ln B, k)


def _joint_problem(N, n_heads, n_kv_heads, loss) -> _Problem:
    lnN, one, zero = np.log(N), np.ones_like(N), np.zeros_like(N)
    X = np.stack(
        [
            np.stack([one, -lnN, zero, zero, zero, zero, zero], axis=1),
            np.stack([zero, zero, one, zero, zero, zero, zero], axis=1),
            np.stack([zero, zero, zero, one, -np.log(n_heads), zero, zero], axis=1),
            np.stack([zero, zero, zero, zero, zero, one, -np.log(n_kv_heads)], axis=1),
        ]
    )
    top = _e_upper(loss)
    lower = np.array([-50.0, 1e-3, math.log(E_FLOOR), -30.0, 1e-2, -30.0, 1e-2])
    upper = np.array([200.0, 5.0, top, top, 5.0, top, 5.0])
    for column, (i, j) in ((n_heads, (3, 4)), (n_kv_heads, (5, 6))):
        if np.unique(column).size < 2:  # the term is a constant: leave it out (coefficient 0, exponent 1)
            lower[i] = upper[i] = -30.0
            lower[j] = upper[j] = 1.0
    return _Problem(X, np.log(loss), lower, upper)


def _joint_coefs(theta: np.ndarray, n_ref: int, problem: _Problem) -> dict[str, float]:
    c, b, e_inf, la, g, lb, k = (float(x) for x in theta)
    A = 0.0 if problem.upper[3] == problem.lower[3] else math.exp(la)
    B = 0.0 if problem.upper[5] == problem.lower[5] else math.exp(lb)
    E = math.exp(e_inf) + A * n_ref**-g + B * n_ref**-k
    return {"a": _a_from(c, b), "b": b, "E": E, "A": A, "g": g, "B": B, "k": k}


def fit_heads_joint(
    N, n_heads, n_kv_heads, loss, n_ref: int = 32, grid: str | int = 32, starts: np.ndarray | None = None
) -> LawFit:
    """Fit ``L = (a/N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k)`` across head configurations
    (N non-embedding parameters, L and E in nats/token; E is the floor of H = (n_ref, n_ref)).

    Returns {"a", "b", "E", "A", "g", "B", "k", "n_ref", "r2", "n_points", "objective", "at_bound"}.
    Fitted as an LSE of four terms (see the module docstring) from the grid :data:`JOINT_GRID`
    (``grid``/``starts`` as in :func:`fit_chinchilla`).
    """
    N, loss = _as_positive(N, "N"), _as_positive(loss, "loss")
    nh, nkv = _as_positive(n_heads, "n_heads"), _as_positive(n_kv_heads, "n_kv_heads")
    require(
        N.size == nh.size == nkv.size == loss.size,
        "fit_heads_joint: N, n_heads, n_kv_heads and loss must have the same length",
    )
    problem = _joint_problem(N, nh, nkv, loss)
    free = int((problem.upper > problem.lower).sum())
    require(loss.size > free, f"fit_heads_joint: {loss.size} points for {free} coefficients; need at least {free + 1}")
    require(np.unique(N).size >= 2, "fit_heads_joint: need at least 2 model sizes")
    theta, f = _minimise(problem, _starts(problem, _grid(*JOINT_GRID), grid, starts))
    out = _finish(problem, theta, f, loss, _joint_coefs(theta, n_ref, problem), list(JOINT_NAMES))
    fixed = problem.upper == problem.lower
    out.entries["at_bound"] = [n for n, hit, fx in zip(JOINT_NAMES, _at_bound(problem, theta), fixed) if hit and not fx]
    out.entries["n_ref"] = int(n_ref)
    return out
