"""The cost model of GQA decoders (the paper's Tables 2, 3 and 8, Appendix C), exact per component.

Every function is pure and vectorised: ``shape`` is a :class:`~cogqa.shapes.ModelShape` or a
:class:`~cogqa.shapes.RealShape` whose fields may be numpy arrays, and context lengths ``T``
may be scalars or arrays; everything broadcasts.

Conventions (also in the README):

* **FLOPs = 2 x multiply-accumulates** of the matrix products. Element-wise work (norms, RoPE,
  softmax, SiLU, residual adds, biases) is not counted: it is < 1% at the sizes the paper studies.
* **Per-token decode FLOPs at context T**: the new token attends to ``T`` cached tokens, so the
  attention computation (QK^T and the weighted sum of V) costs ``4 * L * T * n_h * d_h``.
* **Prefill of P tokens** is causal: token ``i`` (1-based) attends to ``i`` tokens, so the
  attention term sums to ``4 * L * n_h * d_h * P (P + 1) / 2`` -- the lower triangle only.
* **N** (``params_non_embedding``) counts all parameters except the input embedding and an
  untied LM head: the paper's N for scaling laws (its footnote 3). ``params`` counts everything,
  tied embeddings once. The LM head's FLOPs (``2 d V``) are always counted, tied or not.
* **Memory** in bytes: weights x bytes(weight dtype) + KV cache x bytes(KV dtype).
* **Sliding windows** (``shape.sliding_window`` = W on ``shape.windowed_layers`` layers): such a layer
  caches min(T, W) positions and a token at position t attends to min(t, W) keys; every ``L x T`` above
  becomes ``(L - L_w) T + L_w min(T, W)`` (:func:`layer_context`), and the causal sums are taken exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CogqaError, require

#: Bytes per stored value.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "float32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "fp16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "float8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per value of a dtype name (``fp32`` 4, ``bf16``/``fp16`` 2, ``fp8``/``int8`` 1, ``int4`` 0.5)."""
    key = str(dtype).strip().lower()
    if key not in DTYPE_BYTES:
        raise CogqaError(f"unknown dtype {dtype!r}; choose one of fp32, bf16, fp16, fp8, int8, int4")
    return DTYPE_BYTES[key]


def _f(x) -> np.ndarray | float:
    return np.asarray(x, dtype=float)


def _context(T) -> np.ndarray:
    t = np.asarray(T, dtype=float)
    require(bool(np.all(np.isfinite(t))), "context length must be finite")
    require(bool(np.all(t >= 0)), "context length must be >= 0 tokens")
    require(bool(np.all(t <= 2**40)), "context length must be at most 2**40 tokens")
    return t


def _window(shape) -> tuple:
    """(window W in tokens or None, layers using it) of any shape (RealShape has no window)."""
    w = getattr(shape, "sliding_window", None)
    return (None, 0) if w is None else (float(w), float(shape.windowed_layers))


def layer_context(shape, context) -> np.ndarray:
    """Positions attended (= cached) by one token at context ``context``, summed over the layers (tokens x layers).

    ``L T`` for full attention; a layer with a sliding window W counts ``min(T, W)``.
    """
    T = _context(context)
    n_layers = _f(shape.layers)
    w, n_win = _window(shape)
    if w is None:
        return n_layers * T
    return (n_layers - n_win) * T + n_win * np.minimum(T, w)


