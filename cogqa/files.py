"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file cogqa writes for a user (laws, results, manifests, reports, figures, run records)
goes through these helpers: write to a temporary name in the same directory, flush and fsync,
then ``os.replace`` onto the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays and for paths."""
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent directories; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy values converted); returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the suffix), close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
