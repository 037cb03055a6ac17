"""Appendix B.1: the shape of a model of any real-valued size N, in a family of models.

:class:`ModelFamily` says how a size becomes a shape (interpolated aspect ratios of reference
shapes, head size, vocabulary); :func:`shape_for_params` gives the real-valued shape (numpy arrays
allowed: whole grids at once), :func:`nearest_buildable` a buildable one, and
:func:`shape_from_spec` the shape named on a command line ("470M", "1.8B:8,1", a config.json
path). Sizes N count non-embedding parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import require
from .shapes import (
    MAX_PARAMS,
    PAPER_HEAD_DIM,
    PAPER_LARGE_SHAPES,
    PAPER_SWEEP_SHAPES,
    PAPER_VOCAB,
    ModelShape,
    RealShape,
    paper_ffn_size,
    paper_shape,
    shape_from_hf_config,
)
from .units import parse_count, parse_head_config


def _real_non_embedding(layers, hidden, n_heads, n_kv_heads, head_dim):
    """Non-embedding parameters of the paper's family with real-valued sizes (d_ff = 8d/3)."""
    per_layer = 2 * hidden * head_dim * (n_heads + n_kv_heads) + 3 * hidden * (8 * hidden / 3) + 2 * hidden
    return layers * per_layer + hidden


