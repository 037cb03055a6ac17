"""A self-contained Markdown report (with PNG figures) of a sweep or of a laws file.

``build_report(source, out, context, target_loss)`` where ``source`` is a sweep directory (its
``results.csv``; laws fitted with :mod:`cogqa.fitting` unless ``laws.json`` is there) or a laws
file / shipped law-set name. Sections (those that need data are skipped for a laws file):

1. loss vs N per head configuration with the fitted curves and R^2 (the paper's step 2);
2. loss vs inference memory, FLOPs per token and Z at the chosen T (Figure 2 style);
3. loss vs n_h at each fixed size (Figure 12 style), when the data has several n_h per size;
4. the cost-optimal table over a grid of target losses and contexts (Table 4 style);
5. FLOPs and memory breakdown vs T of the recommended configuration (Figures 7/8);
6. the recommended configuration for (L*, T) with its savings against the baseline.

7. the Pareto view: loss vs memory vs FLOPs over every candidate, the non-dominated ones marked.

With an objective and hardware (``settings``) the table, the recommendation and its top candidates
also show the predicted decode time per output token (ms) and tokens/s per device.

Rooms: :mod:`.source` (results, laws, bands, targets) -> :mod:`.sections` (one Markdown builder per
section) with :mod:`.figures` (the PNGs), :mod:`.markdown` (tables, text) and :mod:`.pareto`
(section 7); this module only resolves the inputs and runs the sections in order.

Units: loss in nats/token, N in non-embedding parameters, memory in bytes, FLOPs per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CogqaError, require
from ..files import write_json_atomic, write_text_atomic
from . import sections
from .figures import pyplot
from .pareto import pareto_candidates, pareto_section
from .sections import DEFAULT_REPORT_CONTEXTS, Report
from .source import BAND_RESAMPLES, fit_laws, fit_range, load_source, target_losses_for

__all__ = [
    "BAND_RESAMPLES",
    "DEFAULT_REPORT_CONTEXTS",
    "build_report",
    "fit_laws",
    "load_source",
    "pareto_candidates",
    "target_losses_for",
]


def build_report(
    source: str | Path,
    out: str | Path | None = None,
    context: int | None = None,
    target_loss: float | None = None,
    laws: Any = None,
    baseline: str | None = None,
    fit_grid: str | int | None = None,
    settings=None,
    band_samples: list | None = None,
) -> Path:
    """Write ``report.md`` and its PNG figures into ``out`` (default ``SOURCE/report`` for a sweep
    directory, ``report/`` otherwise); returns the Markdown path. ``context`` (tokens) defaults to
    128K and ``target_loss`` (nats/token) to the middle of the laws' loss range. ``settings``: a
    :class:`cogqa.search.CostSettings` (objective and hardware) for the table, the recommendation
    and the Pareto view (section 7); default: Z, no hardware. ``band_samples``: the bootstrap coefficient samples
    of the joint law in ``laws`` (:attr:`cogqa.fitting.FitReport.samples` of the fit that made it) for section 1's
    95% band; default: refitted here from the results with :data:`BAND_RESAMPLES` resamples."""
    r = _resolve(source, out, context, target_loss, laws, baseline, fit_grid, settings)
    r.band_samples = band_samples
    md = sections.intro(r)
    for section in (
        sections.loss_vs_n,
        sections.loss_vs_cost,
        sections.loss_vs_heads,
        sections.cost_optimal_table,
        sections.recommendation,
    ):
        md += section(r)
    try:
        md += pareto_section(r)
    except ImportError:
        md += ["## 7. Pareto view", "", "_Skipped: cogqa.search is not available in this install._", ""]
    write_json_atomic(r.out / "numbers.json", r.numbers)
    return write_text_atomic(r.out / "report.md", "\n".join(md) + "\n")


def _resolve(source, out, context, target_loss, laws, baseline, fit_grid, settings) -> Report:
    """Load the source, create ``out``, check T and pick the target losses: a :class:`Report` (nothing written
    but ``out`` and, for a sweep fitted now, its ``laws.json``)."""
    df, law_set, what = load_source(source, laws, fit_grid)
    src = Path(str(source))
    out = Path(out) if out is not None else (src / "report" if src.is_dir() else Path("report"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CogqaError(f"--out: cannot create {out} ({exc.strerror})") from None
    T = int(context or 131072)
    require(T > 0, f"--context must be positive, got {T}")
    n_range = fit_range(df, law_set)
    if df is not None:  # targets inside the measured losses: the laws are trusted there
        targets = [float(round(x, 3)) for x in np.quantile(df["loss"], [0.2, 0.4, 0.6, 0.8])]
    else:
        targets = target_losses_for(law_set, n_range)
    if target_loss is None:
        target_loss = targets[len(targets) // 2]
    n_lo, n_hi = n_range
    shown = law_set.laws
    if df is not None and law_set.joint is not None:
        measured = set(zip(df.n_heads.astype(int), df.n_kv_heads.astype(int)))
        shown = [law for law in law_set.laws if law.heads in measured] or law_set.laws
    return Report(
        df=df,
        law_set=law_set,
        what=what,
        out=out,
        T=T,
        target_loss=target_loss,
        targets=targets,
        n_range=n_range,
        grid=np.geomspace(n_lo / 1.15, n_hi * 1.3, 100),  # the measured range, barely extrapolated
        shown=shown,
        fit_grid=fit_grid,
        settings=settings,
        baseline=baseline,
        plt=pyplot(),
        numbers={"context": T, "target_loss": target_loss},
    )
