"""``cogqa fit``: fit scaling laws to a results table and write the laws file that ``search`` reads."""

from __future__ import annotations

import argparse
import sys

from ..errors import CogqaError, require
from . import print_json

FORM_HELP = (
    "n: L = (a/N)^b + E per (n_heads, n_kv_heads) [paper Eq. 7]; heads-joint: one law across head configurations, "
    "L = (a/N)^b + E + A(n_h^-g - n_ref^-g) + B(n_kv^-k - n_ref^-k); chinchilla: L = E + A/N^alpha + B/D^beta; "
    "heads: L = a n_h^b + c per size"
)

#: The options naming a results column other than the default one: (flag, help).
COLUMN_OPTIONS = (
    ("--n-column", "column holding N (parameters), instead of params_non_embedding"),
    ("--tokens-column", "column holding D (training tokens), instead of tokens"),
    ("--compute-column", "column holding training FLOPs C; tokens = C / (6 N) when there is no tokens column"),
    ("--loss-column", "column holding the loss (nats/token), instead of loss"),
    ("--size-column", "form heads: column naming the model size of each row"),
)


def register(subparsers) -> None:
    """Add the ``fit`` command."""
    p = subparsers.add_parser(
        "fit",
        help="fit scaling laws (Eq. 7, Chinchilla, head law) to a table of training results",
        description="Fit scaling laws to RESULTS (CSV, JSONL or Parquet; columns n_heads, n_kv_heads, "
        "params_non_embedding, loss, optional tokens, context, size, compute). "
        "Minimises the summed Huber(1e-3) of log-loss "
        "residuals with L-BFGS-B "
        "from a grid of starting points (Chinchilla approach 3). Rows are numbered from 1 after the header.",
    )
    p.add_argument("results", metavar="RESULTS", help="results table: .csv, .jsonl or .parquet")
    p.add_argument("--form", default="n", help=FORM_HELP + " (default n)")
    p.add_argument(
        "--shared-E",
        dest="shared_E",
        action="store_true",
        help="form n: one irreducible loss E shared by every H (joint fit)",
    )
    p.add_argument(
        "--bootstrap", default="0", metavar="K", help="resamples for 95%% bootstrap intervals (default 0: none)"
    )
    p.add_argument("--seed", default="0", help="seed of the bootstrap resampling (default 0)")
    p.add_argument(
        "--workers",
        metavar="P",
        help="processes refitting the bootstrap resamples (default: one per core from 16 resamples up; "
        "the result does not depend on it)",
    )
    p.add_argument("--context", metavar="T", help="fit only rows trained at context T (tokens: 1024, 8k)")
    p.add_argument(
        "--grid",
        metavar="full|K",
        help="starting points: 'full' grid, or the K grid points with the lowest initial objective (default 32)",
    )
    p.add_argument(
        "--drop-highest-loss", default="0", metavar="K", help="leave out the K highest-loss rows first (default 0)"
    )
    for flag, what in COLUMN_OPTIONS:
        p.add_argument(flag, metavar="NAME", help=what)
    p.add_argument("--out", metavar="FILE.json", help="write the laws file here (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out laws file (one cogqa wrote)")
    p.add_argument("--source", help="text for the laws file's 'source' field (default: the command line)")
    p.add_argument("--json", action="store_true", help="print the laws file (JSON) instead of the table")
    p.set_defaults(func=cmd_fit)