@dataclass(frozen=True)
class ModelFamily:
    """How a real-valued size N becomes a shape (Appendix B.1) for one family of models.

    ``reference_shapes`` are the (layers, hidden size) pairs whose aspect ratios d/L are
    interpolated (the paper: Tables 9 and 7); ``head_dim`` and ``vocab_size`` complete the shape;
    buildable shapes round d to a multiple of ``hidden_multiple``. Laws fitted on other models
    (e.g. the CPU demo's: d_h = 16, 320 byte tokens, L = 2) carry their family in the laws
    file's ``metadata.family`` so that search costs shapes of that family.
    """

    head_dim: int = PAPER_HEAD_DIM
    vocab_size: int = PAPER_VOCAB
    reference_shapes: tuple[tuple[int, int], ...] = ()
    hidden_multiple: int = PAPER_HEAD_DIM

    def __post_init__(self) -> None:
        for name in ("head_dim", "vocab_size", "hidden_multiple"):
            v = getattr(self, name)
            require(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"family.{name}: must be a positive integer, got {v!r}",
            )
        shapes = (
            tuple((int(layers), int(hidden)) for layers, hidden in self.reference_shapes) or _paper_reference_shapes()
        )
        require(
            all(layers > 0 and hidden > 0 for layers, hidden in shapes),
            "family.reference_shapes: layers and hidden sizes must be positive",
        )
        object.__setattr__(self, "reference_shapes", tuple(sorted(set(shapes))))

    def to_dict(self) -> dict[str, Any]:
        """The family as a JSON object (``metadata.family`` of a laws file)."""
        return {
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "reference_shapes": [list(x) for x in self.reference_shapes],
            "hidden_multiple": self.hidden_multiple,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ModelFamily":
        """A family from ``metadata.family`` (missing keys: the paper's values); None -> the paper's."""
        if not data:
            return cls()
        require(isinstance(data, dict), "family: expected an object with head_dim, vocab_size, reference_shapes")
        unknown = set(data) - {"head_dim", "vocab_size", "reference_shapes", "hidden_multiple"}
        require(not unknown, f"family: unknown field(s) {', '.join(sorted(unknown))}")
        refs = data.get("reference_shapes") or ()
        require(
            all(isinstance(x, (list, tuple)) and len(x) == 2 for x in refs),
            "family.reference_shapes: expected a list of [layers, hidden_size] pairs",
        )
        return cls(
            head_dim=data.get("head_dim", PAPER_HEAD_DIM),
            vocab_size=data.get("vocab_size", PAPER_VOCAB),
            reference_shapes=tuple(tuple(x) for x in refs),
            hidden_multiple=data.get("hidden_multiple", PAPER_HEAD_DIM),
        )


def _paper_reference_shapes() -> tuple[tuple[int, int], ...]:
    shapes = {v[:2] for v in PAPER_SWEEP_SHAPES.values()} | set(PAPER_LARGE_SHAPES.values())
    return tuple(sorted(shapes))


#: The paper's family: d_h = 64, GPT-2 vocabulary, Tables 9 and 7 as aspect-ratio references.
PAPER_FAMILY = ModelFamily()


def _reference_points(family: ModelFamily = PAPER_FAMILY) -> tuple[np.ndarray, np.ndarray]:
    """(non-embedding N of each MHA reference shape, its aspect ratio d/L), sorted by N."""
    ns, ratios = [], []
    for layers, hidden in family.reference_shapes:
        heads = hidden / family.head_dim
        ns.append(_real_non_embedding(layers, hidden, heads, heads, family.head_dim))
        ratios.append(hidden / layers)
    order = np.argsort(ns)
    return np.asarray(ns)[order], np.asarray(ratios)[order]


def aspect_ratio_for_params(n_params, family: ModelFamily = PAPER_FAMILY) -> np.ndarray:
    """Aspect ratio d/L for a non-embedding size N (parameters): linear interpolation in N
    between the nearest two reference shapes of ``family`` (the paper's: Tables 7 and 9),
    clamped at both ends."""
    ref_n, ref_ratio = _reference_points(family)
    return np.interp(np.asarray(n_params, dtype=float), ref_n, ref_ratio)


def shape_for_params(
    n_params,
    n_heads=None,
    n_kv_heads=None,
    head_dim: int | None = None,
    vocab_size: int | None = None,
    family: ModelFamily = PAPER_FAMILY,
) -> RealShape:
    """Appendix B.1: the real-valued shape whose non-embedding size is ``n_params`` (parameters).

    ``n_heads=None`` means ``d / head_dim`` (heads follow the hidden size, as in Llama-3);
    ``n_kv_heads=None`` means ``n_heads`` (MHA). Arrays broadcast. The aspect ratio comes from
    :func:`aspect_ratio_for_params` over ``family``'s reference shapes, then L solves the
    cubic N(L) (Newton's method, to double precision) so that the model has exactly ``n_params``
    non-embedding parameters, and
    ``d = a * L``. ``head_dim`` and ``vocab_size`` default to the family's.
    """
    n = np.asarray(n_params, dtype=float)
    require(bool(np.all(np.isfinite(n)) and np.all(n > 0)), "params must be a positive, finite number of parameters")
    require(bool(np.all(n <= MAX_PARAMS)), "params: a size beyond 1e15 parameters is not a decoder; allowed up to 1e15")
    head_dim = family.head_dim if head_dim is None else head_dim
    vocab_size = family.vocab_size if vocab_size is None else vocab_size
    for name, heads in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):  # (the cubic below needs them > 0)
        h = None if heads is None else np.asarray(heads, dtype=float)
        require(h is None or bool(np.all(np.isfinite(h)) and np.all(h > 0)), f"{name} must be positive, got {heads!r}")
    ratio = aspect_ratio_for_params(n, family)

    def heads_at(hidden):
        h = hidden / head_dim if n_heads is None else np.asarray(n_heads, dtype=float)
        kv = h if n_kv_heads is None else np.asarray(n_kv_heads, dtype=float)
        return h, kv

    # With d = a L and heads h = h1 L + h0, kv = k1 L + k0 (h1 = a / d_h when heads follow d, else h0 = n_h),
    # _real_non_embedding is the cubic N(L) = c3 L^3 + c2 L^2 + c1 L, all coefficients positive.
    h1, h0 = (ratio / head_dim, 0.0) if n_heads is None else (0.0, np.asarray(n_heads, dtype=float))
    k1, k0 = (h1, h0) if n_kv_heads is None else (0.0, np.asarray(n_kv_heads, dtype=float))
    c3 = 8 * ratio**2 + 2 * ratio * head_dim * (h1 + k1)
    c2 = 2 * ratio + 2 * ratio * head_dim * (h0 + k0)
    c1 = ratio
    c3, c2, c1, target = np.broadcast_arrays(c3, c2, c1, n)
    # Each term alone is below N at the root, so the smallest of these bounds lies above it; the cubic is
    # increasing and convex for L > 0, so Newton's steps from above fall monotonically onto the root.
    layers = np.minimum(np.minimum(np.cbrt(target / c3), np.sqrt(target / c2)), target / c1)
    for _ in range(100):
        step = (((c3 * layers + c2) * layers + c1) * layers - target) / ((3 * c3 * layers + 2 * c2) * layers + c1)
        layers = layers - step
        if not np.any(np.abs(step) > 1e-15 * layers):
            break
    hidden = ratio * layers
    h, kv = heads_at(hidden)
    h, kv = np.broadcast_arrays(h, kv)
    scalar = np.ndim(layers) == 0
    as_out = (lambda x: float(x)) if scalar else (lambda x: np.asarray(x, dtype=float))
    return RealShape(
        layers=as_out(layers),
        hidden_size=as_out(hidden),
        ffn_size=as_out(8 * hidden / 3),
        n_heads=as_out(h),
        n_kv_heads=as_out(kv),
        head_dim=head_dim,
        vocab_size=vocab_size,
    )


