"""The ``cogqa`` command: a thin layer that parses arguments, calls the API and prints.

Each command group lives in its own module ``cogqa.cli.<group>`` exposing ``register(subparsers)``.
Those modules import only the standard library and cogqa's numpy modules at import time; torch
is imported inside the handlers that need it, so ``cogqa cost`` and ``cogqa --help`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

from ..errors import CogqaError

#: Command-group modules, in the order their commands appear in ``--help``, with the commands each registers.
COMMAND_MODULES = {
    "cost": ("cost", "compare"),
    "plot": ("plot",),
    "fit": ("fit",),
    "search": ("search", "table"),
    "model": ("export", "import", "generate"),
    "data": ("data",),
    "train": ("train", "lr-search"),
    "sweep": ("sweep", "demo"),
    "evaluate": ("eval",),
    "bench": ("bench",),
    "serving": ("serving", "hardware"),
    "report": ("report",),
}


#: Longest error line printed (characters); longer messages are cut (a YAML bomb must not print gigabytes).
MAX_ERROR_CHARS = 400
DEBUG_HINT = "rerun with --debug for the traceback"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr: ``error: cogqa CMD: <what> (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` with its lines joined by ``; `` and cut to ``limit`` characters."""
    text = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every available command group registered, or, for a ``command`` of
    :data:`COMMAND_MODULES`, only the group that holds it (a command's parser then builds in a
    few milliseconds instead of ~80: ``cogqa search`` starts faster)."""
    from .. import __version__

    parser = OneLineParser(
        prog="cogqa",
        description="Cost-optimal grouped-query attention: cost model, scaling laws, search, training pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"cogqa {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show Python tracebacks instead of one-line errors (also COGQA_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    groups = [m for m, commands in COMMAND_MODULES.items() if command in commands] or list(COMMAND_MODULES)
    for name in groups:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (after an optional ``--debug``), or None."""
    words = argv[1:] if argv[:1] == ["--debug"] else argv
    return words[0] if words else None


def _debug_requested(argv: list[str]) -> bool:
    return os.environ.get("COGQA_DEBUG", "").strip() not in ("", "0") or "--debug" in argv[:1]


def _file_of(exc: BaseException) -> str | None:
    """The file an exception concerns: its ``filename``, else a path-like local of the innermost frame that has one."""
    name = getattr(exc, "filename", None)
    if name:
        return str(name)
    tb, found = exc.__traceback__, None
    while tb is not None:
        for key in ("path", "source", "file", "filename", "fname"):
            value = tb.tb_frame.f_locals.get(key)
            if isinstance(value, (str, Path)) and str(value) and len(str(value)) < 4096:
                try:
                    if Path(value).is_file():
                        found = str(value)
                        break
                except (OSError, ValueError):
                    continue
        tb = tb.tb_next
    return found


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line (without the ``error:`` prefix) describing ``exc`` for a user, and the exit status."""
    if isinstance(exc, CogqaError):
        return one_line(exc), 2
    where = _file_of(exc)
    at = f"{where}: " if where else ""
    if isinstance(exc, json.JSONDecodeError):
        return f"{at}invalid JSON ({exc.msg} at line {exc.lineno}); is the file truncated?", 2
    if isinstance(exc, UnicodeError):
        return f"{at}not UTF-8 text ({one_line(exc, 120)}); convert the file to UTF-8", 2
    if isinstance(exc, RecursionError):
        return f"{at}nested too deeply to read (JSON/YAML deeper than Python's recursion limit)", 2
    if isinstance(exc, MemoryError):
        return f"{at}out of memory; use a smaller input or a machine with more memory", 2
    if isinstance(exc, OverflowError) or (isinstance(exc, ValueError) and "digits" in str(exc)):
        return f"{at}a number is too large ({one_line(exc, 120)})", 2
    if isinstance(exc, OSError):
        name = exc.filename or where or ""
        reason = exc.strerror or one_line(exc)
        return (f"{name}: {reason}" if name else reason), 2
    return f"{type(exc).__name__}: {one_line(exc) or 'no message'}{f' ({at[:-2]})' if where else ''}; {DEBUG_HINT}", 1


def _quiet_broken_pipe() -> int:
    """Stdout's reader went away (``cogqa ... | head -1``): point stdout at /dev/null so the interpreter's final
    flush cannot fail again (the recipe of the Python documentation, "Note on SIGPIPE"); exit status 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cogqa`` console script; returns the exit status.

    Any error becomes one line on stderr (``error: ...``) and a non-zero status: 2 for bad input, 1 for an
    unexpected failure (with a hint to rerun with ``--debug``), 130 for Ctrl-C. ``--debug`` before the command
    (or ``COGQA_DEBUG=1``) re-raises instead, showing the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
        status = args.func(args)
        sys.stdout.flush()
    except SystemExit:
        raise
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - the one place every remaining error becomes one line
        if debug:
            raise
        message, status = describe_error(exc)
        try:
            print(f"error: {message}", file=sys.stderr)
        except (BrokenPipeError, OSError):
            pass
        return status
    return int(status or 0)


class ConfigDefault:
    """An argparse default that is :class:`cogqa.config.TrainConfig`'s own, looked up only when shown
    (``%(default)s`` in help) or used (:func:`config_value`): building the parser then imports no
    dataclasses, so ``cogqa --help`` stays as fast as before."""

    def __init__(self, name: str):
        self.name = name

    def value(self):
        """The default of TrainConfig field ``name``."""
        from ..config import default

        return default(self.name)

    def __str__(self) -> str:
        v = self.value()
        return f"{v:g}" if isinstance(v, float) else str(v)


def config_value(value):
    """``value`` as given on the command line, or the TrainConfig default a :class:`ConfigDefault` stands for."""
    return value.value() if isinstance(value, ConfigDefault) else value


def given(value):
    """``value`` if the user gave it, None if it is a :class:`ConfigDefault` (the spec or config decides)."""
    return None if isinstance(value, ConfigDefault) else value


def print_json(obj) -> None:
    """Print ``obj`` as indented JSON on stdout (numpy scalars and arrays converted)."""
    from ..files import json_default

    print(json.dumps(obj, indent=2, default=json_default))