def causal_pairs(shape, tokens) -> np.ndarray:
    """Query-key pairs of a causal pass over ``tokens`` tokens, summed over the layers (pairs x layers).

    Token i (1-based) attends to i keys: ``P (P + 1) / 2`` per full layer; with a window W,
    ``sum_i min(i, W)`` = ``P (P + 1) / 2`` for P <= W, else ``W (W + 1) / 2 + (P - W) W``.
    """
    P = _context(tokens)
    n_layers = _f(shape.layers)
    full = P * (P + 1) / 2
    w, n_win = _window(shape)
    if w is None:
        return n_layers * full
    m = np.minimum(P, w)
    windowed = m * (m + 1) / 2 + (P - m) * w
    return (n_layers - n_win) * full + n_win * windowed


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def parameter_counts(shape) -> dict[str, np.ndarray]:
    """Parameters per component (units: parameters).

    Keys: ``embedding`` (V d), ``attention`` (q, k, v, o projections and their biases, all
    layers), ``qk_norm``, ``norms`` (two RMSNorms per layer plus the final one), ``ffn``,
    ``lm_head`` (0 when tied), ``non_embedding`` and ``total``.
    """
    n_layers, d, dff = _f(shape.layers), _f(shape.hidden_size), _f(shape.ffn_size)
    nh, nkv, dh, V = _f(shape.n_heads), _f(shape.n_kv_heads), _f(shape.head_dim), _f(shape.vocab_size)
    attn = d * dh * (nh + 2 * nkv) + nh * dh * d
    if shape.qkv_bias:
        attn = attn + dh * (nh + 2 * nkv)
    if shape.o_bias:
        attn = attn + d
    matrices = 3 if shape.ffn_kind == "swiglu" else 2
    ffn = matrices * d * dff
    if shape.mlp_bias:
        ffn = ffn + (matrices - 1) * dff + d
    counts = {
        "embedding": V * d,
        "attention": n_layers * attn,
        "qk_norm": n_layers * 2 * dh * (1.0 if shape.qk_norm else 0.0),
        "norms": 2 * n_layers * d + d,
        "ffn": n_layers * ffn,
        "lm_head": V * d * (0.0 if shape.tie_embeddings else 1.0),
    }
    counts["non_embedding"] = counts["attention"] + counts["qk_norm"] + counts["norms"] + counts["ffn"]
    counts["total"] = counts["non_embedding"] + counts["embedding"] + counts["lm_head"]
    return counts


def params_total(shape) -> np.ndarray:
    """All parameters, tied embeddings counted once (units: parameters)."""
    return parameter_counts(shape)["total"]


def params_non_embedding(shape) -> np.ndarray:
    """The paper's N: parameters without the input embedding and an untied LM head (units: parameters)."""
    return parameter_counts(shape)["non_embedding"]


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------

FLOP_COMPONENTS = ("attention_projections", "attention_computation", "ffn", "lm_head")


def forward_flops_per_token(shape, context) -> dict[str, np.ndarray]:
    """Forward FLOPs for one token attending to ``context`` cached tokens, per component (Table 2).

    Keys: ``embedding`` (0: a lookup), ``attention_projections`` (2 x q/k/v/o weights),
    ``attention_computation`` (``4 L T n_h d_h``, the time-variant part; windowed layers count min(T, W)), ``ffn``
    (2 x FFN weights), ``lm_head`` (``2 d V``, tied or not), ``time_invariant``,
    ``time_variant`` and ``total``. Units: FLOPs per token.
    """
    T = _context(context)
    n_layers, d, dff = _f(shape.layers), _f(shape.hidden_size), _f(shape.ffn_size)
    nh, nkv, dh, V = _f(shape.n_heads), _f(shape.n_kv_heads), _f(shape.head_dim), _f(shape.vocab_size)
    matrices = 3 if shape.ffn_kind == "swiglu" else 2
    out = {
        "embedding": np.zeros_like(n_layers * T),
        "attention_projections": 2 * n_layers * (d * dh * (nh + 2 * nkv) + nh * dh * d) + 0 * T,
        "attention_computation": 4 * layer_context(shape, T) * nh * dh,
        "ffn": 2 * n_layers * matrices * d * dff + 0 * T,
        "lm_head": 2 * d * V + 0 * T,
    }
    out["time_variant"] = out["attention_computation"]
    out["time_invariant"] = out["attention_projections"] + out["ffn"] + out["lm_head"]
    out["total"] = out["time_invariant"] + out["time_variant"]
    return out


def inference_flops_per_token(shape, context) -> np.ndarray:
    """Exact forward FLOPs to decode one token at context length ``context`` (units: FLOPs)."""
    return forward_flops_per_token(shape, context)["total"]


