"""Executors: run the unfinished runs of a sweep in child processes, here or on SLURM (submitit).

Each run is one child process (``python -m cogqa.sweep run-one RUN_DIR``, under ``torchrun``
when it uses several GPUs). Locally on Linux each worker forks its runs from a run server that
imported torch and the trainer once (:mod:`cogqa.sweep.runserver`): the same ``run-one`` code in its
own process, with its own lock, log and exit status, without ~5-6 s of imports per run.
Locally the child dies with its parent (``PR_SET_PDEATHSIG``); on SLURM a preempted or timed-out
job is requeued (submitit's checkpoint hook) and the trainer resumes from its last complete
checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CogqaError, require
from ..files import write_json_atomic
from ..threads import available_cores, thread_env, thread_plan
from .rundir import log_tail, materialise, read_run_info, run_status, sweep_status
from .runserver import RunServer, can_fork_runs, die_with_parent_hook
from .spec import SweepSpec

BUSY_EXIT = 75  # run-one: another worker holds the run's lock
#: run-one stopped by the user or the scheduler, not failed: Ctrl-C, or the trainer's checkpoint-and-stop on a
#: signal (exit 128 + signal number), or killed by the signal itself
INTERRUPTED_EXITS = (
    130,
    *(128 + int(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)),
    -signal.SIGINT,
    -signal.SIGTERM,
)


@dataclass
class SlurmOptions:
    """SLURM settings of ``sweep run --executor slurm`` (submitit). ``time`` in minutes."""

    partition: str | None = None
    time: int = 60 * 24
    gpus_per_run: int = 1
    nodes: int = 1
    cpus_per_gpu: int = 8
    mem_gb: int | None = None
    account: str | None = None
    qos: str | None = None
    array: bool = True
    array_parallelism: int = 64
    cluster: str | None = None  # None: auto (slurm if available); "local"/"debug" for tests

    def __post_init__(self) -> None:
        for key in ("time", "gpus_per_run", "nodes", "cpus_per_gpu", "array_parallelism"):
            v = getattr(self, key)
            require(
                isinstance(v, int) and v > 0, f"--{key.replace('_', '-')} must be a positive whole number, got {v!r}"
            )
        require(
            self.cluster in (None, "slurm", "local", "debug"),
            f"cluster must be slurm, local or debug, got {self.cluster!r}",
        )

    def executor_parameters(self) -> dict[str, Any]:
        """Parameters for ``submitit.AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "timeout_min": self.time,
            "nodes": self.nodes,
            "tasks_per_node": 1,
            "gpus_per_node": self.gpus_per_run,
            "cpus_per_task": self.cpus_per_gpu * self.gpus_per_run,
            "name": "cogqa-sweep",
        }
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.cluster in (None, "slurm"):
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.account:
                params["slurm_account"] = self.account
            if self.qos:
                params["slurm_qos"] = self.qos
            params["slurm_array_parallelism"] = self.array_parallelism
        return params

    def sbatch_preview(self, command: str, folder: str | Path) -> str:
        """An sbatch script for ``command`` with the ``#SBATCH`` options of :meth:`executor_parameters`
        (for review; submitit writes the real script from the same parameters and runs ``command``
        through its own ``srun`` wrapper, with ``--signal=USR2@90`` so a preempted or timed-out job
        is requeued)."""
        params = self.executor_parameters()
        options = [
            ("job-name", params["name"]),
            ("output", f"{folder}/%j_%t_log.out"),
            ("error", f"{folder}/%j_%t_log.err"),
            ("partition", params.get("slurm_partition")),
            ("time", params["timeout_min"]),
            ("nodes", params["nodes"]),
            ("ntasks-per-node", params["tasks_per_node"]),
            ("gpus-per-node", params["gpus_per_node"]),
            ("cpus-per-task", params["cpus_per_task"]),
            ("mem", f"{params['mem_gb']}GB" if "mem_gb" in params else None),
            ("account", params.get("slurm_account")),
            ("qos", params.get("slurm_qos")),
            ("signal", "USR2@90"),
            ("open-mode", "append"),
        ]
        header = [f"#SBATCH --{key}={value}" for key, value in options if value is not None]
        return "\n".join(["#!/bin/bash", *header, "", command, ""])


def first_job_sbatch(spec: SweepSpec, out: str | Path, slurm: SlurmOptions) -> str:
    """The sbatch preview (:meth:`SlurmOptions.sbatch_preview`) of the first run of ``spec`` in sweep
    directory ``out``."""
    run_dir = (Path(out) / "runs" / spec.runs()[0].run_id).resolve()
    command = shlex.join(run_command(run_dir, slurm.gpus_per_run, slurm.nodes))
    return slurm.sbatch_preview(command, Path(out).resolve() / "submitit")


