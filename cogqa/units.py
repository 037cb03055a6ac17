"""Parsing and printing of counts with units: context lengths, sizes, bytes, FLOPs; head configurations."""

from __future__ import annotations

import math
import re

from .errors import CogqaError, require

_SUFFIX = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
#: The longest context cogqa accepts (tokens): 2**40, about 1.1 trillion; anything longer is a typo.
MAX_CONTEXT = 2**40
#: The largest count cogqa accepts (parameters, tokens, FLOPs): 1e30; anything larger is a typo.
MAX_COUNT = 1e30

_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTP]?i?B?)\s*$", re.IGNORECASE)


def parse_context(text: str | int, field: str = "--context") -> int:
    """A context length in tokens from ``131072``, ``128k``/``128K`` (x1024) or ``1M`` (x1024^2).

    Raises :class:`CogqaError` naming ``field`` for anything else, for T <= 0 and for T > 2**40
    (:data:`MAX_CONTEXT`).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SUFFIX.match(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in ("", "k", "m"):
            raise CogqaError(f"{field}: {text!r} is not a context length; write e.g. 8192, 8k or 128k")
        value = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[unit]
        if value > MAX_CONTEXT:
            raise CogqaError(f"{field}: {text!r} is too long; allowed 1 to 2**40 ({MAX_CONTEXT:,}) tokens")
        if not value.is_integer():
            raise CogqaError(f"{field}: {text!r} is not a whole number of tokens")
        value = int(value)
    if value <= 0:
        raise CogqaError(f"{field}: context length must be at least 1 token, got {value}")
    if value > MAX_CONTEXT:
        raise CogqaError(f"{field}: {value} tokens is too long; allowed 1 to 2**40 ({MAX_CONTEXT:,}) tokens")
    return value


def parse_contexts(text: str, field: str = "--context") -> list[int]:
    """A comma-separated list of context lengths (``8k,32k,128k``) in tokens."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise CogqaError(f"{field}: give at least one context length, e.g. 8k")
    return [parse_context(p, field) for p in parts]


