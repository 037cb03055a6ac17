"""The ``cogqa`` command: a thin layer that parses arguments, calls the API and prints.

Each command group lives in its own module ``cogqa.cli.<group>`` exposing ``register(subparsers)``.
Those modules import only the standard library and cogqa's numpy modules at import time; torch
is imported inside the handlers that need it, so ``cogqa cost`` and ``cogqa --help`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys

from ..errors import CogqaError

#: Command-group modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = ("cost", "plot", "fit", "search", "model", "data", "train", "sweep", "evaluate", "bench", "serving", "report")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available command group registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cogqa",
        description="Cost-optimal grouped-query attention: cost model, scaling laws, search, training pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"cogqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cogqa`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except CogqaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"error: invalid JSON ({exc.msg} at line {exc.lineno}); is the file truncated?", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
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