def run_command(run_dir: str | Path, gpus: int = 1, nodes: int = 1, python: str | None = None) -> list[str]:
    """The command that executes one run: ``python -m cogqa.sweep run-one RUN_DIR``, or under
    ``torchrun --nproc_per_node G`` when the run uses G > 1 GPUs (with ``--nnodes``/rendezvous
    from SLURM's environment when it spans several nodes)."""
    python = python or sys.executable
    if gpus <= 1 and nodes <= 1:
        return [python, "-m", "cogqa.sweep", "run-one", str(run_dir)]
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    if nodes > 1:
        cmd += [
            f"--nnodes={nodes}",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=${MASTER_ADDR}:29500",
            "--rdzv_id=${SLURM_JOB_ID}",
        ]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "cogqa.sweep", "run-one", str(run_dir)]


def run_env(threads: int | None) -> dict[str, str]:
    """The environment of a run's process (and of a run server): this one's, unbuffered output into the run's log,
    and ``threads`` intra-op threads (:func:`cogqa.threads.thread_env`)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", **thread_env(threads))


def launch_run(
    run_dir: str | Path,
    command: list[str] | None = None,
    die_with_parent: bool = True,
    threads: int | None = None,
    server: RunServer | None = None,
) -> str:
    """Run one run in a child process (output appended to ``log.txt``); returns its status after.

    With a ``server`` (and no ``command``) the child is forked from that :class:`~cogqa.sweep.runserver.RunServer`,
    which imported torch once; otherwise, or when the server cannot be used, it is ``command`` (default
    :func:`run_command`) in a new interpreter. A non-zero exit other than "busy" or an interruption (Ctrl-C,
    SIGTERM: the run stays pending and resumes next time) leaves ``failed.json`` with the error tail (the child
    writes its own; a crash or another signal gets the log tail here).
    """
    run_dir = Path(run_dir)
    env = run_env(threads)
    returncode = None
    if server is not None and command is None:
        with open(run_dir / "log.txt", "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} run-one {run_dir} (forked by the run server)\n")
        returncode = server.run(run_dir, env)
        if returncode is None:
            with open(run_dir / "log.txt", "a") as log:
                log.write("the run server could not start the run; starting a new interpreter\n")
    if returncode is None:
        command = command or run_command(run_dir)
        with open(run_dir / "log.txt", "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
            log.flush()
            returncode = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent_hook() if die_with_parent and sys.platform.startswith("linux") else None,
            ).returncode
    if returncode == BUSY_EXIT:
        return "running"
    if returncode in INTERRUPTED_EXITS:  # Ctrl-C / SIGTERM: interrupted, not failed; re-run resumes it
        return run_status(run_dir)
    if returncode != 0 and run_status(run_dir) != "done" and not (run_dir / "failed.json").is_file():
        tail = log_tail(run_dir / "log.txt")
        last = tail.splitlines()[-1] if tail else f"exit status {returncode}"
        write_json_atomic(run_dir / "failed.json", {"error": last, "returncode": returncode, "tail": tail})
    return run_status(run_dir)


def _to_run(run_dirs: list[Path], retry_failed: bool) -> list[Path]:
    todo = []
    for d in run_dirs:
        s = run_status(d)
        if s == "pending" or (s == "failed" and retry_failed):
            todo.append(d)
    return todo


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    executor: str = "local",
    workers: int = 1,
    retry_failed: bool = False,
    slurm: SlurmOptions | None = None,
    progress: bool = True,
    wait: bool = True,
) -> dict[str, Any]:
    """Run every unfinished run of ``spec`` in ``out`` and return :func:`sweep_status`.

    ``executor="local"``: ``workers`` child processes at a time on this machine.
    ``executor="slurm"``: one submitit job per run (a job array with ``slurm.array``), each
    executing :func:`run_command`; ``wait`` blocks until the jobs end. Done runs are skipped,
    interrupted runs resume from their last checkpoint, failed runs are retried only with
    ``retry_failed``.
    """
    require(executor in ("local", "slurm"), f"--executor must be local or slurm, got {executor!r}")
    require(isinstance(workers, int) and workers > 0, f"--workers must be a positive whole number, got {workers!r}")
    run_dirs = materialise(spec, out, progress)
    todo = _to_run(run_dirs, retry_failed)
    if executor == "local":
        _run_local(todo, workers, progress, total=len(run_dirs))
    else:
        _run_submitit(todo, Path(out), slurm or SlurmOptions(), wait)
    return sweep_status(out)


def expected_flops(run_dir: str | Path) -> float:
    """Training FLOPs a run is expected to cost (units: FLOPs): :func:`cogqa.costs.training_flops` of the shape in
    its ``run.json`` over its token budget (``tokens``, else ``tokens_per_param`` x non-embedding parameters) at its
    context, without the LM head; 0 when the shape is resolved only at training time or the file is unreadable."""
    from .. import costs
    from ..shapes import ModelShape

    try:
        train = read_run_info(Path(run_dir))["train"]
        s = train["shape"]
        shape = ModelShape(
            **{k: s[k] for k in ("layers", "hidden_size", "ffn_size", "n_heads", "n_kv_heads", "head_dim")},
            vocab_size=1,
        )
        tokens = train.get("tokens") or float(train.get("tokens_per_param") or 20) * float(
            costs.params_non_embedding(shape)
        )
        return float(costs.training_flops(shape, float(tokens), int(train["context"])))
    except (CogqaError, KeyError, TypeError, ValueError):
        return 0.0


def longest_first(run_dirs: list[Path]) -> list[Path]:
    """``run_dirs`` by :func:`expected_flops`, largest first (ties keep their order): with several workers the
    last runs to start are the short ones, so the workers finish close together (longest-processing-time-first
    scheduling; the CPU demo's 2 workers finished ~95 s apart with the smallest runs first)."""
    return sorted(run_dirs, key=expected_flops, reverse=True)


def _run_local(todo: list[Path], workers: int, progress: bool, total: int) -> None:
    from tqdm import tqdm

    threads = thread_plan(available_cores(), os.environ, workers=workers).threads  # workers x threads <= cores
    bar = tqdm(
        total=total, initial=total - len(todo), desc="sweep runs", unit="run", disable=not progress, file=sys.stderr
    )

    started = [RunServer(env=run_env(threads)) for _ in range(workers if can_fork_runs() else 0)]
    servers: queue.SimpleQueue = queue.SimpleQueue()  # one run server per worker: torch imported once per worker
    for server in started:
        servers.put(server)

    def one(d: Path) -> str:
        bar.set_postfix_str(d.name)
        server = None if servers.empty() else servers.get()
        try:
            status = launch_run(d, threads=threads, server=server)
        finally:
            if server is not None:
                servers.put(server)
        bar.update(1)
        if status == "failed":
            err = json.loads((d / "failed.json").read_text()).get("error", "")
            bar.write(f"run {d.name} failed: {err} (log: {d / 'log.txt'})")
        return status

    try:
        if workers == 1:
            for d in todo:
                one(d)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, longest_first(todo)))
    finally:
        for server in started:
            server.close()
        bar.close()


