"""The report's sections as Markdown, one builder each (1: loss vs N and the laws; 2: loss vs cost;
3: loss vs heads; 4: the cost-optimal table; 5 + 6: the recommendation and its cost breakdown).

Each builder takes the resolved :class:`Report`, returns its Markdown lines and records its numbers
in ``Report.numbers`` (written as ``numbers.json``). Figures are :mod:`cogqa.report.figures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CogqaError
from . import figures
from .markdown import candidates_table, fmt_baseline, fmt_savings, label, markdown_table
from .source import bootstrap_band

DEFAULT_REPORT_CONTEXTS = (128, 1024, 8192, 32768, 131072)


@dataclass
class Report:
    """What every section reads: the data (``df``: results or None for a laws file), the laws, the output
    directory, context ``T`` (tokens), target loss (nats/token), the table's targets, the measured
    size range ``n_range`` (parameters), the N grid and the laws shown, plus the numbers gathered."""

    df: Any
    law_set: Any
    what: str
    out: Path
    T: int
    target_loss: float
    targets: list
    n_range: tuple
    grid: Any
    shown: list
    fit_grid: Any
    settings: Any
    baseline: str | None
    plt: Any
    numbers: dict
    band_samples: Any = None  # the joint law's bootstrap samples, when the caller has them (see build_report)


def intro(r: Report) -> list[str]:
    """The title and the conventions paragraph (laws, T, L*, how costs are computed)."""
    family = r.law_set.family
    return [
        f"# cogqa report: {r.what}",
        "",
        f"Laws: {r.law_set.source or 'unnamed'} ({len(r.law_set.laws)} head configurations). "
        f"Context T = {r.T:,} tokens; target loss L* = {r.target_loss:.3f} nats/token. "
        "Inference costs of a size N use its Appendix B.1 shape in the laws' model family (head size "
        f"{family.head_dim}, "
        f"vocabulary {family.vocab_size:,}, aspect ratios of {len(family.reference_shapes)} reference shapes; bf16), "
        "as `cogqa search` does; Z = 0.9 M^(1/2) + 0.1 C^(1/3) in the paper convention (the paper's Figure 2: "
        "M = 2 bytes x (N + 2TLd_h n_kv), C = T x (2N + 4TLd_h n_h), N non-embedding).",
        "",
    ]


def _law_rows(r: Report) -> list[str]:
    """The fitted laws as a Markdown table: per-H (a, b, E, R², points), or the joint law's coefficients
    with their 95% bootstrap intervals; a coefficient on its bound is flagged as not determined."""
    if r.law_set.joint is None:
        rows = ["| H (n_h, n_kv) | a (params) | b | E (nats/token) | R² | points |", "|---|---|---|---|---|---|"]
        for law in r.shown:
            r2 = f"{law.r2:.4f}" if law.r2 is not None else "n/a"
            bound = law.extra.get("at_bound") or []
            note = f" (on its bound: {', '.join(bound)}; not determined by the data)" if bound else ""
            rows.append(
                f"| {label(*law.heads)} | {law.a:.4g} | {law.b:.4g} | {law.E:.4f}{note} | {r2} | "
                f"{law.extra.get('n_points', 'n/a')} |"
            )
        return rows
    j = r.law_set.joint
    bound = j.extra.get("at_bound") or []
    ci = j.ci or {}
    rows = [
        "Joint law across head configurations: loss = (a/N)^b + E + A(n_h^-g - n_ref^-g) + B(n_kv^-k - n_ref^-k), "
        f"n_ref = {j.n_ref}" + (f", R² = {j.r2:.4f}" if j.r2 is not None else "") + ".",
        "",
        "| coefficient | value | 95% bootstrap interval | note |",
        "|---|---|---|---|",
    ]
    for name in ("a", "b", "E", "A", "g", "B", "k"):
        lo_hi = ci.get(name)
        rows.append(
            f"| {name} | {getattr(j, name):.4g} | "
            + (f"{lo_hi[0]:.4g} to {lo_hi[1]:.4g}" if lo_hi else "n/a")
            + " | "
            + ("**on its bound: not determined by the data**" if name in bound else "")
            + " |"
        )
    return rows


def loss_vs_n(r: Report) -> list[str]:
    """Section 1: the loss-vs-N figure, the laws' table, the runs' standard error and monotonicity."""
    df = r.df
    joint = df is not None and r.law_set.joint is not None
    band = bootstrap_band(df, r.law_set, r.grid, r.fit_grid, r.band_samples) if joint else {}
    png = figures.loss_vs_n(r, band)
    md = ["## 1. Loss vs model size per head configuration", "", f"![loss vs N]({png})", "", *_law_rows(r), ""]
    if df is not None and "loss_se" in df and df["loss_se"].notna().any():
        se = df["loss_se"].dropna()
        r.numbers["validation_loss_se"] = {"median": float(se.median()), "max": float(se.max())}
        md += [
            f"Validation loss standard error of the runs (error bars: ±2 SE): median {se.median():.4f}, "
            f"largest {se.max():.4f} nats/token; differences between runs smaller than about twice that are "
            "within measurement noise.",
            "",
        ]
    if df is not None:
        falls = _loss_falls_with_n(df)
        r.numbers["loss_falls_with_n"] = falls
        bad = [k for k, v in falls.items() if not v]
        md += [
            f"Measured loss falls monotonically with N for {len(falls) - len(bad)} of {len(falls)} head configurations"
            + (f" (not for {', '.join(bad)})." if bad else "."),
            "",
        ]
    return md


def _loss_falls_with_n(df) -> dict[str, bool]:
    """For each H: does the mean measured loss fall monotonically as N grows?"""
    out = {}
    for (h, kv), g in df.groupby(["n_heads", "n_kv_heads"]):
        means = g.groupby("params_non_embedding")["loss"].mean().sort_index().to_numpy()
        out[label(h, kv)] = bool(np.all(np.diff(means) < 0))
    return out


def loss_vs_cost(r: Report) -> list[str]:
    """Section 2: loss vs inference memory, FLOPs per token and Z at T."""
    png = figures.loss_vs_cost(r)
    return [f"## 2. Loss vs inference cost at T = {r.T:,} tokens", "", f"![loss vs cost]({png})", ""]


def loss_vs_heads(r: Report) -> list[str]:
    """Section 3 (a sweep with several n_h per size only): loss vs n_h at fixed size and the head-law fit."""
    if r.df is None:
        return []
    groups = [(name, g) for name, g in r.df.groupby("size") if g.n_heads.nunique() > 1]
    if not groups:
        return []
    png = figures.loss_vs_heads(r, groups)
    md = ["## 3. Loss vs number of heads at fixed size", "", f"![loss vs heads]({png})", ""]
    heads_fit = _heads_fit(r.df, r.fit_grid)
    return md + ([heads_fit, ""] if heads_fit else [])


def _heads_fit(df, grid=None) -> str:
    try:
        from ..fitting import fit_results

        sizes = df.groupby("size")["params_non_embedding"].transform("min")  # a number naming each (L, d)
        rep = fit_results(df.assign(size=sizes)[["n_heads", "n_kv_heads", "loss", "size"]], form="heads", grid=grid)
        table = rep.table()
        return (
            "Head-law fit loss = a n_h^b + c per size (cogqa fit --form heads; size = smallest N of the (L, d) group, "
            "in parameters; c in nats/token):\n\n"
            + markdown_table(table.set_index(table.columns[0]), str(table.columns[0]), str)
        )
    except Exception as exc:  # the heads form needs several n_h per size; say why it is absent
        return f"_Head-law fit not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}_"


def cost_optimal_table(r: Report) -> list[str]:
    """Section 4: the cost-optimal (n_h, n_kv) over the target losses and contexts (Table 4 style)."""
    contexts = sorted(set(DEFAULT_REPORT_CONTEXTS) | {r.T})
    try:
        from ..search import cost_optimal_table as table_of
        from ..search import plot_cost_optimal_table
    except ImportError:
        return ["## 4. Cost-optimal table", "", "_Skipped: cogqa.search is not available in this install._", ""]
    table = table_of(r.targets, contexts, laws=r.law_set, settings=r.settings)
    kind = "approximate laws" if r.law_set.approximate else "fitted laws"
    table_png = plot_cost_optimal_table(
        table, r.out / "cost_optimal_table.png", title=f"cost-optimal (n_h, n_kv), {kind}: {r.what}"
    )
    r.numbers["cost_optimal_table"] = {str(k): {str(c): str(v) for c, v in row.items()} for k, row in table.iterrows()}
    return [
        "## 4. Cost-optimal head configuration (n_h, n_kv) by target loss and context",
        "",
        markdown_table(
            table,
            "L* (nats/token)",
            lambda c: f"T={int(c):,}" if str(c).isdigit() or isinstance(c, (int, np.integer)) else str(c),
        ),
        "",
        f"![cost-optimal table]({Path(str(table_png)).name})",
        "",
    ]


def recommendation(r: Report) -> list[str]:
    """Sections 5 and 6: the recommended configuration for (L*, T) with its savings against the baseline and
    the top candidates (with hardware: decode time per token and tokens/s per device), then its cost
    breakdown vs T."""
    try:
        from ..search import search
    except ImportError:
        return ["## 5. Recommendation", "", "_Skipped: cogqa.search is not available in this install._", ""]
    T, L, settings = r.T, r.target_loss, r.settings
    try:
        res = search(T, L, laws=r.law_set, baseline=r.baseline or "llama3", settings=settings)
    except CogqaError:
        if r.baseline is not None:
            raise
        res = search(T, L, laws=r.law_set, settings=settings)
    best = res.best
    r.numbers["best"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()}
    r.numbers["savings"] = res.savings
    md = [f"## 5. Recommended configuration for L* = {L:.3f} nats/token at T = {T:,} tokens", "", *_best_lines(r, res)]
    ranked = "Z"
    if settings is not None and settings.hardware is not None:
        names = {"z": "Z", "latency": "decode seconds/token", "throughput": "tokens/s per device"}
        ranked = names[settings.objective] + f" on {settings.hardware.name}"
        md += [
            f"- on {settings.hardware.name} (roofline, batch {settings.batch}): "
            f"{1e3 * best['seconds_per_token']:.3g} ms per output token, "
            f"{best['tokens_per_second']:,.0f} tokens/s per device at batch {int(best['serving_batch'])}",
            "",
        ]
    md += [f"Top candidates (ranked by {ranked}):", "", candidates_table(res.candidates.head(8)), ""]
    return md + _breakdown(r, best)


def _best_lines(r: Report, res) -> list[str]:
    """The recommendation's bullet points (heads, N, shape, costs, savings), flagged when extrapolated."""
    from ..units import fmt_bytes, fmt_flops, fmt_params

    best, (n_lo, n_hi) = res.best, r.n_range
    extrapolated = not (n_lo <= best["params_non_embedding"] <= n_hi)
    r.numbers["extrapolated"] = extrapolated
    return [
        *(
            [f"**Extrapolation:** N* is outside the measured sizes ({fmt_params(n_lo)} to {fmt_params(n_hi)})."]
            if extrapolated
            else []
        ),
        f"- heads H = ({best['n_heads']}, {best['n_kv_heads']}), N = {fmt_params(best['params_non_embedding'])} "
        "(non-embedding)" + (f", shape L={best['layers']} d={best['hidden_size']}" if "layers" in best else ""),
        f"- inference memory {fmt_bytes(best['inference_memory_bytes'])}, "
        f"{fmt_flops(best['inference_flops_per_token'])} per token, Z = {best['z']:.4g}",
        f"- savings against the baseline {fmt_baseline(res.baseline)}: {fmt_savings(res.savings)}",
        "",
    ]


def _breakdown(r: Report, best) -> list[str]:
    """Section 6: where the recommended model's inference FLOPs and memory go as T grows (Figures 7/8)."""
    from ..family import nearest_buildable, shape_for_params
    from ..plots import plot_breakdown

    family = r.law_set.family
    shape = nearest_buildable(
        shape_for_params(best["params_non_embedding"], best["n_heads"], best["n_kv_heads"], family=family),
        hidden_multiple=family.hidden_multiple,
    )
    png = plot_breakdown(
        shape,
        r.out / "breakdown.png",
        max_context=max(r.T, 131072),
        title=f"H=({best['n_heads']},{best['n_kv_heads']}) cost breakdown",
    )
    return ["## 6. Where the recommended model's inference cost goes vs T", "", f"![breakdown]({png.name})", ""]
