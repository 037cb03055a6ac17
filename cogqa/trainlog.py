"""What the training loop writes as it goes, and how it is told to stop.

:class:`Sinks` sends each step record to ``metrics.jsonl`` (and TensorBoard, Weights & Biases, a tqdm
bar when asked); :func:`truncate_metrics` drops records a killed run wrote after its last checkpoint;
:class:`StopFlag` turns SIGTERM/SIGINT/SIGUSR1/SIGUSR2 into "checkpoint, then stop". Used by
:mod:`cogqa.train`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from .config import TrainConfig
from .distributed import Dist
from .errors import CogqaError
from .files import write_text_atomic

#: the signals that make the trainer checkpoint and stop (SLURM sends SIGUSR1/SIGTERM before its time limit;
#: submitit uses SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Records the first stop signal; a second one aborts at once (KeyboardInterrupt). Installed only in
    the main thread, restored on exit."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class Sinks:
    """Where step records go on rank 0: ``metrics.jsonl``, TensorBoard, Weights & Biases, a tqdm bar."""

    def __init__(self, config: TrainConfig, run, dist_info: Dist):
        """Open the sinks ``config`` asks for under ``run.out`` (rank 0 only; ``run`` is the loop's resolved run)."""
        self.fh = self.tb = self.wb = self.bar = None
        self.batch_tokens = run.plan["batch_tokens"]
        if not dist_info.main:
            return
        out = run.out
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise CogqaError("tensorboard: not installed; pip install tensorboard, or drop --tensorboard") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        if config.wandb:
            try:
                import wandb
            except ImportError:
                raise CogqaError("wandb: not installed; pip install wandb, or drop --wandb") from None
            run_id = out.resolve().name + "-" + str(abs(hash(str(out.resolve()))) % 10**8)
            self.wb = wandb.init(
                project=config.wandb_project,
                dir=str(out),
                resume="allow",
                id=run_id,
                config={**config.to_dict(), **run.resolved},
            )
        if config.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=run.plan["tokens"],
                initial=run.start_step * self.batch_tokens,
                unit="tok",
                unit_scale=True,
                desc="train",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        self.fh = open(out / "metrics.jsonl", "a")

    def log(self, record: dict) -> None:
        """Write one step record (keys ``step``, ``loss``, ``lr``, ... as in ``metrics.jsonl``) to every sink."""
        if self.fh is None:
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        done = record["step"]
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_loss_se"):
                if k in record:
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", record[k], done)
        if self.wb is not None:
            self.wb.log(record, step=done)
        if self.bar is not None:
            self.bar.update(self.batch_tokens)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", refresh=False)

    def sync(self) -> None:
        """Flush ``metrics.jsonl`` to disk (before a checkpoint, so resumed metrics are complete)."""
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        """Close every sink."""
        for sink, close in ((self.fh, "close"), (self.bar, "close"), (self.tb, "close"), (self.wb, "finish")):
            if sink is not None:
                getattr(sink, close)()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written by a run that was killed after its last checkpoint).

    A half-written last line is dropped too; any other line that is not a step record (a JSON object
    with a whole-number ``step``), or a file that is not UTF-8, is refused in one line naming the file
    and the line, and the file is left as it was.
    """
    if not path.exists():
        return
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CogqaError(
            f"{path}: not UTF-8 text at byte {exc.start}; restore or remove the file, then resume"
        ) from None
    keep = []
    for number, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):
                continue  # a half-written last line
            rec = None
        record_step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(record_step, int) or isinstance(record_step, bool):
            raise CogqaError(
                f"{path}:{number}: not a step record (a JSON object with a whole-number 'step'); "
                "fix or remove that line, then resume"
            )
        if record_step <= step:
            keep.append(line)
    write_text_atomic(path, "".join(k + "\n" for k in keep))
