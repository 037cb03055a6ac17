"""Bootstrap intervals: refit on rows resampled with replacement within each group; 95% percentile intervals."""

from __future__ import annotations

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


def _resample(sub: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return sub.iloc[rng.integers(0, len(sub), size=len(sub))]


def _bootstrap_group(
    form: str, sub: pd.DataFrame, theta: np.ndarray, k: int, rng: np.random.Generator, grid, n_ref: int = 32
) -> list[dict[str, float]]:
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
