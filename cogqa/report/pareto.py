"""Section 7 of the report: every candidate of the search at T, the non-dominated ones marked."""

from __future__ import annotations

from ..errors import CogqaError, require
from .markdown import label


def pareto_candidates(law_set, T: int, targets, settings=None):
    """Every (head configuration, target loss) candidate of the search at ``T`` tokens, one DataFrame.

    Columns as :func:`cogqa.search.search` candidates (loss nats/token, memory bytes, FLOPs per
    token, and with hardware seconds/token and tokens/s) plus ``pareto``: True where no other
    candidate is at most as lossy, as large in memory and as costly in FLOPs, and better in one.
    """
    import pandas as pd

    from ..search import search
    from ..serving import pareto_front

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


def _pareto_figure(df, front, T: int, plt, path) -> str:
    """Memory (GiB) vs FLOPs per token (GFLOPs) of every candidate coloured by loss, the front circled;
    returns the PNG's file name."""
    from .figures import save

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    sc = ax.scatter(
        df["inference_memory_bytes"] / 2**30,
        df["inference_flops_per_token"] / 1e9,
        c=df["predicted_loss"],
        cmap="viridis",
        s=22,
    )
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
        ax.annotate(label(r.n_heads, r.n_kv_heads), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="inference memory (GiB)",
        ylabel="FLOPs per token (GFLOPs)",
        title=f"Pareto view at T = {T:,} tokens",
    )
    fig.colorbar(sc, ax=ax, label="loss (nats/token)")
    ax.legend(fontsize=8)
    png = save(fig, path)
    plt.close(fig)
    return png


def pareto_section(r) -> list[str]:
    """Section 7 of report ``r`` (a :class:`cogqa.report.sections.Report`): loss vs memory vs FLOPs over
    all candidates, non-dominated ones marked (PNG + table); adds ``pareto`` to ``r.numbers``."""
    from ..units import fmt_bytes, fmt_flops, fmt_params

    T, targets = r.T, r.targets
    df = pareto_candidates(r.law_set, T, targets, r.settings)
    front = df[df["pareto"]]
    png = _pareto_figure(df, front, T, r.plt, r.out / "pareto.png")
    serve = "tokens_per_second" in df
    head = "| H | N (non-emb.) | loss (nats/token) | memory | FLOPs/token |"
    head += " s/token | tokens/s/device |" if serve else ""
    rows = [head, "|---|---|---|---|---|" + ("---|---|" if serve else "")]
    for c in front.sort_values(["predicted_loss", "inference_memory_bytes"]).itertuples():
        line = (
            f"| {label(c.n_heads, c.n_kv_heads)} | {fmt_params(c.params_non_embedding)} | "
            f"{c.predicted_loss:.3f} | {fmt_bytes(c.inference_memory_bytes)} | "
            f"{fmt_flops(c.inference_flops_per_token)} |"
        )
        if serve:
            line += f" {1e3 * c.seconds_per_token:.3g} ms | {c.tokens_per_second:,.0f} |"
        rows.append(line)
    r.numbers["pareto"] = [
        {
            "n_heads": int(c.n_heads),
            "n_kv_heads": int(c.n_kv_heads),
            "params_non_embedding": float(c.params_non_embedding),
            "loss": float(c.predicted_loss),
            "inference_memory_bytes": float(c.inference_memory_bytes),
            "inference_flops_per_token": float(c.inference_flops_per_token),
        }
        for c in front.itertuples()
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