class _SubmititRun:
    """The picklable callable of one submitit job: runs :func:`run_command` for a run directory."""

    def __init__(self, run_dir: str, gpus: int, nodes: int):
        self.run_dir, self.gpus, self.nodes = run_dir, gpus, nodes

    def __call__(self) -> str:
        if self.nodes > 1 and "MASTER_ADDR" not in os.environ:  # torchrun's rendezvous host: the job's first node
            import submitit

            os.environ["MASTER_ADDR"] = submitit.JobEnvironment().hostnames[0]
        command = [os.path.expandvars(c) for c in run_command(self.run_dir, self.gpus, self.nodes)]
        return launch_run(self.run_dir, command, die_with_parent=False)

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue hook (``submitit.helpers.Checkpointable``'s, written here so that importing
        cogqa.sweep does not import submitit): a preempted or timed-out job is resubmitted as is, and
        the trainer resumes from its last complete checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _run_submitit(todo: list[Path], out: Path, opts: SlurmOptions, wait: bool) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=str(out / "submitit" / "%j"), cluster=opts.cluster)
    executor.update_parameters(**opts.executor_parameters())
    calls = [_SubmititRun(str(d.resolve()), opts.gpus_per_run, opts.nodes) for d in todo]
    if opts.array and len(calls) > 1 and opts.cluster in (None, "slurm"):
        jobs = executor.submit_array(calls)
    else:
        jobs = [executor.submit(c) for c in calls]
    for d, job in zip(todo, jobs):
        write_json_atomic(d / "submitted.json", {"job_id": str(job.job_id), "time": time.time()})
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # the run's own failed.json holds the details
                print(f"job {job.job_id} raised: {str(exc).splitlines()[-1] if str(exc) else exc}", file=sys.stderr)