def prefill_flops(shape, prompt_tokens, causal: bool = True) -> np.ndarray:
    """Forward FLOPs to process a whole prompt of ``prompt_tokens`` tokens (units: FLOPs).

    Causal (default): token i attends to i tokens, so attention counts ``P (P + 1) / 2``
    token pairs (the lower triangle, diagonal included; windowed layers ``sum_i min(i, W)``).
    ``causal=False`` counts all ``P^2`` (windowed layers ``P min(P, W)``).
    The LM head is counted for every prompt position (as a training forward pass does).
    """
    P = _context(prompt_tokens)
    per_token = forward_flops_per_token(shape, 0)
    pairs = causal_pairs(shape, P) if causal else layer_context(shape, P) * P
    nh, dh = _f(shape.n_heads), _f(shape.head_dim)
    return P * per_token["time_invariant"] + 4 * nh * dh * pairs


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def kv_cache_values_per_token(shape) -> np.ndarray:
    """Values cached per token of one sequence: ``2 L n_kv d_h`` (keys and values; units: values).

    With a sliding window this is the cost of each of the first W tokens; beyond W the windowed layers
    cache nothing more (use :func:`inference_memory_bytes` for the cache at a context)."""
    return 2 * _f(shape.layers) * _f(shape.n_kv_heads) * _f(shape.head_dim)


def kv_cache_values(shape, context) -> np.ndarray:
    """Values cached for one sequence at ``context`` tokens: ``2 n_kv d_h`` x :func:`layer_context`
    (``2 T L n_kv d_h`` for full attention; windowed layers hold min(T, W) positions; units: values)."""
    return 2 * layer_context(shape, context) * _f(shape.n_kv_heads) * _f(shape.head_dim)


def kv_cache_bytes_per_token(shape, kv_dtype: str = "bf16") -> np.ndarray:
    """KV cache bytes per token of one sequence: ``2 L n_kv d_h x bytes(kv_dtype)`` (units: bytes)."""
    return kv_cache_values_per_token(shape) * dtype_bytes(kv_dtype)


def inference_memory_bytes(
    shape, context, batch=1, weight_dtype: str = "bf16", kv_dtype: str = "bf16"
) -> dict[str, np.ndarray]:
    """Inference memory at context ``context`` for ``batch`` concurrent sequences (units: bytes).

    Keys: ``weights`` (all parameters, time-invariant), ``kv_cache`` (time-variant) and
    ``total``. Activations and framework overhead are not counted. Windowed layers cache min(T, W) positions.
    """
    T = _context(context)
    b = np.asarray(batch, dtype=float)
    require(bool(np.all(b >= 1)) and bool(np.all(b <= 2**40)), "batch must be between 1 and 2**40 sequences")
    weights = params_total(shape) * dtype_bytes(weight_dtype) + 0 * T
    kv = b * kv_cache_values(shape, T) * dtype_bytes(kv_dtype)
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


# ---------------------------------------------------------------------------------------------
# The paper's simplified split and the hardware-aware cost Z
# ---------------------------------------------------------------------------------------------


def paper_inference_flops(shape, context) -> np.ndarray:
    """The paper's Eq. 3: ``C = 2N + 4 T L d_h n_h`` with N = all parameters (units: FLOPs per token)."""
    return 2 * params_total(shape) + 4 * layer_context(shape, context) * _f(shape.head_dim) * _f(shape.n_heads)


def paper_inference_memory(shape, context) -> np.ndarray:
    """The paper's Eq. 4: ``M = N + 2 T L d_h n_kv`` (units: values; multiply by bytes per value)."""
    return params_total(shape) + kv_cache_values(shape, context)


