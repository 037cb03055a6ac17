"""``cogqa search`` (cost-optimal GQA for a context and a target loss, or a budget) and
``cogqa table`` (the paper's Table 4 grid). Parsing and printing only; the logic is in
:mod:`cogqa.search`. Never imports torch."""

from __future__ import annotations

import argparse
import math
import re
import sys

from ..errors import CogqaError, require
from ..units import parse_bytes
from . import print_json
from .options import add_hardware_options, hardware_from_args, objective_line

DEFAULT_LOSSES = "3.0,2.9,2.8,2.7,2.6,2.5,2.4,2.35"
DEFAULT_CONTEXTS = "8k,16k,32k,64k,128k"
APPROXIMATE_LINE = "approximate: default laws calibrated from published numbers (see docs/default-laws.md)"


def approximate_line(laws_arg: str) -> str:
    """The warning printed under results from laws marked approximate, naming which laws they are."""
    if str(laws_arg) == "default":
        return APPROXIMATE_LINE
    if str(laws_arg) == "demo":
        return "approximate: demo laws of tiny byte-level CPU models (see docs/demo.md); not for choosing a real model"
    return f"approximate: the laws file {laws_arg} marks its laws as approximate (see its 'source')"


def _fmt_seconds(s: float) -> str:
    return f"{1e3 * s:.3g} ms" if s >= 1e-3 else f"{1e6 * s:.3g} us"


def _int(text, field: str) -> int:
    require(
        text is not None and re.fullmatch(r"\s*-?[0-9]+\s*", str(text)) is not None,
        f"{field}: {text!r} is not a whole number",
    )
    return int(text)


def _parse_heads(items) -> list[tuple[int, int]] | None:
    """``["8,1", "32:8", "(4,1)"]`` -> [(8, 1), (32, 8), (4, 1)] (:func:`cogqa.units.parse_head_config`: one
    spelling accepted everywhere); None stays None."""
    if items is None:
        return None
    from ..units import parse_head_config

    return [parse_head_config(item, "--heads") for item in items]


