"""Typed readers: every JSON/YAML file cogqa reads goes through here.

A file that is not what it should be -- not UTF-8, not JSON/YAML, nested deeper than
:data:`MAX_DEPTH`, an integer longer than :data:`MAX_INT_DIGITS` digits, NaN/Infinity, a YAML
alias, a field of the wrong type -- becomes one :class:`~cogqa.errors.CogqaError` line naming the
file and the field. Messages quote input through :func:`short`, so they stay short whatever the file holds.
"""

from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any

from .errors import CogqaError, require

#: Deepest nesting of objects/lists accepted in a file cogqa reads (real files need < 10).
MAX_DEPTH = 64
#: Longest integer literal accepted (digits): 2**63 has 19.
MAX_INT_DIGITS = 19
#: Largest file read whole (bytes): 256 MiB.
MAX_BYTES = 256 * 2**20
#: Most YAML nodes in one file.
MAX_YAML_NODES = 100_000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 40, 40, 4, 4


def short(value: Any, limit: int = 60) -> str:
    """A repr of ``value`` of at most ``limit`` characters, never expanding a huge or nested value."""
    text = _REPR.repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _constant(name: str):
    raise ValueError(f"{name} where a number belongs (JSON has no {name}); a value that cannot be true")


def _depth(value: Any, source: str) -> None:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            require(d <= MAX_DEPTH, f"{source}: nested deeper than {MAX_DEPTH} levels; not a file cogqa wrote")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))


def parse_json(text: str | bytes, source: str) -> Any:
    """The JSON value of ``text`` (from ``source``, named in errors), checked for depth, big integers, NaN."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise CogqaError(f"{source}: not a UTF-8 text file; is it the right file?") from None
    try:
        value = json.loads(text, parse_int=_int, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise CogqaError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}); is the file truncated?") from None
    except RecursionError:
        raise CogqaError(f"{source}: nested too deeply to read; not a file cogqa wrote") from None
    except ValueError as exc:
        raise CogqaError(f"{source}: {str(exc)[:120]}") from None
    _depth(value, source)
    return value


def _read_bytes(path: Path, source: str) -> bytes:
    require(path.is_file(), f"{source}: no such file")
    try:
        size = path.stat().st_size
        require(size <= MAX_BYTES, f"{source}: {size:,} bytes is too large for this file (at most {MAX_BYTES:,} bytes)")
        return path.read_bytes()
    except OSError as exc:
        raise CogqaError(f"{source}: cannot read ({exc.strerror})") from None


def read_json(path: str | Path, source: str | None = None) -> Any:
    """The JSON value of the file at ``path``; errors name ``source`` (default: the path)."""
    path = Path(path)
    source = source or str(path)
    return parse_json(_read_bytes(path, source), source)


def read_json_object(path: str | Path, source: str | None = None) -> dict:
    """:func:`read_json` that also requires a JSON object at the top level."""
    source = source or str(path)
    value = read_json(path, source)
    require(isinstance(value, dict), f"{source}: expected a JSON object at the top level, got {type_name(value)}")
    return value


def parse_yaml(text: str, source: str) -> Any:
    """The YAML value of ``text``: safe types only, no aliases (a 600-byte alias bomb expands to gigabytes),
    at most :data:`MAX_YAML_NODES` nodes and :data:`MAX_DEPTH` levels."""
    import yaml

    class _Loader(yaml.SafeLoader):
        nodes = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise CogqaError(f"{source}: YAML aliases (*name) are not accepted; write the value out")
            _Loader.nodes += 1
            if _Loader.nodes > MAX_YAML_NODES:
                raise CogqaError(f"{source}: more than {MAX_YAML_NODES:,} YAML nodes; not a file for cogqa")
            return super().compose_node(parent, index)

    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CogqaError(f"{source}: not valid YAML{where}: {short(getattr(exc, 'problem', None) or '', 80)}") from None
    except RecursionError:
        raise CogqaError(f"{source}: nested too deeply to read") from None
    _depth(value, source)
    _check_numbers(value, source)
    return value


def _check_numbers(value: Any, source: str) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            require(len(str(abs(v))) <= MAX_INT_DIGITS, f"{source}: an integer of more than {MAX_INT_DIGITS} digits")
        elif isinstance(v, float):
            require(math.isfinite(v), f"{source}: {v} is not a number cogqa accepts")


def read_yaml_or_json(path: str | Path, source: str | None = None) -> Any:
    """A ``.yaml``/``.yml`` file through :func:`parse_yaml`, anything else through :func:`parse_json`."""
    path = Path(path)
    source = source or str(path)
    data = _read_bytes(path, source)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            return parse_yaml(data.decode("utf-8"), source)
        except UnicodeDecodeError:
            raise CogqaError(f"{source}: not a UTF-8 text file") from None
    return parse_json(data, source)


def type_name(value: Any) -> str:
    """``null``, ``a string``, ``a list``, ... : the JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"{short(value)}"


_KINDS = {
    "int": "a whole number",
    "number": "a number",
    "str": "a string",
    "bool": "true or false",
    "dict": "an object",
    "list": "a list",
}


def _fits(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


_MISSING = object()


def field(
    data: dict,
    key: str,
    kind: str,
    source: str,
    default: Any = _MISSING,
    low: float | None = None,
    high: float | None = None,
    where: str = "",
) -> Any:
    """``data[key]`` checked to be of ``kind`` (int, number, str, bool, dict, list) and within [low, high].

    Missing (or null with a default): ``default``, or an error when there is none. Errors name
    ``source`` (the file) and the field (``where`` + ``key``) in one line.
    """
    name = f"{where}{key}"
    value = data.get(key, _MISSING) if isinstance(data, dict) else _MISSING
    if value is _MISSING or (value is None and default is not _MISSING):
        require(default is not _MISSING, f"{source}: missing field {name!r}")
        return default
    require(_fits(value, kind), f"{source}: field {name!r} must be {_KINDS[kind]}, got {type_name(value)}")
    if low is not None or high is not None:
        lo = -math.inf if low is None else low
        hi = math.inf if high is None else high
        require(lo <= value <= hi, f"{source}: field {name!r} must be between {lo:g} and {hi:g}, got {short(value)}")
    return value
