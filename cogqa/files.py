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


def temp_path(path: str | Path) -> Path:
    """A fresh temporary sibling name of the file ``path`` (``.<name>.cogqa-tmp-<pid>-<random>``; the suffix is
    kept so that writers choosing a format by suffix still work). Removed by :func:`clean_stale_temps` when
    the process that made it is gone."""
    import secrets

    path = Path(path)
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def write_together(writers: dict) -> list[Path]:
    """Write several files so that either all are replaced or none: ``writers`` maps each final path to a
    function ``write(tmp_path)`` that writes the file at a temporary name; only when every one succeeded are
    they renamed into place (temporaries deleted on any failure). Returns the final paths."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(path)
            tmp = temp_path(path)
            done.append((tmp, path))
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        for tmp, path in done:
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and done:  # name the file the user asked for
            raise OSError(exc.errno, exc.strerror, str(done[-1][1])) from exc
        raise
    if done:
        fsync_dir(done[0][1].parent)
    return [path for _, path in done]


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent directories; returns the path.

    On any failure (a full disk, a signal) the temporary file is deleted and ``path`` is unchanged."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    return write_together({Path(path): write})[0]


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (numpy values converted); returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def figure_formats() -> dict[str, str]:
    """The file suffixes (without the dot) matplotlib can write, with their descriptions."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return dict(Figure().canvas.get_supported_filetypes())


def check_figure_path(path: str | Path, field: str = "--out") -> Path:
    """Raise CogqaError unless ``path`` ends in a suffix matplotlib can write (listing the supported ones)."""
    from .errors import CogqaError

    path = Path(path)
    formats = figure_formats()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise CogqaError(
            f"{field} {path}: unknown figure format {path.suffix or '(no suffix)'!r}; "
            f"end the name in one of {', '.join('.' + s for s in sorted(formats))}"
        )
    return path


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` atomically (format from the suffix), close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        check_figure_path(path)
        fmt = path.suffix.lower().lstrip(".")
        write_together({path: lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt)})
    finally:
        plt.close(fig)
    return path


def check_output_file(path: str | Path, overwrite: bool, field: str = "--out", ours=None) -> Path:
    """Raise CogqaError unless a command may write the file ``path``: it does not exist, or ``overwrite`` is
    given and (when ``ours`` is given) ``ours(path)`` recognises the file as cogqa's own output. Never a
    directory. Returns the path."""
    from .errors import CogqaError

    path = Path(path)
    if path.is_dir():
        raise CogqaError(f"{field} {path}: is a directory; give a file name")
    if not path.exists() and not path.is_symlink():
        return path
    if not overwrite:
        raise CogqaError(f"{field} {path}: already exists; pass --overwrite to replace it, or choose another name")
    if path.is_symlink() or not path.is_file():
        raise CogqaError(f"{field} {path}: is not a regular file; refusing to replace it even with --overwrite")
    if ours is not None and not ours(path):
        raise CogqaError(
            f"{field} {path}: is not a file cogqa wrote; refusing to replace it even with --overwrite; "
            "choose another name"
        )
    return path


def json_file_with(*keys: str):
    """A recogniser for :func:`check_output_file`: True for a JSON object file holding all of ``keys``."""

    def ours(path: Path) -> bool:
        try:
            if path.stat().st_size > 1 << 30:
                return False
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return ours


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
    and only when process ``<pid>`` no longer runs on this machine. An old output whose replacement never
    arrived (``out`` missing) is renamed back to ``out`` instead of deleted; it is not in the returned list.
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
            if infix == OLD_INFIX and not out.exists() and not out.is_symlink():
                os.replace(p, out)  # killed between moving the old output aside and the new one in: restore it
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the C library or the filesystem does not offer it."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def commit_dir(tmp: str | Path, out: str | Path) -> Path:
    """Move the finished directory ``tmp`` onto ``out``, replacing an old ``out`` as a whole; returns ``out``.

    A reader sees the old directory or the new one: on Linux the two are swapped in one atomic step and the old
    one (now under the temporary name) deleted; elsewhere the old one is renamed aside, the new one renamed in,
    then the old one deleted (a kill between the renames leaves it as ``.<name>.cogqa-old-*``, which the next
    cogqa write of ``out`` renames back).
    """
    import shutil
    import tempfile

    tmp, out = Path(tmp), Path(out)
    fsync_dir(tmp)
    old = None
    if out.is_dir() and any(out.iterdir()):
        if _exchange(tmp, out):
            fsync_dir(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return out
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

    clean_stale_temps(out)  # first: it may restore an old output a killed run had moved aside
    check_output_dir(out, command, overwrite, field, legacy_ok, inputs)
    tmp = new_temp_dir(out)
    try:
        build(tmp)
        write_marker(tmp, command)
        return commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
