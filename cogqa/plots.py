"""Figures of the cost model (matplotlib, Agg backend): the paper's Figures 7 and 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import costs
from .files import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def breakdown_shares(
    shape, contexts, weight_dtype: str = "bf16", kv_dtype: str = "bf16"
) -> dict[str, dict[str, np.ndarray]]:
    """Shares (fractions summing to 1) of decode FLOPs per component and of inference memory
    (weights vs KV cache) at each context length in ``contexts`` (tokens)."""
    T = np.asarray(contexts, dtype=float)
    flops = costs.forward_flops_per_token(shape, T)
    mem = costs.inference_memory_bytes(shape, T, 1, weight_dtype, kv_dtype)
    flop_parts = {k: flops[k] / flops["total"] for k in costs.FLOP_COMPONENTS}
    mem_parts = {"weights": mem["weights"] / mem["total"], "kv_cache": mem["kv_cache"] / mem["total"]}
    return {"flops": flop_parts, "memory": mem_parts}


def plot_breakdown(
    shape,
    path: str | Path,
    max_context: int = 131072,
    title: str = "",
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
) -> Path:
    """Write a PNG with two stacked-area panels: share of decode FLOPs per component and share
    of inference memory (weights, KV cache) vs context length, 1 to ``max_context`` tokens."""
    plt = _pyplot()
    T = np.unique(np.geomspace(1, max_context, 200).round())
    shares = breakdown_shares(shape, T, weight_dtype, kv_dtype)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    labels = {
        "attention_projections": "attention projections",
        "attention_computation": "attention computation (time-variant)",
        "ffn": "FFN",
        "lm_head": "LM head",
        "weights": f"weights ({weight_dtype})",
        "kv_cache": f"KV cache ({kv_dtype}, time-variant)",
    }
    for ax, key, ylabel in (
        (axes[0], "flops", "share of FLOPs per token"),
        (axes[1], "memory", "share of inference memory"),
    ):
        parts = shares[key]
        ax.stackplot(T, *parts.values(), labels=[labels[k] for k in parts])
        ax.set_xscale("log", base=2)
        ax.set_xlim(T[0], T[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("context length T (tokens)")
        ax.set_ylabel(ylabel)
        ax.legend(loc="center left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Where inference cost goes as the context grows")
    return save_figure(fig, path, dpi=120)
