"""Step 2 of the recipe at scale: sweeps over head configurations x sizes, run, status, collect.

A sweep is described by a :class:`SweepSpec` (YAML/JSON file or CLI flags) and lives in one
directory::

    SWEEP/spec.json            the resolved spec
    SWEEP/data/                the prepared data (when the spec names raw inputs)
    SWEEP/runs/<id>/run.json   the run's TrainConfig and identity (size, H, seed)
    SWEEP/runs/<id>/...        the trainer's config.json, metrics.jsonl, checkpoints/
    SWEEP/runs/<id>/log.txt    the run's stdout/stderr (appended on every attempt)
    SWEEP/runs/<id>/result.json  written atomically when the run is done (status "done")
    SWEEP/runs/<id>/failed.json  the error tail of the last failed attempt
    SWEEP/results.csv, results.parquet   written by :func:`collect`

Every run executes in a child process (``python -m cogqa.sweep run-one RUN_DIR``) that holds an
exclusive ``flock`` on ``RUN_DIR/.lock`` while it works: two workers never run the same run, and a
killed worker releases its claim. Locally the child dies with its parent (``PR_SET_PDEATHSIG``),
so a SIGKILLed sweep leaves the trainer's last complete checkpoint, from which the next
``sweep run`` resumes (the trainer's ``resume``). Finished runs are skipped; failed runs are
reported and skipped unless ``retry_failed`` is given.

Rooms: :mod:`.spec` (spec, runs, plan), :mod:`.rundir` (the directory, run state and locks,
executing one run), :mod:`.executors` (local and SLURM), :mod:`.collect` (the results table),
``__main__`` (the child process). torch is imported only by the child process (and by
:func:`execute_run`).
"""

from .collect import RESULT_COLUMNS, collect
from .executors import (
    BUSY_EXIT,
    INTERRUPTED_EXITS,
    SlurmOptions,
    first_job_sbatch,
    launch_run,
    run_command,
    run_sweep,
)
from .rundir import (
    EXTENDABLE_FIELDS,
    STATUSES,
    RunBusy,
    check_out_dir,
    execute_run,
    is_locked,
    materialise,
    prepare_data,
    run_status,
    sweep_status,
)
from .spec import (
    HEAD_PRESETS,
    PAPER_HEAD_CONFIGS,
    RunSpec,
    SweepSize,
    SweepSpec,
    load_spec,
    parse_heads,
    parse_size,
    plan,
    train_config_dict,
    vocab_size,
)

__all__ = [
    "BUSY_EXIT",
    "EXTENDABLE_FIELDS",
    "HEAD_PRESETS",
    "INTERRUPTED_EXITS",
    "PAPER_HEAD_CONFIGS",
    "RESULT_COLUMNS",
    "STATUSES",
    "RunBusy",
    "RunSpec",
    "SlurmOptions",
    "SweepSize",
    "SweepSpec",
    "check_out_dir",
    "collect",
    "execute_run",
    "first_job_sbatch",
    "is_locked",
    "launch_run",
    "load_spec",
    "materialise",
    "parse_heads",
    "parse_size",
    "plan",
    "prepare_data",
    "run_command",
    "run_status",
    "run_sweep",
    "sweep_status",
    "train_config_dict",
    "vocab_size",
]
