"""What every cost-optimal search takes in: the checked context, loss and laws, the candidate head
configurations, the :class:`CostSettings` (validated once) and the vectorised costs of candidates.

Units: contexts in tokens, losses in nats per token, sizes in non-embedding parameters, memory in
bytes, FLOPs per token; Z has none. Used by :mod:`cogqa.search`, :mod:`cogqa.search_table` and
:mod:`cogqa.search_training`; pandas-free (a search answers in a few milliseconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .costs import (
    DEFAULT_CONVENTION,
    ZWeights,
    dtype_bytes,
    inference_flops_per_token,
    inference_memory_bytes,
    params_total,
    z_convention,
    z_cost,
    z_inputs,
)
from .errors import CogqaError, require
from .family import PAPER_FAMILY, ModelFamily, shape_for_params
from .laws import LawSet, PowerLawN, load_laws


class UnreachableTarget(CogqaError):
    """No candidate head configuration can reach the target loss (it is at or below every law's floor)."""


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


@dataclass(frozen=True)
class CostSettings:
    """The cost options of a search, validated once: Z weights and convention, dtypes, batch, objective, hardware.

    The one way to pass cost options to :func:`cogqa.search.search`, :func:`cogqa.search.baseline_costs`,
    :func:`cogqa.search.lowest_loss_within_budget`, the Table 4 grid and the training-budget search.
    ``convention``: a :class:`cogqa.costs.ZConvention` or its name (default ``paper``).

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
        object.__setattr__(
            self, "convention", z_convention(DEFAULT_CONVENTION if self.convention is None else self.convention)
        )

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


def _cost_columns(n_params, n_heads, n_kv_heads, context, settings: CostSettings, family: ModelFamily = PAPER_FAMILY):
    """Costs of real-valued Appendix B.1 shapes of ``family`` of sizes ``n_params`` (arrays, one per
    candidate) at ``context`` tokens under ``settings`` (memory bytes, FLOPs per token, Z)."""
    shape = shape_for_params(
        np.asarray(n_params, dtype=float),
        np.asarray(n_heads, dtype=float),
        np.asarray(n_kv_heads, dtype=float),
        family=family,
    )
    return shape_costs(shape, context, settings)


def shape_costs(shape, context, settings: CostSettings) -> dict[str, np.ndarray]:
    """Costs of ``shape`` (a real-valued or buildable shape, fields may be arrays) at ``context`` tokens:
    ``inference_flops_per_token`` (FLOPs per token), ``inference_memory_bytes`` and ``kv_cache_bytes``
    (bytes, at ``settings.z_batch``), ``params_total`` (parameters), ``z_memory``/``z_flops`` (M and C
    of the Z convention) and ``z``; arrays of float."""
    st = settings
    flops = inference_flops_per_token(shape, context)
    mem = inference_memory_bytes(shape, context, st.z_batch, st.weight_dtype, st.kv_dtype)
    z_m, z_c = z_inputs(shape, context, st.convention, st.z_batch, st.weight_dtype, st.kv_dtype)
    z = z_cost(z_m, z_c, st.weights)
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


def as_settings(settings) -> CostSettings:
    """``settings`` checked: a :class:`CostSettings`, or the default one for None."""
    if settings is None:
        return CostSettings()
    require(
        isinstance(settings, CostSettings),
        f"settings must be a cogqa.search.CostSettings (weights, dtypes, batch, convention), got {settings!r}",
    )
    return settings
