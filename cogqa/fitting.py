"""Fitting scaling laws to a table of training results (``cogqa fit``).

Three forms, all fitted the same way (Chinchilla's approach 3 as replicated by Besiroglu et al. 2024):
the prediction is written as a log-sum-exp of terms linear in the parameters, and the **sum** of
Huber(delta = 1e-3) of ``log L - log L_hat`` is minimised by L-BFGS-B (tight tolerances) from a grid
of initialisations; the best local minimum is kept.

* ``n`` (paper Eq. 7), per head configuration H: ``L = (a / N)^b + E``;
  ``log L_hat = LSE(c - b ln N, e)`` with ``c = b ln a``, ``e = ln E``. Option ``shared_E``: one E for all H.
* ``chinchilla``: ``L = E + A / N^alpha + B / D^beta`` (D = tokens), per H or over all rows when the
  table has no head columns; ``log L_hat = LSE(ln A - alpha ln N, ln B - beta ln D, ln E)``.
* ``heads-joint``: one law across head configurations,
  ``L = (a / N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k)`` with shared a, b, E; fitted as
  ``log L_hat = LSE(c - b ln N, e_inf, ln A - g ln n_h, ln B - k ln n_kv)`` where ``e_inf`` is the log of the
  floor as N, n_h, n_kv grow (E = e^e_inf + A n_ref^-g + B n_ref^-k). A head term whose variable takes one
  value in the table is left out (its A or B is 0). n_ref = max_heads = the family's largest d / d_h
  (else the largest n_h of the table, rounded up to a power of two).
* ``heads`` (Appendix I): ``L(n_h) = a n_h^b + c`` at a fixed size (groups by the ``size`` column if
  present, else by ``params_non_embedding``); ``log L_hat = LSE(ln a + b ln n_h, ln c)``.

Units: N in parameters (non-embedding unless the user maps another column), D in tokens, loss in nats
per token. Bounds (in the fitted log space) keep every coefficient finite; a coefficient that ends on
its bound (typically E -> its floor of 1e-4 nats) is reported in ``at_bound`` and as a warning.

Laws file (:meth:`FitReport.to_laws_dict`): ``{"form", "laws": [...], "source", "metadata"}`` where ``form`` is
``power_law_n`` (entries n_heads, n_kv_heads, a, b, E; the interchange form ``search`` reads),
``chinchilla`` (entries E, A, B, alpha, beta, plus n_heads/n_kv_heads when the table has them) or
``head_law`` (entries a, b, c, plus size or params_non_embedding, n_kv_heads when constant). Every entry
also has r2 (on loss), n_points, optionally context, ci {coef: [2.5%, 97.5%]} and n_bootstrap when
bootstrapped, at_bound [coef names] when a coefficient sits on its bound; shared-E fits add shared_E.
Read them back with :func:`cogqa.laws.laws_from_dict` (any form) or :func:`cogqa.laws.load_laws` (power_law_n).

Results table: CSV, JSONL or Parquet with columns ``n_heads``, ``n_kv_heads``, ``params_non_embedding``,
``loss`` and optionally ``tokens``, ``context``, ``size``, ``compute`` (training FLOPs; gives
``tokens = compute / (6 N)`` when ``tokens`` is absent). Other column names are mapped with
``columns={"params_non_embedding": "Model Size", ...}``. Rows are numbered from 1 (the first data row,
after the header) in every message.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import CogqaError, require

HUBER_DELTA = 1e-3
E_FLOOR = 1e-4  # nats per token: lower bound of every irreducible-loss coefficient
RESULT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")
KNOWN_COLUMNS = ("n_heads", "n_kv_heads", "params_non_embedding", "loss", "tokens", "context", "size", "compute")


# --------------------------------------------------------------------------- reading and validation


def _required_columns(form: str) -> tuple[str, ...]:
    return FIT_FORMS[form].columns


def _rows(mask: np.ndarray, limit: int = 8) -> str:
    idx = [str(i + 1) for i in np.flatnonzero(mask)]
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return ", ".join(idx[:limit]) + more


def read_results(path: str | Path, columns: dict[str, str] | None = None, form: str = "n") -> pd.DataFrame:
    """Read and validate a results table (CSV, JSONL or Parquet); returns a DataFrame with canonical columns.

    ``columns`` maps canonical names (``params_non_embedding``, ``tokens``, ``loss``, ``n_heads``,
    ``n_kv_heads``, ``compute``, ``size``) to the file's column names. ``form`` decides which columns are
    required (see :func:`validate_results`). Warnings (e.g. duplicate rows) are in ``df.attrs["warnings"]``.
    """
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    path = Path(path)
    require(path.exists(), f"RESULTS: {path}: no such file")
    require(path.is_file(), f"RESULTS: {path}: is not a file")
    suffix = path.suffix.lower()
    require(suffix in RESULT_SUFFIXES, f"RESULTS: {path}: unknown extension {suffix or '(none)'!r}; use .csv, .jsonl, .json (array of rows) or .parquet")
    require(path.stat().st_size > 0, f"RESULTS: {path}: the file is empty; it needs a header and one row per run")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix == ".jsonl":
            df = pd.read_json(path, lines=True)
        elif suffix == ".json":
            df = pd.read_json(path, orient="records")  # a JSON array of row objects
        else:
            df = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CogqaError(f"RESULTS: {path}: cannot be read as {suffix[1:]} ({first})") from None
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CogqaError(f"RESULTS: {path}: cannot be read as {suffix[1:]} ({first})") from None
    return validate_results(df, form=form, columns=columns, source=str(path))


def validate_results(df: pd.DataFrame, form: str = "n", columns: dict[str, str] | None = None, source: str = "results") -> pd.DataFrame:
    """Check a results table and return a clean float copy with canonical column names.

    Required: form ``n``: n_heads, n_kv_heads, params_non_embedding, loss; ``chinchilla``:
    params_non_embedding, loss and tokens (or compute, giving tokens = compute / (6 N)); ``heads``:
    n_heads, loss and size or params_non_embedding. Errors (one line, naming rows numbered from 1):
    missing column, non-numeric, non-finite, <= 0 values, n_kv_heads not dividing n_heads.
    Rows repeating earlier rows (same values in the known columns) are kept, with a warning in
    ``df.attrs["warnings"]``.
    """
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    require(isinstance(df, pd.DataFrame), f"{source}: expected a table (pandas DataFrame)")
    require(len(df) > 0, f"{source}: no rows; the table needs one row per training run")
    df = df.reset_index(drop=True)
    df.columns = [str(c).strip() for c in df.columns]
    for canon, name in (columns or {}).items():
        require(canon in KNOWN_COLUMNS, f"column mapping: unknown field {canon!r}; known: {', '.join(KNOWN_COLUMNS)}")
        require(name in df.columns, f"{source}: no column {name!r} (mapped to {canon}); columns are: {', '.join(df.columns)}")
        if canon in df.columns and canon != name:
            df = df.drop(columns=[canon])
        df = df.rename(columns={name: canon})
    if form == "chinchilla":
        require("tokens" in df.columns or "compute" in df.columns, f"{source}: missing column 'tokens' (training tokens D) for --form chinchilla; "
                "add it, map it with --tokens-column, or give training FLOPs with --compute-column")
    if form == "heads":
        require("size" in df.columns or "params_non_embedding" in df.columns,
                f"{source}: missing column 'size' or 'params_non_embedding' (the fixed model size of each head law)")
    for name in _required_columns(form):
        if name == "tokens" and "compute" in df.columns:
            continue  # tokens = compute / (6 N), derived below once the numbers are checked
        require(name in df.columns, f"{source}: missing column {name!r}; columns are: {', '.join(df.columns)}")
    has_heads = "n_heads" in df.columns
    if form == "chinchilla" and has_heads:
        require("n_kv_heads" in df.columns, f"{source}: column 'n_heads' without 'n_kv_heads'; give both or neither")
    if form == "heads" and "size" in df.columns and not pd.api.types.is_numeric_dtype(df["size"]):
        df["size"] = [_size_value(v, i) for i, v in enumerate(df["size"])]  # 470M, 1.2B ... -> parameters
    numeric = [c for c in ("n_heads", "n_kv_heads", "params_non_embedding", "loss", "tokens", "compute", "context") if c in df.columns]
    if form == "heads" and "size" in df.columns:
        numeric.append("size")
    for name in numeric:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = values.isna().to_numpy() & df[name].notna().to_numpy()
        if bad.any():
            raise CogqaError(f"{source}: column {name!r} is not numeric in rows {_rows(bad)} (e.g. {df[name][bad].iloc[0]!r})")
        arr = values.to_numpy(dtype=float)
        require(np.isfinite(arr).all(), f"{source}: column {name!r} has missing or non-finite values (NaN/inf) in rows {_rows(~np.isfinite(arr))}")
        if not (arr > 0).all():
            raise CogqaError(f"{source}: column {name!r} must be > 0; rows {_rows(arr <= 0)} are not (e.g. {arr[arr <= 0][0]:g})")
        df[name] = arr
    for name in ("n_heads", "n_kv_heads"):
        if name in df.columns:
            arr = df[name].to_numpy()
            bad = arr != np.round(arr)
            require(not bad.any(), f"{source}: column {name!r} must hold whole numbers; rows {_rows(bad)} do not")
            df[name] = arr.astype(np.int64)
    if "n_heads" in df.columns and "n_kv_heads" in df.columns:
        nh, nkv = df["n_heads"].to_numpy(), df["n_kv_heads"].to_numpy()
        bad = nkv > nh
        require(not bad.any(), f"{source}: n_kv_heads > n_heads in rows {_rows(bad)}; a KV head serves >= 1 query heads")
        bad = nh % nkv != 0
        require(not bad.any(), f"{source}: n_kv_heads must divide n_heads; rows {_rows(bad)} do not")
    if form == "chinchilla" and "tokens" not in df.columns:
        df["tokens"] = df["compute"] / (6.0 * df["params_non_embedding"])
    warnings: list[str] = []
    keep = [c for c in KNOWN_COLUMNS if c in df.columns]
    dup = df.duplicated(subset=keep, keep="first").to_numpy()
    if dup.any():
        warnings.append(f"{source}: rows {_rows(dup)} repeat the values of earlier rows; all are kept, "
                        "so a run listed twice weighs double: remove such repeats if they are the same run")
    df.attrs["warnings"] = warnings
    return df


def _size_value(value: Any, i: int) -> Any:
    from .units import parse_count

    if isinstance(value, str):
        try:
            return parse_count(value.strip(), "size")
        except CogqaError:
            raise CogqaError(f"results: column 'size' in row {i + 1} is {value!r}; write a number of parameters such as 470M or 4.7e8") from None
    return value


# --------------------------------------------------------------------------- the generic log-sum-exp fitter


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

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = self.X @ theta
        m = t.max(axis=0)
        w = np.exp(t - m)
        s = w.sum(axis=0)
        pred = m + np.log(s)
        r = self.y - pred
        f = float(huber(r, self.delta).sum())
        dpred = -np.clip(r, -self.delta, self.delta)  # d huber / d pred
        w /= s
        grad = np.einsum("kn,knp->p", w * dpred, self.X)
        return f, grad


def _minimise(problem: _Problem, starts: np.ndarray) -> tuple[np.ndarray, float]:
    """Best (theta, objective) of L-BFGS-B runs from every row of ``starts``."""
    import scipy.optimize  # noqa: F401  (load scipy's BLAS before limiting its threads)

    bounds = list(zip(problem.lower, problem.upper))
    with _one_blas_thread():
        best_x, best_f = _minimise_from(problem, starts, bounds)
    require(best_x is not None, "fit: the optimiser failed from every starting point; check the data for extreme values")
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
        res = minimize(problem.objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxfun": 40000, "maxcor": 20})
        if np.isfinite(res.fun) and res.fun < best_f:
            best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
    return best_x, best_f


def _rank_starts(problem: _Problem, grid: np.ndarray, keep: int | None) -> np.ndarray:
    """The grid points, best initial objective first, at most ``keep`` of them (all when None)."""
    if keep is None or keep >= len(grid):
        return grid
    g = np.clip(grid, problem.lower, problem.upper)
    t = np.einsum("knp,gp->gkn", problem.X, g)
    m = t.max(axis=1, keepdims=True)
    pred = m[:, 0, :] + np.log(np.exp(t - m).sum(axis=1))
    f = huber(problem.y[None, :] - pred, problem.delta).sum(axis=1)
    return g[np.argsort(f, kind="stable")[:keep]]


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


# --------------------------------------------------------------------------- the three laws on arrays

CHINCHILLA_GRID = (np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))


def _finish(problem: _Problem, theta: np.ndarray, f: float, loss: np.ndarray, coefs: dict[str, float], names: list[str]) -> dict[str, Any]:
    pred = np.exp(problem.predict_log(theta))
    out: dict[str, Any] = dict(coefs)
    out["r2"] = _r2(loss, pred)
    out["n_points"] = int(loss.size)
    out["objective"] = f
    out["at_bound"] = [n for n, hit in zip(names, _at_bound(problem, theta)) if hit]
    out["_theta"] = theta
    out["_pred"] = pred
    return out


def _chinchilla_problem(N, D, loss) -> _Problem:
    lnN, lnD, one, zero = np.log(N), np.log(D), np.ones_like(N), np.zeros_like(N)
    # theta = (a = ln A, b = ln B, e = ln E, alpha, beta)
    X = np.stack([
        np.stack([one, zero, zero, -lnN, zero], axis=1),
        np.stack([zero, one, zero, zero, -lnD], axis=1),
        np.stack([zero, zero, one, zero, zero], axis=1),
    ])
    lower = np.array([-30.0, -30.0, math.log(E_FLOOR), 0.0, 0.0])
    upper = np.array([100.0, 100.0, _e_upper(loss), 5.0, 5.0])
    return _Problem(X, np.log(loss), lower, upper)


def _chinchilla_coefs(theta: np.ndarray) -> dict[str, float]:
    return {"A": math.exp(theta[0]), "B": math.exp(theta[1]), "E": math.exp(theta[2]), "alpha": float(theta[3]), "beta": float(theta[4])}


def fit_chinchilla(N, D, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> dict[str, Any]:
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


def _starts(problem: _Problem, grid: np.ndarray, how: str | int, extra: np.ndarray | None) -> np.ndarray:
    ok = how == "full" or (isinstance(how, (int, np.integer)) and not isinstance(how, bool) and (how > 0 or (how == 0 and extra is not None)))
    require(ok, f"grid: expected 'full' or a positive number of starting points, got {how!r}")
    if how == 0:
        return np.atleast_2d(np.asarray(extra, dtype=float))
    x0 = _rank_starts(problem, grid, None if how == "full" else how)
    if extra is not None:
        x0 = np.vstack([np.atleast_2d(np.asarray(extra, dtype=float)), x0])
    return x0


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
        lower[per * g: per * g + 2] = (-50.0, 1e-3)
        upper[per * g: per * g + 2] = (200.0, 5.0)
        if not shared_E:
            lower[per * g + 2], upper[per * g + 2] = math.log(E_FLOOR), _e_upper(loss[group == g])
    if shared_E:
        lower[-1], upper[-1] = math.log(E_FLOOR), _e_upper(loss)
    return _Problem(X, np.log(loss), lower, upper)


def fit_power_law(N, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> dict[str, Any]:
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
    """a = exp(c / b) in parameters; a one-line error when a degenerate fit (b -> 0) makes it overflow."""
    require(c / b < 700, f"fit: a = exp({c / b:.0f}) parameters overflows (b = {b:.3g}): the losses barely fall with N; "
            "check the data or fit with --form heads / a wider range of sizes")
    return math.exp(c / b)


def fit_power_law_shared_E(N, loss, group, grid_per_group: str | int = 32, starts: np.ndarray | None = None) -> dict[str, Any]:
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
        names = [n for n, hit in zip(("a", "b"), hits[2 * g: 2 * g + 2]) if hit]
        groups.append({"a": _a_from(c, b), "b": float(b), "r2": _r2(loss[m], pred[m]), "n_points": int(m.sum()), "at_bound": names})
    return {"E": math.exp(theta[-1]), "groups": groups, "objective": f, "at_bound": ["E"] if hits[-1] else [],
            "r2": _r2(loss, pred), "n_points": int(loss.size), "_theta": theta, "_pred": pred}


def _own_start(N: np.ndarray, loss: np.ndarray, loss_min: float, grid) -> np.ndarray:
    """(c, b, ln E) of one group: its own fit, or with < 4 points a straight line through log(L - 0.9 min L)."""
    if loss.size >= 4 and np.unique(N).size >= 2:
        return fit_power_law(N, loss, grid=grid)["_theta"]
    E0 = 0.9 * loss_min
    slope, icept = np.polyfit(np.log(N), np.log(loss - E0), 1) if np.unique(N).size >= 2 else (-0.3, 0.0)
    b = float(np.clip(-slope, 0.01, 2.0))
    return np.array([float(icept), b, math.log(E0)])


HEAD_GRID = (np.array([-3.0, -2.0, -1.0, 0.0, 1.0]), np.array([-1.0, -0.5, -0.2, -0.1, -0.03, 0.1]), np.arange(-1, 1.5, 0.5))


def _head_problem(n_heads: np.ndarray, loss: np.ndarray) -> _Problem:
    one, zero = np.ones_like(n_heads), np.zeros_like(n_heads)
    X = np.stack([np.stack([one, np.log(n_heads), zero], axis=1), np.stack([zero, zero, one], axis=1)])
    lower = np.array([-30.0, -5.0, math.log(E_FLOOR)])
    upper = np.array([30.0, 5.0, _e_upper(loss)])
    return _Problem(X, np.log(loss), lower, upper)


def fit_head_law(n_heads, loss, grid: str | int = 32, starts: np.ndarray | None = None) -> dict[str, Any]:
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
    return _finish(problem, theta, f, loss, {"a": math.exp(theta[0]), "b": float(theta[1]), "c": math.exp(theta[2])}, ["a", "b", "c"])


# --------------------------------------------------------------------------- fitting a results table

JOINT_GRID = (np.arange(0.0, 25.0, 5.0), np.array([0.1, 0.3, 0.6]), np.array([-1.0, 0.0, 0.5]), np.array([-4.0, -2.0, -1.0]),
              np.array([0.3, 1.0]), np.array([-4.0, -2.0]), np.array([0.3, 1.0]))
JOINT_NAMES = ("a", "b", "E", "A", "g", "B", "k")  # fitted as (c, b, e_inf, ln A, g, ln B, k)


def _joint_problem(N, n_heads, n_kv_heads, loss) -> _Problem:
    lnN, one, zero = np.log(N), np.ones_like(N), np.zeros_like(N)
    X = np.stack([
        np.stack([one, -lnN, zero, zero, zero, zero, zero], axis=1),
        np.stack([zero, zero, one, zero, zero, zero, zero], axis=1),
        np.stack([zero, zero, zero, one, -np.log(n_heads), zero, zero], axis=1),
        np.stack([zero, zero, zero, zero, zero, one, -np.log(n_kv_heads)], axis=1),
    ])
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


def fit_heads_joint(N, n_heads, n_kv_heads, loss, n_ref: int = 32, grid: str | int = 32, starts: np.ndarray | None = None) -> dict[str, Any]:
    """Fit ``L = (a/N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k)`` across head configurations
    (N non-embedding parameters, L and E in nats/token; E is the floor of H = (n_ref, n_ref)).

    Returns {"a", "b", "E", "A", "g", "B", "k", "n_ref", "r2", "n_points", "objective", "at_bound"}.
    Fitted as an LSE of four terms (see the module docstring) from the grid :data:`JOINT_GRID`
    (``grid``/``starts`` as in :func:`fit_chinchilla`).
    """
    N, loss = _as_positive(N, "N"), _as_positive(loss, "loss")
    nh, nkv = _as_positive(n_heads, "n_heads"), _as_positive(n_kv_heads, "n_kv_heads")
    require(N.size == nh.size == nkv.size == loss.size, "fit_heads_joint: N, n_heads, n_kv_heads and loss must have the same length")
    problem = _joint_problem(N, nh, nkv, loss)
    free = int((problem.upper > problem.lower).sum())
    require(loss.size > free, f"fit_heads_joint: {loss.size} points for {free} coefficients; need at least {free + 1}")
    require(np.unique(N).size >= 2, "fit_heads_joint: need at least 2 model sizes")
    theta, f = _minimise(problem, _starts(problem, _grid(*JOINT_GRID), grid, starts))
    out = _finish(problem, theta, f, loss, _joint_coefs(theta, n_ref, problem), list(JOINT_NAMES))
    fixed = problem.upper == problem.lower
    out["at_bound"] = [n for n, hit, fx in zip(JOINT_NAMES, _at_bound(problem, theta), fixed) if hit and not fx]
    out["n_ref"] = int(n_ref)
    return out


@dataclass(frozen=True)
class FitForm:
    """One fit form: its CLI name, the laws-file form it writes, its coefficients, the fewest rows
    per fitted group, the columns it needs and the axes of its starting grid (fitted space)."""

    name: str
    law_form: str
    coefficients: tuple[str, ...]
    min_points: int
    columns: tuple[str, ...]
    grid: tuple


#: The fit forms, one record each (``cogqa fit --form NAME``).
FIT_FORMS: dict[str, FitForm] = {
    "n": FitForm("n", "power_law_n", ("a", "b", "E"), 4, ("n_heads", "n_kv_heads", "params_non_embedding", "loss"), N_GRID),
    "heads-joint": FitForm("heads-joint", "heads_joint", JOINT_NAMES, 8,
                           ("n_heads", "n_kv_heads", "params_non_embedding", "loss"), JOINT_GRID),
    "chinchilla": FitForm("chinchilla", "chinchilla", ("E", "A", "B", "alpha", "beta"), 6,
                          ("params_non_embedding", "tokens", "loss"), CHINCHILLA_GRID),
    "heads": FitForm("heads", "head_law", ("a", "b", "c"), 4, ("n_heads", "loss"), HEAD_GRID),
}
FORMS = tuple(FIT_FORMS)
LAW_FORM_NAMES = {k: f.law_form for k, f in FIT_FORMS.items()}
COEFS = {k: f.coefficients for k, f in FIT_FORMS.items()}
MIN_POINTS = {k: f.min_points for k, f in FIT_FORMS.items()}


@dataclass
class FitReport:
    """Fitted laws of one form, one entry per group (head configuration, or model size for ``heads``).

    ``laws``: laws-file entries (coefficients, ``r2``, ``n_points``, ``ci`` {coef: [low, high]} when
    bootstrapped, ``at_bound`` [coef names] when a coefficient sits on its bound). ``residuals``: the
    fitted rows with ``group``, ``predicted`` and ``residual`` (loss - predicted, nats/token).
    """

    form: str
    laws: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    residuals: pd.DataFrame = field(default_factory=pd.DataFrame)
    shared_E: bool = False
    bootstrap: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # what the table says about the models: range, context, family
    samples: list[dict[str, Any]] = field(default_factory=list)  # bootstrap coefficients (for bands), not in the laws file

    def __post_init__(self) -> None:
        require(self.form in FORMS, f"FitReport: unknown form {self.form!r}; choose one of {', '.join(FORMS)}")
        require(len(self.laws) > 0, "FitReport: no laws")

    def to_laws_dict(self, source: str = "") -> dict[str, Any]:
        """The laws file (JSON-serialisable dict); for form ``n`` the ``power_law_n`` interchange form."""
        meta: dict[str, Any] = {"fit": {"objective": f"sum of Huber(delta={HUBER_DELTA}) of log-loss residuals, L-BFGS-B from a grid",
                                        "form": self.form, "shared_E": self.shared_E, "bootstrap": self.bootstrap}}
        if self.warnings:
            meta["warnings"] = list(self.warnings)
        meta.update(self.data)
        return {"form": LAW_FORM_NAMES[self.form], "laws": [dict(law) for law in self.laws], "source": source, "metadata": meta}

    def law_set(self, source: str = ""):
        """The fitted laws as a :class:`cogqa.laws.LawSet` (form ``n`` only), ready for search."""
        from .laws import law_set_from_dict

        require(self.form in ("n", "heads-joint"), f"law_set: form {self.form!r} cannot be searched; fit with form 'n' or 'heads-joint'")
        return law_set_from_dict(self.to_laws_dict(source), "fitted laws")

    def table(self) -> pd.DataFrame:
        """One row per law: group keys, coefficients, r2, n_points, ``<coef>_lo``/``<coef>_hi`` (95% CI), at_bound."""
        rows = []
        for law in self.laws:
            row = {k: v for k, v in law.items() if k not in ("ci", "at_bound")}
            for coef, (lo, hi) in (law.get("ci") or {}).items():
                row[f"{coef}_lo"], row[f"{coef}_hi"] = lo, hi
            row["at_bound"] = ",".join(law.get("at_bound", []))
            rows.append(row)
        return pd.DataFrame(rows)


def _group_keys(df: pd.DataFrame, form: str) -> list[str]:
    if form == "n":
        return ["n_heads", "n_kv_heads"]
    if form == "heads-joint":
        return []
    if form == "chinchilla":
        keys = ["n_heads", "n_kv_heads"] if "n_heads" in df.columns else []
    else:
        keys = ["size" if "size" in df.columns else "params_non_embedding"]
    if "context" in df.columns and df["context"].nunique() > 1:
        keys.append("context")
    return keys


def _label(keys: list[str], values: tuple) -> str:
    return group_label(dict(zip(keys, values)))


def group_label(d: dict[str, Any]) -> str:
    """A readable name of a fitted group (a laws entry or its group keys): ``H=(8,1), context 8192 tokens``."""
    parts = []
    if "n_heads" in d and "n_kv_heads" in d:
        parts.append(f"H=({int(d['n_heads'])},{int(d['n_kv_heads'])})")
    elif "n_kv_heads" in d:
        parts.append(f"n_kv={int(d['n_kv_heads'])}")
    if "size" in d:
        parts.append(f"size {d['size']:g}")
    if "params_non_embedding" in d:
        parts.append(f"N={d['params_non_embedding']:.4g} parameters")
    if "context" in d:
        parts.append(f"context {int(d['context'])} tokens")
    return ", ".join(parts) or "all rows"


def _entry_keys(keys: list[str], values: tuple, sub: pd.DataFrame, form: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in zip(keys, values):
        out[k] = int(v) if k in ("n_heads", "n_kv_heads", "context") else float(v)
    if "context" in sub.columns and "context" not in out:
        out["context"] = int(sub["context"].iloc[0])
    if form == "heads" and "n_kv_heads" in sub.columns and sub["n_kv_heads"].nunique() == 1:
        out["n_kv_heads"] = int(sub["n_kv_heads"].iloc[0])
    return out


def _fit_group(form: str, sub: pd.DataFrame, starts=None, grid=None, n_ref: int = 32) -> dict[str, Any]:
    loss = sub["loss"].to_numpy(float)
    if form == "heads-joint":
        return fit_heads_joint(sub["params_non_embedding"].to_numpy(float), sub["n_heads"].to_numpy(float), sub["n_kv_heads"].to_numpy(float),
                               loss, n_ref=n_ref, grid=32 if grid is None else grid, starts=starts)
    if form == "n":
        return fit_power_law(sub["params_non_embedding"].to_numpy(float), loss, grid=32 if grid is None else grid, starts=starts)
    if form == "chinchilla":
        return fit_chinchilla(sub["params_non_embedding"].to_numpy(float), sub["tokens"].to_numpy(float), loss, grid=32 if grid is None else grid, starts=starts)
    return fit_head_law(sub["n_heads"].to_numpy(float), loss, grid=32 if grid is None else grid, starts=starts)


def _check_points(form: str, label: str, sub: pd.DataFrame, shared_E: bool, single: bool = False) -> None:
    need = 3 if shared_E and not single else MIN_POINTS[form]
    n_coef = 2 if shared_E and not single else len(COEFS[form])
    extra = " besides the shared E" if shared_E and not single else ""
    require(len(sub) >= need, f"{label}: {len(sub)} points for {n_coef} coefficients{extra}; need at least {need} rows for --form {form}")
    if form in ("n", "heads-joint"):
        require(sub["params_non_embedding"].nunique() >= 2, f"{label}: every row has the same params_non_embedding; need at least 2 model sizes")
    if form == "heads-joint":
        require(sub["n_heads"].nunique() + sub["n_kv_heads"].nunique() >= 3,
                f"{label}: need at least 2 head configurations differing in n_heads or n_kv_heads for --form heads-joint")
    elif form == "n":
        pass
    elif form == "chinchilla":
        require(sub["params_non_embedding"].nunique() >= 2 and sub["tokens"].nunique() >= 2,
                f"{label}: need at least 2 distinct model sizes and 2 distinct token counts for --form chinchilla")
    else:
        require(sub["n_heads"].nunique() >= 3, f"{label}: need at least 3 distinct n_heads values for --form heads")


def _ci(samples: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, list[float]]:
    out = {}
    for name in names:
        vals = np.array([s[name] for s in samples], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = np.percentile(vals, [2.5, 97.5])
            out[name] = [float(lo), float(hi)]
    return out


def fit_results(df: pd.DataFrame, form: str = "n", shared_E: bool = False, bootstrap: int = 0, seed: int = 0,
                context: int | None = None, grid: str | int | None = None, drop_highest_loss: int = 0) -> FitReport:
    """Fit one law per group of a results table; returns a :class:`FitReport`.

    ``form``: ``n`` (L = (a/N)^b + E per H; ``shared_E`` fits one E jointly), ``chinchilla``
    (L = E + A/N^alpha + B/D^beta per H, or over all rows without head columns), ``heads``
    (L = a n_h^b + c per model size). ``bootstrap``: number of resamples (rows drawn with replacement
    within each group, refitted from the best fit and two grid points) for 95% percentile intervals.
    ``context``: keep only rows trained at this context (tokens); form ``n`` requires one context.
    ``drop_highest_loss``: leave out the K highest-loss rows of the table first (Besiroglu et al. drop 5
    of Chinchilla's points); the dropped rows are named in a warning.
    ``grid``: starting points, as in :func:`fit_chinchilla` (default: the 32 grid points with the lowest
    initial objective; ``"full"`` for every grid point).
    """
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    require(isinstance(bootstrap, (int, np.integer)) and not isinstance(bootstrap, bool) and 0 <= bootstrap <= 100000,
            f"--bootstrap: expected a whole number of resamples in 0..100000, got {bootstrap!r}")
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool), f"--seed: expected an integer, got {seed!r}")
    require(not shared_E or form == "n", f"--shared-E applies to --form n only, not {form!r}")
    require(form != "heads-joint" or "context" not in df.columns or pd.Series(df["context"]).nunique() <= 1 or context is not None,
            "context: the table mixes training contexts; fit one at a time with --context (laws depend on the training length)")
    checked = isinstance(df, pd.DataFrame) and "warnings" in df.attrs  # already validated by read_results
    given = list(df.attrs["warnings"]) if checked else []
    df = validate_results(df, form=form)
    warnings = given if checked else list(df.attrs["warnings"])
    if context is not None:
        require("context" in df.columns, "--context: the results table has no 'context' column")
        df = df[df["context"] == context].reset_index(drop=True)
        require(len(df) > 0, f"--context: no rows trained at context {context} tokens")
    require(isinstance(drop_highest_loss, (int, np.integer)) and not isinstance(drop_highest_loss, bool) and 0 <= drop_highest_loss < len(df),
            f"--drop-highest-loss: expected a whole number in 0..{len(df) - 1} (the table has {len(df)} rows), got {drop_highest_loss!r}")
    if drop_highest_loss:
        order = np.argsort(-df["loss"].to_numpy(), kind="stable")[:drop_highest_loss]
        mask = np.zeros(len(df), dtype=bool)
        mask[order] = True
        warnings.append(f"left out the {drop_highest_loss} highest-loss rows: {_rows(mask, limit=20)}")
        df = df.loc[~mask].reset_index(drop=True)
    if form in ("n", "heads-joint") and "context" in df.columns:
        ctx = sorted(int(c) for c in df["context"].unique())
        require(len(ctx) == 1, f"context: the table mixes training contexts {', '.join(map(str, ctx))} tokens; "
                f"fit one at a time with --context (laws depend on the training length)")
    keys = _group_keys(df, form)
    groups = list(df.groupby(keys, sort=True)) if keys else [((), df)]
    labels, subs, entry_keys = [], [], []
    for values, sub in groups:
        values = values if isinstance(values, tuple) else (values,)
        label = _label(keys, values)
        _check_points(form, label, sub, shared_E, single=len(groups) == 1)
        labels.append(label)
        subs.append(sub)
        entry_keys.append(_entry_keys(keys, values, sub, form))
    rng = np.random.default_rng(int(seed))
    names = COEFS[form]
    laws: list[dict[str, Any]] = []
    residuals = []
    meta = _table_metadata(df)
    n_ref = _max_heads(df, meta)
    samples_out: list[dict[str, float]] = []
    if form == "heads-joint":
        res = _fit_group(form, df, grid=grid, n_ref=n_ref)
        entry = {k: float(res[k]) for k in names}
        entry.update({"n_ref": n_ref, "max_heads": n_ref, "r2": res["r2"], "n_points": res["n_points"],
                      "heads": sorted({(int(h), int(kv)) for h, kv in zip(df["n_heads"], df["n_kv_heads"])})})
        entry["heads"] = [list(h) for h in entry["heads"]]
        if "context" in df.columns:
            entry["context"] = int(df["context"].iloc[0])
        if bootstrap:
            samples_out = _bootstrap_group(form, df, res["_theta"], bootstrap, rng, grid, n_ref)
            entry["ci"] = _ci(samples_out, names)
            entry["n_bootstrap"] = len(samples_out)
        _bound_warning(entry, res["at_bound"], "joint law", warnings)
        laws.append(entry)
        residuals.append(df.assign(group=[f"H=({h},{kv})" for h, kv in zip(df["n_heads"], df["n_kv_heads"])],
                                   predicted=res["_pred"], residual=df["loss"].to_numpy() - res["_pred"]))
    elif shared_E:
        laws, residuals = _fit_shared(df, subs, labels, entry_keys, bootstrap, rng, warnings)
    else:
        for label, sub, ek in zip(labels, subs, entry_keys):
            res = _fit_group(form, sub, grid=grid)
            entry = dict(ek)
            entry.update({k: float(res[k]) for k in names})
            entry["r2"] = res["r2"]
            entry["n_points"] = res["n_points"]
            if bootstrap:
                samples = _bootstrap_group(form, sub, res["_theta"], bootstrap, rng, grid)
                entry["ci"] = _ci(samples, names)
                entry["n_bootstrap"] = len(samples)
                samples_out.extend({**ek, **smp} for smp in samples)
            _bound_warning(entry, res["at_bound"], label, warnings)
            laws.append(entry)
            residuals.append(sub.assign(group=label, predicted=res["_pred"], residual=sub["loss"].to_numpy() - res["_pred"]))
    for entry, label in zip(laws, labels):
        if entry["r2"] is None:
            warnings.append(f"{label}: R² is undefined (every loss is equal)")
    return FitReport(form=form, laws=laws, warnings=warnings, residuals=pd.concat(residuals, ignore_index=True),
                     shared_E=shared_E, bootstrap=int(bootstrap), data=meta, samples=samples_out)


def _max_heads(df: pd.DataFrame, meta: dict[str, Any]) -> int:
    """The largest n_h search should consider: the family's largest d / d_h, else the table's largest
    n_h; rounded up to a power of two (also the joint law's n_ref)."""
    top = 1.0
    family = meta.get("family")
    if family:
        top = max(d for _, d in family["reference_shapes"]) / family["head_dim"]
    if "n_heads" in df.columns:
        top = max(top, float(df["n_heads"].max()))
    return int(2 ** math.ceil(math.log2(max(top, 1.0)) - 1e-9))


def _table_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """What a results table says about the fitted models: the range of N (parameters), the
    training context (tokens) and, when it has the shape columns ``cogqa sweep collect`` writes
    (layers, hidden_size, head_dim, params_total), the model family for search
    (``metadata.family``, see :class:`cogqa.shapes.ModelFamily`)."""
    out: dict[str, Any] = {}
    if "params_non_embedding" in df.columns:
        out["params_non_embedding_range"] = [float(df["params_non_embedding"].min()), float(df["params_non_embedding"].max())]
    if "context" in df.columns and df["context"].nunique() == 1:
        out["context"] = int(df["context"].iloc[0])
    shape_cols = {"layers", "hidden_size", "head_dim", "params_total", "params_non_embedding"}
    if shape_cols <= set(df.columns) and df["head_dim"].nunique() == 1:
        vocab = (df["params_total"] - df["params_non_embedding"]) / df["hidden_size"]  # tied embeddings: V x d
        if np.allclose(vocab, np.round(vocab)) and np.round(vocab).nunique() == 1 and vocab.iloc[0] > 0:
            head_dim = int(df["head_dim"].iloc[0])
            out["family"] = {"head_dim": head_dim, "vocab_size": int(round(vocab.iloc[0])), "hidden_multiple": head_dim,
                             "reference_shapes": sorted({(int(l), int(d)) for l, d in zip(df["layers"], df["hidden_size"])})}
    return out


def _bound_warning(entry: dict[str, Any], at_bound: list[str], label: str, warnings: list[str]) -> None:
    if not at_bound:
        return
    entry["at_bound"] = list(at_bound)
    shown = ", ".join(f"{n} = {entry[n]:.4g}" for n in at_bound if n in entry)
    floor = [n for n in at_bound if n in ("E", "c") and abs(entry.get(n, 1.0) - E_FLOOR) < 1e-6]
    why = f"; {floor[0]} at its floor of {E_FLOOR:g} nats/token means the data show no irreducible loss" if floor else ""
    warnings.append(f"{label}: {', '.join(at_bound)} ended on its bound ({shown}): the data do not determine it{why}; treat the law with care")


BOOTSTRAP_GRID_STARTS = 2  # grid points tried in each bootstrap refit besides the full-data best fit


def _resample(sub: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return sub.iloc[rng.integers(0, len(sub), size=len(sub))]


def _bootstrap_group(form: str, sub: pd.DataFrame, theta: np.ndarray, k: int, rng: np.random.Generator, grid,
                     n_ref: int = 32) -> list[dict[str, float]]:
    names = COEFS[form]
    base = _fit_group_problem(form, sub)
    extra = _rank_starts(base, _grid(*FIT_FORMS[form].grid), BOOTSTRAP_GRID_STARTS)
    starts = np.vstack([theta, extra])
    samples = []
    for _ in range(k):
        s = _resample(sub, rng)
        try:
            res = _fit_group(form, s, starts=starts, grid=0, n_ref=n_ref)
        except CogqaError:
            continue
        samples.append({n: res[n] for n in names})
    return samples


def _fit_group_problem(form: str, sub: pd.DataFrame) -> _Problem:
    loss = sub["loss"].to_numpy(float)
    if form == "heads-joint":
        return _joint_problem(sub["params_non_embedding"].to_numpy(float), sub["n_heads"].to_numpy(float),
                              sub["n_kv_heads"].to_numpy(float), loss)
    if form == "n":
        return _n_problem(sub["params_non_embedding"].to_numpy(float), loss, np.zeros(len(sub), dtype=int), 1, False)
    if form == "chinchilla":
        return _chinchilla_problem(sub["params_non_embedding"].to_numpy(float), sub["tokens"].to_numpy(float), loss)
    return _head_problem(sub["n_heads"].to_numpy(float), loss)


def _fit_shared(df, subs, labels, entry_keys, bootstrap, rng, warnings):
    def joint(parts, starts=None):
        N = np.concatenate([p["params_non_embedding"].to_numpy(float) for p in parts])
        L = np.concatenate([p["loss"].to_numpy(float) for p in parts])
        g = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        return fit_power_law_shared_E(N, L, g, starts=starts)

    res = joint(subs)
    laws, residuals = [], []
    offset = 0
    samples = []
    if bootstrap:
        theta = res["_theta"]
        starts = np.array([theta, np.concatenate([theta[:-1], [theta[-1] - 0.1]]), np.concatenate([theta[:-1], [theta[-1] + 0.1]])])
        for _ in range(bootstrap):
            try:
                samples.append(joint([_resample(s, rng) for s in subs], starts=starts))
            except CogqaError:
                continue
    e_ci = _ci([{"E": s["E"]} for s in samples], ("E",))
    for i, (label, sub, ek) in enumerate(zip(labels, subs, entry_keys)):
        g = res["groups"][i]
        entry = dict(ek)
        entry.update({"a": float(g["a"]), "b": float(g["b"]), "E": float(res["E"]), "r2": g["r2"], "n_points": g["n_points"], "shared_E": True})
        if bootstrap:
            ci = _ci([s["groups"][i] for s in samples], ("a", "b"))
            ci.update(e_ci)
            entry["ci"] = ci
            entry["n_bootstrap"] = len(samples)
        _bound_warning(entry, g["at_bound"] + res["at_bound"], label, warnings)
        laws.append(entry)
        pred = res["_pred"][offset: offset + len(sub)]
        offset += len(sub)
        residuals.append(sub.assign(group=label, predicted=pred, residual=sub["loss"].to_numpy() - pred))
    return laws, residuals


def write_laws(report: FitReport, path: str | Path, source: str = "") -> Path:
    """Write ``report.to_laws_dict(source)`` as JSON atomically (temporary name, then rename); returns the path."""
    from .files import write_json_atomic

    path = Path(path)
    require(path.suffix.lower() == ".json", f"--out: {path}: the laws file must end in .json")
    require(not path.is_dir(), f"--out: {path} is a directory; give a file name such as laws.json")
    if path.parent and not path.parent.exists():
        raise CogqaError(f"--out: directory {path.parent} does not exist")
    return write_json_atomic(path, report.to_laws_dict(source))