def _options(args) -> dict:
    """The keyword arguments shared by search and table, parsed from strings."""
    from ..costs import ZWeights, dtype_bytes
    from ..units import parse_float

    lam = parse_float(args.lam, "--lambda")
    require(0.0 <= lam <= 1.0, f"--lambda must be in [0, 1], got {lam:g}")
    alpha, beta = parse_float(args.alpha, "--alpha"), parse_float(args.beta, "--beta")
    require(alpha > 0, f"--alpha must be > 0, got {alpha:g}")
    require(beta > 0, f"--beta must be > 0, got {beta:g}")
    for flag, value in (("--weight-dtype", args.weight_dtype), ("--kv-dtype", args.kv_dtype)):
        try:
            dtype_bytes(value)
        except CogqaError as exc:
            raise CogqaError(f"{flag}: {exc}") from None
    if str(args.batch).strip().lower() == "auto":
        batch = "auto"
    else:
        batch = _int(args.batch, "--batch")
        require(batch >= 1, f"--batch must be at least 1 sequence (or auto), got {batch}")
    max_heads = None
    if args.max_heads is not None:
        max_heads = _int(args.max_heads, "--max-heads")
        require(
            max_heads >= 1 and max_heads & (max_heads - 1) == 0,
            f"--max-heads must be a power of two >= 1 (1, 2, 4, ..., 32), got {max_heads}",
        )
    from ..costs import DEFAULT_CONVENTION, MEMORY_UNIT_CONVENTIONS, z_convention

    if args.memory_unit is not None:
        require(
            args.memory_unit in MEMORY_UNIT_CONVENTIONS,
            f"--memory-unit must be values or bytes, got {args.memory_unit!r}",
        )
        require(args.convention is None, "give --convention or the old --memory-unit, not both")
    convention = z_convention(args.convention or MEMORY_UNIT_CONVENTIONS.get(args.memory_unit, DEFAULT_CONVENTION))
    from ..search import CostSettings

    settings = CostSettings(
        weights=ZWeights(lam=lam, alpha=alpha, beta=beta),
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        batch=batch,
        convention=convention,
        objective=args.objective,
        hardware=hardware_from_args(args),
    )
    return {"settings": settings, "max_heads": max_heads}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--laws",
        default="default",
        help="laws file (JSON from cogqa fit) or a shipped set: default, demo (default: default)",
    )
    p.add_argument("--lambda", dest="lam", default="0.9", help="Z weight of memory, in [0, 1] (default 0.9)")
    p.add_argument("--alpha", default="0.5", help="Z exponent of memory (default 1/2)")
    p.add_argument("--beta", default=str(1 / 3), help="Z exponent of FLOPs per token (default 1/3)")
    p.add_argument("--weight-dtype", default="bf16", help="dtype of the weights in memory (default bf16)")
    p.add_argument("--kv-dtype", default="bf16", help="dtype of the KV cache (default bf16)")
    p.add_argument(
        "--batch",
        default="1",
        help="concurrent sequences sharing the weights, or auto (the most that fit "
        "--hardware; Z then at batch 1) (default 1)",
    )
    p.add_argument(
        "--max-heads", default=None, help="largest n_heads to consider, a power of two (default: all in the laws file)"
    )
    p.add_argument(
        "--convention",
        default=None,
        help="what M and C mean in Z: paper (default; the paper's Figure 2: M = 2 bytes "
        "x (N + 2TLd_h n_kv), C = T x (2N + 4TLd_h n_h)), eq4-per-token (M in values, C per token) or bytes-per-token",
    )
    p.add_argument(
        "--memory-unit", default=None, help="old spelling: values = --convention eq4-per-token, bytes = bytes-per-token"
    )
    p.add_argument(
        "--objective",
        default="z",
        help="what to minimise: z (the paper's Z, default), latency (decode "
        "seconds per token) or throughput (maximise tokens/s per device); the last two need --hardware",
    )

    add_hardware_options(p, required=False)
    p.add_argument("--json", action="store_true", help="print JSON")


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    """Rank the head configurations for one context and target loss (or budget) and print them."""
    from ..search import lowest_loss_within_budget, search
    from ..units import parse_context, parse_count, parse_float

    require(args.context is not None, "--context is required, e.g. --context 128k")
    T = parse_context(args.context, "--context")
    opts = _options(args)
    budgets = {}
    if args.budget_z is not None:
        budgets["budget_z"] = parse_float(args.budget_z, "--budget-z")
        require(budgets["budget_z"] > 0, f"--budget-z must be > 0, got {args.budget_z}")
    if args.budget_memory is not None:
        budgets["budget_memory"] = parse_bytes(args.budget_memory, "--budget-memory")
    if args.budget_flops is not None:
        budgets["budget_flops"] = parse_count(args.budget_flops, "--budget-flops")
    if args.train_flops is not None:
        return _run_training_budget(args, T, opts)
    if budgets:
        require(
            args.target_loss is None,
            "give either --target-loss or a budget (--budget-z/--budget-memory/--budget-flops), not both",
        )
        require(args.baseline is None, "--baseline compares at a target loss; it cannot be combined with a budget")
        result = lowest_loss_within_budget(T, args.laws, **budgets, heads=_parse_heads(args.heads), **opts)
    else:
        require(
            args.target_loss is not None, "--target-loss is required (nats per token, e.g. 2.615), or give a budget"
        )
        loss = parse_float(args.target_loss, "--target-loss")
        require(loss > 0, f"--target-loss must be a positive loss in nats per token, got {loss:g}")
        result = search(T, loss, args.laws, baseline=args.baseline, heads=_parse_heads(args.heads), **opts)
    if args.json:
        print_json(result.to_dict())
        return 0
    _print_result(result, args.laws)
    return 0


