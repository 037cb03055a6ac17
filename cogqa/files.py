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


# ---------------------------------------------------------------------------------------------
# Output directories: one policy for every command that writes a directory
# ---------------------------------------------------------------------------------------------

#: The file cogqa puts in every directory it writes as a whole; its presence proves cogqa may replace it.
MARKER = ".cogqa-output"
#: Infix of the temporary siblings an output is built in (``.<name>.cogqa-tmp-<pid>-<random>``).
TMP_INFIX = ".cogqa-tmp-"
#: Infix of the previous output while it is being swapped out (``.<name>.cogqa-old-<pid>-<random>``).
OLD_INFIX = ".cogqa-old-"


def read_marker(directory: str | Path) -> dict | None:
    """The marker of a directory cogqa wrote (``{"command": ..., "cogqa_version": ...}``), or None."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temps(out: str | Path) -> list[Path]:
    """Delete temporary siblings of ``out`` left by a killed cogqa (their process is gone); returns them.

    Only names cogqa makes (``.<name>.cogqa-tmp-<pid>-*`` and ``.<name>.cogqa-old-<pid>-*``) are touched,
    and only when process ``<pid>`` no longer runs on this machine.
    """
    import shutil

    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for infix in (TMP_INFIX, OLD_INFIX):
        for p in out.parent.glob(f".{out.name}{infix}*"):
            pid_text = p.name[len(f".{out.name}{infix}") :].split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output_dir(
    out: str | Path, command: str, overwrite: bool, field: str = "--out", legacy_ok=None, inputs: tuple = ()
) -> None:
    """Raise CogqaError unless ``command`` may write the directory ``out`` as a whole.

    Allowed: a path that does not exist, an empty directory, or (with ``overwrite``) a directory holding
    cogqa's marker file, or one ``legacy_ok(path)`` recognises as cogqa's own output from before markers.
    Never allowed: a file, a directory with files cogqa did not write, or a directory that is, holds or
    lies inside one of ``inputs`` (e.g. the checkpoint being exported).
    """
    from .errors import CogqaError

    out = Path(out)
    here = out.resolve()
    for src in inputs:
        s = Path(src).resolve()
        if here == s or here in s.parents or s in here.parents:
            raise CogqaError(f"{field} {out}: is or overlaps the input {src}; choose another output directory")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise CogqaError(
            f"{field} {out}: exists and is not a directory; choose another path (--overwrite "
            "replaces only directories cogqa wrote)"
        )
    if not any(out.iterdir()):
        return
    ours = read_marker(out) is not None or (legacy_ok is not None and legacy_ok(out))
    if not ours:
        raise CogqaError(
            f"{field} {out}: holds files cogqa did not write (no {MARKER}); refusing to replace it even "
            "with --overwrite; choose a new or empty directory"
        )
    if not overwrite:
        raise CogqaError(
            f"{field} {out}: already holds cogqa output; pass --overwrite to replace it, or choose another directory"
        )


def new_temp_dir(out: str | Path) -> Path:
    """A fresh temporary sibling of ``out`` to build it in (recognisable: removed by :func:`clean_stale_temps`)."""
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TMP_INFIX}{os.getpid()}-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the output private, unlike a plain mkdir
    return tmp


def write_marker(directory: str | Path, command: str) -> None:
    """Put cogqa's marker (naming ``command``) into ``directory``."""
    from . import __version__

    write_json_atomic(Path(directory) / MARKER, {"command": command, "cogqa_version": __version__})


def commit_dir(tmp: str | Path, out: str | Path) -> Path:
    """Move the finished directory ``tmp`` onto ``out``, replacing an old ``out`` as a whole; returns ``out``.

    A reader sees the old directory or the new one: the old one is renamed aside, the new one renamed in,
    then the old one deleted (a crash between the renames leaves it as ``.<name>.cogqa-old-*``, cleaned later).
    """
    import shutil
    import tempfile

    tmp, out = Path(tmp), Path(out)
    fsync_dir(tmp)
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{OLD_INFIX}{os.getpid()}-"))
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_output_dir(
    out: str | Path,
    command: str,
    build,
    overwrite: bool = False,
    field: str = "--out",
    legacy_ok=None,
    inputs: tuple = (),
) -> Path:
    """Build the output directory ``out`` of ``command`` with ``build(tmp_dir)``, then swap it in; returns ``out``.

    Checks the policy of :func:`check_output_dir` first, cleans temporaries of killed runs, builds in a
    temporary sibling (deleted on any failure), writes cogqa's marker and replaces ``out`` as a whole.
    """
    import shutil

    check_output_dir(out, command, overwrite, field, legacy_ok, inputs)
    clean_stale_temps(out)
    tmp = new_temp_dir(out)
    try:
        build(tmp)
        write_marker(tmp, command)
        return commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
