"""Kernel-shape efficiency curves of a hardware profile (:class:`cogqa.hardware.Hardware`): checking them and
reading them between measured points. A curve maps an integer (a GQA group size) to an efficiency; a grid maps a
matrix shape ``"ROWSxCOLS"`` to one. Efficiencies are fractions in (0, 1]; between points they are interpolated
linearly in log2 (bilinearly on a grid) and held constant beyond them. Pure numpy."""

from __future__ import annotations

import math

from .errors import require


def check_curve(value, name: str, what: str, where: str) -> dict | None:
    """A kernel-shape curve as ``{int key: efficiency}`` sorted by key (JSON keys may be strings), or None."""
    if value is None:
        return None
    hint = f"{where}: '{name}' must map a {what} (a positive integer) to a fraction in (0, 1], e.g. {{\"1024\": 0.6}}"
    require(isinstance(value, dict) and 1 <= len(value) <= 64, hint + f"; got {value!r:.80}")
    out = {}
    for key, eff in value.items():
        try:
            k = int(key)
        except (TypeError, ValueError):
            k = 0
        ok = isinstance(eff, (int, float)) and not isinstance(eff, bool) and math.isfinite(eff) and 0 < eff <= 1
        require(k >= 1 and str(k) == str(key).strip() and ok, hint + f"; got {key!r}: {eff!r}")
        out[k] = float(eff)
    return dict(sorted(out.items()))


def _shape_key(key) -> tuple[int, int] | None:
    """``"1024x4096"`` -> (1024, 4096); None when it is not two positive integers joined by ``x``."""
    parts = str(key).strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def check_grid(value, where: str) -> dict | None:
    """A shape grid as ``{"ROWSxCOLS": efficiency}`` covering every rows x cols pair, sorted, or None."""
    if value is None:
        return None
    hint = (
        f'{where}: \'gemv_efficiency_by_shape\' must map every "ROWSxCOLS" of a grid (e.g. "1024x4096", '
        "elements) to a fraction in (0, 1]"
    )
    require(isinstance(value, dict) and 1 <= len(value) <= 1024, hint + f"; got {value!r:.80}")
    out = {}
    for key, eff in value.items():
        shape = _shape_key(key)
        ok = isinstance(eff, (int, float)) and not isinstance(eff, bool) and math.isfinite(eff) and 0 < eff <= 1
        require(shape is not None and ok, hint + f"; got {key!r}: {eff!r}")
        out[shape] = float(eff)
    rows, cols = sorted({r for r, _ in out}), sorted({c for _, c in out})
    missing = [f"{r}x{c}" for r in rows for c in cols if (r, c) not in out]
    require(not missing, hint + f"; the grid lacks {', '.join(missing[:3])}")
    return {f"{r}x{c}": out[(r, c)] for r in rows for c in cols}


def _axis(points, x):
    """Lower index and weight of ``x`` between sorted ``points`` in log2 (clamped at the ends)."""
    import numpy as np

    lp = np.log2(np.asarray(points, dtype=float))
    lx = np.clip(np.log2(np.maximum(np.asarray(x, dtype=float), 1.0)), lp[0], lp[-1])
    if len(lp) == 1:
        return np.zeros(np.shape(lx), dtype=int), np.zeros(np.shape(lx))
    i = np.clip(np.searchsorted(lp, lx, side="right") - 1, 0, len(lp) - 2)
    return i, (lx - lp[i]) / (lp[i + 1] - lp[i])


def interpolate_grid(grid: dict, rows, cols):
    """The grid's efficiency at (rows, cols): bilinear in (log2 rows, log2 cols), constant beyond the grid."""
    import numpy as np

    shapes = [_shape_key(k) for k in grid]
    rs, cs = sorted({r for r, _ in shapes}), sorted({c for _, c in shapes})
    table = np.array([[grid[f"{r}x{c}"] for c in cs] for r in rs])
    table = np.pad(table, ((0, 1), (0, 1)), mode="edge")  # a single point on an axis still has a "next" one
    i, wi = _axis(rs, rows)
    j, wj = _axis(cs, cols)
    i1, j1 = np.minimum(i + 1, table.shape[0] - 1), np.minimum(j + 1, table.shape[1] - 1)
    top = table[i, j] * (1 - wj) + table[i, j1] * wj
    bottom = table[i1, j] * (1 - wj) + table[i1, j1] * wj
    return top * (1 - wi) + bottom * wi


def interpolate_curve(curve: dict, x):
    """The curve's efficiency at ``x``: linear in log2(x) between measured points, constant beyond them."""
    import numpy as np

    keys = np.log2(np.array(list(curve), dtype=float))
    return np.interp(np.log2(np.maximum(np.asarray(x, dtype=float), 1.0)), keys, np.array(list(curve.values())))
