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

Units: loss in nats/token, N in non-embedding parameters, memory in bytes, FLOPs per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import CogqaError, require
from .files import save_figure, write_json_atomic, write_text_atomic

DEFAULT_REPORT_CONTEXTS = (128, 1024, 8192, 32768, 131072)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    return save_figure(fig, path).name


def _label(h: int, kv: int) -> str:
    return f"({h},{kv})"


def load_source(source: str | Path, laws: Any = None, fit_grid: str | int | None = None):
    """(results DataFrame or None, LawSet, description) for a sweep directory or a laws file.

    For a sweep directory the laws are ``laws`` if given, else ``DIR/laws.json`` if present,
    else fitted now from ``DIR/results.csv`` with :func:`cogqa.fitting.fit_results` (form n)
    and saved to ``DIR/laws.json``.
    """
    from .laws import LawSet, load_laws

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
    from .laws import SHIPPED_LAW_SETS

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
        from .fitting import fit_results
    except ImportError:
        raise CogqaError(
            "report: cogqa.fitting is not installed in this version; fit with `cogqa fit` and pass --laws"
        ) from None
    joint = len(set(zip(df["n_heads"], df["n_kv_heads"]))) >= 2 and len(df) >= 8
    rep = fit_results(df, form="heads-joint" if joint else "n", grid=grid)
    return rep.law_set(source)


BAND_RESAMPLES = 40  # bootstrap refits behind the report's 95% bands (each a few hundred ms)


def _bootstrap_band(df, law_set, n_grid, fit_grid=None) -> dict:
    """{H: (2.5%, 97.5%) of the joint law's loss over ``n_grid``} from bootstrap refits of ``df``
    (rows drawn with replacement); empty when the refits fail."""
    from .fitting import fit_results

    try:
        rep = fit_results(df, form="heads-joint", bootstrap=BAND_RESAMPLES, seed=0, grid=fit_grid)
    except CogqaError:
        return {}
    if not rep.samples:
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
                for smp in rep.samples
            ]
        )
        out[law.heads] = tuple(np.percentile(curves, [2.5, 97.5], axis=0))
    return out


def _fit_range(df, law_set) -> tuple[float, float]:
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


def _shape_grid(law, n, family):
    """Appendix B.1 shapes of ``family`` of sizes ``n`` (parameters), as cogqa search costs them."""
    from .shapes import shape_for_params

    return shape_for_params(n, n_heads=law.n_heads, n_kv_heads=law.n_kv_heads, family=family)


def _costs(shape, T: int):
    """(inference memory in bytes, FLOPs per token, Z in the paper convention, as ``cogqa search`` ranks)."""
    from .costs import inference_flops_per_token, inference_memory_bytes, z_of_shape

    return inference_memory_bytes(shape, T)["total"], inference_flops_per_token(shape, T), z_of_shape(shape, T, "paper")