def _run_training_budget(args, T: int, opts: dict) -> int:
    """Section 5.6: the search at equal training FLOPs, with laws in N and D."""
    import json
    from pathlib import Path

    from ..laws import laws_from_dict
    from ..search import search_at_training_budget
    from ..units import fmt_params, parse_count, parse_float

    require(args.target_loss is not None, "--train-flops needs --target-loss (nats per token)")
    loss = parse_float(args.target_loss, "--target-loss")
    flops = parse_count(args.train_flops, "--train-flops")
    path = Path(args.laws)
    require(
        path.is_file(), f"--laws: {args.laws}: --train-flops needs a laws file in N and D (cogqa fit --form chinchilla)"
    )
    try:
        laws = laws_from_dict(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as exc:
        raise CogqaError(f"--laws: {path}: not valid JSON ({exc.msg})") from None
    from ..laws import HeadsJointLaw

    laws = laws[0] if len(laws) == 1 and isinstance(laws[0], HeadsJointLaw) else laws
    r = search_at_training_budget(
        T,
        loss,
        flops,
        laws,
        train_context=int(parse_count(args.train_context, "--train-context")),
        heads=_parse_heads(args.heads),
        settings=opts["settings"],
    )
    if args.json:
        print_json(r)
        return 0
    print(
        f"cost-optimal GQA at equal training compute {flops:.3g} FLOPs (Eq. 11), T = {T:,} tokens, target loss "
        f"{loss:g} nats/token"
    )
    print(f"Z convention {opts['settings'].convention.describe()}")
    for i, row in enumerate(r["candidates"]):
        heads = f"({row['n_heads']}, {row['n_kv_heads']})"
        if not row["reachable"]:
            print(f"  {heads:<10} cannot reach L* within the budget")
            continue
        print(
            f"{'* ' if i == 0 else '  '}{heads:<10} N* {fmt_params(row['params_non_embedding']):>14}  "
            f"D {row['tokens']:.3g} tokens  Z {row['z']:.5g}"
        )
    return 0


def _budget_label(key: str, value: float) -> str:
    from ..units import fmt_bytes, fmt_flops

    if key == "memory_bytes":
        return f"memory <= {fmt_bytes(value)}"
    if key == "flops":
        return f"FLOPs/token <= {fmt_flops(value)}"
    return f"Z <= {value:.5g}"


def _print_header(r, loss_col: bool, serve: bool) -> None:
    """The question, the Z formula and settings, the objective line and the column names."""
    from ..units import fmt_tokens

    w = r.weights
    what = (
        f"target loss {r.target_loss:g} nats/token"
        if r.target_loss is not None
        else "budget " + ", ".join(_budget_label(k, v) for k, v in r.budget.items())
    )
    print(f"cost-optimal GQA at T = {fmt_tokens(r.context)}, {what}")
    print(
        f"Z = {w.lam:g}*M^{w.alpha:.3g} + {1 - w.lam:g}*C^{w.beta:.3g}, convention {r.convention.describe()}; "
        f"weights {r.weight_dtype}, KV cache {r.kv_dtype}, batch {r.batch}"
    )
    if serve:
        print(objective_line(r.settings))
    header = (
        f"{'':2}{'H=(n_h,n_kv)':<14}{'N* (params)':>16}{'L x d':>16}{'FLOPs/token':>16}"
        f"{'memory':>13}{'KV cache':>13}{'Z':>11}"
    )
    print(
        header
        + (f"{'loss':>9}" if loss_col else "")
        + (f"{'s/token':>11}{'tokens/s/dev':>14}{'batch':>7}" if serve else "")
    )


def _candidate_line(row: dict, mark: str, loss_col: bool, serve: bool) -> str:
    """One candidate row of the table (units in the cells or the header)."""
    from ..units import fmt_bytes, fmt_flops, fmt_params

    heads = f"({row['n_heads']}, {row['n_kv_heads']})"
    if not row["reachable"]:
        why = "cannot reach L* (L* <= E)" if not loss_col else "does not fit the budget"
        return f"{'':2}{heads:<14}{why:>16}"
    shape = f"{row['layers']} x {row['hidden_size']}"
    line = (
        f"{mark}{heads:<14}{fmt_params(row['params_non_embedding']).replace(' params', ''):>16}"
        f"{shape:>16}{fmt_flops(row['inference_flops_per_token']):>16}"
        f"{fmt_bytes(row['inference_memory_bytes']):>13}{fmt_bytes(row['kv_cache_bytes']):>13}{row['z']:>11.5g}"
    )
    line += f"{row['predicted_loss']:>9.4f}" if loss_col else ""
    if serve:
        fits = bool(row["fits"])
        batch = f"{int(row['serving_batch'])}" if fits else f"max {int(row['max_batch'])}"
        line += f"{_fmt_seconds(row['seconds_per_token']):>11}{row['tokens_per_second']:>14,.0f}{batch:>7}"
        line += "" if fits else "  infeasible: batch does not fit memory"
    return line


def _print_best(r, serve: bool) -> None:
    from ..units import fmt_params

    b = r.best
    print(
        f"* best: H=({b['n_heads']}, {b['n_kv_heads']}), N* = {fmt_params(b['params_non_embedding'])} "
        f"(buildable: {b['layers']} layers x {b['hidden_size']} hidden), predicted loss {b['predicted_loss']:.4f} "
        "nats/token"
    )
    if serve:
        print(
            f"  on {r.settings.hardware.name}: {_fmt_seconds(b['seconds_per_token'])} per output token, "
            f"{b['tokens_per_second']:,.0f} tokens/s per device at batch {int(b['serving_batch'])} sequences "
            f"(max batch that fits: {int(b['max_batch'])})"
        )


def _print_baseline(r) -> None:
    from ..units import fmt_bytes, fmt_flops, fmt_params

    base, s = r.baseline, r.savings
    sized = (
        f"sized by the law of H={tuple(base['law_heads'])} to reach L*"
        if base["sized_by"] == "law"
        else "its own shape"
    )
    loss = f"{base['predicted_loss']:.4f} nats/token" if base["predicted_loss"] is not None else "no law for its heads"
    print(
        f"baseline {base['spec']}: H=({base['n_heads']}, {base['n_kv_heads']}), "
        f"{fmt_params(base['params_non_embedding'])} "
        f"non-embedding ({sized}; predicted loss {loss}): {fmt_flops(base['inference_flops_per_token'])}/token, "
        f"{fmt_bytes(base['inference_memory_bytes'])}, Z {base['z']:.5g}"
    )
    zmc = (
        f" (M and C of the {r.convention.name} convention: {-100 * s['z_memory']:+.1f}%, {-100 * s['z_flops']:+.1f}%)"
        if "z_memory" in s
        else ""
    )
    print(
        f"best vs baseline: memory {-100 * s['memory']:+.1f}%, FLOPs/token {-100 * s['flops']:+.1f}%, Z "
        f"{-100 * s['z']:+.1f}%" + zmc
    )


def _print_result(r, laws_arg: str = "default") -> None:
    """A search result as a table, then the winner, the baseline, warnings (pandas-free: reads ``r.rows``)."""
    loss_col = r.target_loss is None
    serve = r.settings.hardware is not None
    _print_header(r, loss_col, serve)
    for i, row in enumerate(r.rows):
        print(_candidate_line(row, "* " if i == 0 else "  ", loss_col, serve))
    _print_best(r, serve)
    if r.baseline is not None:
        _print_baseline(r)
    for warning in r.warnings:
        print(f"warning: {warning}")
    if r.approximate:
        print(approximate_line(laws_arg))


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------


def _parse_losses(text: str) -> list[float]:
    from ..units import parse_float

    parts = [p for p in str(text).split(",") if p.strip()]
    require(parts, "--losses: give at least one target loss, e.g. 3.0,2.9,2.8")
    losses = [parse_float(p.strip(), "--losses") for p in parts]
    for value in losses:
        require(value > 0, f"--losses: each loss must be positive (nats per token), got {value:g}")
    require(len(set(losses)) == len(losses), "--losses: a target loss appears twice")
    return losses


def cmd_table(args: argparse.Namespace) -> int:
    """Print the grid of cost-optimal (n_h, n_kv) for each target loss and context."""
    import pandas as pd

    from ..search import (
        PAPER_TABLE4,
        PAPER_TABLE4_CONTEXTS,
        compare_with_paper_table4,
        cost_optimal_table,
        plot_cost_optimal_table,
    )
    from ..units import fmt_tokens, parse_contexts

    losses = _parse_losses(args.losses)
    contexts = parse_contexts(args.contexts, "--contexts")
    require(len(set(contexts)) == len(contexts), "--contexts: a context length appears twice")
    require(args.format in ("markdown", "csv"), f"--format must be markdown or csv, got {args.format!r}")
    opts = _options(args)
    table = cost_optimal_table(losses, contexts, args.laws, **opts)
    from ..search import law_quality_warnings, resolve_laws

    for warning in law_quality_warnings(resolve_laws(args.laws)):
        print(f"warning: {warning}", file=sys.stderr)
    long = table.attrs["long"]
    if args.out_csv:
        _write_atomic(args.out_csv, _csv(table))
    if args.plot:
        plot_cost_optimal_table(table, args.plot)
    if args.json:
        out = {
            "losses": losses,
            "contexts": contexts,
            "approximate": table.attrs["approximate"],
            "z_convention": opts["settings"].convention.to_dict(),
            **opts["settings"].to_dict(),
            "laws_source": table.attrs["laws_source"],
            "table": {f"{loss:g}": {str(t): table.loc[loss, t] for t in contexts} for loss in losses},
            "cells": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in long.to_dict(orient="records")
            ],
            "paper_table4_agreement": None,
        }
        if set(PAPER_TABLE4) <= set(losses) and set(PAPER_TABLE4_CONTEXTS) <= set(contexts):
            out["paper_table4_agreement"] = {
                k: v for k, v in compare_with_paper_table4(table).items() if k != "per_cell"
            }
        print_json(out)
        return 0
    if args.format == "csv":
        print(_csv(table), end="")
    else:
        print(f"cost-optimal (n_h, n_kv); Z convention {opts['settings'].convention.describe()}")
        if opts["settings"].hardware is not None:
            print(objective_line(opts["settings"]))
        print()
        print("| L* (nats/token) | " + " | ".join(f"T = {fmt_tokens(t)}" for t in contexts) + " |")
        print("|---|" + "---|" * len(contexts))
        tps = {}
        if opts["settings"].hardware is not None:
            unit = "s/token" if opts["settings"].objective == "latency" else "tok/s/dev"
            for r in long.itertuples():
                if r.reachable and not pd.isna(r.n_heads):
                    v = r.seconds_per_token if unit == "s/token" else r.tokens_per_second
                    tps[(r.target_loss, r.context)] = f" {v:.3g} {unit}" if unit == "s/token" else f" {v:,.0f} {unit}"
        for loss in losses:
            cells = ((table.loc[loss, t] or "unreachable") + tps.get((loss, t), "") for t in contexts)
            print(f"| {loss:g} | " + " | ".join(cells) + " |")
    if args.plot:
        print(f"wrote {args.plot}")
    if args.out_csv:
        print(f"wrote {args.out_csv}")
    if table.attrs["approximate"]:
        print(approximate_line(args.laws))
    return 0


