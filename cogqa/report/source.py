"""What a report is built from: the results table and laws of a sweep directory or a laws file, the
bootstrap band of the joint law, the measured size range and the target losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CogqaError, require

BAND_RESAMPLES = 40  # bootstrap refits behind the report's 95% bands (each a few hundred ms)


def load_source(source: str | Path, laws: Any = None, fit_grid: str | int | None = None):
    """(results DataFrame or None, LawSet, description) for a sweep directory or a laws file.

    For a sweep directory the laws are ``laws`` if given, else ``DIR/laws.json`` if present,
    else fitted now from ``DIR/results.csv`` with :func:`cogqa.fitting.fit_results` (form n)
    and saved to ``DIR/laws.json``.
    """
    from ..laws import LawSet, load_laws

    path = Path(str(source))
    if path.is_dir():
        results_path = path / "results.csv"
        require(results_path.is_file(), f"report: {path} has no results.csv; run `cogqa sweep collect {path}` first")
        import pandas as pd

        df = pd.read_csv(results_path)
        if isinstance(laws, LawSet):
            law_set = laws
        elif laws is not None:
            law_set = load_laws(laws)
        elif (path / "laws.json").is_file():
            law_set = load_laws(path / "laws.json")
        else:
            law_set = fit_laws(df, f"fitted by cogqa report from {results_path}", fit_grid)
            law_set.save(path / "laws.json")
        return df, law_set, f"sweep {path}"
    from ..laws import SHIPPED_LAW_SETS

    require(
        isinstance(laws, LawSet) or str(source) in SHIPPED_LAW_SETS or path.is_file(),
        f"report: {source}: no such sweep directory or laws file (or a shipped set: {', '.join(SHIPPED_LAW_SETS)})",
    )
    law_set = laws if isinstance(laws, LawSet) else load_laws(source)
    return None, law_set, f"laws {source}"


def fit_laws(df, source: str, grid: str | int | None = None):
    """The laws fitted to a results table, as a :class:`cogqa.laws.LawSet`: the joint law across head
    configurations (``heads-joint``) when the table has at least 2 of them and 8 rows, else one
    Eq. 7 law per H (``grid``: starting points of :func:`cogqa.fitting.fit_results`)."""
    try:
        from ..fitting import fit_results
    except ImportError:
        raise CogqaError(
            "report: cogqa.fitting is not installed in this version; fit with `cogqa fit` and pass --laws"
        ) from None
    joint = len(set(zip(df["n_heads"], df["n_kv_heads"]))) >= 2 and len(df) >= 8
    rep = fit_results(df, form="heads-joint" if joint else "n", grid=grid)
    return rep.law_set(source)


def bootstrap_band(df, law_set, n_grid, fit_grid=None, samples=None) -> dict:
    """{H: (2.5%, 97.5%) of the joint law's loss over ``n_grid``} (nats/token) from bootstrap refits of ``df`` (rows
    drawn with replacement): ``samples`` (coefficient dicts of the fit that made ``law_set``) when given, else
    :data:`BAND_RESAMPLES` refits made here; empty when the refits fail."""
    if not samples:
        from ..fitting import fit_results

        try:
            samples = fit_results(df, form="heads-joint", bootstrap=BAND_RESAMPLES, seed=0, grid=fit_grid).samples
        except CogqaError:
            return {}
    if not samples:
        return {}
    n_ref = law_set.joint.n_ref
    out = {}
    for law in law_set.laws:
        h, kv = law.heads
        curves = np.array(
            [
                (smp["a"] / n_grid) ** smp["b"]
                + smp["E"]
                + smp["A"] * (h ** -smp["g"] - n_ref ** -smp["g"])
                + smp["B"] * (kv ** -smp["k"] - n_ref ** -smp["k"])
                for smp in samples
            ]
        )
        out[law.heads] = tuple(np.percentile(curves, [2.5, 97.5], axis=0))
    return out


def fit_range(df, law_set) -> tuple[float, float]:
    """(smallest, largest) non-embedding parameters the laws were measured on (1e8 to 1e10 when unknown)."""
    if df is not None:
        return float(df["params_non_embedding"].min()), float(df["params_non_embedding"].max())
    rng = (law_set.metadata or {}).get("params_non_embedding_range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2:
        return float(rng[0]), float(rng[1])
    return 1e8, 1e10


def target_losses_for(law_set, n_range: tuple[float, float], count: int = 4) -> list[float]:
    """``count`` target losses (nats/token) evenly inside the laws' predicted losses over the
    measured size range ``n_range`` (parameters): from the best loss at N_max to the worst at N_min."""
    n_lo, n_hi = n_range
    best = min(float(law.loss(n_hi)) for law in law_set.laws)
    worst = max(float(law.loss(n_lo)) for law in law_set.laws)
    grid = np.linspace(best, worst, count + 2)[1:-1]
    return [float(round(x, 3)) for x in grid]
