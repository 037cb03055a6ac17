"""The paper's cost-optimal GQA search (Section 4.1), its inverse (lowest loss within a budget)
and the Table 4 grid.

For a context length T (tokens) and a target loss L* (nats per token), every head configuration
H = (n_heads, n_kv_heads) of a laws file gets the smallest size that reaches L*,
``N*(H) = a / (L* - E)^(1/b)`` (non-embedding parameters, real-valued, Eq. 8), a real-valued
shape by Appendix B.1 (:func:`cogqa.family.shape_for_params`), its inference costs at T
(:mod:`cogqa.costs`, exact per component) and the hardware-aware cost
``Z = lam * M^alpha + (1 - lam) * C^beta``. The configuration with the smallest Z wins.

What M and C mean inside Z is a named convention (:data:`cogqa.costs.Z_CONVENTIONS`): ``paper``
(default; the paper's Figure 2: M = 2 bytes x (N + 2 T L d_h n_kv), C = T x (2N + 4 T L d_h n_h),
N non-embedding), ``eq4-per-token`` (M in values, C exact FLOPs per token) or ``bytes-per-token``.
The old ``memory_unit`` keyword maps values -> eq4-per-token, bytes -> bytes-per-token. Reported
memory columns are always bytes and FLOPs columns always FLOPs per token, whatever the convention.
See docs/default-laws.md for the evidence behind ``paper``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .costs import ZConvention, ZWeights, z_memory
from .errors import CogqaError, require
from .family import PAPER_FAMILY, ModelFamily, nearest_buildable, shape_for_params, shape_from_spec
from .laws import LawSet, PowerLawN
from .search_inputs import (
    CostSettings,
    UnreachableTarget,
    _check_context,
    _check_loss,
    _cost_columns,
    _select_laws,
    as_settings,
    candidate_heads,
    resolve_laws,
    shape_costs,
)
from .search_table import (
    PAPER_TABLE4,
    PAPER_TABLE4_CONTEXTS,
    compare_with_paper_table4,
    cost_optimal_table,
    cost_optimal_table_long,
    parse_cell,
    plot_cost_optimal_table,
)
from .search_training import search_at_training_budget
from .shapes import ModelShape, RealShape

#: The Llama-3 GQA baseline's head configuration (Table 5 of the paper; see docs/default-laws.md).
LLAMA3_HEADS = (32, 8)

_N_MIN, _N_MAX = 1e3, 1e15  # bracket of the budget bisection (non-embedding parameters)
_N_TRUSTED = (1e6, 1e11)  # without a fitted range in the laws file: the paper's 3M-1.2B, widely extended
_EXTRAPOLATION = (10.0, 100.0)  # with a fitted range [lo, hi]: warn below lo/10 or above hi*100
_BUDGET_FLAGS = {
    "z": "--budget-z",
    "inference_memory_bytes": "--budget-memory",
    "inference_flops_per_token": "--budget-flops",
}


def law_quality_warnings(law_set: LawSet) -> list[str]:
    """The fit's reasons for distrust stored in the laws file (``metadata.quality_warnings``), one line each."""
    found = (law_set.metadata or {}).get("quality_warnings") or []
    return [f"laws file: {w}" for w in found if isinstance(w, str)][:20]


def _size_warnings(best: dict, law_set: LawSet) -> list[str]:
    """The laws file's quality warnings, and a warning when the winner's size is far outside the sizes the
    laws were fitted on (``metadata.params_non_embedding_range`` of the laws file, else 1e6 to 1e11 parameters)."""
    return law_quality_warnings(law_set) + _range_warnings(best, law_set)


def _range_warnings(best: dict, law_set: LawSet) -> list[str]:
    n = best.get("params_non_embedding")
    fitted = (law_set.metadata or {}).get("params_non_embedding_range")
    numbers = isinstance(fitted, (list, tuple)) and len(fitted) == 2
    numbers = numbers and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in fitted)
    if numbers and all(math.isfinite(x) for x in fitted):
        lo, hi = float(fitted[0]) / _EXTRAPOLATION[0], float(fitted[1]) * _EXTRAPOLATION[1]
        what = f"fitted on, {float(fitted[0]):.3g} to {float(fitted[1]):.3g}"
    else:
        lo, hi = _N_TRUSTED
        what = f"scaling laws are usually fitted on, {lo:.0e} to {hi:.0e}"
    if n is None or lo <= n <= hi:
        return []
    return [f"N* = {n:.3g} parameters is far outside the sizes {what}; the answer is an extrapolation"]


