"""The paper's Table 4 grid: the cost-optimal (n_h, n_kv) per target loss (nats per token) and context
(tokens), its comparison with the paper's cells and its heatmap. The grid is computed with numpy;
pandas is imported only to hand the grid back as DataFrames, matplotlib only to plot it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .costs import z_cost, z_inputs
from .errors import require
from .family import shape_for_params
from .files import save_figure
from .laws import LawSet
from .search_inputs import CostSettings, _check_context, _check_loss, _select_laws, as_settings, resolve_laws

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


def _check_grid(losses, contexts) -> tuple[list[float], list[int]]:
    losses = list(losses) if losses is not None else []
    contexts = list(contexts) if contexts is not None else []
    require(len(losses) > 0, "--losses: give at least one target loss, e.g. 3.0,2.9,2.8")
    require(len(contexts) > 0, "--contexts: give at least one context length, e.g. 8k,128k")
    return [_check_loss(loss, "--losses") for loss in losses], [_check_context(t) for t in contexts]


def _cell(L: float, T, reachable: bool, **winner) -> dict:
    """One grid cell: ``winner`` holds n_heads, n_kv_heads, params_non_embedding (parameters) and z,
    or nothing (no winner: unreachable, or no candidate fits the batch)."""
    blank = {"n_heads": None, "n_kv_heads": None, "params_non_embedding": math.nan, "z": math.nan}
    return {"target_loss": L, "context": T} | blank | winner | {"reachable": reachable}


def _winner(L: float, T, shape, n_star, reachable, n_h, n_kv, st: CostSettings) -> dict:
    """The cell at (L*, T): smallest Z (or objective on ``st.hardware``), ties to fewer heads (as search ranks)."""
    z_m, z_c = z_inputs(shape, T, st.convention, st.z_batch, st.weight_dtype, st.kv_dtype)
    z = np.where(reachable, z_cost(z_m, z_c, st.weights), np.inf)
    key, extra = z, {}
    if st.hardware is not None:
        sv = st.serving_columns(shape, T)
        key = np.where(reachable, sv.get("objective_value", z), np.inf)
    i = int(np.lexsort((n_kv, n_h, key))[0])
    if st.hardware is not None:
        extra = {
            "seconds_per_token": float(sv["seconds_per_token"][i]),
            "tokens_per_second": float(sv["tokens_per_second"][i]),
            "serving_batch": float(sv["serving_batch"][i]),
            "fits": bool(np.isfinite(key[i])),
        }
        if not extra["fits"]:
            return _cell(L, T, True) | extra
    heads = {"n_heads": int(n_h[i]), "n_kv_heads": int(n_kv[i])}
    return _cell(L, T, True, **heads, params_non_embedding=float(n_star[i]), z=float(z[i])) | extra


def table_cells(losses, contexts, laws: LawSet | str | Path = "default", max_heads=None, settings=None) -> list[dict]:
    """The grid's cells as plain dicts (see :func:`cost_optimal_table_long` for the keys), pandas-free."""
    losses, contexts = _check_grid(losses, contexts)
    st = as_settings(settings)
    law_set = resolve_laws(laws)
    laws_list = _select_laws(law_set, max_heads, None)
    n_h = np.array([law.n_heads for law in laws_list], dtype=float)
    n_kv = np.array([law.n_kv_heads for law in laws_list], dtype=float)
    rows = []
    for L in losses:  # N*(H) depends on L* only: one Appendix B.1 shape per H, costed at every T
        n_star = np.array([float(law.params_for_loss(L)) for law in laws_list])
        reachable = np.isfinite(n_star)
        if not reachable.any():
            rows += [_cell(L, T, False) for T in contexts]
            continue
        shape = shape_for_params(np.where(reachable, n_star, 1e9), n_h, n_kv, family=law_set.family)
        rows += [_winner(L, T, shape, n_star, reachable, n_h, n_kv, st) for T in contexts]
    return rows


def cost_optimal_table_long(
    losses, contexts, laws: LawSet | str | Path = "default", max_heads: int | None = None, settings=None
):
    """One row per (target loss, context): the winner's n_heads, n_kv_heads, N*
    (``params_non_embedding``, parameters) and ``z`` (under ``settings.convention``, default ``paper``);
    ``reachable`` False (heads None) when no configuration reaches the loss. With ``settings``
    on hardware: the winner minimises its objective, and ``seconds_per_token``,
    ``tokens_per_second`` (per device), ``serving_batch`` and ``fits`` are added (a cell where no
    reachable candidate fits the batch is ``reachable`` True, ``fits`` False, heads None).
    Returns a pandas DataFrame (heads as Int64)."""
    import pandas as pd

    rows = table_cells(losses, contexts, laws, max_heads, settings)
    long = pd.DataFrame(rows)
    for column in ("n_heads", "n_kv_heads"):
        long[column] = pd.array([r[column] for r in rows], dtype="Int64")
    return long


def _cell_text(row: dict) -> str | None:
    if not row["reachable"]:
        return None
    if row["n_heads"] is None:
        return "does not fit"
    return f"({row['n_heads']}, {row['n_kv_heads']})"


def cost_optimal_table(
    losses, contexts, laws: LawSet | str | Path = "default", max_heads: int | None = None, settings=None
):
    """The Table 4 grid: rows target losses L* (nats per token), columns contexts T (tokens),
    cells ``"(n_h, n_kv)"`` of the cost-optimal configuration, or None when L* is unreachable.
    ``table.attrs["long"]`` holds :func:`cost_optimal_table_long` (N* and Z per cell) and
    ``table.attrs["approximate"]`` whether the laws are approximate, ``table.attrs["convention"]`` the
    :class:`cogqa.costs.ZConvention` of Z. Returns a pandas DataFrame."""
    import pandas as pd

    st = as_settings(settings)
    law_set = resolve_laws(laws)
    rows = table_cells(losses, contexts, law_set, max_heads, st)
    index, columns = (
        list(dict.fromkeys(r["target_loss"] for r in rows)),
        list(dict.fromkeys(r["context"] for r in rows)),
    )
    cells = {(r["target_loss"], r["context"]): _cell_text(r) for r in rows}
    table = pd.DataFrame(
        [[cells[(loss, t)] for t in columns] for loss in index], index=index, columns=columns, dtype=object
    )
    table.index.name, table.columns.name = "target_loss", "context"
    long = pd.DataFrame(rows).assign(cell=[_cell_text(r) for r in rows])
    for column in ("n_heads", "n_kv_heads"):
        long[column] = pd.array([r[column] for r in rows], dtype="Int64")
    table.attrs["long"] = long
    table.attrs["approximate"] = law_set.approximate
    table.attrs["laws_source"] = law_set.source
    table.attrs["convention"] = st.convention
    return table


def parse_cell(cell) -> tuple[int, int] | None:
    """``"(8, 1)"`` -> (8, 1); None stays None."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    from .units import parse_head_config

    return parse_head_config(cell, "table cell")


def compare_with_paper_table4(table) -> dict:
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


def plot_cost_optimal_table(table_df, path: str | Path, title: str = "") -> Path:
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
