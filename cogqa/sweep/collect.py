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
    if write:
        write_results_pair(df, Path(out))
    return df


#: Key of the Parquet schema metadata holding the sha256 of the ``results.csv`` written beside it.
CSV_SHA256_KEY = b"cogqa_results_csv_sha256"


def write_results_pair(df, out: Path) -> None:
    """Write ``out/results.csv`` and ``out/results.parquet`` from ``df``: both or neither (a failure leaves the old
    pair as it was). The Parquet records the sha256 of the CSV's bytes and is renamed into place first, so that a
    kill between the two renames leaves a pair that :func:`check_results_pair` refuses instead of a silent mix."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..files import write_together

    csv_bytes = df.to_csv(index=False).encode("utf-8")
    table = pa.Table.from_pandas(df, preserve_index=False)
    stamp = hashlib.sha256(csv_bytes).hexdigest().encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), CSV_SHA256_KEY: stamp})
    write_together(
        {
            out / "results.parquet": lambda tmp: pq.write_table(table, tmp),
            out / "results.csv": lambda tmp: tmp.write_bytes(csv_bytes),
        }
    )


def check_results_pair(parquet: Path) -> None:
    """Refuse (one line) a ``results.parquet`` written by ``sweep collect`` whose sibling ``results.csv`` is not the
    CSV it was written with (a collect killed between its two renames, or one file replaced by hand). A Parquet
    without the stamp (not from collect) or without a sibling CSV passes."""
    import hashlib

    import pyarrow.parquet as pq

    parquet = Path(parquet)
    csv = parquet.with_name("results.csv")
    if parquet.name != "results.parquet" or not csv.is_file():
        return
    stamp = (pq.read_schema(parquet).metadata or {}).get(CSV_SHA256_KEY)
    if stamp is None:
        return
    require(
        hashlib.sha256(csv.read_bytes()).hexdigest().encode() == stamp,
        f"{parquet}: does not match {csv.name} beside it (a collect was interrupted, or one of the two was "
        f"replaced); run `cogqa sweep collect {parquet.parent}` again, or read {csv.name}",
    )
