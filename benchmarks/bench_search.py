"""Benchmark of the search against issue 15's goals: one ``search`` query (<= 5 ms), the 8x5 Table 4
grid in-process (<= 100 ms), the ``cogqa search`` cold start (<= 300 ms, median of 5 fresh processes
reading compiled bytecode, as an installed package does: see ``timing.command_times``; where
``PYTHONDONTWRITEBYTECODE=1`` is set and no ``__pycache__`` exists yet, every run compiles cogqa's
sources, ~150 ms more here) and ``python -m cogqa --help``; also which heavy modules the search path
imports (none is the goal).

Run: MPLBACKEND=Agg .venv/bin/python benchmarks/bench_search.py
"""

from __future__ import annotations

import subprocess
import sys

from timing import best_time, load_line, median_command_time

from cogqa.laws import load_laws
from cogqa.search import PAPER_TABLE4, PAPER_TABLE4_CONTEXTS, cost_optimal_table, search

SEARCH = ["search", "--context", "128k", "--target-loss", "2.6"]
HEAVY = ("pandas", "matplotlib", "scipy", "torch")


def heavy_imports() -> str:
    """The heavy modules a ``cogqa search`` run imports (comma-separated, or ``none``)."""
    code = (
        "import sys, io, contextlib; from cogqa.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()): main({SEARCH!r})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    """Print each measured time beside its goal."""
    laws = load_laws("default")  # loaded once: the timings are the search itself
    t_query = best_time(lambda: search(131072, 2.615, laws), repeats=20)
    t_table = best_time(lambda: cost_optimal_table(list(PAPER_TABLE4), PAPER_TABLE4_CONTEXTS, laws), repeats=5)
    cold = median_command_time([sys.executable, "-m", "cogqa", *SEARCH])
    help_ = median_command_time([sys.executable, "-m", "cogqa", "--help"])
    print(load_line())
    rows = [
        ("one search query (T=128K, L*=2.615, 21 H), best of 20", t_query, 5),
        ("8x5 Table 4 grid in-process, best of 5", t_table, 100),
        ("cold start `cogqa search --context 128k --target-loss 2.6`, median of 5", cold, 300),
        ("cold start `python -m cogqa --help`, median of 5", help_, None),
    ]
    for what, seconds, goal in rows:
        target = f"goal <= {goal} ms" if goal else "no goal (keep fast)"
        print(f"  {what:<76}{seconds * 1e3:>8.1f} ms   {target}")
    print(f"  heavy modules imported by `cogqa search`: {heavy_imports()} (goal: none of {', '.join(HEAVY)})")


if __name__ == "__main__":
    main()