def build_report(
    source: str | Path,
    out: str | Path | None = None,
    context: int | None = None,
    target_loss: float | None = None,
    laws: Any = None,
    baseline: str | None = None,
    fit_grid: str | int | None = None,
    settings=None,
) -> Path:
    """Write ``report.md`` and its PNG figures into ``out`` (default ``SOURCE/report`` for a sweep
    directory, ``report/`` otherwise); returns the Markdown path. ``context`` (tokens) defaults to
    128K and ``target_loss`` (nats/token) to the middle of the laws' loss range. ``settings``: a
    :class:`cogqa.search.CostSettings` (objective and hardware) for the table, the recommendation
    and the Pareto view (section 7); default: Z, no hardware."""
    from .units import fmt_bytes, fmt_flops, fmt_params

    df, law_set, what = load_source(source, laws, fit_grid)
    src = Path(str(source))
    out = Path(out) if out is not None else (src / "report" if src.is_dir() else Path("report"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CogqaError(f"--out: cannot create {out} ({exc.strerror})") from None
    T = int(context or 131072)
    require(T > 0, f"--context must be positive, got {T}")
    n_range = _fit_range(df, law_set)
    if df is not None:  # targets inside the measured losses: the laws are trusted there
        targets = [float(round(x, 3)) for x in np.quantile(df["loss"], [0.2, 0.4, 0.6, 0.8])]
    else:
        targets = target_losses_for(law_set, n_range)
    if target_loss is None:
        target_loss = targets[len(targets) // 2]
    family = law_set.family
    plt = _pyplot()
    md: list[str] = [
        f"# cogqa report: {what}",
        "",
        f"Laws: {law_set.source or 'unnamed'} ({len(law_set.laws)} head configurations). "
        f"Context T = {T:,} tokens; target loss L* = {target_loss:.3f} nats/token. "
        "Inference costs of a size N use its Appendix B.1 shape in the laws' model family (head size "
        f"{family.head_dim}, "
        f"vocabulary {family.vocab_size:,}, aspect ratios of {len(family.reference_shapes)} reference shapes; bf16), "
        "as `cogqa search` does; Z = 0.9 M^(1/2) + 0.1 C^(1/3) in the paper convention (the paper's Figure 2: "
        "M = 2 bytes x (N + 2TLd_h n_kv), C = T x (2N + 4TLd_h n_h), N non-embedding).",
        "",
    ]
    numbers: dict[str, Any] = {"context": T, "target_loss": target_loss}

    # 1. loss vs N -------------------------------------------------------------------------------
    n_lo, n_hi = n_range
    grid = np.geomspace(n_lo / 1.15, n_hi * 1.3, 100)  # the measured range, barely extrapolated
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    rows = ["| H (n_h, n_kv) | a (params) | b | E (nats/token) | R² | points |", "|---|---|---|---|---|---|"]
    shown = law_set.laws
    if df is not None and law_set.joint is not None:
        measured = set(zip(df.n_heads.astype(int), df.n_kv_heads.astype(int)))
        shown = [law for law in law_set.laws if law.heads in measured] or law_set.laws
    band = _bootstrap_band(df, law_set, grid, fit_grid) if df is not None and law_set.joint is not None else {}
    for i, law in enumerate(shown):
        color = f"C{i % 10}"
        if law.heads in band:
            ax.fill_between(grid, *band[law.heads], color=color, alpha=0.15, lw=0)
        ax.plot(
            grid,
            law.loss(grid),
            color=color,
            lw=1.2,
            label=f"{_label(*law.heads)} R²={law.r2:.3f}" if law.r2 is not None else _label(*law.heads),
        )
        if df is not None:
            sub = df[(df.n_heads == law.n_heads) & (df.n_kv_heads == law.n_kv_heads)]
            ax.scatter(sub.params_non_embedding, sub.loss, color=color, s=18)
            if "loss_se" in sub and sub["loss_se"].notna().any():  # validation standard error of each run
                ax.errorbar(
                    sub.params_non_embedding,
                    sub.loss,
                    yerr=2 * sub["loss_se"].fillna(0),
                    fmt="none",
                    ecolor=color,
                    elinewidth=0.8,
                    capsize=2,
                )
        r2 = f"{law.r2:.4f}" if law.r2 is not None else "n/a"
        bound = law.extra.get("at_bound") or []
        note = f" (on its bound: {', '.join(bound)}; not determined by the data)" if bound else ""
        rows.append(
            f"| {_label(*law.heads)} | {law.a:.4g} | {law.b:.4g} | {law.E:.4f}{note} | {r2} | "
            f"{law.extra.get('n_points', 'n/a')} |"
        )
    ax.set_xscale("log")
    if df is not None:
        ax.set_ylim(df["loss"].min() - 0.1, df["loss"].max() + 0.25)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(
        "Loss vs model size per head configuration"
        + (": one joint law (band: bootstrap 95%)" if band else ", fitted (a/N)^b + E")
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    if law_set.joint is not None:
        j = law_set.joint
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
    md += [
        "## 1. Loss vs model size per head configuration",
        "",
        f"![loss vs N]({_save(fig, out / 'loss_vs_n.png')})",
        "",
        *rows,
        "",
    ]
    if df is not None and "loss_se" in df and df["loss_se"].notna().any():
        se = df["loss_se"].dropna()
        numbers["validation_loss_se"] = {"median": float(se.median()), "max": float(se.max())}
        md += [
            f"Validation loss standard error of the runs (error bars: ±2 SE): median {se.median():.4f}, "
            f"largest {se.max():.4f} nats/token; differences between runs smaller than about twice that are "
            "within measurement noise.",
            "",
        ]
    if df is not None:
        falls = _loss_falls_with_n(df)
        numbers["loss_falls_with_n"] = falls
        bad = [k for k, v in falls.items() if not v]
        md += [
            f"Measured loss falls monotonically with N for {len(falls) - len(bad)} of {len(falls)} head configurations"
            + (f" (not for {', '.join(bad)})." if bad else "."),
            "",
        ]

    # 2. loss vs memory, FLOPs, Z at T ---------------------------------------------------------------
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for i, law in enumerate(shown):
        shape = _shape_grid(law, grid, family)
        mem, flops, z = _costs(shape, T)
        for ax, x in zip(axes, (mem, flops, z)):
            ax.plot(x, law.loss(grid), color=f"C{i % 10}", lw=1.2, label=_label(*law.heads))
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    units = ("B", "FLOP", "")
    for ax, xl, unit in zip(
        axes,
        ("inference memory (bf16)", "inference FLOPs per token", "Z = 0.9 M^1/2 + 0.1 C^1/3 (paper convention)"),
        units,
    ):
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("loss (nats/token)")
        ax.axhline(target_loss, color="k", ls=":", lw=0.8)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labelled ticks even on a narrow range
        ax.xaxis.set_major_formatter(EngFormatter(unit=unit))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Loss vs inference cost at T = {T:,} tokens (dotted: L* = {target_loss:.3f})")
    md += [
        f"## 2. Loss vs inference cost at T = {T:,} tokens",
        "",
        f"![loss vs cost]({_save(fig, out / 'loss_vs_cost.png')})",
        "",
    ]

    # 3. loss vs n_h at fixed size ------------------------------------------------------------------
    if df is not None:
        groups = [(name, g) for name, g in df.groupby("size") if g.n_heads.nunique() > 1]
        if groups:
            fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
            for i, (name, g) in enumerate(groups):
                for kv, gk in g.groupby("n_kv_heads"):
                    gk = gk.sort_values("n_heads")
                    ax.plot(
                        gk.n_heads,
                        gk.loss,
                        marker="o",
                        color=f"C{i % 10}",
                        ls="-" if kv == 1 else "--",
                        lw=1,
                        label=f"size {name}, n_kv={kv}",
                    )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("query heads n_h")
            ax.set_ylabel("validation loss (nats/token)")
            ax.set_title("Loss vs number of query heads at fixed size (L, d)")
            ax.legend(fontsize=7, ncol=2)
            ax.grid(alpha=0.3)
            md += [
                "## 3. Loss vs number of heads at fixed size",
                "",
                f"![loss vs heads]({_save(fig, out / 'loss_vs_heads.png')})",
                "",
            ]
            heads_fit = _heads_fit(df, fit_grid)
            if heads_fit:
                md += [heads_fit, ""]

    # 4. cost-optimal table ---------------------------------------------------------------------------
    contexts = sorted(set(DEFAULT_REPORT_CONTEXTS) | {T})
    try:
        from .search import cost_optimal_table, plot_cost_optimal_table

        table = cost_optimal_table(targets, contexts, laws=law_set, settings=settings)
        kind = "approximate laws" if law_set.approximate else "fitted laws"
        table_png = plot_cost_optimal_table(
            table, out / "cost_optimal_table.png", title=f"cost-optimal (n_h, n_kv), {kind}: {what}"
        )
        md += [
            "## 4. Cost-optimal head configuration (n_h, n_kv) by target loss and context",
            "",
            _markdown_table(
                table,
                "L* (nats/token)",
                lambda c: f"T={int(c):,}" if str(c).isdigit() or isinstance(c, (int, np.integer)) else str(c),
            ),
            "",
            f"![cost-optimal table]({Path(str(table_png)).name})",
            "",
        ]
        numbers["cost_optimal_table"] = {
            str(k): {str(c): str(v) for c, v in row.items()} for k, row in table.iterrows()
        }
    except ImportError:
        md += ["## 4. Cost-optimal table", "", "_Skipped: cogqa.search is not available in this install._", ""]

    # 5 + 6. recommendation and breakdown -----------------------------------------------------------------
    try:
        from .search import search

        try:
            res = search(T, target_loss, laws=law_set, baseline=baseline or "llama3", settings=settings)
        except CogqaError:
            if baseline is not None:
                raise
            res = search(T, target_loss, laws=law_set, settings=settings)
        best = res.best
        numbers["best"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.items()}
        numbers["savings"] = res.savings
        extrapolated = not (n_lo <= best["params_non_embedding"] <= n_hi)
        numbers["extrapolated"] = extrapolated
        md += [
            f"## 5. Recommended configuration for L* = {target_loss:.3f} nats/token at T = {T:,} tokens",
            "",
            *(
                [f"**Extrapolation:** N* is outside the measured sizes ({fmt_params(n_lo)} to {fmt_params(n_hi)})."]
                if extrapolated
                else []
            ),
            f"- heads H = ({best['n_heads']}, {best['n_kv_heads']}), N = {fmt_params(best['params_non_embedding'])} "
            "(non-embedding)" + (f", shape L={best['layers']} d={best['hidden_size']}" if "layers" in best else ""),
            f"- inference memory {fmt_bytes(best['inference_memory_bytes'])}, "
            f"{fmt_flops(best['inference_flops_per_token'])} per token, Z = {best['z']:.4g}",
            f"- savings against the baseline {_fmt_baseline(res.baseline)}: {_fmt_savings(res.savings)}",
            "",
        ]
        cands = res.candidates.head(8)
        ranked = "Z"
        if settings is not None and settings.hardware is not None:
            names = {"z": "Z", "latency": "decode seconds/token", "throughput": "tokens/s per device"}
            ranked = names[settings.objective]
            ranked += f" on {settings.hardware.name}"
            md += [
                f"- on {settings.hardware.name} (roofline, batch {settings.batch}): "
                f"{1e3 * best['seconds_per_token']:.3g} ms per output token, "
                f"{best['tokens_per_second']:,.0f} tokens/s per device at batch {int(best['serving_batch'])}",
                "",
            ]
        md += [f"Top candidates (ranked by {ranked}):", "", _candidates_table(cands), ""]
        from .plots import plot_breakdown
        from .shapes import nearest_buildable, shape_for_params

        shape = nearest_buildable(
            shape_for_params(best["params_non_embedding"], best["n_heads"], best["n_kv_heads"], family=family),
            hidden_multiple=family.hidden_multiple,
        )
        png = plot_breakdown(
            shape,
            out / "breakdown.png",
            max_context=max(T, 131072),
            title=f"H=({best['n_heads']},{best['n_kv_heads']}) cost breakdown",
        )
        md += ["## 6. Where the recommended model's inference cost goes vs T", "", f"![breakdown]({png.name})", ""]
    except ImportError:
        md += ["## 5. Recommendation", "", "_Skipped: cogqa.search is not available in this install._", ""]

    try:
        md += _pareto_section(law_set, T, targets, settings, out, plt, numbers)
    except ImportError:
        md += ["## 7. Pareto view", "", "_Skipped: cogqa.search is not available in this install._", ""]

    write_json_atomic(out / "numbers.json", numbers)
    return write_text_atomic(out / "report.md", "\n".join(md) + "\n")


def _loss_falls_with_n(df) -> dict[str, bool]:
    """For each H: does the mean measured loss fall monotonically as N grows?"""
    out = {}
    for (h, kv), g in df.groupby(["n_heads", "n_kv_heads"]):
        means = g.groupby("params_non_embedding")["loss"].mean().sort_index().to_numpy()
        out[_label(h, kv)] = bool(np.all(np.diff(means) < 0))
    return out


def _heads_fit(df, grid=None) -> str:
    try:
        from .fitting import fit_results

        sizes = df.groupby("size")["params_non_embedding"].transform("min")  # a number naming each (L, d)
        rep = fit_results(df.assign(size=sizes)[["n_heads", "n_kv_heads", "loss", "size"]], form="heads", grid=grid)
        table = rep.table()
        return (
            "Head-law fit loss = a n_h^b + c per size (cogqa fit --form heads; size = smallest N of the (L, d) group, "
            "in parameters; c in nats/token):\n\n"
            + _markdown_table(table.set_index(table.columns[0]), str(table.columns[0]), str)
        )
    except Exception as exc:  # the heads form needs several n_h per size; say why it is absent
        return f"_Head-law fit not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}_"


def _markdown_table(df, index_name: str, col_name) -> str:
    cols = list(df.columns)
    lines = ["| " + index_name + " | " + " | ".join(col_name(c) for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, row in df.iterrows():
        idx_s = (f"{idx:.3f}" if idx < 100 else f"{idx:,.0f}") if isinstance(idx, (float, np.floating)) else str(idx)
        lines.append(f"| {idx_s} | " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _candidates_table(c) -> str:
    from .units import fmt_bytes, fmt_flops, fmt_params

    lines = ["| H | N (non-emb.) | memory | FLOPs/token | Z |", "|---|---|---|---|---|"]
    for _, r in c.iterrows():
        if not r.get("reachable", True):
            lines.append(f"| ({int(r['n_heads'])},{int(r['n_kv_heads'])}) | cannot reach L* (L* <= E) | | | |")
            continue
        lines.append(
            f"| ({int(r['n_heads'])},{int(r['n_kv_heads'])}) | {fmt_params(r['params_non_embedding'])} | "
            f"{fmt_bytes(r['inference_memory_bytes'])} | {fmt_flops(r['inference_flops_per_token'])} | {r['z']:.4g} |"
        )
    return "\n".join(lines)


def _fmt_baseline(base) -> str:
    if not base:
        return "(none)"
    return f"{base.get('spec', '')} H=({base['n_heads']},{base['n_kv_heads']})"


def _fmt_savings(savings) -> str:
    """``{"memory": 0.5, "flops": 0.2, "z": 0.3}`` (fractions saved) as text with percent units."""
    if not savings:
        return "n/a (no baseline reachable)"
    names = {"memory": "inference memory", "flops": "FLOPs per token", "z": "Z"}
    return "; ".join(
        f"{100 * float(v):.1f}% less {names.get(k, k)}" if v >= 0 else f"{-100 * float(v):.1f}% more {names.get(k, k)}"
        for k, v in savings.items()
    )


def pareto_candidates(law_set, T: int, targets, settings=None):
    """Every (head configuration, target loss) candidate of the search at ``T`` tokens, one DataFrame.

    Columns as :func:`cogqa.search.search` candidates (loss nats/token, memory bytes, FLOPs per
    token, and with hardware seconds/token and tokens/s) plus ``pareto``: True where no other
    candidate is at most as lossy, as large in memory and as costly in FLOPs, and better in one.
    """
    import pandas as pd

    from .search import search
    from .serving import pareto_front

    frames = []
    for L in targets:
        try:
            c = search(T, L, laws=law_set, settings=settings).candidates
        except CogqaError:
            continue  # unreachable target
        frames.append(c[c["reachable"]])
    require(frames, "no target loss is reachable: nothing to put on a Pareto front")
    df = pd.concat(frames, ignore_index=True)
    if "fits" in df:
        df = df[df["fits"].fillna(False).astype(bool)].reset_index(drop=True)
    df["pareto"] = pareto_front(df["predicted_loss"], df["inference_memory_bytes"], df["inference_flops_per_token"])
    return df


def _pareto_section(law_set, T: int, targets, settings, out: Path, plt, numbers: dict) -> list[str]:
    """Section 7: loss vs memory vs FLOPs over all candidates, non-dominated ones marked (PNG + table)."""
    from .units import fmt_bytes, fmt_flops, fmt_params

    df = pareto_candidates(law_set, T, targets, settings)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    sc = ax.scatter(
        df["inference_memory_bytes"] / 2**30,
        df["inference_flops_per_token"] / 1e9,
        c=df["predicted_loss"],
        cmap="viridis",
        s=22,
    )
    front = df[df["pareto"]]
    ax.scatter(
        front["inference_memory_bytes"] / 2**30,
        front["inference_flops_per_token"] / 1e9,
        s=80,
        facecolors="none",
        edgecolors="red",
        label="non-dominated (loss, memory, FLOPs)",
    )
    for r in front.itertuples():
        xy = (r.inference_memory_bytes / 2**30, r.inference_flops_per_token / 1e9)
        ax.annotate(_label(r.n_heads, r.n_kv_heads), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="inference memory (GiB)",
        ylabel="FLOPs per token (GFLOPs)",
        title=f"Pareto view at T = {T:,} tokens",
    )
    fig.colorbar(sc, ax=ax, label="loss (nats/token)")
    ax.legend(fontsize=8)
    png = _save(fig, out / "pareto.png")
    plt.close(fig)
    serve = "tokens_per_second" in df
    head = "| H | N (non-emb.) | loss (nats/token) | memory | FLOPs/token |"
    head += " s/token | tokens/s/device |" if serve else ""
    rows = [head, "|---|---|---|---|---|" + ("---|---|" if serve else "")]
    for r in front.sort_values(["predicted_loss", "inference_memory_bytes"]).itertuples():
        line = (
            f"| {_label(r.n_heads, r.n_kv_heads)} | {fmt_params(r.params_non_embedding)} | "
            f"{r.predicted_loss:.3f} | {fmt_bytes(r.inference_memory_bytes)} | "
            f"{fmt_flops(r.inference_flops_per_token)} |"
        )
        if serve:
            line += f" {1e3 * r.seconds_per_token:.3g} ms | {r.tokens_per_second:,.0f} |"
        rows.append(line)
    numbers["pareto"] = [
        {
            "n_heads": int(r.n_heads),
            "n_kv_heads": int(r.n_kv_heads),
            "params_non_embedding": float(r.params_non_embedding),
            "loss": float(r.predicted_loss),
            "inference_memory_bytes": float(r.inference_memory_bytes),
            "inference_flops_per_token": float(r.inference_flops_per_token),
        }
        for r in front.itertuples()
    ]
    return [
        f"## 7. Pareto view: loss vs memory vs FLOPs at T = {T:,} tokens",
        "",
        f"{len(df)} candidates (every head configuration at each target loss {', '.join(f'{x:g}' for x in targets)}"
        f" nats/token, sized by the laws); {len(front)} are non-dominated (circled): no other candidate is at "
        "most as lossy, as large and as costly, and strictly better in one.",
        "",
        f"![pareto]({png})",
        "",
        *rows,
        "",
    ]