@dataclass(frozen=True)
class ZWeights:
    """The hardware-aware cost Z = lam * M^alpha + (1 - lam) * C^beta (paper defaults 0.9, 1/2, 1/3)."""

    lam: float = 0.9
    alpha: float = 0.5
    beta: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        require(0.0 <= self.lam <= 1.0, f"lambda must be in [0, 1], got {self.lam}")
        require(np.isfinite(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha}")
        require(np.isfinite(self.beta) and self.beta > 0, f"beta must be a positive number, got {self.beta}")


#: What M in Z counts in the old ``memory_unit`` option: stored values or bytes (kept for old callers).
MEMORY_UNITS = ("values", "bytes")


@dataclass(frozen=True)
class ZConvention:
    """What M and C mean inside Z: a named setting, units included.

    ``memory`` and ``flops`` are the equations in words (printed in tables and JSON); ``memory_unit``
    and ``flops_unit`` the units of M and C. See docs/default-laws.md for the evidence behind each.
    """

    name: str
    memory: str
    flops: str
    memory_unit: str
    flops_unit: str

    def describe(self) -> str:
        """One line: ``paper: M = ... (bytes), C = ... (FLOPs per T-token sequence)``."""
        return f"{self.name}: M = {self.memory} ({self.memory_unit}), C = {self.flops} ({self.flops_unit})"

    def to_dict(self) -> dict:
        """The convention as a JSON object (name, equations, units)."""
        return {
            "name": self.name,
            "memory": self.memory,
            "flops": self.flops,
            "memory_unit": self.memory_unit,
            "flops_unit": self.flops_unit,
        }


#: The Z conventions by name. ``paper`` is the one the paper's Figure 2 plots (decoded from its axes;
#: see docs/default-laws.md) and the default everywhere.
Z_CONVENTIONS: dict[str, ZConvention] = {
    "paper": ZConvention(
        "paper",
        "bytes(weights) x N + bytes(KV) x batch x 2 T L d_h n_kv",
        "batch x T x (2 N + 4 T L d_h n_h)",
        "bytes",
        "FLOPs to decode T tokens per sequence",
    ),
    "eq4-per-token": ZConvention(
        "eq4-per-token",
        "all parameters + batch x 2 T L d_h n_kv",
        "exact forward FLOPs of one token at context T",
        "values",
        "FLOPs per token",
    ),
    "bytes-per-token": ZConvention(
        "bytes-per-token",
        "bytes of all parameters and of the KV cache (batch x 2 T L d_h n_kv) at their dtypes",
        "exact forward FLOPs of one token at context T",
        "bytes",
        "FLOPs per token",
    ),
}
DEFAULT_CONVENTION = "paper"
#: The old ``memory_unit`` option as a convention (values -> eq4-per-token, bytes -> bytes-per-token).
MEMORY_UNIT_CONVENTIONS = {"values": "eq4-per-token", "bytes": "bytes-per-token"}


def z_convention(name) -> ZConvention:
    """The :class:`ZConvention` called ``name`` (``paper``, ``eq4-per-token``, ``bytes-per-token``)."""
    if isinstance(name, ZConvention):
        return name
    key = str(name).strip().lower()
    if key not in Z_CONVENTIONS:
        raise CogqaError(f"--convention: unknown Z convention {name!r}; choose one of {', '.join(Z_CONVENTIONS)}")
    return Z_CONVENTIONS[key]


def z_inputs(shape, context, convention="paper", batch=1, weight_dtype="bf16", kv_dtype="bf16") -> tuple:
    """(M, C) entering Z under ``convention`` (see :data:`Z_CONVENTIONS` for their units).

    ``paper``: N = non-embedding parameters, M = N bytes(weights) + batch 2 T L d_h n_kv bytes(KV) in
    bytes, C = batch T (2N + 4 T L d_h n_h) FLOPs (decoding a whole T-token sequence; the paper's
    Figure 2). ``eq4-per-token``: M in values (all parameters + cached keys and values), C the exact
    FLOPs of one token. ``bytes-per-token``: M in bytes of all parameters and the KV cache, C per token.
    """
    conv = z_convention(convention)
    T = _context(context)
    b = np.asarray(batch, dtype=float)
    if conv.name == "paper":
        n = params_non_embedding(shape)
        memory = n * dtype_bytes(weight_dtype) + b * kv_cache_values(shape, T) * dtype_bytes(kv_dtype)
        flops = b * T * (2 * n + 4 * layer_context(shape, T) * _f(shape.head_dim) * _f(shape.n_heads))
        return memory, flops
    flops = inference_flops_per_token(shape, T)
    if conv.name == "bytes-per-token":
        return inference_memory_bytes(shape, T, batch, weight_dtype, kv_dtype)["total"], flops
    return params_total(shape) + b * kv_cache_values(shape, T), flops


def z_of_shape(
    shape, context, convention="paper", weights=None, batch=1, weight_dtype="bf16", kv_dtype="bf16"
) -> np.ndarray:
    """Z of ``shape`` at ``context`` tokens under ``convention`` (no unit; compare only within one convention)."""
    memory, flops = z_inputs(shape, context, convention, batch, weight_dtype, kv_dtype)
    return z_cost(memory, flops, weights or ZWeights())


def z_memory(shape, context, batch=1, weight_dtype="bf16", kv_dtype="bf16", memory_unit="values") -> np.ndarray:
    """The memory M of the old ``memory_unit`` option: bytes (weights and KV cache at their dtypes) or
    values (all parameters plus ``2 L n_kv d_h`` per cached token), for ``batch`` sequences at ``context``."""
    if memory_unit == "bytes":
        return inference_memory_bytes(shape, context, batch, weight_dtype, kv_dtype)["total"]
    return params_total(shape) + batch * kv_cache_values(shape, context)


def z_cost(memory, flops_per_token, weights: ZWeights = ZWeights()) -> np.ndarray:
    """Hardware-aware cost ``Z = lam * M^alpha + (1 - lam) * C^beta`` (Section 4).

    ``M`` and ``C`` in the units of one :class:`ZConvention` (:func:`z_inputs`). Z has no unit; it
    is only comparable between models costed with the same convention and (lam, alpha, beta).
    """
    M = np.asarray(memory, dtype=float)
    C = np.asarray(flops_per_token, dtype=float)
    return weights.lam * M**weights.alpha + (1 - weights.lam) * C**weights.beta


# ---------------------------------------------------------------------------------------------
# Training (Appendix C)
# ---------------------------------------------------------------------------------------------


def mean_attended_context(train_context, window=None) -> np.ndarray:
    """Mean number of tokens a training token attends to for fixed-length packing: T_train / 2 (tokens).

    With a sliding window W (tokens) a token at position t attends to min(t, W): the mean over
    [0, T] is T / 2 for T <= W, else ``W - W^2 / (2 T)`` (the same continuous integral as T / 2).
    """
    T = _context(train_context)
    if window is None:
        return T / 2
    w = float(window)
    return np.where(T <= w, T / 2, w - w * w / (2 * np.maximum(T, 1e-300)))


def mean_layer_context(shape, train_context) -> np.ndarray:
    """:func:`mean_attended_context` summed over the layers (tokens x layers): ``L T_train / 2`` for full
    attention, windowed layers counting their window's mean."""
    w, n_win = _window(shape)
    full = (_f(shape.layers) - n_win) * mean_attended_context(train_context)
    return full if w is None else full + n_win * mean_attended_context(train_context, w)


def training_flops(shape, tokens, train_context, mean_context=None) -> np.ndarray:
    """Training FLOPs for ``tokens`` tokens: ``3 x D x C_infer(T_bar)`` (forward + 2x backward; units: FLOPs).

    ``T_bar`` is ``mean_context`` when given, else ``train_context / 2`` (fixed-length chunks; windowed
    layers: :func:`mean_attended_context` with the window).
    Uses the exact per-component forward FLOPs; :func:`paper_training_flops` is Eq. 11.
    """
    D = np.asarray(tokens, dtype=float)
    require(bool(np.all(D >= 0)), "tokens must be >= 0")
    if mean_context is not None:
        return 3 * D * inference_flops_per_token(shape, _context(mean_context))
    per_token = forward_flops_per_token(shape, 0)["time_invariant"]
    return 3 * D * (per_token + 4 * mean_layer_context(shape, train_context) * _f(shape.n_heads) * _f(shape.head_dim))


def paper_training_flops(shape, tokens, train_context) -> np.ndarray:
    """The paper's Eq. 11: ``6 D (N + 2 L T_bar d_h n_h)`` with T_bar = T_train / 2 (units: FLOPs)."""
    D = np.asarray(tokens, dtype=float)
    lt = mean_layer_context(shape, train_context)
    return 6 * D * (params_total(shape) + 2 * lt * _f(shape.head_dim) * _f(shape.n_heads))


def training_memory_bytes(
    shape, train_context, batch=1, param_dtype: str = "fp32", activation_dtype: str = "bf16"
) -> dict[str, np.ndarray]:
    """Training memory with Adam and no offloading, the paper's ``4N + T d L`` (units: bytes).

    Keys: ``states`` (weights, gradients and two Adam moments: 4N values at ``param_dtype``),
    ``activations`` (``batch x T x d x L`` values at ``activation_dtype``: the residual stream
    per layer, the paper's lower bound) and ``total``.
    """
    T = _context(train_context)
    states = 4 * params_total(shape) * dtype_bytes(param_dtype) + 0 * T
    acts = np.asarray(batch, dtype=float) * T * _f(shape.hidden_size) * _f(shape.layers) * dtype_bytes(activation_dtype)
    return {"states": states, "activations": acts, "total": states + acts}


# ---------------------------------------------------------------------------------------------
# Context-length distributions
# ---------------------------------------------------------------------------------------------


def expected_context(lengths, counts=None) -> float:
    """Mean context length E[T] of a list of lengths, or of a histogram (lengths, counts) (tokens).

    Costs are affine in T, so the expected cost over the distribution is the cost at E[T].
    """
    t = _context(lengths).ravel()
    require(t.size > 0, "context lengths: give at least one length")
    if counts is None:
        return float(t.mean())
    w = np.asarray(counts, dtype=float).ravel()
    require(w.shape == t.shape, f"counts: expected {t.size} counts for {t.size} lengths, got {w.size}")
    require(bool(np.all(w >= 0)) and w.sum() > 0, "counts must be >= 0 and not all zero")
    return float((t * w).sum() / w.sum())


# ---------------------------------------------------------------------------------------------
# One summary for printing
# ---------------------------------------------------------------------------------------------


def cost_summary(
    shape,
    context,
    batch: int = 1,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    z_weights: ZWeights = ZWeights(),
    convention: str = DEFAULT_CONVENTION,
) -> dict:
    """Everything ``cogqa cost`` prints for one shape at one context length, as plain numbers.

    Units are in the key names: ``*_flops*`` FLOPs, ``*_bytes*`` bytes, ``params*`` parameters;
    ``z`` under the Z ``convention`` (``paper`` by default, named in ``z_convention``).
    """
    conv = z_convention(convention)
    T = float(_context(context))
    counts = parameter_counts(shape)
    flops = forward_flops_per_token(shape, T)
    mem = inference_memory_bytes(shape, T, batch, weight_dtype, kv_dtype)
    as_num = lambda x: int(round(float(x))) if float(x).is_integer() or abs(float(x)) > 2**53 else float(x)  # noqa: E731
    out = {
        "context": int(T) if T.is_integer() else T,
        "batch": batch,
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
        "params": as_num(counts["total"]),
        "params_non_embedding": as_num(counts["non_embedding"]),
        "params_by_component": {k: as_num(v) for k, v in counts.items() if k not in ("total", "non_embedding")},
        "kv_cache_bytes_per_token": as_num(kv_cache_bytes_per_token(shape, kv_dtype)),
        "inference_flops_per_token": as_num(flops["total"]),
        "inference_flops_time_invariant": as_num(flops["time_invariant"]),
        "inference_flops_time_variant": as_num(flops["time_variant"]),
        "flops_by_component": {k: as_num(flops[k]) for k in FLOP_COMPONENTS},
        "inference_memory_bytes": as_num(mem["total"]),
        "weights_bytes": as_num(mem["weights"]),
        "kv_cache_bytes": as_num(mem["kv_cache"]),
        "paper_inference_flops": as_num(paper_inference_flops(shape, T)),
        "paper_inference_memory_values": as_num(paper_inference_memory(shape, T)),
        "z": float(z_of_shape(shape, T, conv, z_weights, batch, weight_dtype, kv_dtype)),
        "z_convention": conv.to_dict(),
    }
    if getattr(shape, "sliding_window", None) is not None:
        out["sliding_window"] = int(shape.sliding_window)
        out["window_layers"] = int(shape.windowed_layers)
    return out
