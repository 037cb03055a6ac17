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


def command_times(argv: list[str], repeats: int = 5, bytecode: bool = True) -> list[float]:
    """Wall times (seconds) of ``repeats`` runs of a command, each a fresh process (a cold start).

    With ``bytecode`` (the default) the runs may read and write ``__pycache__`` as an installed
    package does (``PYTHONDONTWRITEBYTECODE`` is dropped from their environment) and one untimed run
    comes first, so that no timed run compiles Python sources; without it the environment is passed
    on unchanged (with ``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` yet, every run compiles
    cogqa's sources again).
    """
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run(argv, check=True, capture_output=True, env=env)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def median_command_time(argv: list[str], repeats: int = 5, bytecode: bool = True) -> float:
    """Median wall time (seconds) of a command over ``repeats`` fresh processes (see :func:`command_times`)."""
    return statistics.median(command_times(argv, repeats, bytecode))


def load_line() -> str:
    """The machine's 1-minute load average and core count, to read timings against."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
