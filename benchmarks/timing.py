"""Timing helpers shared by the benchmarks (not a benchmark itself: `make bench` runs bench_*.py only)."""

from __future__ import annotations

import os
import statistics
import subprocess
import time


def best_time(fn, repeats: int = 5) -> float:
    """Best wall time (seconds) of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def command_times(argv: list[str], repeats: int = 5) -> list[float]:
    """Wall times (seconds) of ``repeats`` runs of a command (each a fresh process: a cold start)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def median_command_time(argv: list[str], repeats: int = 5) -> float:
    """Median wall time (seconds) of a command over ``repeats`` fresh processes."""
    return statistics.median(command_times(argv, repeats))


def load_line() -> str:
    """The machine's 1-minute load average and core count, to read timings against."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