def _whole(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise CogqaError(f"{name}: expected a whole number, got {text!r}") from None
    require(low <= value <= high, f"{name}: expected a whole number in {low}..{high}, got {value}")
    return value


def _parse_grid(text: str | None):
    if text is None:
        return None
    if text.strip().lower() == "full":
        return "full"
    return _whole(text, "--grid", 1, 100000)


def cmd_fit(args: argparse.Namespace) -> int:
    """Read, fit, print (table or JSON) and optionally write the laws file."""
    from ..fitting import FORMS, fit_results, read_results, write_laws
    from ..units import parse_context

    form = str(args.form).strip().lower()
    require(form in FORMS, f"--form: unknown form {args.form!r}; choose one of {', '.join(FORMS)}")
    bootstrap = _whole(args.bootstrap, "--bootstrap", 0, 100000)
    seed = _whole(args.seed, "--seed", 0, 2**63 - 1)
    grid = _parse_grid(args.grid)
    drop = _whole(args.drop_highest_loss, "--drop-highest-loss", 0, 10**9)
    workers = None if args.workers is None else _whole(args.workers, "--workers", 1, 4096)
    context = parse_context(args.context) if args.context is not None else None
    columns = {
        canon: name
        for canon, name in (
            ("params_non_embedding", args.n_column),
            ("tokens", args.tokens_column),
            ("compute", args.compute_column),
            ("loss", args.loss_column),
            ("size", args.size_column),
        )
        if name is not None
    }
    if args.out:  # refused before the fit, not after minutes of it
        from ..files import check_output_file, json_file_with

        check_output_file(args.out, args.overwrite, "--out", ours=json_file_with("form", "laws"))
    df = read_results(args.results, columns=columns, form=form)
    report = fit_results(
        df,
        form=form,
        shared_E=args.shared_E,
        bootstrap=bootstrap,
        seed=seed,
        context=context,
        grid=grid,
        drop_highest_loss=drop,
        workers=workers,
    )
    source = (
        args.source
        if args.source is not None
        else (
            f"fitted by cogqa fit {args.results} --form {form}"
            + (" --shared-E" if args.shared_E else "")
            + (f" --context {context}" if context else "")
        )
    )
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.out:
        path = write_laws(report, args.out, source)
        print(f"wrote {path} ({len(report.laws)} laws, form {report.to_laws_dict(source)['form']})", file=sys.stderr)
    if args.json:
        print_json(report.to_laws_dict(source))
    else:
        print(format_report(report))
    return 0


def _header(form: str) -> list[tuple[str, str]]:
    """(key, printed header) of the coefficient columns; headers carry the units."""
    if form == "n":
        return [("a", "a (params)"), ("b", "b (exponent)"), ("E", "E (nats/tok)")]
    if form == "heads-joint":
        return [
            ("a", "a (params)"),
            ("b", "b (exponent)"),
            ("E", "E at n_ref (nats/tok)"),
            ("A", "A (nats/tok)"),
            ("g", "g (exp.)"),
            ("B", "B (nats/tok)"),
            ("k", "k (exp.)"),
        ]
    if form == "chinchilla":
        return [
            ("E", "E (nats/tok)"),
            ("A", "A (nats/tok*N^alpha)"),
            ("alpha", "alpha (exp.)"),
            ("B", "B (nats/tok*D^beta)"),
            ("beta", "beta (exp.)"),
        ]
    return [("a", "a (nats/tok)"), ("b", "b (exponent)"), ("c", "c (nats/tok)")]


def _num(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.4e}"


def format_report(report) -> str:
    """The fit as a text table: one row per law with units in the headers, then 95% intervals."""
    from ..fitting import group_label

    cols = _header(report.form)
    head = ["group"] + [h for _, h in cols] + ["R2 (loss)", "points"]
    rows = []
    for law in report.laws:
        row = [group_label(law)] + [_num(law[k]) for k, _ in cols] + [_num(law.get("r2")), str(law["n_points"])]
        if law.get("at_bound"):
            row[0] += " [" + ",".join(law["at_bound"]) + " at bound]"
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = [
        f"{report.form} fit"
        + (" (shared E)" if report.shared_E else "")
        + ": loss in nats/token, N in parameters"
        + (", D in tokens" if report.form == "chinchilla" else "")
    ]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if report.bootstrap:
        lines.append(f"95% bootstrap intervals ({report.bootstrap} resamples):")
        for law in report.laws:
            ci = law.get("ci") or {}
            text = ", ".join(f"{h} [{_num(ci[k][0])}, {_num(ci[k][1])}]" for k, h in cols if k in ci)
            lines.append(f"  {group_label(law)}: {text}")
    return "\n".join(lines)
