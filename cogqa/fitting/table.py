"""Reading and validating a results table (CSV, JSONL or Parquet) for ``cogqa fit``; rows are numbered from 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CogqaError, require
from .forms import FIT_FORMS, FORMS

RESULT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")
KNOWN_COLUMNS = ("n_heads", "n_kv_heads", "params_non_embedding", "loss", "tokens", "context", "size", "compute")
#: Shape columns `sweep collect` writes, from which a fit records the model family (see results._table_metadata).
FAMILY_COLUMNS = ("layers", "hidden_size", "head_dim", "params_total")


def _required_columns(form: str) -> tuple[str, ...]:
    return FIT_FORMS[form].columns


def _rows(mask: np.ndarray, limit: int = 8) -> str:
    idx = [str(i + 1) for i in np.flatnonzero(mask)]
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return ", ".join(idx[:limit]) + more


def read_results(path: str | Path, columns: dict[str, str] | None = None, form: str = "n") -> pd.DataFrame:
    """Read and validate a results table (CSV, JSONL or Parquet); returns a DataFrame with canonical columns.

    ``columns`` maps canonical names (``params_non_embedding``, ``tokens``, ``loss``, ``n_heads``,
    ``n_kv_heads``, ``compute``, ``size``) to the file's column names. ``form`` decides which columns are
    required (see :func:`validate_results`). Warnings (e.g. duplicate rows) are in ``df.attrs["warnings"]``.
    """
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    path = Path(path)
    require(path.exists(), f"RESULTS: {path}: no such file")
    require(path.is_file(), f"RESULTS: {path}: is not a file")
    suffix = path.suffix.lower()
    require(
        suffix in RESULT_SUFFIXES,
        f"RESULTS: {path}: unknown extension {suffix or '(none)'!r}; use .csv, .jsonl, .json (array of rows) or "
        ".parquet",
    )
    require(path.stat().st_size > 0, f"RESULTS: {path}: the file is empty; it needs a header and one row per run")
    wanted = set(KNOWN_COLUMNS) | set(FAMILY_COLUMNS) | set((columns or {}).values())

    def used(name) -> bool:  # read only the columns a fit can use: a wide results table stays small in memory
        return str(name).strip() in wanted

    try:
        if suffix == ".csv":
            header = list(pd.read_csv(path, nrows=0).columns)
            df = pd.read_csv(path, usecols=used)
            df.attrs["all_columns"] = [str(c).strip() for c in header]
        elif suffix == ".jsonl":
            df = pd.read_json(path, lines=True)
        elif suffix == ".json":
            df = pd.read_json(path, orient="records")  # a JSON array of row objects
        else:
            from ..sweep.collect import check_results_pair

            check_results_pair(path)  # a pair from `sweep collect` must match
            import pyarrow.parquet as pq

            header = list(pq.read_schema(path).names)
            df = pd.read_parquet(path, columns=[c for c in header if used(c)])
            df.attrs["all_columns"] = [str(c).strip() for c in header]
    except CogqaError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CogqaError(f"RESULTS: {path}: cannot be read as {suffix[1:]} ({first})") from None
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CogqaError(f"RESULTS: {path}: cannot be read as {suffix[1:]} ({first})") from None
    return validate_results(df, form=form, columns=columns, source=str(path))


def validate_results(
    df: pd.DataFrame, form: str = "n", columns: dict[str, str] | None = None, source: str = "results"
) -> pd.DataFrame:
    """Check a results table and return a clean float copy with canonical column names.

    Required: form ``n``: n_heads, n_kv_heads, params_non_embedding, loss; ``chinchilla``:
    params_non_embedding, loss and tokens (or compute, giving tokens = compute / (6 N)); ``heads``:
    n_heads, loss and size or params_non_embedding. Errors (one line, naming rows numbered from 1):
    missing column, non-numeric, non-finite, <= 0 values, n_kv_heads not dividing n_heads.
    Rows repeating earlier rows (same values in the known columns) are kept, with a warning in
    ``df.attrs["warnings"]``.
    """
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    require(isinstance(df, pd.DataFrame), f"{source}: expected a table (pandas DataFrame)")
    require(len(df) > 0, f"{source}: no rows; the table needs one row per training run")
    df = df.reset_index(drop=True)
    df.columns = [str(c).strip() for c in df.columns]
    df = _map_columns(df, columns, source)
    if form == "chinchilla":
        require(
            "tokens" in df.columns or "compute" in df.columns,
            f"{source}: missing column 'tokens' (training tokens D) for --form chinchilla; "
            "add it, map it with --tokens-column, or give training FLOPs with --compute-column",
        )
    if form == "heads":
        require(
            "size" in df.columns or "params_non_embedding" in df.columns,
            f"{source}: missing column 'size' or 'params_non_embedding' (the fixed model size of each head law)",
        )
    for name in _required_columns(form):
        if name == "tokens" and "compute" in df.columns:
            continue  # tokens = compute / (6 N), derived below once the numbers are checked
        listed = df.attrs.get("all_columns") or list(df.columns)
        require(name in df.columns, f"{source}: missing column {name!r}; columns are: {', '.join(listed)}")
    has_heads = "n_heads" in df.columns
    if form == "chinchilla" and has_heads:
        require("n_kv_heads" in df.columns, f"{source}: column 'n_heads' without 'n_kv_heads'; give both or neither")
    if form == "heads" and "size" in df.columns and not pd.api.types.is_numeric_dtype(df["size"]):
        df["size"] = [_size_value(v, i) for i, v in enumerate(df["size"])]  # 470M, 1.2B ... -> parameters
    _check_numbers(df, form, source)
    if form == "chinchilla" and "tokens" not in df.columns:
        df["tokens"] = df["compute"] / (6.0 * df["params_non_embedding"])
    warnings: list[str] = []
    keep = [c for c in KNOWN_COLUMNS if c in df.columns]
    dup = df.duplicated(subset=keep, keep="first").to_numpy()
    if dup.any():
        warnings.append(
            f"{source}: rows {_rows(dup)} repeat the values of earlier rows; all are kept, "
            "so a run listed twice weighs double: remove such repeats if they are the same run"
        )
    df.attrs["warnings"] = warnings
    return df


def _map_columns(df: pd.DataFrame, columns: dict[str, str] | None, source: str) -> pd.DataFrame:
    """``df`` with the user's column names renamed to the canonical ones of ``columns`` {canonical: file name}."""
    for canon, name in (columns or {}).items():
        require(canon in KNOWN_COLUMNS, f"column mapping: unknown field {canon!r}; known: {', '.join(KNOWN_COLUMNS)}")
        require(
            name in df.columns,
            f"{source}: no column {name!r} (mapped to {canon}); columns are: {', '.join(df.columns)}",
        )
        if canon in df.columns and canon != name:
            df = df.drop(columns=[canon])
        df = df.rename(columns={name: canon})
    return df


