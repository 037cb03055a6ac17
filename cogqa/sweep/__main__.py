"""``python -m cogqa.sweep run-one RUN_DIR``: the child process that executes one run (``serve``: a run server,
:mod:`cogqa.sweep.runserver`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..distributed import is_main_process
from ..files import write_json_atomic
from ..train import TrainingStopped
from .executors import BUSY_EXIT
from .rundir import RunBusy, execute_run


def _child_main(argv: list[str]) -> int:  # pragma: no cover - exercised through subprocesses
    if argv == ["serve"]:  # a run server (cogqa.sweep.runserver): forks the runs a local sweep worker sends it
        from .runserver import serve

        return serve()
    if len(argv) != 2 or argv[0] != "run-one":
        print("usage: python -m cogqa.sweep run-one RUN_DIR  (or: python -m cogqa.sweep serve)", file=sys.stderr)
        return 2
    run_dir = Path(argv[1])
    try:
        result = execute_run(run_dir)
    except RunBusy as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return BUSY_EXIT
    except TrainingStopped as exc:  # checkpointed on a signal: pending, resumed by the next sweep run
        print(f"stopped: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted; re-run the sweep to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BaseException as exc:  # record any failure, then exit non-zero
        import traceback

        if is_main_process():
            tb = traceback.format_exc()
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            write_json_atomic(run_dir / "failed.json", {"error": msg, "tail": "\n".join(tb.splitlines()[-20:])})
            print(tb, file=sys.stderr)
        return 1
    if result.get("status") == "done":
        print(
            f"run {result['id']}: done, final validation loss {result['final_val_loss']:.4f} nats/token, "
            f"{result['steps']} steps, {result['wall_time_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main(sys.argv[1:]))
