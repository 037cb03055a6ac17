"""The report's figures (PNG, matplotlib's Agg backend): loss vs N, loss vs inference cost, loss vs heads.

Each function draws one figure, saves it atomically and returns its file name; the Markdown around it
is :mod:`cogqa.report.sections`. Units: loss in nats/token, N in non-embedding parameters, memory in
bytes, FLOPs per token.
"""

from __future__ import annotations

from pathlib import Path

from ..files import save_figure
from .markdown import label


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> str:
    """Save ``fig`` atomically to ``path``; returns the file name (as the Markdown links it)."""
    return save_figure(fig, path).name


def shape_grid(law, n, family):
    """Appendix B.1 shapes of ``family`` of sizes ``n`` (parameters), as cogqa search costs them."""
    from ..family import shape_for_params

    return shape_for_params(n, n_heads=law.n_heads, n_kv_heads=law.n_kv_heads, family=family)


def costs(shape, T: int):
    """(inference memory in bytes, FLOPs per token, Z in the paper convention, as ``cogqa search`` ranks)."""
    from ..costs import inference_flops_per_token, inference_memory_bytes, z_of_shape

    return inference_memory_bytes(shape, T)["total"], inference_flops_per_token(shape, T), z_of_shape(shape, T, "paper")


def loss_vs_n(r, band: dict) -> str:
    """Section 1's figure: each shown law's curve over ``r.grid`` (with its bootstrap ``band``), the
    measured runs with ±2 SE error bars; returns the PNG's name."""
    df = r.df
    fig, ax = r.plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for i, law in enumerate(r.shown):
        color = f"C{i % 10}"
        if law.heads in band:
            ax.fill_between(r.grid, *band[law.heads], color=color, alpha=0.15, lw=0)
        ax.plot(
            r.grid,
            law.loss(r.grid),
            color=color,
            lw=1.2,
            label=f"{label(*law.heads)} R²={law.r2:.3f}" if law.r2 is not None else label(*law.heads),
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
    return save(fig, r.out / "loss_vs_n.png")


def loss_vs_cost(r) -> str:
    """Section 2's figure: loss vs inference memory, FLOPs per token and Z at ``r.T``; returns the PNG's name."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    fig, axes = r.plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for i, law in enumerate(r.shown):
        shape = shape_grid(law, r.grid, r.law_set.family)
        mem, flops, z = costs(shape, r.T)
        for ax, x in zip(axes, (mem, flops, z)):
            ax.plot(x, law.loss(r.grid), color=f"C{i % 10}", lw=1.2, label=label(*law.heads))
    units = ("B", "FLOP", "")
    for ax, xl, unit in zip(
        axes,
        ("inference memory (bf16)", "inference FLOPs per token", "Z = 0.9 M^1/2 + 0.1 C^1/3 (paper convention)"),
        units,
    ):
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("loss (nats/token)")
        ax.axhline(r.target_loss, color="k", ls=":", lw=0.8)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labelled ticks even on a narrow range
        ax.xaxis.set_major_formatter(EngFormatter(unit=unit))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Loss vs inference cost at T = {r.T:,} tokens (dotted: L* = {r.target_loss:.3f})")
    return save(fig, r.out / "loss_vs_cost.png")


def loss_vs_heads(r, groups) -> str:
    """Section 3's figure: measured loss vs n_h for each size in ``groups`` ((name, rows) with several
    n_h), one line per n_kv; returns the PNG's name."""
    fig, ax = r.plt.subplots(figsize=(7, 4.5), constrained_layout=True)
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
    return save(fig, r.out / "loss_vs_heads.png")