def _csv(table) -> str:
    lines = ["target_loss," + ",".join(str(t) for t in table.columns)]
    for loss in table.index:
        cells = (f'"{table.loc[loss, t]}"' if table.loc[loss, t] else "" for t in table.columns)
        lines.append(f"{loss:g}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str) -> None:
    from pathlib import Path

    from ..files import write_text_atomic

    p = Path(path)
    require(p.parent.exists(), f"--out-csv: directory {p.parent} does not exist")
    write_text_atomic(p, text)


def register(sub) -> None:
    """Register ``search`` and ``table``."""
    p = sub.add_parser(
        "search",
        help="cost-optimal (N, n_heads, n_kv_heads) for a context length and a target loss",
        description="The paper's three-step search: for each head configuration the size N*(H) that reaches the "
        "target loss under the laws, its costs at context T, ranked by Z. With a budget instead of a target loss: "
        "the lowest predicted loss within it.",
    )
    p.add_argument("--context", help="context length T in tokens (8192, 8k, 128k)")
    p.add_argument("--target-loss", help="target loss L* in nats per token")
    p.add_argument(
        "--baseline",
        help="compare the winner with: llama3 (H=(32,8) sized to reach L*), a config.json, "
        "or a size with heads such as 1.2B:32,8",
    )
    p.add_argument(
        "--heads", nargs="+", metavar="N_H,N_KV", help="only these head configurations (default: all in the laws file)"
    )
    p.add_argument("--budget-z", help="inverse question: lowest loss with Z at most this")
    p.add_argument(
        "--budget-memory", help="inverse question: lowest loss within this inference memory (16GiB, 24GB, bytes)"
    )
    p.add_argument("--budget-flops", help="inverse question: lowest loss within this many FLOPs per token (50G, 2e10)")
    p.add_argument(
        "--train-flops",
        help="Section 5.6: every H gets this training compute (FLOPs, Eq. 11), the cheaper ones more "
        "tokens; needs --laws with loss in N and D (cogqa fit --form chinchilla)",
    )
    p.add_argument("--train-context", default="8192", help="training context for --train-flops (tokens, default 8192)")
    _add_common(p)
    p.set_defaults(func=cmd_search)

    t = sub.add_parser(
        "table",
        help="the paper's Table 4 grid: cost-optimal (n_h, n_kv) per target loss and context",
        description="Cost-optimal (n_heads, n_kv_heads) for each target loss (rows) and context length (columns).",
    )
    t.add_argument("--losses", default=DEFAULT_LOSSES, help=f"target losses, nats per token (default {DEFAULT_LOSSES})")
    t.add_argument("--contexts", default=DEFAULT_CONTEXTS, help=f"context lengths (default {DEFAULT_CONTEXTS})")
    t.add_argument("--format", default="markdown", help="markdown (default) or csv")
    t.add_argument("--out-csv", help="also write the grid as CSV to this file")
    t.add_argument("--plot", help="also write a heatmap PNG to this file")
    _add_common(t)
    t.set_defaults(func=cmd_table)


__all__ = ["register", "cmd_search", "cmd_table"]
