"""``cogqa plot breakdown``: where FLOPs and memory go as the context grows (Figures 7 and 8)."""

from __future__ import annotations

import argparse

from .options import add_shape_arguments, shape_from_args


def cmd_plot_breakdown(args: argparse.Namespace) -> int:
    """Write the breakdown PNG and print its path."""
    from ..costs import dtype_bytes
    from ..files import check_figure_path, check_output_file
    from ..plots import plot_breakdown
    from ..units import parse_context

    check_figure_path(args.out, "--out")
    check_output_file(args.out, args.overwrite, "--out")
    max_context = parse_context(args.max_context, "--max-context")
    dtype_bytes(args.weight_dtype)
    dtype_bytes(args.kv_dtype)
    shape = shape_from_args(args)
    title = getattr(shape, "name", "") or ""
    path = plot_breakdown(
        shape,
        args.out,
        max_context,
        title=f"{title} cost breakdown".strip(),
        weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype,
    )
    print(f"wrote {path}")
    return 0


def register(sub) -> None:
    """Register the ``plot`` command group."""
    p = sub.add_parser("plot", help="figures of the cost model")
    psub = p.add_subparsers(dest="plot_command", metavar="PLOT")
    psub.required = True
    b = psub.add_parser("breakdown", help="share of FLOPs and memory per component vs context length (PNG)")
    add_shape_arguments(b)
    b.add_argument("--max-context", default="128k", help="largest context length on the x axis (default 128k)")
    b.add_argument("--weight-dtype", default="bf16", help="weights dtype (default bf16)")
    b.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (default bf16)")
    b.add_argument(
        "--out", default="breakdown.png", help="output figure: .png, .pdf, .svg, ... (default breakdown.png)"
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    b.set_defaults(func=cmd_plot_breakdown)
