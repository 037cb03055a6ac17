"""``cogqa serving`` (roofline latency, throughput and memory limits on an accelerator) and ``cogqa hardware``."""

from __future__ import annotations

from ..errors import require
from . import print_json
from .options import (
    add_hardware_options,
    add_shape_arguments,
    describe_hardware,
    fmt_decimal,
    fmt_rate,
    fmt_seconds,
    hardware_from_args,
    shape_from_args,
)
from .options import describe_shape as _describe


def _parse_batch(text: str):
    if str(text).strip().lower() == "auto":
        return "auto"
    require(
        str(text).strip().isdigit() and int(text) >= 1,
        f"--batch: give a number of sequences >= 1 or auto, got {text!r}",
    )
    return int(text)


def cmd_serving(args) -> int:
    """Print the roofline serving prediction of one shape on one accelerator."""
    from ..costs import dtype_bytes
    from ..serving import PHASES, serving_summary
    from ..units import fmt_bytes, fmt_flops, fmt_tokens, parse_context, parse_contexts

    contexts = parse_contexts(args.context)
    batch = _parse_batch(args.batch)
    prompt = parse_context(args.prompt, "--prompt") if args.prompt else None
    dtype_bytes(args.weight_dtype)
    dtype_bytes(args.kv_dtype)
    shape = shape_from_args(args)
    hw = hardware_from_args(args)
    train = parse_context(args.train_context, "--train-context") if args.train_context else None
    rows = [serving_summary(shape, T, hw, batch, prompt, args.weight_dtype, args.kv_dtype, train) for T in contexts]
    if args.json:
        out = {"shape": _describe(shape), "hardware": hw.to_dict(), "rows": rows}
        print_json(out)
        return 0
    print(_describe(shape))
    print(f"hardware {describe_hardware(hw)}")
    print(
        f"weights {args.weight_dtype}, KV cache {args.kv_dtype}; roofline: each phase takes max(FLOPs / achievable "
        "FLOP/s, bytes / achievable bandwidth)"
    )
    for r in rows:
        print()
        fit = "" if r["fits"] else "  ** does NOT fit in memory **"
        print(
            f"context {fmt_tokens(r['context'])}, batch {r['batch']} sequence(s) (max {r['max_batch']} fit at this "
            f"context; weights {fmt_bytes(r['weights_bytes'])} + KV cache {fmt_bytes(r['kv_cache_bytes'])} of "
            f"{fmt_bytes(r['usable_memory_bytes'])} usable){fit}"
        )
        d = r["decode"]
        print(f"  decode step: {'phase':<10}{'FLOPs':>14}{'bytes':>13}{'compute':>11}{'memory':>11}  bound")
        for p in PHASES:
            ph = d["phases"][p]
            print(
                f"  {'':<13}{p:<10}{fmt_flops(ph['flops']):>14}{fmt_bytes(ph['bytes']):>13}"
                f"{fmt_seconds(ph['compute_seconds']):>11}{fmt_seconds(ph['memory_seconds']):>11}  {ph['bound']}"
            )
        print(
            f"  time per output token {fmt_seconds(d['seconds_per_token'])}; "
            f"{fmt_rate(d['tokens_per_second'])} per device at batch {r['batch']}"
        )
        pre = r["prefill"]
        bounds = ", ".join(f"{p} {pre['phases'][p]['bound']}-bound" for p in PHASES)
        print(
            f"  prefill of {fmt_tokens(pre['prompt_tokens'])} (batch 1): {fmt_seconds(pre['seconds'])} to first "
            f"token, {fmt_rate(pre['tokens_per_second'])} ({bounds})"
        )
        print(f"  longest context that fits at batch 1: {fmt_tokens(r['max_context_batch1'])}")
        if "training" in r:
            tr = r["training"]
            print(
                f"  training at T_train = {fmt_tokens(tr['train_context'])} (T_bar = T/2, 3x forward FLOPs, batch 1): "
                f"{fmt_rate(tr['tokens_per_second'])} per device"
            )
    print()
    print(
        "optimistic: no kernel-launch/framework overhead, no tensor parallelism, activations not counted "
        "(see docs/serving.md)"
    )
    return 0


def cmd_hardware_list(args) -> int:
    """Print the built-in profiles."""
    from ..hardware import builtin_profiles
    from ..units import fmt_bytes

    profiles = builtin_profiles()
    if args.json:
        print_json([hw.to_dict() for hw in profiles.values()])
        return 0
    print(
        f"{'name':<11}{'peak (dense)':>16}{'matmul eff.':>12}{'bandwidth':>12}{'bw eff.':>8}{'memory':>11}  description"
    )
    for hw in profiles.values():
        flag = " (some numbers unconfirmed: see show)" if hw.unconfirmed else ""
        print(
            f"{hw.name:<11}{fmt_decimal(hw.peak_flops, 'FLOP/s'):>16}{hw.matmul_efficiency:>12.3f}"
            f"{fmt_decimal(hw.memory_bandwidth, 'B/s'):>12}{hw.bandwidth_efficiency:>8.2f}"
            f"{fmt_bytes(hw.memory_bytes):>11}"
            f"  {hw.description}{flag}"
        )
    print("also: local (this machine, measured and cached; `cogqa hardware measure` re-measures) or a JSON/YAML file")
    return 0


