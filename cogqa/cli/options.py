"""Option groups shared by several commands (model shape, hardware profile, objective) and the
formatters of their values. The command modules import from here, never from each other."""

from __future__ import annotations

import argparse

from ..errors import require


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The ways to name one shape: --hf-config, --size (+ --heads/--kv-heads), or explicit sizes."""
    g = parser.add_argument_group("model shape (one of --hf-config, --size, or explicit --layers ...)")
    g.add_argument(
        "--hf-config",
        metavar="PATH",
        help="a Hugging Face config.json (or its directory): llama, mistral, qwen2, qwen3",
    )
    g.add_argument(
        "--size",
        metavar="SIZE",
        help="a paper size (3M ... 1.2B, 1.8B ... 64B) or any size in parameters (2.5B: Appendix B.1 shape)",
    )
    g.add_argument("--layers", type=int, help="number of layers L")
    g.add_argument("--hidden", type=int, help="hidden size d")
    g.add_argument("--ffn", type=int, help="FFN size d_ff (default int(8d/3))")
    g.add_argument("--heads", type=int, help="query heads n_h (with --size: overrides the MHA default)")
    g.add_argument("--kv-heads", type=int, help="KV heads n_kv (default: n_h)")
    g.add_argument("--head-dim", type=int, default=None, help="head size d_h (default 64)")
    g.add_argument("--vocab", type=int, default=None, help="vocabulary size V (default 50304)")
    g.add_argument("--untied", action="store_true", help="untied input/output embeddings (explicit shapes only)")


def shape_from_args(args: argparse.Namespace):
    """The shape named by :func:`add_shape_arguments` options (exactly one way must be used)."""
    from ..family import shape_from_spec
    from ..shapes import ModelShape, paper_ffn_size, shape_from_hf_config

    explicit = any(getattr(args, k) is not None for k in ("layers", "hidden", "ffn"))
    ways = [args.hf_config is not None, args.size is not None, explicit]
    require(
        sum(ways) == 1, "name the model once: --hf-config PATH, --size 470M, or --layers/--hidden/--heads/--kv-heads"
    )
    if not explicit:
        given = [
            flag
            for flag, value in (
                ("--head-dim", args.head_dim),
                ("--vocab", args.vocab),
                ("--untied", args.untied or None),
            )
            if value is not None
        ]
        source = "--hf-config" if args.hf_config is not None else "--size"
        require(
            not given,
            f"{'/'.join(given)} cannot modify {source} (its shape fixes them); edit the config or give the shape "
            "explicitly with --layers/--hidden/--heads",
        )
    if args.hf_config is not None:
        require(
            args.heads is None and args.kv_heads is None,
            "--heads/--kv-heads cannot modify --hf-config; edit the config or use explicit sizes",
        )
        return shape_from_hf_config(args.hf_config)
    if args.size is not None:
        spec = args.size
        if args.heads is not None or args.kv_heads is not None:
            require(":" not in spec, "--size: give heads either as 470M:8,1 or with --heads/--kv-heads, not both")
            require(args.heads is not None, "--kv-heads needs --heads with --size")
            spec = f"{spec}:{args.heads},{args.kv_heads if args.kv_heads is not None else args.heads}"
        return shape_from_spec(spec)
    for name in ("layers", "hidden", "heads"):
        require(getattr(args, name) is not None, f"--{name} is required with explicit sizes")
    n_kv = args.kv_heads if args.kv_heads is not None else args.heads
    for name, value in (
        ("--layers", args.layers),
        ("--hidden", args.hidden),
        ("--heads", args.heads),
        ("--kv-heads", n_kv),
    ):
        require(value > 0, f"{name} must be positive, got {value}")
    return ModelShape(
        layers=args.layers,
        hidden_size=args.hidden,
        ffn_size=args.ffn if args.ffn is not None else paper_ffn_size(args.hidden),
        n_heads=args.heads,
        n_kv_heads=n_kv,
        head_dim=args.head_dim if args.head_dim is not None else 64,
        vocab_size=args.vocab if args.vocab is not None else 50304,
        tie_embeddings=not args.untied,
        name="explicit",
    )


def describe_shape(shape) -> str:
    """One line naming a shape (an exact ModelShape or an Appendix B.1 real-valued one)."""
    if hasattr(shape, "describe"):
        return shape.describe()
    return (
        f"Appendix B.1 real-valued shape: L={float(shape.layers):.2f} d={float(shape.hidden_size):.1f} "
        f"H=({float(shape.n_heads):.3g},{float(shape.n_kv_heads):.3g}) d_h={shape.head_dim} V={shape.vocab_size}"
    )


def fmt_seconds(s: float) -> str:
    """Seconds with a readable unit: ``812 us``, ``4.37 ms``, ``10.2 s``."""
    from ..units import _three_digits

    s = float(s)
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if s >= scale:
            return f"{_three_digits(s / scale)} {unit}"
    return f"{_three_digits(s / 1e-9)} ns"


def fmt_decimal(x: float, unit: str) -> str:
    """A rate in decimal units: ``989 TFLOP/s``, ``3.35 TB/s``."""
    from ..units import _three_digits

    x = float(x)
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{_three_digits(x / scale)} {prefix}{unit}"
    return f"{_three_digits(x)} {unit}"


def fmt_rate(tokens_per_s: float) -> str:
    """Tokens per second with thousands separators: ``12,921 tokens/s``."""
    t = float(tokens_per_s)
    return f"{t:,.0f} tokens/s" if t >= 100 else f"{t:.3g} tokens/s"


def describe_hardware(hw) -> str:
    """One line: name, peaks, efficiencies and capacity of a profile."""
    from ..units import fmt_bytes

    return (
        f"{hw.name} ({hw.description or 'user profile'}): {fmt_decimal(hw.peak_flops, 'FLOP/s')} peak {hw.dtype} "
        f"x {hw.matmul_efficiency:.3g} matmul / {hw.attention_efficiency:.3g} attention, "
        f"{fmt_decimal(hw.memory_bandwidth, 'B/s')} x {hw.bandwidth_efficiency:.3g}, "
        f"{fmt_bytes(hw.memory_bytes)} x {hw.memory_usable_fraction:.3g} usable"
        + (
            ""
            if hw.attention_bandwidth_efficiency is None
            else f", decode attention streams KV x {hw.attention_bandwidth_efficiency:.3g}"
        )
        + (f", {hw.kernel_overhead_seconds * 1e6:.3g} us per kernel" if hw.kernel_overhead_seconds else "")
        + ("" if hw.fused_step_seconds is None else f", {hw.fused_step_seconds * 1e6:.3g} us per fused CPU decode step")
    )


def add_hardware_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--hardware and the efficiency overrides (``required=False`` for commands where it is optional)."""
    p.add_argument(
        "--hardware",
        required=required,
        default=None,
        metavar="NAME|FILE",
        help="a profile name (cogqa hardware list), local (this machine, measured), or a JSON/YAML file",
    )
    p.add_argument("--matmul-efficiency", type=float, default=None, help="achievable / peak FLOP/s of weight matmuls")
    p.add_argument("--attention-efficiency", type=float, default=None, help="achievable / peak FLOP/s of attention")
    p.add_argument("--bandwidth-efficiency", type=float, default=None, help="achievable / peak memory bandwidth")
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=None,
        help="fraction of device memory for weights + KV cache (default 0.9)",
    )


def hardware_from_args(args):
    """The profile named by --hardware with the efficiency overrides applied (None without --hardware)."""
    from ..hardware import get_hardware

    if args.hardware is None:
        return None
    return get_hardware(args.hardware).with_overrides(
        matmul_efficiency=args.matmul_efficiency,
        attention_efficiency=args.attention_efficiency,
        bandwidth_efficiency=args.bandwidth_efficiency,
        memory_usable_fraction=args.memory_fraction,
    )


def objective_line(settings) -> str:
    """One line naming the objective, the hardware and the serving batch of a search or table."""
    what = {
        "z": "minimise Z (the paper's cost)",
        "latency": "minimise decode latency (seconds per output token)",
        "throughput": "maximise decode throughput (tokens/s per device)",
    }[settings.objective]
    hw = settings.hardware
    batch = "the largest batch that fits" if settings.batch == "auto" else f"batch {settings.batch} sequences"
    return (
        f"objective: {what}; hardware {hw.name} (roofline, {batch}, weights {settings.weight_dtype}, "
        f"KV {settings.kv_dtype}; see docs/serving.md)"
    )