def parse_count(text: str | int | float, field: str) -> float:
    """A decimal count from ``470M``, ``1.2B``, ``2e9``, ``20k`` (k=1e3, M=1e6, B/G=1e9, T=1e12); at most 1e30."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _SUFFIX.match(str(text))
        unit = m.group(2).upper() if m else None
        scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
        if not m or unit not in scale:
            raise CogqaError(f"{field}: {text!r} is not a number; write e.g. 470M, 1.2B or 2e9")
        value = float(m.group(1)) * scale[unit]
    if not math.isfinite(value) or value <= 0:
        raise CogqaError(f"{field}: must be a positive number, got {text!r}")
    if value > MAX_COUNT:
        raise CogqaError(f"{field}: {text!r} is too large; allowed up to 1e30")
    return value


def parse_bytes(text: str, field: str) -> float:
    """Bytes from ``16GiB``, ``16GB``, ``16G`` (= GB, 1e9), ``2e9`` or ``1.5TiB``."""
    m = _BYTES.match(str(text))
    require(m is not None, f"{field}: {text!r} is not an amount of memory; write e.g. 16GiB, 24GB or 2e10")
    unit = m.group(2).upper().rstrip("B") if m.group(2) else ""
    if unit.endswith("I"):
        scale = 1024 ** ("KMGTP".index(unit[0]) + 1)
    else:
        scale = 1000 ** ("KMGTP".index(unit) + 1) if unit else 1
    value = float(m.group(1)) * scale
    require(math.isfinite(value) and value > 0, f"{field}: must be a positive amount of memory, got {text!r}")
    return value


def parse_float(text: str, field: str) -> float:
    """A finite float, or a one-line error naming ``field``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CogqaError(f"{field}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CogqaError(f"{field}: must be finite, got {text!r}")
    return value


def _three_digits(x: float) -> str:
    """About three significant digits, never in e-notation: 1023, 12.3, 1.23, 0.123."""
    a = abs(x)
    if a >= 100 or x == 0:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _scaled(value: float, steps: list[tuple[float, str]], unit: str) -> str:
    for scale, prefix in steps:
        if abs(value) >= scale:
            return f"{_three_digits(value / scale)} {prefix}{unit}"
    return f"{_three_digits(value)} {unit}"


_DECIMAL = [(1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]


def fmt_bytes(n: float) -> str:
    """Bytes in binary units: ``1.5 GiB``."""
    return _scaled(float(n), [(2**50, "Pi"), (2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")], "B")


def fmt_flops(n: float) -> str:
    """FLOPs in decimal units: ``2.47 GFLOPs``."""
    return _scaled(float(n), _DECIMAL, "FLOPs")


def fmt_params(n: float) -> str:
    """Parameters in decimal units: ``1.24 B params``."""
    steps = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")]
    for scale, prefix in steps:
        if abs(n) >= scale:
            return f"{_three_digits(n / scale)}{prefix} params"
    return f"{n:.0f} params"


def fmt_tokens(n: float) -> str:
    """A token count: ``128K tokens`` / ``1M tokens`` (x1024) for powers of two from 1K, as
    context lengths are written; else decimal, ``315M tokens``."""
    n = float(n)
    if n >= 1024 and n.is_integer() and int(n) & (int(n) - 1) == 0:
        k = int(n) // 1024
        return f"{k // 1024}M tokens" if k >= 1024 else f"{k}K tokens"
    for scale, prefix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{_three_digits(n / scale)}{prefix} tokens"
    return f"{_three_digits(n)} tokens"


def parse_length_distribution(spec: str, field: str = "--context-dist") -> tuple[list[int], list[float]]:
    """Context lengths and their counts from ``1k:5,8k:3,128k:2`` (counts optional, default 1) or
    from a text/CSV file with one ``length[,count]`` per line. Returns (lengths in tokens, counts)."""
    from pathlib import Path

    text = str(spec)
    path = Path(text)
    if path.is_file():
        require(path.stat().st_size <= 64 * 2**20, f"{field} {path}: larger than 64 MiB; give a histogram")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise CogqaError(f"{field} {path}: not a UTF-8 text file of 'length,count' lines") from None
        items = [line.split("#")[0].strip() for line in lines]
        items = [i.replace("\t", ",").replace(" ", ",") for i in items if i and not i.lower().startswith("length")]
        items = [i.replace(",", ":", 1) for i in items]
        where = f"{field} {path}"
    else:
        items = [p.strip() for p in text.split(",") if p.strip()]
        where = field
    if not items:
        raise CogqaError(f"{where}: no context lengths found; write e.g. 1k:5,8k:3 or a file of 'length,count' lines")
    lengths, counts = [], []
    for item in items:
        length, _, count = item.partition(":")
        lengths.append(parse_context(length.strip(","), where))
        counts.append(parse_float(count.strip(","), f"{where} count") if count.strip(",") else 1.0)
        if counts[-1] < 0:
            raise CogqaError(f"{where}: counts must be >= 0, got {counts[-1]:g}")
    if sum(counts) <= 0:
        raise CogqaError(f"{where}: counts must not all be zero")
    return lengths, counts


# One head configuration H = (n_heads, n_kv_heads). Canonical spelling ``8,1``; accepted aliases
# ``8:1``, ``8/1``, ``8x1``, ``(8,1)``, ``(8, 1)``, ``H=(8,1)``.
_HEAD_ITEM = re.compile(r"(?:H\s*=\s*)?\(?\s*(\d+)\s*[:,/x]\s*(\d+)\s*\)?", re.IGNORECASE)
HEADS_EXAMPLE = "8,1 (also 8:1, (8,1), H=(8,1))"


def parse_head_config(text, field: str = "--heads") -> tuple[int, int]:
    """One head configuration (n_heads, n_kv_heads) from ``8,1`` (canonical), ``8:1``, ``(8, 1)``,
    ``H=(8,1)`` or a pair of integers; a one-line error unless it is valid GQA
    (0 < n_kv <= n_h and n_kv divides n_h)."""
    if isinstance(text, (list, tuple)):
        ok = len(text) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in text)
        require(ok, f"{field}: unknown head configuration {text!r}; write [n_heads, n_kv_heads] with integers")
        return _checked_heads(int(text[0]), int(text[1]), field)
    m = _HEAD_ITEM.fullmatch(str(text).strip())
    require(
        m is not None,
        f"{field}: unknown head configuration {str(text).strip()!r}; write N_HEADS,N_KV_HEADS, e.g. {HEADS_EXAMPLE}",
    )
    return _checked_heads(_head_int(m.group(1)), _head_int(m.group(2)), field)


def parse_head_configs(text: str, field: str = "--heads") -> list[tuple[int, int]]:
    """Head configurations from a list of :func:`parse_head_config` spellings separated by spaces,
    ``;`` or ``,`` (``8,1 16,4``; ``8:1,16:4``; ``(8,1),(16,4)``); one-line errors name the bad item."""
    text = str(text).strip()
    out, pos = [], 0
    for m in _HEAD_ITEM.finditer(text):
        gap = text[pos : m.start()]
        require(
            gap.strip(" ,;\t") == "",
            f"{field}: unknown head configuration {gap.strip(' ,;')!r}; write N_HEADS,N_KV_HEADS, e.g. {HEADS_EXAMPLE}",
        )
        out.append(_checked_heads(_head_int(m.group(1)), _head_int(m.group(2)), field))
        pos = m.end()
    rest = text[pos:].strip(" ,;\t")
    require(rest == "", f"{field}: unknown head configuration {rest!r}; write N_HEADS,N_KV_HEADS, e.g. {HEADS_EXAMPLE}")
    require(len(out) > 0, f"{field}: give at least one head configuration, e.g. 8,1 16,4")
    return out


def fmt_heads(n_heads: int, n_kv_heads: int) -> str:
    """The canonical spelling of a head configuration: ``8,1``."""
    return f"{n_heads},{n_kv_heads}"


#: The most heads (query or KV) a configuration may have, as ModelShape's bound.
MAX_HEADS = 2**14


def _head_int(digits: str) -> int:
    return int(digits) if len(digits) <= 12 else 10**12  # huge: refused by _checked_heads, never converted


def _checked_heads(h: int, kv: int, field: str) -> tuple[int, int]:
    require(h > 0 and kv > 0, f"{field}: ({h},{kv}) must have positive head counts")
    require(
        h <= MAX_HEADS and kv <= MAX_HEADS,
        f"{field}: head counts must be between 1 and {MAX_HEADS:,}, got ({min(h, 10**12)},{min(kv, 10**12)})",
    )
    require(kv <= h, f"{field}: ({h},{kv}) has n_kv_heads > n_heads; GQA needs n_kv <= n_h")
    require(h % kv == 0, f"{field}: ({h},{kv}): n_kv_heads must divide n_heads")
    return h, kv