# ---------------------------------------------------------------------------------------------
# Candidates: one row (a dict) per head configuration
# ---------------------------------------------------------------------------------------------


def _buildable(costs: dict, i: int, n_heads: int, n_kv_heads: int, family: ModelFamily = PAPER_FAMILY) -> ModelShape:
    """The buildable shape nearest to candidate ``i``'s real-valued Appendix B.1 shape."""
    layers, hidden = float(costs["layers_real"][i]), float(costs["hidden_size_real"][i])
    real = RealShape(
        layers=layers,
        hidden_size=hidden,
        ffn_size=8 * hidden / 3,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=family.head_dim,
        vocab_size=family.vocab_size,
    )
    return nearest_buildable(real, hidden_multiple=family.hidden_multiple)


def _candidate_costs(laws: list[PowerLawN], n_params, context, settings: CostSettings, family, objective: bool):
    """Cost columns (arrays, one per candidate) of sizes ``n_params`` (parameters) at ``context``
    tokens, plus the serving columns on ``settings.hardware`` (``objective_value`` only if ``objective``)."""
    n_h = np.array([law.n_heads for law in laws], dtype=float)
    n_kv = np.array([law.n_kv_heads for law in laws], dtype=float)
    shape = shape_for_params(np.asarray(n_params, dtype=float), n_h, n_kv, family=family)
    costs = shape_costs(shape, context, settings)
    if settings.hardware is not None:
        serving = settings.serving_columns(shape, context)
        costs |= {k: v for k, v in serving.items() if objective or k != "objective_value"}
    return costs


def _rows(laws: list[PowerLawN], n_params, losses, reachable, costs: dict, sort_by: str, family) -> list[dict]:
    """One plain dict per candidate, reachable first, then by ``sort_by`` (NaN last), n_heads, n_kv_heads."""
    rows = []
    for i, law in enumerate(laws):
        ok = bool(reachable[i])
        built = _buildable(costs, i, law.n_heads, law.n_kv_heads, family) if ok else None
        row = {
            "n_heads": law.n_heads,
            "n_kv_heads": law.n_kv_heads,
            "reachable": ok,
            "params_non_embedding": float(n_params[i]) if ok else math.nan,
            "predicted_loss": float(losses[i]) if ok else math.nan,
            "layers": built.layers if ok else None,
            "hidden_size": built.hidden_size if ok else None,
        }
        row |= {k: float(v[i]) if ok else math.nan for k, v in costs.items()}
        if "fits" in row:
            row["fits"] = bool(row["fits"]) if ok else None
        rows.append(row)

    def key(row):
        v = row[sort_by]
        return (not row["reachable"], math.isnan(v), 0.0 if math.isnan(v) else v, row["n_heads"], row["n_kv_heads"])

    return sorted(rows, key=key)


