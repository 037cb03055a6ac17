"""``cogqa report SWEEP_DIR|LAWS_FILE``: Markdown report with PNG figures (logic in :mod:`cogqa.report`)."""

from __future__ import annotations

import argparse

from ..errors import require


def register(subparsers) -> None:
    """Add ``report``."""
    p = subparsers.add_parser(
        "report",
        help="Markdown + PNG report of a sweep directory or a laws file (fits, cost plots, table, recommendation)",
    )
    p.add_argument(
        "source",
        metavar="SWEEP_DIR|LAWS_FILE",
        help="a sweep directory (results.csv), a laws JSON file, or a shipped set (default, demo)",
    )
    p.add_argument(
        "--context", default="128k", help="context length T of the cost plots and recommendation (default 128k)"
    )
    p.add_argument("--target-loss", help="target loss L* in nats/token (default: middle of the laws' loss range)")
    p.add_argument("--laws", help="use this laws file instead of fitting the sweep's results")
    p.add_argument(
        "--baseline",
        help="baseline for savings, as cogqa search takes it: llama3, a config.json, or a size with heads like "
        "1.2B:32,8 (default llama3)",
    )
    p.add_argument("--out", help="output directory (default SWEEP_DIR/report or ./report)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier cogqa report wrote it")
    p.add_argument(
        "--objective",
        default="z",
        help="z (default), latency or throughput: ranks the table and the "
        "recommendation on --hardware (roofline, docs/serving.md)",
    )
    p.add_argument("--batch", default="1", help="serving batch for --objective: sequences or auto (default 1)")
    from .options import add_hardware_options

    add_hardware_options(p, required=False)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Handler of ``cogqa report``."""
    from pathlib import Path

    from ..files import check_output_dir, write_output_dir
    from ..report import build_report
    from ..units import parse_context, parse_float

    source = Path(args.source)
    out = Path(args.out) if args.out is not None else (source / "report" if source.is_dir() else Path("report"))
    check_output_dir(out, "report", args.overwrite, legacy_ok=_old_report)  # before any work
    if source.is_dir() and not (source / "results.csv").is_file() and (source / "spec.json").is_file():
        from ..sweep import collect

        collect(source)  # a sweep directory not collected yet: collect it first (report never imports sweep)

    from ..search import CostSettings
    from .options import hardware_from_args

    batch = str(args.batch).strip().lower()
    require(batch == "auto" or batch.isdigit(), f"--batch: give a number of sequences >= 1 or auto, got {args.batch!r}")
    settings = CostSettings(
        batch=batch if batch == "auto" else int(batch), objective=args.objective, hardware=hardware_from_args(args)
    )
    build = lambda tmp: build_report(  # noqa: E731
        args.source,
        out=tmp,
        context=parse_context(args.context, "--context"),
        target_loss=parse_float(args.target_loss, "--target-loss") if args.target_loss else None,
        laws=args.laws,
        baseline=args.baseline,
        settings=settings,
    )
    write_output_dir(out, "report", build, args.overwrite, legacy_ok=_old_report)
    print(f"wrote {out / 'report.md'} (figures alongside)")
    return 0


def _old_report(path) -> bool:
    """A report directory of a cogqa from before output markers: report.md with only .md/.png/.json files."""
    names = [p for p in path.iterdir()]
    return any(p.name == "report.md" for p in names) and all(
        p.is_file() and p.suffix in (".md", ".png", ".json") for p in names
    )
