"""A run server: one process per local sweep worker that imports torch and the trainer once, then forks one process
per run it is sent (Linux).

Each run used to be a new interpreter (``python -m cogqa.sweep run-one RUN_DIR``) that spent ~5-6 s of a 2-core
machine importing torch, torch._dynamo and cogqa before its first step; the CPU demo's 24 runs on 2 workers lost
about a minute to it. A forked run is the same ``run-one`` code in its own process, with its own lock, log, exit
status and environment; it starts in well under a second.

The protocol is one JSON line each way per run, over the server's stdin and stdout: the sweep sends
``{"run_dir": ..., "env": {...}}``, the server forks, waits for that process and answers ``{"exit": status}``
(negative: killed by that signal, as :mod:`subprocess` reports it). The server says ``{"ready": true}`` once it has
imported :data:`PRELOAD`. It ignores Ctrl-C (the run gets it, as a run in a new interpreter would, and stops as
``run-one`` does), dies with the sweep (``PR_SET_PDEATHSIG``), and every run dies with the server the same way.
Plain ``os.fork`` in a process that only imported modules: unlike multiprocessing's fork server, nothing re-imports
the caller's main script in the run's process.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

#: What the server imports before it forks a process per run (module names): torch (~3 s here), torch._dynamo
#: (~2.5 s; the trainer's deterministic mode and optimiser import it), the trainer and the evaluation.
PRELOAD = ("torch", "torch._dynamo", "torch.optim", "cogqa.train", "cogqa.evaluate", "cogqa.sweep.rundir")
#: Seconds a run gets to stop on its own after the sweep is interrupted (Ctrl-C reaches both) before it is killed.
INTERRUPT_GRACE_S = 10.0


@functools.cache
def _libc_prctl():
    """libc's ``prctl``, or None where there is none; resolved once, in the parent (a child between fork and exec
    must not import or load libraries: another thread of the parent may have held their locks at the fork)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def pdeathsig() -> None:  # pragma: no cover - runs in a child
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``); a no-op where that fails.
    Call :func:`die_with_parent_hook` in the parent for the ``preexec_fn`` of a child it starts."""
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(1, signal.SIGKILL)


def die_with_parent_hook():
    """A ``preexec_fn`` that runs :func:`pdeathsig` in the child, with libc resolved here, in the parent."""
    _libc_prctl()
    return pdeathsig


def can_fork_runs() -> bool:
    """Whether runs can be forked from a run server here: Linux (fork, and ``PR_SET_PDEATHSIG`` so that a run dies
    with its sweep); elsewhere each run is a new interpreter."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class RunServer:
    """The sweep's side of one run server (started on the first :meth:`run`, stopped by :meth:`close`)."""

    def __init__(self, env: dict[str, str] | None = None, python: str | None = None):
        self.env = dict(os.environ if env is None else env)
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.broken = False

    def _start(self) -> bool:
        """Start the server and wait until it has imported :data:`PRELOAD`; False when it could not."""
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "cogqa.sweep", "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
                text=True,
                preexec_fn=die_with_parent_hook(),
            )
            ready = self.proc.stdout.readline()
            if json.loads(ready or "{}").get("ready") is True:
                return True
        except (OSError, ValueError):
            pass
        self.close()
        return False

    def run(self, run_dir: str | Path, env: dict[str, str]) -> int | None:
        """Exit status of ``run-one`` for ``run_dir`` in a process forked by the server with ``env`` as its
        environment (output appended to the run's ``log.txt``; negative: killed by that signal), or None when the
        server cannot be used (it failed to start or to take the request): the caller then starts an interpreter."""
        if self.broken or (self.proc is None and not self._start()):
            self.broken = True
            return None
        try:
            self.proc.stdin.write(json.dumps({"run_dir": str(run_dir), "env": env}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            self.close()
            self.broken = True
            return None
        try:
            answer = self.proc.stdout.readline()
        except BaseException:  # Ctrl-C reached the run too (same process group): let it stop on its own first
            select.select([self.proc.stdout], [], [], INTERRUPT_GRACE_S)  # its answer, or the grace period
            self.close()  # the run dies with the server if it has not stopped
            raise
        try:
            return int(json.loads(answer)["exit"])
        except (ValueError, KeyError, TypeError):  # no answer: the server died during the run (killed, out of
            self.close()  # memory), and the run with it; or it answered nonsense: stop using it
            self.broken = True
            return -signal.SIGKILL

    def close(self) -> None:
        """Stop the server (its runs die with it); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve() -> int:  # pragma: no cover - the server process (exercised through the sweep tests)
    """The server's loop (``python -m cogqa.sweep serve``): import :data:`PRELOAD`, say ready, then fork and wait for
    one run per request line until stdin closes; returns 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle, and the sweep's
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    answers = sys.stdout
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _forked_run(request["run_dir"], request["env"])
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()
    return 0


def _forked_run(run_dir: str, env: dict[str, str]) -> int:  # pragma: no cover - the forked run
    """What ``python -m cogqa.sweep run-one RUN_DIR`` does, in a process forked by :func:`serve`: ``env`` as the
    environment, stdin from /dev/null, stdout and stderr appended to the run's ``log.txt``; returns its exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pdeathsig()
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(Path(__file__).with_name("__main__.py")), "run-one", str(run_dir)]  # as an interpreter has it
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(Path(run_dir) / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered into the log, as PYTHONUNBUFFERED
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch  # imported by the server under its own environment: set this run's intra-op threads

        torch.set_num_threads(int(threads))
    try:
        from .__main__ import _child_main

        code = _child_main(["run-one", str(run_dir)])
    except KeyboardInterrupt:  # Ctrl-C before run-one could catch it: interrupted, as run-one reports it
        code = 130
    except BaseException:  # noqa: BLE001 - anything else before run-one started: in the log, then a failure
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code
