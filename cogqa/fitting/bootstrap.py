"""Bootstrap intervals: refit on rows resampled with replacement within each group; 95% percentile intervals."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd

from ..errors import CogqaError
from .core import _grid, _rank_starts
from .forms import COEFS, FIT_FORMS, _fit_group, _fit_group_problem


def _ci(samples: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, list[float]]:
    out = {}
    for name in names:
        vals = np.array([s[name] for s in samples], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = np.percentile(vals, [2.5, 97.5])
            out[name] = [float(lo), float(hi)]
    return out


BOOTSTRAP_GRID_STARTS = 2  # grid points tried in each bootstrap refit besides the full-data best fit


#: Fewer resamples than this are refitted in this process (about a second of fitting: not worth forking).
PARALLEL_MIN_RESAMPLES = 16


def bootstrap_workers(workers: int | None, resamples: int) -> int:
    """How many processes refit ``resamples`` bootstrap resamples (units: processes): 1 where this platform cannot
    fork (:func:`_can_fork`); else ``workers`` when given (at most one per resample), else one per available core
    when there are at least :data:`PARALLEL_MIN_RESAMPLES` resamples, else 1."""
    if not _can_fork():
        return 1
    if workers is not None:
        return max(1, min(int(workers), resamples))
    if resamples < PARALLEL_MIN_RESAMPLES:
        return 1
    from ..threads import available_cores

    return max(1, min(available_cores(), resamples))


def _can_fork() -> bool:
    """Whether refits may run in forked processes: Linux only. A fork shares the parent's memory and does not run
    the main script again (spawned processes would, in a script without a ``__main__`` guard); macOS forks are
    unsafe once system frameworks are loaded."""
    return sys.platform.startswith("linux")


def _bootstrap_group(
    form: str,
    sub: pd.DataFrame,
    theta: np.ndarray,
    k: int,
    rng: np.random.Generator,
    n_ref: int = 32,
    workers: int | None = 1,
) -> list[dict[str, float]]:
    """Coefficients of ``k`` refits on rows of ``sub`` drawn with replacement (resamples whose fit fails are left
    out), in the order the resamples are drawn from ``rng``; spread over :func:`bootstrap_workers` processes, which
    changes neither the draws nor the result."""
    base = _fit_group_problem(form, sub)
    extra = _rank_starts(base, _grid(*FIT_FORMS[form].grid), BOOTSTRAP_GRID_STARTS)
    starts = np.vstack([theta, extra])
    draws = [rng.integers(0, len(sub), size=len(sub)) for _ in range(k)]  # the serial loop's draws, in its order
    return refit_all(_refit_resamples, (form, sub, starts, n_ref), draws, workers)


def refit_all(refit, fixed: tuple, draws: list, workers: int | None) -> list:
    """``refit(*fixed, draws)`` (a module-level function returning one list entry per draw it could fit), spread
    over :func:`bootstrap_workers` forked processes in chunks of ``draws`` (4 per process, for balance) and
    concatenated in the order of ``draws``: the same list as one call in this process. Falls back to this process
    where processes cannot start."""
    processes = bootstrap_workers(workers, len(draws))
    if processes > 1:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return _refit_in_processes(refit, fixed, draws, processes)
        except (OSError, BrokenProcessPool):  # no processes here (sandbox, limits): refit in this one
            pass
    return refit(*fixed, draws)


def _refit_resamples(form: str, sub: pd.DataFrame, starts: np.ndarray, n_ref: int, draws) -> list[dict[str, float]]:
    """The coefficients of the fit on each resample ``sub.iloc[rows]``, ``rows`` in ``draws`` (failed fits left out)."""
    names = COEFS[form]
    samples = []
    for rows in draws:
        try:
            res = _fit_group(form, sub.iloc[rows], starts=starts, grid=0, n_ref=n_ref)
        except CogqaError:
            continue
        samples.append({n: res[n] for n in names})
    return samples


def _refit_in_processes(refit, fixed: tuple, draws: list, processes: int) -> list:
    """:func:`refit_all` over ``processes`` forked processes (numpy and scipy only: they start no OpenMP threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(draws) // (4 * processes))
    chunks = [draws[i : i + size] for i in range(0, len(draws), size)]
    columns = [[value] * len(chunks) for value in fixed]
    with warnings.catch_warnings():
        # Python >= 3.12 warns on any fork of a threaded process (the pool's own manager thread is one); the
        # children here run only numpy and scipy's L-BFGS-B, which take no lock another thread could hold
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            return [entry for part in pool.map(refit, *columns, chunks) for entry in part]
