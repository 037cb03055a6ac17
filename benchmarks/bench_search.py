"""Benchmark of the search: one ``search`` query and the full 8x5 Table 4 grid (milliseconds),
and the ``cogqa search`` cold start vs ``python -c "import torch"``.

Run: MPLBACKEND=Agg .venv/bin/python benchmarks/bench_search.py
"""

from __future__ import annotations

import subprocess
import sys
import time

from cogqa.laws import load_laws
from cogqa.search import PAPER_TABLE4, PAPER_TABLE4_CONTEXTS, cost_optimal_table, search


def best_time(fn, repeats: int = 5) -> float:
    """Best wall time (seconds) of ``fn()`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_command(argv: list[str], repeats: int = 5) -> float:
    """Best wall time (seconds) of a command."""
    return best_time(lambda: subprocess.run(argv, check=True, capture_output=True), repeats)


def main() -> None:
    """Print the query and table times side by side, then the cold-start comparison."""
    laws = load_laws("default")  # loaded once: the timings are the search itself
    t_query = best_time(lambda: search(131072, 2.615, laws))
    t_table = best_time(lambda: cost_optimal_table(list(PAPER_TABLE4), PAPER_TABLE4_CONTEXTS, laws), repeats=3)
    print(
        f"one search query (T=128K, L*=2.615, 21 H): {t_query * 1e3:.1f} ms | "
        f"full 8x5 Table 4 grid (40 searches): {t_table * 1e3:.1f} ms"
    )
    cli = time_command(
        [sys.executable, "-m", "cogqa", "search", "--context", "128k", "--target-loss", "2.615", "--json"]
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cogqa.cli import main; main(['search', '--context', '128k', "
            "'--target-loss', '2.615', '--json']); print('torch' in sys.modules, file=sys.stderr)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    torch_import = time_command([sys.executable, "-c", "import torch"])
    print(
        f"cold start: `cogqa search --context 128k --target-loss 2.615 --json` {cli * 1e3:.0f} ms "
        f"(torch imported: {probe.stderr.strip()}) | `python -c 'import torch'` {torch_import * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
