"""``cogqa cost`` and ``cogqa compare``: the cost model of one or several decoders at given T."""

from __future__ import annotations

import argparse

from ..errors import require
from . import print_json
from .options import add_hardware_options, add_shape_arguments, hardware_from_args, objective_line, shape_from_args
from .options import describe_shape as _describe


def add_cost_options(parser: argparse.ArgumentParser, multi_context: bool = True) -> None:
    """--context, --batch, dtypes and the Z weights."""
    parser.add_argument(
        "--context",
        default=None,
        help="context length(s) T in tokens: 131072, 128k, or a list 8k,32k,128k (default 8k)",
    )
    parser.add_argument(
        "--batch",
        default="1",
        help="concurrent sequences sharing the weights (default 1); compare also takes auto: the largest batch "
        "that fits --hardware's memory (Z then at batch 1)",
    )
    parser.add_argument("--weight-dtype", default="bf16", help="fp32, bf16, fp16, fp8, int8, int4 (default bf16)")
    parser.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (default bf16)")
    parser.add_argument(
        "--lambda", dest="lam", type=float, default=0.9, help="Z weight of memory, in [0, 1] (default 0.9)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Z exponent of memory (default 1/2)")
    parser.add_argument("--beta", type=float, default=1 / 3, help="Z exponent of FLOPs per token (default 1/3)")
    parser.add_argument(
        "--context-dist",
        metavar="SPEC",
        help="a distribution of context lengths instead of --context: "
        "1k:5,8k:3,128k:2 (length:count) or a file of 'length,count' lines; costs are taken at E[T] "
        "(they are affine in T)",
    )
    parser.add_argument(
        "--convention",
        default=None,
        choices=("paper", "eq4-per-token", "bytes-per-token"),
        help="what M and C mean in Z: paper (default; Figure 2: M in bytes of N + KV cache, C = FLOPs "
        "of a whole T-token sequence), eq4-per-token (M in values, C per token) or bytes-per-token",
    )
    parser.add_argument(
        "--memory-unit",
        default=None,
        choices=("values", "bytes"),
        help="old spelling: values = --convention eq4-per-token, bytes = --convention bytes-per-token",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def convention_from_args(args: argparse.Namespace) -> str:
    """The Z convention named by --convention (or the old --memory-unit); default ``paper``."""
    from ..costs import DEFAULT_CONVENTION, MEMORY_UNIT_CONVENTIONS

    conv, unit = getattr(args, "convention", None), getattr(args, "memory_unit", None)
    require(conv is None or unit is None, "give --convention or the old --memory-unit, not both")
    return conv or (MEMORY_UNIT_CONVENTIONS[unit] if unit else DEFAULT_CONVENTION)


def _weights(args):
    from ..costs import ZWeights

    return ZWeights(lam=args.lam, alpha=args.alpha, beta=args.beta)


def _parse_batch(text, allow_auto: bool):
    """``--batch``: a whole number of sequences >= 1, or ``auto`` where ``allow_auto``."""
    text = str(text).strip().lower()
    if text == "auto":
        require(allow_auto, "--batch auto is for cogqa compare/search with --hardware; give a number of sequences")
        return "auto"
    require(text.isdigit() and int(text) >= 1, f"--batch must be a whole number >= 1 of sequences, got {text!r}")
    return int(text)


def _check_cost_options(args, allow_auto: bool = False) -> list[float]:
    """Checks --batch (parsed in place), the dtypes and the contexts; returns the contexts (tokens)."""
    from ..costs import dtype_bytes, expected_context
    from ..units import parse_contexts, parse_length_distribution

    args.batch = _parse_batch(args.batch, allow_auto)
    dtype_bytes(args.weight_dtype)
    dtype_bytes(args.kv_dtype)
    if args.context_dist:
        require(args.context is None, "give --context or --context-dist, not both (--context-dist replaces --context)")
        lengths, counts = parse_length_distribution(args.context_dist)
        return [expected_context(lengths, counts)]
    return parse_contexts(args.context if args.context is not None else "8k")


def _training_summary(args, shape) -> dict:
    """Training FLOPs (Eq. 11 and exact) and memory (bytes) for --train-tokens at --train-context."""
    from ..costs import paper_training_flops, training_flops, training_memory_bytes
    from ..units import parse_context, parse_count

    tokens = parse_count(args.train_tokens, "--train-tokens")
    t_train = parse_context(args.train_context, "--train-context")
    return {
        "training_tokens": int(tokens),
        "training_context": t_train,
        "training_flops": float(training_flops(shape, tokens, t_train)),
        "paper_training_flops": float(paper_training_flops(shape, tokens, t_train)),
        "training_memory_bytes": float(training_memory_bytes(shape, t_train)["total"]),
    }


def _print_parameters(first: dict, kv_dtype: str) -> None:
    from ..units import fmt_bytes, fmt_params

    print("parameters")
    for key, value in first["params_by_component"].items():
        if value:
            print(f"  {key.replace('_', ' '):<24}{fmt_params(value):>18}")
    print(f"  {'total':<24}{fmt_params(first['params']):>18}   ({first['params']:,} parameters)")
    print(
        f"  {'non-embedding N':<24}{fmt_params(first['params_non_embedding']):>18}   "
        f"({first['params_non_embedding']:,} parameters)"
    )
    print(
        f"  KV cache per token      {fmt_bytes(first['kv_cache_bytes_per_token']):>18}   "
        f"({first['kv_cache_bytes_per_token']:,} bytes at {kv_dtype})"
    )
    print()


def _print_flops_and_memory(r: dict, where: str) -> None:
    """The FLOPs per token by component and the memory split (bytes) at one context."""
    from ..units import fmt_bytes, fmt_flops, fmt_tokens

    total = r["inference_flops_per_token"]
    print(f"decoding one token at T = {fmt_tokens(r['context'])} ({r['context']:,} tokens{where})")
    print(f"  {'component':<34}{'FLOPs/token':>16}{'share':>8}")
    for key, value in r["flops_by_component"].items():
        tag = " (time-variant)" if key == "attention_computation" else ""
        print(f"  {(key.replace('_', ' ') + tag):<34}{fmt_flops(value):>16}{100 * value / total:>7.1f}%")
    print(f"  {'total':<34}{fmt_flops(total):>16}")
    print(
        f"  time-invariant / time-variant     {fmt_flops(r['inference_flops_time_invariant'])} / "
        f"{fmt_flops(r['inference_flops_time_variant'])}"
    )
    print()
    mem = r["inference_memory_bytes"]
    print("inference memory")
    for label, key in (("weights (time-invariant)", "weights_bytes"), ("KV cache (time-variant)", "kv_cache_bytes")):
        print(f"  {label:<34}{fmt_bytes(r[key]):>16}{100 * r[key] / mem:>7.1f}%")
    print(f"  {'total':<34}{fmt_bytes(mem):>16}")
    print()


def _print_one_context(r: dict, weights, where: str) -> None:
    """The full breakdown at one context: FLOPs, memory, the paper's split, Z and training."""
    from ..units import fmt_bytes, fmt_flops, fmt_tokens

    _print_flops_and_memory(r, where)
    print(
        f"paper's split (Eqs. 3-4): C = 2N + 4TLd_h n_h = {fmt_flops(r['paper_inference_flops'])} per token; "
        f"M = N + 2TLd_h n_kv = {r['paper_inference_memory_values']:.4g} values"
    )
    print(
        f"hardware-aware cost Z = {weights.lam:g}*M^{weights.alpha:.3g} + {1 - weights.lam:g}*C^{weights.beta:.3g} "
        f"= {r['z']:.6g}, convention {r['z_convention']['name']} (M in {r['z_convention']['memory_unit']}, "
        f"C in {r['z_convention']['flops_unit']})"
    )
    if "training_flops" in r:
        print()
        print(
            f"training on {r['training_tokens']:,} tokens at T_train = {fmt_tokens(r['training_context'])} "
            f"(T_bar = T_train/2): {fmt_flops(r['training_flops'])} "
            f"(paper's Eq. 11: {fmt_flops(r['paper_training_flops'])}); "
            f"memory 4N + TdL = {fmt_bytes(r['training_memory_bytes'])} (fp32 states, bf16 activations, batch 1)"
        )


def _print_contexts(rows: list[dict]) -> None:
    """One line per context: FLOPs per token, time-variant share, KV cache and memory (bytes), Z."""
    from ..units import fmt_bytes, fmt_flops, fmt_tokens

    conv = rows[0]["z_convention"]
    print(f"Z convention {conv['name']}: M in {conv['memory_unit']}, C in {conv['flops_unit']}")
    print(f"{'context':>14}{'FLOPs/token':>16}{'time-var.':>10}{'KV cache':>14}{'memory':>14}{'KV share':>10}{'Z':>12}")
    for r in rows:
        tv = 100 * r["inference_flops_time_variant"] / r["inference_flops_per_token"]
        kv = 100 * r["kv_cache_bytes"] / r["inference_memory_bytes"]
        print(
            f"{fmt_tokens(r['context']):>14}{fmt_flops(r['inference_flops_per_token']):>16}{tv:>9.1f}%"
            f"{fmt_bytes(r['kv_cache_bytes']):>14}{fmt_bytes(r['inference_memory_bytes']):>14}{kv:>9.1f}%{r['z']:>12.5g}"
        )


def cmd_cost(args: argparse.Namespace) -> int:
    """Print the cost model of one shape at one or several context lengths."""
    from ..costs import cost_summary

    contexts = _check_cost_options(args)
    shape = shape_from_args(args)
    weights = _weights(args)
    conv = convention_from_args(args)
    rows = [cost_summary(shape, T, args.batch, args.weight_dtype, args.kv_dtype, weights, conv) for T in contexts]
    if args.train_tokens is not None:
        train = _training_summary(args, shape)
        for r in rows:
            r.update(train)
    if args.json:
        print_json(rows[0] if len(rows) == 1 else rows)
        return 0
    print(_describe(shape))
    print(
        f"weights {args.weight_dtype}, KV cache {args.kv_dtype}, batch {args.batch} sequence(s); FLOPs = 2 x "
        "multiply-adds"
    )
    print()
    _print_parameters(rows[0], args.kv_dtype)
    if len(rows) == 1:
        _print_one_context(rows[0], weights, f" = E[T] of {args.context_dist}" if args.context_dist else "")
    else:
        _print_contexts(rows)
    return 0


def _serving_columns(shape, T, r: dict, st) -> dict:
    """Decode predictions of one config on ``st.hardware`` at ``T`` tokens: seconds and tokens/s per
    device at the serving batch (``serving_batch``, sequences; the largest that fits for ``auto``)."""
    from ..serving import objective_values

    objective = st.objective
    v = objective_values(
        shape, T, "latency" if objective == "z" else objective, st.hardware, st.batch, st.weight_dtype, st.kv_dtype
    )
    fits = bool(v["fits"])
    value = r["z"] if objective == "z" else float(v["value"])
    return {
        "objective": objective,
        "hardware": st.hardware.name,
        "serving_batch": int(v["batch"]),
        "seconds_per_token": float(v["seconds_per_token"]),
        "tokens_per_second": float(v["tokens_per_second"]),
        "max_batch": int(v["max_batch"]),
        "fits": fits,
        "objective_value": value if (fits or objective == "z") else None,
    }


def compare_rows(specs: list[str], contexts: list[int], settings=None) -> list[dict]:
    """Cost summaries of several shape specs at each context length (tokens), with % differences from
    the first; ``z`` under ``settings`` (a :class:`cogqa.search.CostSettings`; its convention named in
    each row's ``z_convention``; memory and Z at batch ``settings.z_batch``). With ``settings.hardware``:
    each row adds ``serving_batch`` (sequences), ``seconds_per_token``, ``tokens_per_second`` (per
    device), ``max_batch``, ``fits`` and ``objective_value`` (Z, seconds/token or device-seconds/token;
    null where the batch does not fit), and ``best`` marks the lowest objective value per context."""
    from ..costs import cost_summary
    from ..family import shape_from_spec
    from ..search_inputs import as_settings

    st = as_settings(settings)
    shapes = [shape_from_spec(s) for s in specs]
    keep = ("context", "params", "params_non_embedding", "inference_flops_per_token", "inference_memory_bytes")
    out = []
    for T in contexts:
        base = None
        for spec, shape in zip(specs, shapes):
            r = cost_summary(shape, T, st.z_batch, st.weight_dtype, st.kv_dtype, st.weights, st.convention.name)
            row = {"config": spec} | {k: r[k] for k in keep}
            row |= {"kv_cache_bytes_per_token": r["kv_cache_bytes_per_token"], "z": r["z"]}
            row["z_convention"] = r["z_convention"]["name"]
            if st.hardware is not None:
                row |= _serving_columns(shape, T, r, st)
            base = base or row
            for key in ("params", "inference_flops_per_token", "inference_memory_bytes", "z"):
                row[f"{key}_vs_first_pct"] = 100.0 * (row[key] / base[key] - 1.0)
            out.append(row)
    if st.hardware is not None:
        for T in contexts:
            here = [r for r in out if r["context"] == T]
            ok = [r for r in here if r["objective_value"] is not None]
            for r in here:
                r["best"] = bool(ok) and r is min(ok, key=lambda x: x["objective_value"])
    return out


def _compare_line(r: dict, width: int, serve: bool) -> str:
    """One config of the comparison table (units in the cells)."""
    from ..units import fmt_bytes, fmt_flops, fmt_params

    line = (
        f"{r['config']:<{width}}{fmt_params(r['params']):>14}"
        f"{fmt_flops(r['inference_flops_per_token']):>16}{r['inference_flops_per_token_vs_first_pct']:>+8.1f}%"
        f"{fmt_bytes(r['inference_memory_bytes']):>13}{r['inference_memory_bytes_vs_first_pct']:>+8.1f}%"
        f"{r['z']:>11.5g}{r['z_vs_first_pct']:>+8.1f}%"
    )
    if serve:
        line += f"{1e3 * r['seconds_per_token']:>9.3g} ms{r['tokens_per_second']:>14,.0f}{r['serving_batch']:>6} seq"
        why = "" if r["fits"] else f"  infeasible: batch does not fit (max {r['max_batch']} seq)"
        line += "  *" if r["best"] else why
    return line


def cmd_compare(args: argparse.Namespace) -> int:
    """Print several configurations side by side at the given context length(s)."""
    from ..search_inputs import CostSettings
    from ..units import fmt_tokens

    require(len(args.configs) >= 2, "compare needs at least two configurations")
    contexts = _check_cost_options(args, allow_auto=True)
    st = CostSettings(
        weights=_weights(args),
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
        batch=args.batch,
        convention=convention_from_args(args),
        objective=args.objective,
        hardware=hardware_from_args(args),
    )
    rows = compare_rows(args.configs, contexts, st)
    serve = st.hardware is not None
    if args.json:
        print_json(rows)
        return 0
    width = max(len(r["config"]) for r in rows) + 2
    batch = "batch auto (Z at 1)" if st.batch == "auto" else f"batch {st.batch}"
    for T in contexts:
        print(
            f"T = {fmt_tokens(T)}; weights {args.weight_dtype}, KV cache {args.kv_dtype}, {batch}; "
            f"Z convention {rows[0]['z_convention']}; % vs the first"
        )
        if serve:
            print(objective_line(st) + "; * = best")
        head = f"{'config':<{width}}{'params':>14}{'FLOPs/token':>16}{'vs 1st':>9}{'memory':>13}{'vs 1st':>9}"
        print(head + f"{'Z':>11}{'vs 1st':>9}" + (f"{'s/token':>12}{'tokens/s/dev':>14}{'batch':>10}" if serve else ""))
        for r in (r for r in rows if r["context"] == T):
            print(_compare_line(r, width, serve))
        print()
    return 0


def register(sub) -> None:
    """Register ``cost`` and ``compare``."""
    p = sub.add_parser(
        "cost",
        help="inference/training cost of one decoder at context T",
        description="The exact cost model of a GQA decoder: parameters, FLOPs per token, memory, the paper's split "
        "and Z.",
    )
    add_shape_arguments(p)
    add_cost_options(p)
    p.add_argument("--train-tokens", metavar="D", help="also print training FLOPs and memory for D tokens (e.g. 20B)")
    p.add_argument("--train-context", default="8k", help="training context length for --train-tokens (default 8k)")
    p.set_defaults(func=cmd_cost)

    c = sub.add_parser(
        "compare",
        help="several decoders side by side",
        description="Compare configurations at given T. CONFIG is a config.json path, a paper size with optional heads "
        "(1.2B, 1.8B:8,1) or any size in parameters (2.5B:8,1, an Appendix B.1 shape).",
    )
    c.add_argument("configs", nargs="+", metavar="CONFIG")
    add_cost_options(c)
    c.add_argument(
        "--objective",
        default="z",
        help="z (default), latency or throughput: marks the best config "
        "(* in the table); latency/throughput need --hardware",
    )

    add_hardware_options(c, required=False)
    c.set_defaults(func=cmd_compare)


__all__ = ["register", "shape_from_args", "add_shape_arguments", "add_cost_options", "compare_rows"]
