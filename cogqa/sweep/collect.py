"""Collect: the results table of a sweep's finished runs (what ``cogqa fit`` reads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import require
from .rundir import sweep_status

RESULT_COLUMNS = (
    "id",
    "size",
    "n_heads",
    "n_kv_heads",
    "seed",
    "params_non_embedding",
    "params_total",
    "loss",
    "final_val_loss",
    "loss_se",
    "final_train_loss",
    "tokens",
    "context",
    "steps",
    "layers",
    "hidden_size",
    "ffn_size",
    "head_dim",
    "lr",
    "batch_tokens",
    "wall_time_s",
    "resumed_from_step",
    "loss_by_position",
)


def checked_result(run_dir: Path) -> dict:
    """``result.json`` of a finished run, refused (one line naming the run) when its values cannot be true:
    a loss that is not a finite number >= 0 (nats/token), tokens or parameters <= 0, or a size, heads or seed
    other than the plan's (``run.json``)."""
    from ..readers import field, read_json_object
    from .rundir import read_run_info

    info = read_run_info(run_dir)
    where = f"run {run_dir.name}: result.json"
    r = read_json_object(run_dir / "result.json", where)
    require(r.get("final_val_loss") is not None, f"{where}: no final validation loss (final_val_loss)")
    field(r, "final_val_loss", "number", where, low=0.0)
    field(r, "final_val_loss_se", "number", where, default=None, low=0.0)
    field(r, "tokens", "number", where, default=None, low=1.0)
    field(r, "params_non_embedding", "number", where, default=None, low=1.0)
    for key, planned in (
        ("n_heads", info["n_heads"]),
        ("n_kv_heads", info["n_kv_heads"]),
        ("seed", info["seed"]),
        ("size", info["size"]["name"]),
    ):
        value = r.get(key, planned)
        require(
            value == planned and type(value) is type(planned),
            f"{where}: {key} is {value!r} but the plan (run.json) says {planned!r}; the result is not this run's",
        )
    pos = field(r, "loss_by_position", "dict", where, default={})
    for t, v in pos.items():
        require(
            str(t).isdigit()
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0,
            f"{where}: loss_by_position[{str(t)[:20]!r}] must be a loss >= 0 (nats/token) at a position",
        )
    return r


def collect(out: str | Path, write: bool = True):
    """The results table of the finished runs in ``out`` (a pandas DataFrame, one row per run).

    Columns: those ``cogqa fit`` reads (``n_heads, n_kv_heads, params_non_embedding, loss,
    tokens, context``; ``loss`` = final validation loss in nats/token, ``loss_se`` its standard
    error in nats/token, empty for runs of older versions) plus shape, steps, LR,
    wall time (s) and ``loss_by_position`` (a JSON string {t: mean loss over the first t-1
    positions}) and ``loss_at_<t>`` columns for a few t. With ``write``, also writes
    ``out/results.csv`` and ``out/results.parquet`` atomically.
    """
    import pandas as pd

    status = sweep_status(out)
    rows = []
    for run_id, s in status["runs"].items():
        if s != "done":
            continue
        r = checked_result(Path(out) / "runs" / run_id)
        row = {k: r.get(k) for k in RESULT_COLUMNS if k not in ("loss", "loss_se", "loss_by_position")}
        row["loss"] = r["final_val_loss"]
        row["loss_se"] = r.get("final_val_loss_se")
        pos = r.get("loss_by_position") or {}
        row["loss_by_position"] = json.dumps(pos)
        for t in sorted(pos, key=int):
            row[f"loss_at_{t}"] = pos[t]
        rows.append(row)
    require(rows, f"{out}: no finished run to collect ({status['counts']})")
    df = pd.DataFrame(rows)
    df = df.sort_values(["params_non_embedding", "n_heads", "n_kv_heads", "seed"]).reset_index(drop=True)
    if write:  # both files or neither: a failure (Parquet, a full disk, a kill) leaves the old pair as it was
        from ..files import write_together

        out = Path(out)
        write_together(
            {
                out / "results.parquet": lambda tmp: df.to_parquet(tmp, index=False),
                out / "results.csv": lambda tmp: df.to_csv(tmp, index=False),
            }
        )
    return df