def nearest_buildable(
    real: RealShape, heads_follow_hidden: bool = False, hidden_multiple: int = PAPER_HEAD_DIM
) -> ModelShape:
    """The buildable ModelShape nearest to a scalar RealShape: L and d rounded down or up
    (d to a multiple of ``hidden_multiple``), keeping the pair whose non-embedding size is
    closest. With ``heads_follow_hidden`` (``n_heads = d / d_h``, as for ``shape_for_params``
    with ``n_heads=None``) n_heads is recomputed from the rounded d, as a multiple of n_kv."""
    require(np.ndim(real.layers) == 0, "nearest_buildable takes a single shape, not a grid")
    target = _real_non_embedding(real.layers, real.hidden_size, real.n_heads, real.n_kv_heads, real.head_dim)
    best = None  # (error in parameters, layers, hidden, n_h, n_kv); one ModelShape is built, for the winner
    n_kv = max(1, round(real.n_kv_heads))
    for layers in {max(1, math.floor(real.layers)), max(1, math.ceil(real.layers))}:
        for hidden in {
            max(hidden_multiple, math.floor(real.hidden_size / hidden_multiple) * hidden_multiple),
            max(hidden_multiple, math.ceil(real.hidden_size / hidden_multiple) * hidden_multiple),
        }:
            if heads_follow_hidden:
                n_h = max(n_kv, round(hidden / real.head_dim / n_kv) * n_kv)
            else:
                n_h = max(n_kv, round(real.n_heads / n_kv) * n_kv)
            err = abs(_real_non_embedding(layers, hidden, n_h, n_kv, real.head_dim) - target)
            if best is None or err < best[0]:
                best = (err, layers, hidden, n_h, n_kv)
    _, layers, hidden, n_h, n_kv = best
    return ModelShape(
        layers=layers,
        hidden_size=hidden,
        ffn_size=paper_ffn_size(hidden),
        n_heads=n_h,
        n_kv_heads=n_kv,
        head_dim=int(real.head_dim),
        vocab_size=int(real.vocab_size),
    )


def shape_from_spec(spec: str) -> ModelShape | RealShape:
    """A shape from a short text spec, as the CLI takes it.

    * a path to a Hugging Face ``config.json`` or to a directory holding one;
    * a paper size, optionally with heads: ``470M``, ``1.2B:8,1`` (n_heads 8, n_kv_heads 1);
    * any other size in parameters, optionally with heads: ``2.5B:8,1`` -> the real-valued
      Appendix B.1 shape (non-embedding N = 2.5e9; heads default to MHA with d_h = 64).
    """
    text = str(spec).strip()
    require(text != "", "shape spec is empty; give a config.json path, a paper size like 470M, or 470M:8,1")
    path = Path(text)
    if path.suffix == ".json" or path.is_dir() or path.is_file():
        return shape_from_hf_config(path)
    size, _, heads = text.partition(":")
    n_h = n_kv = None
    if heads:
        if heads.strip().isdigit() and int(heads) > 0:
            n_h = n_kv = int(heads)  # 470M:8 is MHA with 8 heads
        else:  # the one head-configuration parser: 8,1 (also 8:1, (8,1), H=(8,1))
            n_h, n_kv = parse_head_config(heads, field=f"shape spec {text!r}")
    known = {k.upper() for k in list(PAPER_SWEEP_SHAPES) + list(PAPER_LARGE_SHAPES)}
    if size.strip().upper() in known:
        return paper_shape(size.strip(), n_h, n_kv)
    n = parse_count(size, f"shape spec {text!r}")
    return shape_for_params(n, n_h, n_kv)
