"""Markdown pieces of the report: tables, head-configuration labels, savings and baselines as text."""

from __future__ import annotations

import numpy as np


def label(h: int, kv: int) -> str:
    """A head configuration as the report writes it: ``(n_h,n_kv)``."""
    return f"({h},{kv})"


def markdown_table(df, index_name: str, col_name) -> str:
    """``df`` as a Markdown table: the index under ``index_name``, columns named by ``col_name(column)``."""
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


def candidates_table(c) -> str:
    """The search's candidates ``c`` as a Markdown table: H, N, memory, FLOPs/token and Z; with hardware
    (columns ``seconds_per_token``, ``tokens_per_second``) also the predicted decode time per output
    token (ms) and tokens/s per device."""
    from ..units import fmt_bytes, fmt_flops, fmt_params

    serve = "seconds_per_token" in c
    lines = ["| H | N (non-emb.) | memory | FLOPs/token | Z |", "|---|---|---|---|---|"]
    if serve:
        lines = [lines[0] + " decode time (ms/token) | tokens/s per device |", lines[1] + "---|---|"]
    for _, r in c.iterrows():
        heads = f"({int(r['n_heads'])},{int(r['n_kv_heads'])})"
        if not r.get("reachable", True):
            lines.append(f"| {heads} | cannot reach L* (L* <= E) | | | |" + (" | |" if serve else ""))
            continue
        line = (
            f"| {heads} | {fmt_params(r['params_non_embedding'])} | "
            f"{fmt_bytes(r['inference_memory_bytes'])} | {fmt_flops(r['inference_flops_per_token'])} | {r['z']:.4g} |"
        )
        if serve and _does_not_fit(r.get("fits", True)):
            line += f" does not fit (max batch {int(r['max_batch'])} sequences) | |"
        elif serve:
            line += f" {1e3 * float(r['seconds_per_token']):.3g} | {float(r['tokens_per_second']):,.0f} |"
        lines.append(line)
    return "\n".join(lines)


def _does_not_fit(fits) -> bool:
    """True when the candidate's ``fits`` is False (not when it is True, None or pandas' NA)."""
    try:
        return fits is not None and not bool(fits)
    except TypeError:  # pd.NA
        return False


def fmt_baseline(base) -> str:
    """The baseline of the savings as text: its spec and H, or ``(none)``."""
    if not base:
        return "(none)"
    return f"{base.get('spec', '')} H=({base['n_heads']},{base['n_kv_heads']})"


def fmt_savings(savings) -> str:
    """``{"memory": 0.5, "flops": 0.2, "z": 0.3}`` (fractions saved) as text with percent units."""
    if not savings:
        return "n/a (no baseline reachable)"
    names = {"memory": "inference memory", "flops": "FLOPs per token", "z": "Z"}
    return "; ".join(
        f"{100 * float(v):.1f}% less {names.get(k, k)}" if v >= 0 else f"{-100 * float(v):.1f}% more {names.get(k, k)}"
        for k, v in savings.items()
    )
