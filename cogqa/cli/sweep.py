"""``cogqa sweep plan|run|status|collect`` and ``cogqa demo`` (the whole recipe on the CPU preset).

Only parsing and printing here; the logic is in :mod:`cogqa.sweep`. torch is never imported in
this process by plan/status/collect; ``run`` executes every training run in a child process.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import require
from . import ConfigDefault as default
from . import given, print_json


def _add_spec_options(p: argparse.ArgumentParser, spec_required: bool = False) -> None:
    p.add_argument(
        "spec",
        nargs=None if spec_required else "?",
        metavar="SPEC",
        help="sweep spec (YAML or JSON); the flags below override its fields",
    )
    g = p.add_argument_group("spec fields (override SPEC)")
    g.add_argument("--data", help="prepared data directory (cogqa data prepare --out DIR)")
    g.add_argument(
        "--heads",
        help="head configurations: 'paper' (the 21 candidates up to (32,32)) or a list "
        "'8,1 16,4' (also 8:1,16:4 or (8,1),(16,4))",
    )
    g.add_argument("--sizes", help="sizes: Table 9 names (3M,19M,...) or sizes in parameters (50M: Appendix B.1 shape)")
    g.add_argument(
        "--tokens-per-param",
        default=default("tokens_per_param"),
        help="training tokens per non-embedding parameter (default %(default)s)",
    )
    g.add_argument("--tokens", help="a fixed training-token budget per run instead (e.g. 2e6)")
    g.add_argument("--context", help="training context in tokens (must match the data)")
    g.add_argument("--lr", help="max LR for every size (default: Table 9's per paper size)")
    g.add_argument("--seeds", help="seeds, e.g. 0,1,2 (default 0)")
    g.add_argument(
        "--batch-tokens", default=default("batch_tokens"), help="global batch in tokens (default %(default)s)"
    )
    g.add_argument(
        "--micro-batch",
        type=int,
        default=default("micro_batch"),
        help="sequences per forward pass (default %(default)s)",
    )
    g.add_argument("--max-steps", type=int, help="cap every run at this many optimiser steps")


def spec_from_args(args: argparse.Namespace):
    """The :class:`cogqa.sweep.SweepSpec` named by SPEC and the override flags."""
    from ..sweep import load_spec
    from ..units import parse_float

    over = {
        "data": args.data,
        "heads": args.heads,
        "sizes": [s.strip() for s in args.sizes.split(",") if s.strip()] if args.sizes else None,
        "tokens_per_param": given(args.tokens_per_param),
        "tokens": args.tokens,
        "context": args.context,
        "lr": parse_float(args.lr, "--lr") if args.lr is not None else None,
        "seeds": [int(s) for s in args.seeds.split(",")] if args.seeds else None,
        "batch_tokens": given(args.batch_tokens),
        "micro_batch": given(args.micro_batch),
        "max_steps": args.max_steps,
    }
    if args.seeds:
        require(
            all(s.strip().isdigit() for s in args.seeds.split(",")),
            f"--seeds: whole numbers like 0,1,2, got {args.seeds!r}",
        )
    return load_spec(args.spec if args.spec else {}, **over)


def _add_slurm_options(r: argparse.ArgumentParser) -> None:
    """The SLURM options of ``sweep run`` (used with --executor slurm)."""
    s = r.add_argument_group("SLURM (--executor slurm)")
    s.add_argument("--partition", help="SLURM partition")
    s.add_argument("--time", type=int, default=1440, help="time limit per run in minutes (default 1440)")
    s.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per run; > 1 launches torchrun (default 1)")
    s.add_argument("--nodes", type=int, default=1, help="nodes per run (default 1)")
    s.add_argument("--cpus-per-gpu", type=int, default=8, help="CPUs per GPU (default 8)")
    s.add_argument("--mem-gb", type=int, help="memory per job in GB")
    s.add_argument("--account", help="SLURM account")
    s.add_argument("--qos", help="SLURM QoS")
    s.add_argument(
        "--array", action=argparse.BooleanOptionalAction, default=True, help="submit as one job array (default on)"
    )
    s.add_argument("--array-parallelism", type=int, default=64, help="array jobs running at once (default 64)")
    s.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        help="submitit backend (default: auto; local/debug to try it here)",
    )
    s.add_argument("--no-wait", action="store_true", help="submit and return; check with cogqa sweep status")
    s.add_argument(
        "--print-sbatch",
        action="store_true",
        help="print the sbatch script and torchrun command of the first run, submit nothing",
    )


def register(subparsers) -> None:
    """Add ``sweep`` (plan, run, status, collect) and ``demo``."""
    p = subparsers.add_parser(
        "sweep", help="plan, run (local or SLURM), monitor and collect a sweep over head configurations x sizes"
    )
    sub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    sub.required = True

    pl = sub.add_parser("plan", help="print every run with parameters, tokens, training FLOPs and GPU-hours")
    _add_spec_options(pl)
    pl.add_argument(
        "--gpu-tflops",
        type=float,
        default=312.0,
        help="peak GPU throughput in TFLOP/s for GPU-hours (default 312, A100 bf16)",
    )
    pl.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for GPU-hours (default 0.4)"
    )
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(func=cmd_sweep_plan)

    r = sub.add_parser("run", help="run every unfinished run (skips done, resumes interrupted, reports failed)")
    _add_spec_options(r)
    r.add_argument("--out", help="sweep directory (default runs/<spec name>)")
    r.add_argument(
        "--executor",
        default="local",
        choices=("local", "slurm"),
        help="local child processes or SLURM via submitit (default local)",
    )
    r.add_argument("--workers", type=int, default=1, help="local: runs at a time (default 1)")
    r.add_argument(
        "--retry-failed", action="store_true", help="also re-run failed runs (default: report and skip them)"
    )
    _add_slurm_options(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_sweep_run)

    st = sub.add_parser("status", help="done / running / failed / pending runs of a sweep directory")
    st.add_argument("dir", metavar="DIR")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_sweep_status)

    c = sub.add_parser("collect", help="write DIR/results.csv and DIR/results.parquet from the finished runs")
    c.add_argument("dir", metavar="DIR")
    c.set_defaults(func=cmd_sweep_collect)

    d = subparsers.add_parser(
        "demo", help="the whole recipe on a CPU: tiny sweep on the offline corpus -> fit -> search -> report (< 15 min)"
    )
    d.add_argument(
        "--out", default="runs/demo", help="demo directory (default runs/demo); re-running finishes or skips"
    )
    d.add_argument("--workers", type=int, default=None, help="runs at a time (default: one per core, 1 thread each)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)


def cmd_sweep_plan(args: argparse.Namespace) -> int:
    """Handler of ``cogqa sweep plan``."""
    from ..sweep import plan
    from ..units import fmt_flops, fmt_params, fmt_tokens

    spec = spec_from_args(args)
    p = plan(spec, args.gpu_tflops, args.mfu)
    for w in p["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print_json(p)
        return 0
    print(
        f"sweep {spec.name!r}: {p['totals']['runs']} runs at T = {p['context']} tokens; "
        f"GPU-hours at {args.gpu_tflops:g} TFLOP/s peak x {args.mfu:g} MFU"
    )
    print(
        f"{'id':<24} {'H':>8} {'L':>3} {'d':>5} {'d_ff':>6} {'N non-emb':>14} {'N total':>14} {'tokens':>16} "
        f"{'LR':>7} {'train FLOPs':>12} {'GPU-h':>9}"
    )
    for r in p["runs"]:
        heads = f"({r['n_heads']},{r['n_kv_heads']})"
        print(
            f"{r['id']:<24} {heads:>8} {r['layers']:>3} {r['hidden_size']:>5} "
            f"{r['ffn_size']:>6} {fmt_params(r['params_non_embedding']):>14} {fmt_params(r['params_total']):>14} "
            f"{fmt_tokens(r['tokens']):>16} "
            f"{r['lr']:>7.0e} {fmt_flops(r['training_flops']):>12} {r['gpu_hours']:>9.3g}"
        )
    t = p["totals"]
    print(
        f"total: {t['runs']} runs, {fmt_tokens(t['tokens'])}, {fmt_flops(t['training_flops'])} of training, "
        f"{t['gpu_hours']:.3g} GPU-hours"
    )
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    """Handler of ``cogqa sweep run``."""
    from ..sweep import SlurmOptions, run_sweep

    spec = spec_from_args(args)
    slurm = None
    if args.executor == "slurm":
        slurm = SlurmOptions(**{name: getattr(args, name) for name in SlurmOptions.__dataclass_fields__})
    out = args.out or f"runs/{spec.name}"
    if args.print_sbatch:
        from ..sweep import first_job_sbatch

        require(slurm is not None, "--print-sbatch needs --executor slurm")
        print(first_job_sbatch(spec, out, slurm))
        return 0
    status = run_sweep(
        spec,
        out,
        executor=args.executor,
        workers=args.workers,
        retry_failed=args.retry_failed,
        slurm=slurm,
        progress=not args.no_progress,
        wait=not args.no_wait,
    )
    _print_status(status, out)
    return 0 if status["counts"]["failed"] == 0 else 1


def _print_status(status: dict, out: str) -> None:
    c = status["counts"]
    print(
        f"{out}: {status['total']} runs: {c['done']} done, {c['running']} running, {c['failed']} failed, "
        f"{c['pending']} pending"
    )
    for run_id, err in status["failed"].items():
        print(f"  failed {run_id}: {err}  (log: {out}/runs/{run_id}/log.txt; retry with --retry-failed)")


def cmd_sweep_status(args: argparse.Namespace) -> int:
    """Handler of ``cogqa sweep status``."""
    from tqdm import tqdm

    from ..sweep import sweep_status

    status = sweep_status(args.dir)
    if args.json:
        print_json(status)
        return 0
    print(
        tqdm.format_meter(
            status["counts"]["done"],
            status["total"],
            0,
            ncols=60,
            prefix="done",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs",
        )
    )
    for run_id, s in status["runs"].items():
        if s != "done":
            print(f"  {s:<8} {run_id}")
    _print_status(status, args.dir)
    return 0


def cmd_sweep_collect(args: argparse.Namespace) -> int:
    """Handler of ``cogqa sweep collect``."""
    from ..sweep import collect

    df = collect(args.dir)
    print(f"collected {len(df)} finished runs into {args.dir}/results.csv and {args.dir}/results.parquet")
    cols = ["id", "params_non_embedding", "loss", "tokens", "wall_time_s"]
    for _, r in df[cols].iterrows():
        print(
            f"  {r['id']!s:<24} N={_num(r['params_non_embedding'], ',.0f'):>12} params  loss {_num(r['loss'], '.4f')} "
            f"nats/token  {_num(r['tokens'], ',.0f')} tokens  {_num(r['wall_time_s'], '.1f')} s"
        )
    return 0


def _num(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` when a run's record lacks it."""
    try:
        return format(float(value), spec) if value is not None and value == value else "-"
    except (TypeError, ValueError):
        return "-"


def cmd_demo(args: argparse.Namespace) -> int:
    """Handler of ``cogqa demo``."""
    from ..demo import run_demo
    from ..units import fmt_params

    summary = run_demo(args.out, workers=args.workers, progress=not args.no_progress)
    best = summary.get("best") or {}
    falls = summary.get("loss_falls_with_n") or {}
    print(f"demo finished in {summary['wall_time_s']:.0f} s: {summary['runs']} runs")
    print(f"  results {summary['results']}, laws {summary['laws']}")
    print(f"  report  {summary['report']}")
    if best:
        print(
            f"  recommended at T = 128K tokens: H = ({best['n_heads']}, {best['n_kv_heads']}), "
            f"N = {fmt_params(best['params_non_embedding'])} (non-embedding), "
            f"predicted loss {best['predicted_loss']:.3f} nats/token"
        )
    if falls:
        print(
            f"  measured loss falls monotonically with N for {sum(falls.values())} of {len(falls)} head configurations"
        )
    return 0