def _print_profile(hw, json_out: bool) -> None:
    from ..hardware import efficiency_sources
    from ..units import fmt_bytes

    if json_out:
        print_json(hw.to_dict())
        return
    print(describe_hardware(hw))
    print(
        f"  peak {hw.dtype} matmul        {fmt_decimal(hw.peak_flops, 'FLOP/s')}  (achievable "
        f"{fmt_decimal(hw.matmul_flops, 'FLOP/s')})"
    )
    print(f"  attention achievable   {fmt_decimal(hw.attention_flops, 'FLOP/s')}")
    print(
        f"  memory bandwidth       {fmt_decimal(hw.memory_bandwidth, 'B/s')}  (achievable "
        f"{fmt_decimal(hw.bandwidth, 'B/s')})"
    )
    print(f"  memory                 {fmt_bytes(hw.memory_bytes)}  (usable {fmt_bytes(hw.usable_memory_bytes)})")
    if hw.gemv_efficiency_by_shape:
        rates = (f"{k}: {fmt_decimal(hw.memory_bandwidth * e, 'B/s')}" for k, e in hw.gemv_efficiency_by_shape.items())
        print("  one-row product by matrix rows x cols (elements): " + ", ".join(rates))
    if hw.attention_efficiency_by_group:
        rates = (
            f"{g}: {fmt_decimal(float(hw.attention_bandwidth_at(g)), 'B/s')}" for g in hw.attention_efficiency_by_group
        )
        print("  decode attention KV read by group n_h/n_kv: " + ", ".join(rates))
    for key, text in hw.sources.items():
        print(f"  source of {key}: {text}")
    if hw.unconfirmed:
        print(f"  unconfirmed: {hw.unconfirmed}")
    if hw.measured:
        print("  measured: " + ", ".join(_measured_item(k, v) for k, v in hw.measured.items()))
    if hw.name != "local":
        for key, text in efficiency_sources().items():
            print(f"  default {key}: {text}")


def _measured_item(key: str, value) -> str:
    """One ``key=value`` of a profile's measurements, with its unit: rates in B/s, the time as UTC."""
    if key.endswith("bandwidth") and isinstance(value, (int, float)):
        return f"{key}={fmt_decimal(value, 'B/s')}"
    if key == "time_unix" and isinstance(value, (int, float)):
        import datetime

        return "measured at " + datetime.datetime.fromtimestamp(value, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
    return f"{key}={value}"


def cmd_hardware_show(args) -> int:
    """Print one profile with its sources."""
    from ..hardware import get_hardware

    _print_profile(get_hardware(args.profile), args.json)
    return 0


def cmd_hardware_measure(args) -> int:
    """Measure this machine again and update the cached ``local`` profile."""
    from ..hardware import local_cache_path, local_profile

    hw = local_profile(device=args.device, dtype=args.dtype, remeasure=True)
    _print_profile(hw, args.json)
    if not args.json:
        print(f"cached in {local_cache_path(args.device, args.dtype)}")
    return 0


def register(sub) -> None:
    """Register ``serving`` and ``hardware``."""

    p = sub.add_parser(
        "serving",
        help="roofline latency per token, tokens/s per device, max batch and context on an accelerator",
        description="Predict decode and prefill speed of one decoder on an accelerator with a roofline model "
        "(max of compute and memory time per phase) on the cost model's exact FLOP and byte counts.",
    )
    add_shape_arguments(p)
    add_hardware_options(p)
    p.add_argument(
        "--context", default="8k", help="context length(s) T in tokens: 128k or a list 8k,32k,128k (default 8k)"
    )
    p.add_argument("--batch", default="1", help="concurrent sequences, or auto = the most that fit memory (default 1)")
    p.add_argument("--prompt", default=None, help="prefill length in tokens (default: the context)")
    p.add_argument("--train-context", default=None, help="also predict training tokens/s at this context (T_bar = T/2)")
    p.add_argument("--weight-dtype", default="bf16", help="fp32, bf16, fp16, fp8, int8, int4 (default bf16)")
    p.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (default bf16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_serving)

    h = sub.add_parser("hardware", help="accelerator profiles: list, show, measure this machine")
    hs = h.add_subparsers(dest="hardware_command", metavar="HARDWARE")
    hs.required = True
    q = hs.add_parser("list", help="the built-in datasheet profiles")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_hardware_list)
    q = hs.add_parser("show", help="one profile with the source of every number")
    q.add_argument("profile", metavar="NAME|FILE|local")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_hardware_show)
    q = hs.add_parser("measure", help="measure this machine (matmul FLOP/s, copy bandwidth) and cache it as 'local'")
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    q.add_argument("--dtype", default=None, help="matmul dtype (default: bf16 on CUDA, fp32 on CPU)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_hardware_measure)
