"""How many runs at a time, and how many threads each, so that a machine is never oversubscribed.

A local sweep starts ``workers`` child processes; each child's torch uses ``OMP_NUM_THREADS``
intra-op threads. With ``workers x threads > cores`` the OpenMP threads spin-wait for each
other's time slices and a run slows several-fold (the demo beside one CPU-bound process: ~33 s
to ~285 s per run). The policy here:

* tiny runs (the CPU demo): one thread per run, as many workers as cores (and no more than runs);
  tiny models gain little from intra-op threads, and single-threaded processes do not spin-wait;
* ``workers`` given: ``cores // workers`` threads per run (at least 1);
* an ``OMP_NUM_THREADS`` already in the environment is respected as the threads per run, and the
  workers shrink to ``cores // threads`` (at least 1) unless given.

Pure functions of (cores, environment, runs): :func:`thread_plan` decides, :func:`thread_env`
gives the environment variables a child needs, :func:`available_cores` reads this machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import require

#: Variables that set a child's intra-op threads (torch reads OMP_NUM_THREADS; MKL its own).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """``workers`` processes at a time (runs), each with ``threads`` intra-op threads; ``cores`` available."""

    workers: int
    threads: int
    cores: int

    def __post_init__(self):
        for name in ("workers", "threads", "cores"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be a whole number >= 1, got {value!r}")

    @property
    def oversubscribed(self) -> bool:
        """True when workers x threads exceeds the cores (only when the user asked for it)."""
        return self.workers * self.threads > self.cores


def available_cores() -> int:
    """CPU cores this process may run on (units: cores): the affinity mask where the OS has one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def env_threads(env: Mapping[str, str]) -> int | None:
    """Threads per process fixed by ``OMP_NUM_THREADS`` in ``env`` (units: threads); None when
    unset or not a positive whole number."""
    raw = str(env.get("OMP_NUM_THREADS", "")).strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


def thread_plan(
    cores: int,
    env: Mapping[str, str] | None = None,
    runs: int | None = None,
    workers: int | None = None,
    tiny: bool = False,
) -> ThreadPlan:
    """Workers and threads per run for ``runs`` runs on ``cores`` cores (see the module docstring).

    ``workers`` given by the user is kept (even if it oversubscribes: their choice); ``tiny``
    runs get one thread each and, unless given, one worker per core; otherwise the cores are
    shared out among the workers (one worker with every core by default).
    ``OMP_NUM_THREADS`` in ``env`` fixes the threads per run.
    """
    require(isinstance(cores, int) and cores >= 1, f"cores must be a whole number >= 1, got {cores!r}")
    require(
        workers is None or (isinstance(workers, int) and workers >= 1),
        f"--workers must be a positive whole number, got {workers!r}",
    )
    require(runs is None or (isinstance(runs, int) and runs >= 0), f"runs must be a whole number >= 0, got {runs!r}")
    per_run = env_threads(env or {}) or (1 if tiny else None)
    if workers is None:
        workers = max(1, cores // (per_run or cores))
        if runs:
            workers = min(workers, runs)
    threads = per_run or max(1, cores // workers)
    return ThreadPlan(workers=workers, threads=threads, cores=cores)


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment variables giving a child process ``threads`` intra-op threads ({} for None: inherit)."""
    if threads is None:
        return {}
    require(isinstance(threads, int) and threads >= 1, f"threads must be a whole number >= 1, got {threads!r}")
    return {name: str(threads) for name in THREAD_VARS}
