"""Peak memory of `cogqa fit` on a large results table (units: MB of resident memory, wall seconds).

Builds a results table of ``--rows`` rows (default 200,000) by repeating the demo sweep's 24 runs, with
all 30 of their columns (including the wide ``loss_by_position`` JSON strings) and 1% noise on the loss,
then runs ``cogqa fit`` on it in a child process and reads the child's peak resident set size.

Usage: python benchmarks/bench_fit_memory.py [--rows N] [--form n|heads-joint]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEMO = Path(__file__).resolve().parent.parent / "cogqa" / "data" / "demo_results.csv"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--form", default="n")
    args = ap.parse_args(argv)
    demo = pd.read_csv(DEMO)
    table = pd.concat([demo] * (args.rows // len(demo) + 1)).iloc[: args.rows].copy()
    table["loss"] *= 1 + 0.01 * np.random.default_rng(0).standard_normal(len(table))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.csv"
        table.to_csv(path, index=False)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cogqa", "fit", str(path), "--form", args.form, "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"cogqa fit --form {args.form} on {args.rows:,} rows: peak RSS {peak_mb:,.0f} MB, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