def _frame(rows: list[dict]):
    """The candidates as a pandas DataFrame (pandas imported here only: the search itself does not need it)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    for column in ("layers", "hidden_size"):  # whole numbers, missing where unreachable
        df[column] = pd.array([r[column] for r in rows], dtype="Int64")
    if "fits" in df:
        df["fits"] = pd.array([r["fits"] for r in rows], dtype="boolean")
    return df


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _plain(value):
    """JSON-safe scalar: numpy -> python, NaN/inf and pandas' NA -> None."""
    if value is None or type(value).__name__ == "NAType":
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class SearchResult:
    """The outcome of :func:`search` or :func:`lowest_loss_within_budget`.

    ``rows``: one plain dict per head configuration, ranked (by ``z`` or the objective for a target
    loss, by ``predicted_loss`` for a budget), unreachable ones last; ``candidates`` is the same as a
    pandas DataFrame, built on first use. Units: ``params_*`` parameters, ``*_flops_per_token`` FLOPs
    per token, ``*_bytes`` bytes, ``*_loss`` nats per token, ``z`` none. ``savings``: fractions saved
    by ``best`` against ``baseline`` (0.5 = half the cost). ``settings``: the cost options used.
    """

    context: int
    target_loss: float | None
    rows: list
    best: dict
    settings: CostSettings = field(default_factory=CostSettings)
    baseline: dict | None = None
    savings: dict | None = None
    approximate: bool = False
    laws_source: str = ""
    budget: dict | None = None
    warnings: list = field(default_factory=list)

    def __post_init__(self) -> None:
        require(isinstance(self.rows, list) and len(self.rows) > 0, "a search result needs at least one candidate")

    @cached_property
    def candidates(self):
        """The ranked candidates as a pandas DataFrame (``layers``/``hidden_size`` Int64, ``fits`` boolean)."""
        return _frame(self.rows)

    @property
    def weights(self) -> ZWeights:
        """The Z weights (lambda, alpha, beta)."""
        return self.settings.weights

    @property
    def weight_dtype(self) -> str:
        """The dtype of the weights in memory."""
        return self.settings.weight_dtype

    @property
    def kv_dtype(self) -> str:
        """The dtype of the KV cache."""
        return self.settings.kv_dtype

    @property
    def batch(self) -> int:
        """The batch (sequences) at which memory and Z are computed."""
        return self.settings.z_batch

    @property
    def convention(self) -> ZConvention:
        """The Z convention."""
        return self.settings.convention

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: context, target_loss, best, candidates (list), baseline, savings,
        approximate, laws_source, the cost settings and the budget (NaN written as null)."""
        w = self.weights
        return _plain(
            {
                "context": self.context,
                "target_loss": self.target_loss,
                "budget": self.budget,
                "best": self.best,
                "candidates": self.rows,
                "baseline": self.baseline,
                "savings": self.savings,
                "approximate": self.approximate,
                "laws_source": self.laws_source,
                "z_weights": {"lambda": w.lam, "alpha": w.alpha, "beta": w.beta},
                "z_convention": self.convention.to_dict(),
                "weight_dtype": self.weight_dtype,
                "kv_dtype": self.kv_dtype,
                "batch": self.batch,
                "warnings": list(self.warnings),
            }
            | self.settings.to_dict()
        )


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def _nearest_law(law_set: LawSet, heads: tuple[int, int]) -> PowerLawN:
    """The law of ``heads`` (any H under a joint law), or the one nearest to it in (log2 n_h, log2 n_kv)."""
    if law_set.joint is not None:
        return law_set.law_for(heads)
    table = law_set.by_heads()
    if heads in table:
        return table[heads]
    dist = lambda law: abs(math.log2(law.n_heads / heads[0])) + abs(math.log2(law.n_kv_heads / heads[1]))  # noqa: E731
    return min(law_set.laws, key=lambda law: (dist(law), -law.n_heads, -law.n_kv_heads))


def _llama3_baseline(law_set: LawSet, target_loss) -> tuple[RealShape, dict]:
    """H = (32, 8) sized by the law of (32, 8) (or the nearest one) to reach ``target_loss``."""
    require(target_loss is not None, "--baseline llama3 needs --target-loss (its size is the one that reaches it)")
    law = _nearest_law(law_set, LLAMA3_HEADS)
    n = float(law.params_for_loss(target_loss))
    require(
        math.isfinite(n),
        f"--baseline llama3: the law of H={law.heads} cannot reach loss {target_loss} (its E is {law.E:.4g})",
    )
    shape = shape_for_params(n, *LLAMA3_HEADS, family=law_set.family)
    built = nearest_buildable(shape, hidden_multiple=law_set.family.hidden_multiple)
    return shape, {
        "spec": "llama3",
        "n_heads": LLAMA3_HEADS[0],
        "n_kv_heads": LLAMA3_HEADS[1],
        "sized_by": "law",
        "law_heads": list(law.heads),
        "params_non_embedding": n,
        "predicted_loss": float(target_loss),
        "layers": built.layers,
        "hidden_size": built.hidden_size,
    }


def _spec_baseline(law_set: LawSet, text: str) -> tuple[ModelShape, dict]:
    """A config.json or a size with heads, costed with its own shape; loss from the law of its heads."""
    from .costs import params_non_embedding

    try:
        shape = shape_from_spec(text)
    except CogqaError as exc:
        raise CogqaError(
            f"--baseline {text!r}: not llama3, a config.json or a size with heads like 1.2B:32,8 ({exc})"
        ) from None
    n = float(params_non_embedding(shape))
    heads = (int(round(float(shape.n_heads))), int(round(float(shape.n_kv_heads))))
    law = law_set.law_for(heads)
    return shape, {
        "spec": text,
        "n_heads": heads[0],
        "n_kv_heads": heads[1],
        "sized_by": "shape",
        "law_heads": list(heads) if law else None,
        "params_non_embedding": n,
        "predicted_loss": float(law.loss(n)) if law else None,
        "layers": int(round(float(shape.layers))),
        "hidden_size": int(round(float(shape.hidden_size))),
    }


def baseline_costs(
    spec: str, context, target_loss, laws: LawSet | str | Path = "default", settings: CostSettings | None = None
) -> dict:
    """Costs of a baseline at ``context`` (tokens): a dict with its heads, size (parameters), how it
    was sized, its predicted loss (nats per token, when a law for its heads exists) and costs
    (memory bytes, FLOPs per token, Z under ``settings``, default :class:`CostSettings`).

    ``spec``: ``llama3`` = H = (32, 8) (the paper's Table 5) at the size that reaches
    ``target_loss`` under the law of (32, 8) (or the nearest law in the file); a Hugging Face
    ``config.json`` (or directory), a paper size with heads (``1.2B:32,8``) or any size with heads
    (``2.5B:8,1``, an Appendix B.1 shape): costed with its own shape, loss from the law of its heads.
    """
    st, T = as_settings(settings), _check_context(context)
    law_set = resolve_laws(laws)
    text = str(spec).strip()
    require(text != "", "--baseline: give llama3, a config.json path, or a size with heads like 1.2B:32,8")
    is_llama3 = text.lower() in ("llama3", "llama-3")
    shape, out = _llama3_baseline(law_set, target_loss) if is_llama3 else _spec_baseline(law_set, text)
    costs = shape_costs(shape, T, st)
    return out | {k: float(v) for k, v in costs.items() if k not in ("layers_real", "hidden_size_real")}


def savings_against(best: dict, baseline: dict) -> dict:
    """Fractions saved by ``best`` against ``baseline``: 1 - best/baseline for memory (exact bytes),
    FLOPs per token (exact), Z, and the M and C of the Z convention (``z_memory``, ``z_flops``: the
    paper's Takeaway 2 numbers under ``paper``); 0.508 = 50.8% less, negative = more."""
    out = {
        "memory": 1.0 - best["inference_memory_bytes"] / baseline["inference_memory_bytes"],
        "flops": 1.0 - best["inference_flops_per_token"] / baseline["inference_flops_per_token"],
        "z": 1.0 - best["z"] / baseline["z"],
    }
    for key in ("z_memory", "z_flops"):
        if key in best and key in baseline:
            out[key] = 1.0 - best[key] / baseline[key]
    return out


# ---------------------------------------------------------------------------------------------
# The search and its inverse
# ---------------------------------------------------------------------------------------------


def search(
    context,
    target_loss,
    laws: LawSet | str | Path = "default",
    max_heads: int | None = None,
    heads=None,
    baseline: str | None = None,
    settings: CostSettings | None = None,
) -> SearchResult:
    """The cost-optimal (N, n_h, n_kv) that reaches ``target_loss`` (nats per token) at ``context``
    (tokens), with the smallest Z. Every candidate H gets N*(H) = a/(L*-E)^(1/b) (parameters);
    those with L* <= E are kept as unreachable rows. Raises :class:`UnreachableTarget` when none is reachable.
    ``settings``: the cost options (:class:`CostSettings`: Z weights and convention, dtypes, batch;
    default paper settings); with an objective other than z the ranking minimises it on
    ``settings.hardware`` (candidates whose batch does not fit rank last, ``fits`` False) and the
    candidates gain serving columns (seconds/token, tokens/s)."""
    T, L, st = _check_context(context), _check_loss(target_loss), as_settings(settings)
    law_set = resolve_laws(laws)
    laws_list = _select_laws(law_set, max_heads, heads)
    n_star = np.array([float(law.params_for_loss(L)) for law in laws_list])
    reachable = np.isfinite(n_star)
    if not reachable.any():
        lowest = min(law.E for law in laws_list)
        raise UnreachableTarget(
            f"--target-loss {L}: unreachable; every head configuration has E >= it (lowest E is {lowest:.4g} "
            "nats/token)"
        )
    costs = _candidate_costs(laws_list, np.where(reachable, n_star, 1e9), T, st, law_set.family, objective=True)
    rows = _rows(laws_list, n_star, np.full(len(laws_list), L), reachable, costs, st.ranks_by, law_set.family)
    require(
        st.ranks_by == "z" or bool(rows[0]["fits"]),
        f"no candidate fits batch {st.batch} at T = {T:,} tokens on {getattr(st.hardware, 'name', '')}; "
        "lower --batch or use --batch auto",
    )
    best = _plain(rows[0])
    base = savings = None
    if baseline is not None:
        base = baseline_costs(baseline, T, L, law_set, settings=st)
        savings = savings_against(best, base)
    return SearchResult(
        context=T,
        target_loss=L,
        rows=rows,
        best=best,
        settings=st,
        baseline=base,
        savings=savings,
        approximate=law_set.approximate,
        laws_source=law_set.source,
        warnings=_size_warnings(best, law_set),
    )


def _check_budgets(budget_z, budget_memory, budget_flops) -> dict[str, float]:
    """The given budgets by cost column (Z, memory bytes, FLOPs per token), each positive and finite."""
    budgets = {"z": budget_z, "inference_memory_bytes": budget_memory, "inference_flops_per_token": budget_flops}
    budgets = {k: v for k, v in budgets.items() if v is not None}
    require(budgets, "give a budget: budget_z, budget_memory (bytes) or budget_flops (FLOPs per token)")
    for key, value in budgets.items():
        require(
            isinstance(value, (int, float, np.floating))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0,
            f"{_BUDGET_FLAGS[key]} must be a positive, finite number, got {value!r}",
        )
    return budgets


def _largest_within(fits, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, the largest N in [_N_MIN, _N_MAX] (parameters) with ``fits(N)`` true (bisection
    on log N; costs grow with N), and whether even _N_MIN fits."""
    lo, hi = np.full(count, math.log(_N_MIN)), np.full(count, math.log(_N_MAX))
    reachable = fits(np.exp(lo))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        ok = fits(np.exp(mid))
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return np.where(reachable, np.exp(lo), np.nan), reachable


def lowest_loss_within_budget(
    context,
    laws: LawSet | str | Path = "default",
    budget_z=None,
    budget_memory=None,
    budget_flops=None,
    max_heads: int | None = None,
    heads=None,
    settings: CostSettings | None = None,
) -> SearchResult:
    """The inverse question: for each H the largest N (parameters) whose Z, memory (bytes) and
    FLOPs per token at ``context`` all stay within the given budgets (bisection over N), its
    predicted loss (nats per token); ``best`` is the lowest loss. H that cannot fit even at
    1e3 parameters are unreachable rows; an error if none fits. ``settings``: the cost options
    (:class:`CostSettings`; with hardware the candidates gain serving columns, the ranking stays by loss)."""
    T, st = _check_context(context), as_settings(settings)
    budgets = _check_budgets(budget_z, budget_memory, budget_flops)
    law_set = resolve_laws(laws)
    laws_list = _select_laws(law_set, max_heads, heads)
    n_h = np.array([law.n_heads for law in laws_list], dtype=float)
    n_kv = np.array([law.n_kv_heads for law in laws_list], dtype=float)

    def fits(n):
        c = _cost_columns(n, n_h, n_kv, T, st, law_set.family)
        return np.all([c[k] <= v for k, v in budgets.items()], axis=0)

    n_best, reachable = _largest_within(fits, len(laws_list))
    if not reachable.any():
        raise CogqaError(
            f"budget too small: no head configuration fits within it even at {_N_MIN:.0e} parameters; raise the budget"
        )
    losses = np.array([float(law.loss(n)) if ok else np.nan for law, n, ok in zip(laws_list, n_best, reachable)])
    costs = _candidate_costs(laws_list, np.where(reachable, n_best, 1e9), T, st, law_set.family, objective=False)
    rows = _rows(laws_list, n_best, losses, reachable, costs, "predicted_loss", law_set.family)
    best = _plain(rows[0])
    return SearchResult(
        context=T,
        target_loss=None,
        rows=rows,
        best=best,
        settings=st,
        approximate=law_set.approximate,
        laws_source=law_set.source,
        budget={k.replace("inference_", "").replace("_per_token", ""): float(v) for k, v in budgets.items()},
        warnings=_size_warnings(best, law_set),
    )


__all__ = [
    "PAPER_TABLE4",
    "PAPER_TABLE4_CONTEXTS",
    "LLAMA3_HEADS",
    "SearchResult",
    "UnreachableTarget",
    "candidate_heads",
    "resolve_laws",
    "search",
    "lowest_loss_within_budget",
    "search_at_training_budget",
    "baseline_costs",
    "savings_against",
    "z_memory",
    "cost_optimal_table",
    "cost_optimal_table_long",
    "compare_with_paper_table4",
    "plot_cost_optimal_table",
    "parse_cell",
    "CostSettings",
    "ZWeights",
]