def _check_numbers(df: pd.DataFrame, form: str, source: str) -> None:
    """Make the numeric columns of ``df`` floats in place (head counts integers); one-line errors naming the rows
    that are not numeric, not finite, <= 0, or not valid GQA head counts."""
    numeric = [
        c
        for c in ("n_heads", "n_kv_heads", "params_non_embedding", "loss", "tokens", "compute", "context")
        if c in df.columns
    ]
    if form == "heads" and "size" in df.columns:
        numeric.append("size")
    for name in numeric:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = values.isna().to_numpy() & df[name].notna().to_numpy()
        if bad.any():
            raise CogqaError(
                f"{source}: column {name!r} is not numeric in rows {_rows(bad)} (e.g. {df[name][bad].iloc[0]!r})"
            )
        arr = values.to_numpy(dtype=float)
        require(
            np.isfinite(arr).all(),
            f"{source}: column {name!r} has missing or non-finite values (NaN/inf) in rows {_rows(~np.isfinite(arr))}",
        )
        if not (arr > 0).all():
            raise CogqaError(
                f"{source}: column {name!r} must be > 0; rows {_rows(arr <= 0)} are not (e.g. {arr[arr <= 0][0]:g})"
            )
        df[name] = arr
    for name in ("n_heads", "n_kv_heads"):
        if name in df.columns:
            arr = df[name].to_numpy()
            bad = arr != np.round(arr)
            require(not bad.any(), f"{source}: column {name!r} must hold whole numbers; rows {_rows(bad)} do not")
            df[name] = arr.astype(np.int64)
    if "n_heads" in df.columns and "n_kv_heads" in df.columns:
        nh, nkv = df["n_heads"].to_numpy(), df["n_kv_heads"].to_numpy()
        bad = nkv > nh
        require(
            not bad.any(), f"{source}: n_kv_heads > n_heads in rows {_rows(bad)}; a KV head serves >= 1 query heads"
        )
        bad = nh % nkv != 0
        require(not bad.any(), f"{source}: n_kv_heads must divide n_heads; rows {_rows(bad)} do not")


def _size_value(value: Any, i: int) -> Any:
    from ..units import parse_count

    if isinstance(value, str):
        try:
            return parse_count(value.strip(), "size")
        except CogqaError:
            raise CogqaError(
                f"results: column 'size' in row {i + 1} is {value!r}; write a number of parameters such as 470M "
                "or 4.7e8"
            ) from None
    return value
