"""The paper's cost-optimal GQA search (Section 4.1), its inverse (lowest loss within a budget)
and the Table 4 grid.

For a context length T (tokens) and a target loss L* (nats per token), every head configuration
H = (n_heads, n_kv_heads) of a laws file gets the smallest size that reaches L*,
``N*(H) = a / (L* - E)^(1/b)`` (non-embedding parameters, real-valued, Eq. 8), a real-valued
shape by Appendix B.1 (:func:`cogqa.shapes.shape_for_params`), its inference costs at T
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .costs import (
    DEFAULT_CONVENTION,
    MEMORY_UNIT_CONVENTIONS,
    MEMORY_UNITS,
    ZConvention,
    ZWeights,
    dtype_bytes,
    inference_flops_per_token,
    inference_memory_bytes,
    params_total,
    z_convention,
    z_cost,
    z_inputs,
    z_memory,
)
from .errors import CogqaError, require
from .files import save_figure
from .laws import LawSet, PowerLawN, load_laws
from .shapes import (
    PAPER_FAMILY,
    ModelFamily,
    ModelShape,
    RealShape,
    nearest_buildable,
    shape_for_params,
    shape_from_spec,
)

#: The paper's Table 4: cost-optimal (n_h, n_kv) per target loss (rows) and context (columns).
PAPER_TABLE4_CONTEXTS = (8192, 16384, 32768, 65536, 131072)
PAPER_TABLE4: dict[float, tuple[tuple[int, int], ...]] = {
    3.0: ((32, 1), (16, 1), (8, 1), (4, 1), (4, 1)),
    2.9: ((32, 1), (16, 1), (16, 1), (8, 1), (4, 1)),
    2.8: ((32, 2), (16, 1), (16, 1), (8, 1), (8, 1)),
    2.7: ((32, 4), (16, 2), (16, 1), (16, 1), (8, 1)),
    2.6: ((32, 8), (16, 4), (16, 2), (16, 2), (8, 1)),
    2.5: ((32, 16), (16, 8), (16, 4), (16, 2), (16, 2)),
    2.4: ((32, 32), (32, 32), (32, 8), (32, 8), (32, 4)),
    2.35: ((32, 32), (32, 32), (32, 32), (32, 16), (32, 8)),
}

#: The Llama-3 GQA baseline's head configuration (Table 5 of the paper; see docs/default-laws.md).
LLAMA3_HEADS = (32, 8)


class UnreachableTarget(CogqaError):
    """No candidate head configuration can reach the target loss (it is at or below every law's floor)."""


_N_MIN, _N_MAX = 1e3, 1e15  # bracket of the budget bisection (non-embedding parameters)
_N_TRUSTED = (1e6, 1e11)  # without a fitted range in the laws file: the paper's 3M-1.2B, widely extended
_EXTRAPOLATION = (10.0, 100.0)  # with a fitted range [lo, hi]: warn below lo/10 or above hi*100


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
# Inputs
# ---------------------------------------------------------------------------------------------


def _is_power_of_two(n) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 and (n & (n - 1)) == 0


def candidate_heads(max_heads: int = 32) -> list[tuple[int, int]]:
    """Step 1: all (n_heads, n_kv_heads) with both powers of two and n_kv <= n_h <= ``max_heads``
    (21 configurations for 32), ordered by n_heads then n_kv_heads."""
    require(_is_power_of_two(max_heads), f"max_heads must be a power of two >= 1 (1, 2, 4, ..., 32), got {max_heads!r}")
    powers = [2**i for i in range(int(math.log2(max_heads)) + 1)]
    return [(h, kv) for h in powers for kv in powers if kv <= h]


def resolve_laws(laws: LawSet | str | Path) -> LawSet:
    """A LawSet from a LawSet, a laws-file path, or a shipped name (``default``, ``demo``)."""
    if isinstance(laws, LawSet):
        return laws
    require(
        isinstance(laws, (str, Path)) and str(laws).strip() != "",
        "--laws: give a laws file path or a shipped name (default, demo)",
    )
    return load_laws(laws)


def _select_laws(law_set: LawSet, max_heads, heads) -> list[PowerLawN]:
    """The candidate laws: the laws file's H (a joint law: every power-of-two H up to its
    ``max_heads``, and any H given in ``heads``), filtered by ``max_heads`` and ``heads``."""
    laws = list(law_set.laws)
    if max_heads is not None:
        require(
            _is_power_of_two(max_heads),
            f"--max-heads must be a power of two >= 1 (1, 2, 4, ..., 32), got {max_heads!r}",
        )
        if law_set.joint is not None:
            laws = [law_set.law_for(h) for h in candidate_heads(max_heads)]
        laws = [law for law in laws if law.n_heads <= max_heads]
    if heads is not None:
        wanted = list(dict.fromkeys(tuple(h) for h in heads))
        require(len(wanted) > 0, "--heads: give at least one (n_heads, n_kv_heads) pair")
        if law_set.joint is not None:
            return [law_set.law_for(h) for h in wanted]
        missing = sorted(set(wanted) - {law.heads for law in law_set.laws})
        require(
            not missing,
            f"--heads: no law for {missing} in the laws file; it has {sorted(law_.heads for law_ in law_set.laws)}",
        )
        laws = [law for law in laws if law.heads in set(wanted)]
    require(
        len(laws) > 0, f"no head configuration left to search (max_heads={max_heads}, heads={heads}); relax the filter"
    )
    return laws


def _check_context(context) -> int:
    if isinstance(context, str):
        from .units import parse_context

        return parse_context(context, "context")
    require(
        isinstance(context, (int, np.integer, float)) and not isinstance(context, bool),
        f"context must be a number of tokens, got {context!r} (parse '128k' with cogqa.units.parse_context)",
    )
    require(math.isfinite(context) and context >= 1, f"context must be at least 1 token, got {context}")
    return int(context) if float(context).is_integer() else context


def _check_loss(target_loss, name: str = "target_loss") -> float:
    require(
        isinstance(target_loss, (int, float, np.floating)) and not isinstance(target_loss, bool),
        f"{name} must be a number in nats per token, got {target_loss!r}",
    )
    require(
        math.isfinite(target_loss) and target_loss > 0,
        f"{name} must be a positive, finite loss in nats per token, got {target_loss}",
    )
    return float(target_loss)


def _convention(convention, memory_unit) -> ZConvention:
    """The Z convention from ``convention`` or the old ``memory_unit`` keyword (default ``paper``)."""
    if memory_unit is not None:
        require(memory_unit in MEMORY_UNITS, f"memory_unit must be one of {MEMORY_UNITS}, got {memory_unit!r}")
        require(convention is None, "give convention or the old memory_unit, not both")
        return z_convention(MEMORY_UNIT_CONVENTIONS[memory_unit])
    return z_convention(DEFAULT_CONVENTION if convention is None else convention)


def _check_options(weights, weight_dtype, kv_dtype, batch, convention, memory_unit=None) -> ZConvention:
    require(isinstance(weights, ZWeights), "weights must be a cogqa.costs.ZWeights")
    dtype_bytes(weight_dtype)
    dtype_bytes(kv_dtype)
    require(
        isinstance(batch, (int, np.integer)) and not isinstance(batch, bool) and batch >= 1,
        f"batch must be a whole number >= 1 of sequences, got {batch!r}",
    )
    return _convention(convention, memory_unit)


@dataclass(frozen=True)
class CostSettings:
    """The cost options of a search, validated once: Z weights and convention, dtypes, batch, objective, hardware.

    ``objective``: ``"z"`` (the paper's Z, the default), ``"latency"`` (decode seconds per
    output token) or ``"throughput"`` (tokens/s per device); the last two need ``hardware`` (a
    :class:`cogqa.hardware.Hardware` or a profile name). ``batch``: sequences (>= 1) or ``"auto"``
    (the largest batch that fits, needs ``hardware``; Z is then taken at batch 1).
    """

    weights: ZWeights = field(default_factory=ZWeights)
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    batch: Any = 1
    convention: Any = None
    objective: str = "z"
    hardware: Any = None

    def __post_init__(self) -> None:
        from .hardware import get_hardware
        from .serving import OBJECTIVES

        require(isinstance(self.weights, ZWeights), "weights must be a cogqa.costs.ZWeights")
        dtype_bytes(self.weight_dtype)
        dtype_bytes(self.kv_dtype)
        require(
            self.objective in OBJECTIVES, f"--objective: choose one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
        )
        if self.hardware is not None:
            object.__setattr__(self, "hardware", get_hardware(self.hardware))
        require(
            self.objective == "z" or self.hardware is not None,
            f"--objective {self.objective} needs --hardware (a profile name: cogqa hardware list)",
        )
        if isinstance(self.batch, str):
            require(self.batch == "auto", f"--batch: give a number of sequences >= 1 or auto, got {self.batch!r}")
            require(self.hardware is not None, "--batch auto needs --hardware (the batch that fits its memory)")
        else:
            require(
                isinstance(self.batch, (int, np.integer)) and not isinstance(self.batch, bool) and self.batch >= 1,
                f"--batch must be a whole number >= 1 of sequences or auto, got {self.batch!r}",
            )
        object.__setattr__(self, "convention", _convention(self.convention, None))

    @property
    def z_batch(self) -> int:
        """The batch at which Z and memory are computed (1 when ``batch`` is ``"auto"``)."""
        return 1 if isinstance(self.batch, str) else int(self.batch)

    @property
    def ranks_by(self) -> str:
        """The candidate column the ranking minimises: ``z`` or ``objective_value``."""
        return "z" if self.objective == "z" else "objective_value"

    def serving_columns(self, shape, context) -> dict[str, np.ndarray]:
        """Serving predictions for candidate ``shape`` (arrays) at ``context`` tokens, empty without hardware.

        ``objective_value`` (seconds per token for latency, device-seconds per token for
        throughput, Z for z; inf where the batch does not fit), ``seconds_per_token``,
        ``tokens_per_second`` (per device), ``serving_batch``, ``max_batch`` (sequences), ``fits`` (1/0).
        """
        if self.hardware is None:
            return {}
        from .serving import objective_values

        v = objective_values(
            shape,
            context,
            "latency" if self.objective == "z" else self.objective,
            self.hardware,
            self.batch,
            self.weight_dtype,
            self.kv_dtype,
        )
        out = {} if self.objective == "z" else {"objective_value": v["value"]}
        return out | {
            "seconds_per_token": v["seconds_per_token"],
            "tokens_per_second": v["tokens_per_second"],
            "serving_batch": v["batch"],
            "max_batch": v["max_batch"],
            "fits": v["fits"].astype(float),
        }

    def to_dict(self) -> dict[str, Any]:
        """The objective, hardware name and serving batch as plain values."""
        return {
            "objective": self.objective,
            "hardware": None if self.hardware is None else self.hardware.name,
            "serving_batch": self.batch,
        }


# ---------------------------------------------------------------------------------------------
# Costs of a set of configurations
# ---------------------------------------------------------------------------------------------


def _cost_columns(
    n_params,
    n_heads,
    n_kv_heads,
    context,
    batch,
    weight_dtype,
    kv_dtype,
    weights,
    convention: ZConvention,
    family: ModelFamily = PAPER_FAMILY,
) -> dict[str, np.ndarray]:
    """Costs of real-valued Appendix B.1 shapes of ``family`` of sizes ``n_params`` (arrays, one per candidate)."""
    shape = shape_for_params(
        np.asarray(n_params, dtype=float),
        np.asarray(n_heads, dtype=float),
        np.asarray(n_kv_heads, dtype=float),
        family=family,
    )
    flops = inference_flops_per_token(shape, context)
    mem = inference_memory_bytes(shape, context, batch, weight_dtype, kv_dtype)
    z_m, z_c = z_inputs(shape, context, convention, batch, weight_dtype, kv_dtype)
    z = z_cost(z_m, z_c, weights)
    return {
        "layers_real": np.asarray(shape.layers, dtype=float),
        "hidden_size_real": np.asarray(shape.hidden_size, dtype=float),
        "params_total": np.asarray(params_total(shape), dtype=float),
        "inference_flops_per_token": np.asarray(flops, dtype=float),
        "inference_memory_bytes": np.asarray(mem["total"], dtype=float),
        "kv_cache_bytes": np.asarray(mem["kv_cache"], dtype=float),
        "z_memory": np.asarray(z_m, dtype=float) + 0.0 * np.asarray(z, dtype=float),
        "z_flops": np.asarray(z_c, dtype=float) + 0.0 * np.asarray(z, dtype=float),
        "z": np.asarray(z, dtype=float),
    }


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


def _frame(
    laws: list[PowerLawN],
    n_params: np.ndarray,
    losses: np.ndarray,
    reachable: np.ndarray,
    costs: dict,
    sort_by: str,
    family: ModelFamily = PAPER_FAMILY,
) -> pd.DataFrame:
    rows = []
    for i, law in enumerate(laws):
        row = {"n_heads": law.n_heads, "n_kv_heads": law.n_kv_heads, "reachable": bool(reachable[i])}
        if reachable[i]:
            built = _buildable(costs, i, law.n_heads, law.n_kv_heads, family)
            row.update(
                {
                    "params_non_embedding": float(n_params[i]),
                    "predicted_loss": float(losses[i]),
                    "layers": built.layers,
                    "hidden_size": built.hidden_size,
                }
            )
            row.update({k: float(v[i]) for k, v in costs.items()})
        else:
            row.update(
                {"params_non_embedding": math.nan, "predicted_loss": math.nan, "layers": None, "hidden_size": None}
            )
            row.update({k: math.nan for k in costs})
        rows.append(row)
    df = pd.DataFrame(rows)
    for column in ("layers", "hidden_size"):  # whole numbers, missing where unreachable
        df[column] = pd.array([r[column] for r in rows], dtype="Int64")
    df = df.sort_values(
        ["reachable", sort_by, "n_heads", "n_kv_heads"], ascending=[False, True, True, True], kind="stable"
    )
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _plain(value):
    """JSON-safe scalar: numpy -> python, NaN/inf -> None."""
    if value is None or value is pd.NA:
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

    ``candidates``: one row per head configuration, ranked (by ``z`` for a target loss, by
    ``predicted_loss`` for a budget), unreachable ones last. Units: ``params_*`` parameters,
    ``*_flops_per_token`` FLOPs per token, ``*_bytes`` bytes, ``*_loss`` nats per token, ``z`` none.
    ``savings``: fractions saved by ``best`` against ``baseline`` (0.5 = half the cost).
    """

    context: int
    target_loss: float | None
    candidates: pd.DataFrame
    best: dict
    baseline: dict | None = None
    savings: dict | None = None
    approximate: bool = False
    laws_source: str = ""
    weights: ZWeights = field(default_factory=ZWeights)
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    batch: int = 1
    convention: ZConvention = field(default_factory=lambda: z_convention(DEFAULT_CONVENTION))
    budget: dict | None = None
    warnings: list = field(default_factory=list)
    settings: CostSettings | None = None

    def __post_init__(self) -> None:
        require(
            isinstance(self.candidates, pd.DataFrame) and len(self.candidates) > 0,
            "a search result needs at least one candidate",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: context, target_loss, best, candidates (list), baseline, savings,
        approximate, laws_source, the cost settings and the budget (NaN written as null)."""
        return _plain(
            {
                "context": self.context,
                "target_loss": self.target_loss,
                "budget": self.budget,
                "best": self.best,
                "candidates": self.candidates.to_dict(orient="records"),
                "baseline": self.baseline,
                "savings": self.savings,
                "approximate": self.approximate,
                "laws_source": self.laws_source,
                "z_weights": {"lambda": self.weights.lam, "alpha": self.weights.alpha, "beta": self.weights.beta},
                "z_convention": self.convention.to_dict(),
                "weight_dtype": self.weight_dtype,
                "kv_dtype": self.kv_dtype,
                "batch": self.batch,
                "warnings": list(self.warnings),
            }
            | (self.settings.to_dict() if self.settings is not None else {"objective": "z", "hardware": None})
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


def _shape_costs(shape, context, batch, weight_dtype, kv_dtype, weights, convention) -> dict:
    flops = float(inference_flops_per_token(shape, context))
    mem = inference_memory_bytes(shape, context, batch, weight_dtype, kv_dtype)
    z_m, z_c = z_inputs(shape, context, convention, batch, weight_dtype, kv_dtype)
    return {
        "inference_flops_per_token": flops,
        "inference_memory_bytes": float(mem["total"]),
        "kv_cache_bytes": float(mem["kv_cache"]),
        "params_total": float(params_total(shape)),
        "z_memory": float(z_m),
        "z_flops": float(z_c),
        "z": float(z_cost(z_m, z_c, weights)),
    }


def baseline_costs(
    spec: str,
    context,
    target_loss,
    laws: LawSet | str | Path = "default",
    weights: ZWeights = ZWeights(),
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    convention=None,
    memory_unit: str | None = None,
) -> dict:
    """Costs of a baseline at ``context`` (tokens): a dict with its heads, size (parameters), how it
    was sized, its predicted loss (nats per token, when a law for its heads exists) and costs.

    ``spec``: ``llama3`` = H = (32, 8) (the paper's Table 5) at the size that reaches
    ``target_loss`` under the law of (32, 8) (or the nearest law in the file); a Hugging Face
    ``config.json`` (or directory), a paper size with heads (``1.2B:32,8``) or any size with heads
    (``2.5B:8,1``, an Appendix B.1 shape): costed with its own shape, loss from the law of its heads.
    """
    law_set = resolve_laws(laws)
    text = str(spec).strip()
    require(text != "", "--baseline: give llama3, a config.json path, or a size with heads like 1.2B:32,8")
    if text.lower() in ("llama3", "llama-3"):
        require(target_loss is not None, "--baseline llama3 needs --target-loss (its size is the one that reaches it)")
        law = _nearest_law(law_set, LLAMA3_HEADS)
        n = float(law.params_for_loss(target_loss))
        require(
            math.isfinite(n),
            f"--baseline llama3: the law of H={law.heads} cannot reach loss {target_loss} (its E is {law.E:.4g})",
        )
        shape = shape_for_params(n, *LLAMA3_HEADS, family=law_set.family)
        built = nearest_buildable(shape, hidden_multiple=law_set.family.hidden_multiple)
        out = {
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
    else:
        try:
            shape = shape_from_spec(text)
        except CogqaError as exc:
            raise CogqaError(
                f"--baseline {text!r}: not llama3, a config.json or a size with heads like 1.2B:32,8 ({exc})"
            ) from None
        from .costs import params_non_embedding

        n = float(params_non_embedding(shape))
        heads = (int(round(float(shape.n_heads))), int(round(float(shape.n_kv_heads))))
        law = law_set.law_for(heads)
        out = {
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
    out.update(
        _shape_costs(shape, context, batch, weight_dtype, kv_dtype, weights, _convention(convention, memory_unit))
    )
    return out


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
    weights: ZWeights = ZWeights(),
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    max_heads: int | None = None,
    heads=None,
    baseline: str | None = None,
    convention=None,
    memory_unit: str | None = None,
    settings: CostSettings | None = None,
) -> SearchResult:
    """The cost-optimal (N, n_h, n_kv) that reaches ``target_loss`` (nats per token) at ``context``
    (tokens), with the smallest Z. Every candidate H gets N*(H) = a/(L*-E)^(1/b) (parameters);
    those with L* <= E are kept as unreachable rows. Raises :class:`UnreachableTarget` when none is reachable.
    ``convention``: the Z convention (default ``paper``, see :data:`cogqa.costs.Z_CONVENTIONS`).
    ``settings``: a :class:`CostSettings` replacing the cost keywords; with an objective other
    than z the ranking minimises it on ``settings.hardware`` (candidates whose batch does not fit
    rank last, ``fits`` False) and the candidates gain serving columns (seconds/token, tokens/s)."""
    T = _check_context(context)
    L = _check_loss(target_loss)
    if settings is not None:
        require(isinstance(settings, CostSettings), "settings must be a cogqa.search.CostSettings")
        weights, weight_dtype, kv_dtype = settings.weights, settings.weight_dtype, settings.kv_dtype
        batch, convention, memory_unit = settings.z_batch, settings.convention, None
    conv = _check_options(weights, weight_dtype, kv_dtype, batch, convention, memory_unit)
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
    n_eval = np.where(reachable, n_star, 1e9)
    costs = _cost_columns(
        n_eval,
        [law.n_heads for law in laws_list],
        [law.n_kv_heads for law in laws_list],
        T,
        batch,
        weight_dtype,
        kv_dtype,
        weights,
        conv,
        law_set.family,
    )
    sort_by = "z"
    if settings is not None and settings.hardware is not None:
        shape = shape_for_params(
            n_eval,
            np.array([law.n_heads for law in laws_list], dtype=float),
            np.array([law.n_kv_heads for law in laws_list], dtype=float),
            family=law_set.family,
        )
        costs = costs | settings.serving_columns(shape, T)
        sort_by = settings.ranks_by
    df = _frame(laws_list, n_star, np.full(len(laws_list), L), reachable, costs, sort_by, law_set.family)
    if "fits" in df:
        df["fits"] = pd.array([None if pd.isna(v) else bool(v) for v in df["fits"]], dtype="boolean")
        if sort_by != "z":
            require(
                bool(df["fits"].iloc[0]),
                f"no candidate fits batch {settings.batch} at T = {T:,} tokens on "
                f"{settings.hardware.name}; lower --batch or use --batch auto",
            )
    best = _plain(df.iloc[0].to_dict())
    base = savings = None
    if baseline is not None:
        base = baseline_costs(baseline, T, L, law_set, weights, weight_dtype, kv_dtype, batch, conv)
        savings = savings_against(best, base)
    return SearchResult(
        context=T,
        target_loss=L,
        candidates=df,
        best=best,
        baseline=base,
        savings=savings,
        approximate=law_set.approximate,
        laws_source=law_set.source,
        weights=weights,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        batch=batch,
        convention=conv,
        warnings=_size_warnings(best, law_set),
        settings=settings,
    )


def lowest_loss_within_budget(
    context,
    laws: LawSet | str | Path = "default",
    budget_z=None,
    budget_memory=None,
    budget_flops=None,
    weights: ZWeights = ZWeights(),
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    max_heads: int | None = None,
    heads=None,
    convention=None,
    memory_unit: str | None = None,
    settings: CostSettings | None = None,
) -> SearchResult:
    """The inverse question: for each H the largest N (parameters) whose Z, memory (bytes) and
    FLOPs per token at ``context`` all stay within the given budgets (bisection over N), its
    predicted loss (nats per token); ``best`` is the lowest loss. H that cannot fit even at
    1e5 parameters are unreachable rows; an error if none fits. ``settings``: a
    :class:`CostSettings` replacing the cost keywords (with hardware the candidates gain serving
    columns; the ranking stays by loss)."""
    T = _check_context(context)
    if settings is not None:
        require(isinstance(settings, CostSettings), "settings must be a cogqa.search.CostSettings")
        weights, weight_dtype, kv_dtype = settings.weights, settings.weight_dtype, settings.kv_dtype
        batch, convention, memory_unit = settings.z_batch, settings.convention, None
    conv = _check_options(weights, weight_dtype, kv_dtype, batch, convention, memory_unit)
    budgets = {"z": budget_z, "inference_memory_bytes": budget_memory, "inference_flops_per_token": budget_flops}
    flags = {
        "z": "--budget-z",
        "inference_memory_bytes": "--budget-memory",
        "inference_flops_per_token": "--budget-flops",
    }
    budgets = {k: v for k, v in budgets.items() if v is not None}
    require(budgets, "give a budget: budget_z, budget_memory (bytes) or budget_flops (FLOPs per token)")
    for key, value in budgets.items():
        require(
            isinstance(value, (int, float, np.floating))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0,
            f"{flags[key]} must be a positive, finite number, got {value!r}",
        )
    law_set = resolve_laws(laws)
    laws_list = _select_laws(law_set, max_heads, heads)
    n_h = np.array([law.n_heads for law in laws_list], dtype=float)
    n_kv = np.array([law.n_kv_heads for law in laws_list], dtype=float)

    def fits(n):
        c = _cost_columns(n, n_h, n_kv, T, batch, weight_dtype, kv_dtype, weights, conv, law_set.family)
        return np.all([c[k] <= v for k, v in budgets.items()], axis=0)

    lo, hi = np.full(len(laws_list), math.log(_N_MIN)), np.full(len(laws_list), math.log(_N_MAX))
    reachable = fits(np.exp(lo))
    for _ in range(60):  # bisection on log N; costs grow with N
        mid = 0.5 * (lo + hi)
        ok = fits(np.exp(mid))
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    n_best = np.where(reachable, np.exp(lo), np.nan)
    losses = np.array([float(law.loss(n)) if ok else np.nan for law, n, ok in zip(laws_list, n_best, reachable)])
    if not reachable.any():
        raise CogqaError(
            f"budget too small: no head configuration fits within it even at {_N_MIN:.0e} parameters; raise the budget"
        )
    costs = _cost_columns(
        np.where(reachable, n_best, 1e9), n_h, n_kv, T, batch, weight_dtype, kv_dtype, weights, conv, law_set.family
    )
    if settings is not None and settings.hardware is not None:
        shape = shape_for_params(np.where(reachable, n_best, 1e9), n_h, n_kv, family=law_set.family)
        costs = costs | {k: v for k, v in settings.serving_columns(shape, T).items() if k != "objective_value"}
    df = _frame(laws_list, n_best, losses, reachable, costs, "predicted_loss", law_set.family)
    if "fits" in df:
        df["fits"] = pd.array([None if pd.isna(v) else bool(v) for v in df["fits"]], dtype="boolean")
    best = _plain(df.iloc[0].to_dict())
    budget = {k.replace("inference_", "").replace("_per_token", ""): float(v) for k, v in budgets.items()}
    return SearchResult(
        context=T,
        target_loss=None,
        candidates=df,
        best=best,
        approximate=law_set.approximate,
        laws_source=law_set.source,
        weights=weights,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        batch=batch,
        convention=conv,
        budget=budget,
        warnings=_size_warnings(best, law_set),
        settings=settings,
    )


# ---------------------------------------------------------------------------------------------
# Section 5.6: the search at a training-compute budget (laws in N and D)
# ---------------------------------------------------------------------------------------------


def _data_laws(laws, heads) -> list[tuple[tuple[int, int], Any]]:
    """(H, loss(N, D) function) pairs from a joint law with a data term or per-H ChinchillaLaw objects."""
    from .laws import ChinchillaLaw, HeadsJointLaw

    if isinstance(laws, HeadsJointLaw):
        require(
            laws.B_D is not None, "training budget: the joint law has no data term (B_D, beta_D); fit loss in N and D"
        )
        wanted = list(heads) if heads is not None else candidate_heads(laws.max_heads)
        return [((int(h), int(kv)), lambda n, d, h=h, kv=kv: laws.loss(n, h, kv, d)) for h, kv in wanted]
    items = list(laws)
    require(
        items and all(isinstance(x, ChinchillaLaw) and x.n_heads is not None for x in items),
        "training budget: give a joint law with a data term or Chinchilla laws (loss in N and D) with "
        "n_heads/n_kv_heads",
    )
    out = [((x.n_heads, x.n_kv_heads), x.loss) for x in items]
    if heads is not None:
        out = [o for o in out if o[0] in {tuple(h) for h in heads}]
    require(out, "training budget: no head configuration left to search")
    return out


def search_at_training_budget(
    context,
    target_loss,
    train_flops,
    laws,
    train_context: int = 8192,
    weights: ZWeights = ZWeights(),
    convention=None,
    family: ModelFamily = PAPER_FAMILY,
    heads=None,
) -> dict[str, Any]:
    """Section 5.6: every H gets the same training compute ``train_flops`` (FLOPs, Eq. 11 with its
    attention term: C = 6 D (N + 2 L T_bar d_h n_h), T_bar = ``train_context`` / 2), so a cheaper
    configuration trains on more tokens D. For each H the smallest N (non-embedding parameters)
    whose loss(N, D(N)) reaches ``target_loss`` (nats/token); ranked by Z at ``context`` (tokens).

    ``laws``: a :class:`cogqa.laws.HeadsJointLaw` with a data term, or per-H
    :class:`cogqa.laws.ChinchillaLaw` objects. Returns {"best", "candidates" (list of dicts with
    n_heads, n_kv_heads, reachable, params_non_embedding, tokens, predicted_loss, z_memory,
    z_flops, z), "z_convention"}. Raises :class:`UnreachableTarget` when no H reaches the loss.
    """
    from .costs import paper_training_flops

    T = _check_context(context)
    L = _check_loss(target_loss)
    conv = _convention(convention, None)
    require(
        isinstance(train_flops, (int, float, np.floating)) and math.isfinite(train_flops) and train_flops > 0,
        f"train_flops must be a positive number of FLOPs, got {train_flops!r}",
    )
    grid = np.geomspace(1e5, 1e13, 801)
    rows = []
    for (h, kv), loss_fn in _data_laws(laws, heads):

        def tokens(n, h=h, kv=kv):
            shape = shape_for_params(n, h, kv, family=family)
            return train_flops / paper_training_flops(shape, 1.0, train_context)

        loss = loss_fn(grid, tokens(grid))
        ok = np.flatnonzero(loss <= L)
        row = {"n_heads": h, "n_kv_heads": kv, "reachable": bool(ok.size)}
        if ok.size:
            i = int(ok[0])
            lo, hi = (grid[i - 1], grid[i]) if i > 0 else (grid[0], grid[0])
            for _ in range(60):  # bisection on log N for the left root loss(N, D(N)) = L*
                mid = math.sqrt(lo * hi)
                if loss_fn(mid, tokens(mid)) <= L:
                    hi = mid
                else:
                    lo = mid
            n = hi
            shape = shape_for_params(n, h, kv, family=family)
            m, c = z_inputs(shape, T, conv)
            row.update(
                {
                    "params_non_embedding": float(n),
                    "tokens": float(tokens(n)),
                    "predicted_loss": float(loss_fn(n, tokens(n))),
                    "z_memory": float(m),
                    "z_flops": float(c),
                    "z": float(z_cost(m, c, weights)),
                }
            )
        rows.append(row)
    reach = [r for r in rows if r["reachable"]]
    if not reach:
        raise UnreachableTarget(
            f"--target-loss {L}: no head configuration reaches it within {train_flops:.3g} training FLOPs"
        )
    ranked = sorted(reach, key=lambda r: r["z"]) + [r for r in rows if not r["reachable"]]
    return {
        "best": ranked[0],
        "candidates": ranked,
        "z_convention": conv.to_dict(),
        "context": T,
        "target_loss": L,
        "train_flops": float(train_flops),
        "train_context": int(train_context),
    }


# ---------------------------------------------------------------------------------------------
# The Table 4 grid
# ---------------------------------------------------------------------------------------------


def _check_grid(losses, contexts) -> tuple[list[float], list[int]]:
    losses = list(losses) if losses is not None else []
    contexts = list(contexts) if contexts is not None else []
    require(len(losses) > 0, "--losses: give at least one target loss, e.g. 3.0,2.9,2.8")
    require(len(contexts) > 0, "--contexts: give at least one context length, e.g. 8k,128k")
    return [_check_loss(loss, "--losses") for loss in losses], [_check_context(t) for t in contexts]


def cost_optimal_table_long(
    losses,
    contexts,
    laws: LawSet | str | Path = "default",
    weights: ZWeights = ZWeights(),
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    max_heads: int | None = None,
    convention=None,
    memory_unit: str | None = None,
    settings: CostSettings | None = None,
) -> pd.DataFrame:
    """One row per (target loss, context): the winner's n_heads, n_kv_heads, N*
    (``params_non_embedding``, parameters) and ``z`` (under ``convention``, default ``paper``);
    ``reachable`` False (heads None) when no configuration reaches the loss. With ``settings``
    on hardware: the winner minimises its objective, and ``seconds_per_token``,
    ``tokens_per_second`` (per device), ``serving_batch`` and ``fits`` are added (a cell where no
    reachable candidate fits the batch is ``reachable`` True, ``fits`` False, heads None)."""
    losses, contexts = _check_grid(losses, contexts)
    if settings is not None:
        require(isinstance(settings, CostSettings), "settings must be a cogqa.search.CostSettings")
        weights, weight_dtype, kv_dtype = settings.weights, settings.weight_dtype, settings.kv_dtype
        batch, convention, memory_unit = settings.z_batch, settings.convention, None
    serve = settings is not None and settings.hardware is not None
    conv = _convention(convention, memory_unit)
    law_set = resolve_laws(laws)
    _check_options(weights, weight_dtype, kv_dtype, batch, conv)
    laws_list = _select_laws(law_set, max_heads, None)
    n_h = np.array([law.n_heads for law in laws_list], dtype=float)
    n_kv = np.array([law.n_kv_heads for law in laws_list], dtype=float)
    rows = []
    for L in losses:  # N*(H) depends on L* only: one Appendix B.1 shape per H, costed at every T
        n_star = np.array([float(law.params_for_loss(L)) for law in laws_list])
        reachable = np.isfinite(n_star)
        shape = (
            shape_for_params(np.where(reachable, n_star, 1e9), n_h, n_kv, family=law_set.family)
            if reachable.any()
            else None
        )
        for T in contexts:
            if shape is None:
                rows.append(
                    {
                        "target_loss": L,
                        "context": T,
                        "n_heads": None,
                        "n_kv_heads": None,
                        "params_non_embedding": math.nan,
                        "z": math.nan,
                        "reachable": False,
                    }
                )
                continue
            z = np.where(reachable, z_cost(*z_inputs(shape, T, conv, batch, weight_dtype, kv_dtype), weights), np.inf)
            key, extra = z, {}
            if serve:
                sv = settings.serving_columns(shape, T)
                key = np.where(reachable, sv.get("objective_value", z), np.inf)
            i = int(np.lexsort((n_kv, n_h, key))[0])  # smallest Z (or objective), ties to fewer heads (as search ranks)
            if serve:
                extra = {
                    "seconds_per_token": float(sv["seconds_per_token"][i]),
                    "tokens_per_second": float(sv["tokens_per_second"][i]),
                    "serving_batch": float(sv["serving_batch"][i]),
                    "fits": bool(np.isfinite(key[i])),
                }
                if not extra["fits"]:
                    rows.append(
                        {
                            "target_loss": L,
                            "context": T,
                            "n_heads": None,
                            "n_kv_heads": None,
                            "params_non_embedding": math.nan,
                            "z": math.nan,
                            "reachable": True,
                        }
                        | extra
                    )
                    continue
            rows.append(
                {
                    "target_loss": L,
                    "context": T,
                    "n_heads": int(n_h[i]),
                    "n_kv_heads": int(n_kv[i]),
                    "params_non_embedding": float(n_star[i]),
                    "z": float(z[i]),
                    "reachable": True,
                }
                | extra
            )
    long = pd.DataFrame(rows)
    for column in ("n_heads", "n_kv_heads"):
        long[column] = pd.array([r[column] for r in rows], dtype="Int64")
    return long


def cost_optimal_table(
    losses,
    contexts,
    laws: LawSet | str | Path = "default",
    weights: ZWeights = ZWeights(),
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    batch: int = 1,
    max_heads: int | None = None,
    convention=None,
    memory_unit: str | None = None,
    settings: CostSettings | None = None,
) -> pd.DataFrame:
    """The Table 4 grid: rows target losses L* (nats per token), columns contexts T (tokens),
    cells ``"(n_h, n_kv)"`` of the cost-optimal configuration, or None when L* is unreachable.
    ``table.attrs["long"]`` holds :func:`cost_optimal_table_long` (N* and Z per cell) and
    ``table.attrs["approximate"]`` whether the laws are approximate, ``table.attrs["convention"]`` the
    :class:`cogqa.costs.ZConvention` of Z."""
    law_set = resolve_laws(laws)
    conv = settings.convention if settings is not None else _convention(convention, memory_unit)
    long = cost_optimal_table_long(
        losses, contexts, law_set, weights, weight_dtype, kv_dtype, batch, max_heads, conv, settings=settings
    )
    cells = [
        None
        if not r.reachable
        else "does not fit"
        if pd.isna(r.n_heads)
        else f"({int(r.n_heads)}, {int(r.n_kv_heads)})"
        for r in long.itertuples()
    ]
    long = long.assign(cell=cells)
    table = long.pivot(index="target_loss", columns="context", values="cell")
    table = table.reindex(index=list(dict.fromkeys(long["target_loss"])), columns=list(dict.fromkeys(long["context"])))
    table = table.astype(object).where(table.notna(), None)
    table.index.name, table.columns.name = "target_loss", "context"
    table.attrs["long"] = long
    table.attrs["approximate"] = law_set.approximate
    table.attrs["laws_source"] = law_set.source
    table.attrs["convention"] = conv
    return table


def parse_cell(cell) -> tuple[int, int] | None:
    """``"(8, 1)"`` -> (8, 1); None stays None."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    from .units import parse_head_config

    return parse_head_config(cell, "table cell")


def compare_with_paper_table4(table: pd.DataFrame) -> dict:
    """Cell-by-cell agreement of a table over the paper's Table 4 grid: counts of ``exact`` cells,
    ``one_step`` (one factor of two off in exactly one of n_h, n_kv) and ``per_cell`` details."""
    per_cell, exact, one = [], 0, 0
    for loss, row in PAPER_TABLE4.items():
        for T, paper in zip(PAPER_TABLE4_CONTEXTS, row):
            ours = parse_cell(table.loc[loss, T]) if (loss in table.index and T in table.columns) else None
            steps = None if ours is None else abs(math.log2(ours[0] / paper[0])) + abs(math.log2(ours[1] / paper[1]))
            exact += steps == 0
            one += steps == 1
            per_cell.append(
                {
                    "target_loss": loss,
                    "context": T,
                    "paper": list(paper),
                    "ours": list(ours) if ours else None,
                    "steps": steps,
                }
            )
    return {"cells": len(per_cell), "exact": int(exact), "one_step": int(one), "per_cell": per_cell}


def plot_cost_optimal_table(table_df: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Write a heatmap PNG of a :func:`cost_optimal_table` (colour = log2(n_h * n_kv), cells
    annotated with (n_h, n_kv), blank where unreachable); returns the path (written atomically)."""
    from .plots import _pyplot

    plt = _pyplot()
    cells = [[parse_cell(c) for c in row] for row in table_df.itertuples(index=False)]
    values = np.array([[math.log2(c[0] * c[1]) if c else np.nan for c in row] for row in cells], dtype=float)
    fig, ax = plt.subplots(
        figsize=(1.3 * len(table_df.columns) + 2, 0.55 * len(table_df.index) + 1.5), constrained_layout=True
    )
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap="viridis",
        aspect="auto",
        vmin=0,
        vmax=max(10, np.nanmax(values) if np.isfinite(values).any() else 10),
    )
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            text = f"({c[0]}, {c[1]})" if c else "unreachable"
            colour = "white" if (c and values[i, j] < 6) else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour)
    from .units import fmt_tokens

    ax.set_xticks(range(len(table_df.columns)), [fmt_tokens(t).replace(" tokens", "") for t in table_df.columns])
    ax.set_yticks(range(len(table_df.index)), [f"{loss:g}" for loss in table_df.index])
    ax.set_xlabel("context length T (tokens)")
    ax.set_ylabel("target loss L* (nats/token)")
    fig.colorbar(image, ax=ax, label="log2(n_h * n_kv)")
    ax.set_title(
        title
        or ("cost-optimal (n_h, n_kv)" + (" (approximate default laws)" if table_df.attrs.get("approximate") else ""))
    )
    return save_figure(fig, path)


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
]
