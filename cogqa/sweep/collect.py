"""Collect: the results table of a sweep's finished runs (what ``cogqa fit`` reads)."""

from __future__ import annotations

import json
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
        r = json.loads((Path(out) / "runs" / run_id / "result.json").read_text())
        require(r.get("final_val_loss") is not None, f"run {run_id}: no final validation loss in result.json")
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
