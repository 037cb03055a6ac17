"""Roofline serving model: seconds per token, tokens/s per device and what fits, on a :class:`~cogqa.hardware.Hardware`.

Built on :mod:`cogqa.costs`' exact FLOP and byte counts. A step is split into two phases, and
each phase takes ``max(FLOPs / achievable FLOP/s, bytes / achievable bandwidth)`` seconds; the
step is the sum of its phases (the phases run one after the other, so they do not overlap):

* ``weights`` -- the matmuls with the weights (q/k/v/o projections, FFN, LM head). FLOPs:
  ``batch x tokens x`` the time-invariant FLOPs per token; bytes: all weights, read **once per
  step** whatever the batch. Rate: ``peak x matmul_efficiency``.
* ``attention`` -- the time-variant part ``4 L T n_h d_h`` per token; bytes: **each sequence's
  KV cache read once** per decode step (``batch x T x 2 L n_kv d_h x bytes(kv dtype)``), or
  written once during prefill. Rate: ``peak x attention_efficiency``.

Decode at batch B and context T produces B tokens per step: time per output token = step
seconds, tokens/s/device = B / step seconds. Prefill of P tokens counts the causal triangle
(``costs.prefill_flops``). Training (Appendix C) takes 3x the forward FLOPs at the mean attended
context T_bar = T/2 (``costs.training_flops``). Memory: weights + B x T x KV bytes/token must fit
``memory_bytes x memory_usable_fraction`` (activations are not modelled). Everything is
vectorised: shape fields, context and batch may be numpy arrays.

A third, fixed term adds ``kernel_overhead_seconds`` per kernel launched (KERNELS_PER_LAYER x L +
KERNELS_PER_PASS per forward pass): 0 on datasheet profiles, measured on ``local``; a decode step that cogqa's
fused CPU step runs (one numba call for all layers) costs ``fused_step_seconds`` instead. On ``local``
the decode's memory terms also use the measured kernel-shape curves: each weight matrix streams at
the one-row-product bandwidth for its shape (:func:`weight_stream_seconds`), and the KV cache
at decode attention's bandwidth for the model's GQA group n_h / n_kv (:func:`kv_stream_seconds`).

Optimistic on datasheet profiles: no kernel-launch or framework overhead, no tensor parallelism,
one attention efficiency for all T. See docs/serving.md.
"""

from __future__ import annotations

import numpy as np

from .costs import (
    ZWeights,
    dtype_bytes,
    forward_flops_per_token,
    inference_flops_per_token,
    kv_cache_bytes_per_token,
    params_total,
    prefill_flops,
    training_flops,
    z_cost,
    z_memory,
)
from .errors import require
from .hardware import KERNELS_PER_LAYER, KERNELS_PER_PASS, Hardware, get_hardware

PHASES = ("weights", "attention")
OBJECTIVES = ("z", "latency", "throughput")


def _phase(flops, nbytes, flop_rate: float, bandwidth: float, memory_seconds=None) -> dict[str, np.ndarray]:
    """One roofline phase: FLOPs, bytes, compute and memory seconds, the slower of the two, and the bound.
    ``memory_seconds``, when given, replaces ``bytes / bandwidth`` (a phase whose parts stream at different rates)."""
    flops = np.asarray(flops, dtype=float)
    nbytes = np.asarray(nbytes, dtype=float)
    compute = flops / flop_rate
    memory = nbytes / bandwidth if memory_seconds is None else np.asarray(memory_seconds, dtype=float) + 0 * nbytes
    return {
        "flops": flops,
        "bytes": nbytes,
        "compute_seconds": compute,
        "memory_seconds": memory,
        "seconds": np.maximum(compute, memory),
        "bound": np.where(compute > memory, "compute", "memory"),
    }


def _batch(batch) -> np.ndarray:
    b = np.asarray(batch, dtype=float)
    require(bool(np.all(np.isfinite(b)) and np.all(b >= 1)), "batch must be at least 1 sequence")
    return b


def weight_bytes(shape, weight_dtype: str = "bf16") -> np.ndarray:
    """Bytes of all weights (tied embeddings once) at ``weight_dtype`` (units: bytes)."""
    return params_total(shape) * dtype_bytes(weight_dtype)


def weight_matrices(shape, weight_dtype: str = "bf16") -> dict[str, tuple]:
    """The weight matrices a decode step streams, as ``{name: (rows, cols, bytes)}`` with [out, in] = [rows,
    cols] elements and the bytes of all layers: ``q``, ``kv`` (k and v), ``o``, ``gate_up`` (gate and up;
    one matrix for a GELU FFN), ``down`` and ``lm_head`` [V, d], which also carries the rest (norms, biases,
    an untied input embedding) so that the bytes sum to :func:`weight_bytes` (units: elements, bytes;
    numpy arrays for array shapes)."""
    b = dtype_bytes(weight_dtype)
    L, d, f, V = (
        np.asarray(x, dtype=float) for x in (shape.layers, shape.hidden_size, shape.ffn_size, shape.vocab_size)
    )
    q_rows = np.asarray(shape.n_heads, dtype=float) * np.asarray(shape.head_dim, dtype=float)
    kv_rows = np.asarray(shape.n_kv_heads, dtype=float) * np.asarray(shape.head_dim, dtype=float)
    up_matrices = 2 if shape.ffn_kind == "swiglu" else 1
    parts = {
        "q": (q_rows, d, L * q_rows * d * b),
        "kv": (kv_rows, d, 2 * L * kv_rows * d * b),
        "o": (d, q_rows, L * d * q_rows * b),
        "gate_up": (f, d, up_matrices * L * f * d * b),
        "down": (d, f, L * d * f * b),
    }
    rest = weight_bytes(shape, weight_dtype) - sum(nbytes for _, _, nbytes in parts.values())
    parts["lm_head"] = (V, d, rest)
    return parts


def weight_stream_seconds(shape, hardware: Hardware, weight_dtype: str = "bf16") -> np.ndarray:
    """Seconds to stream every weight once at the profile's one-row-product bandwidth for each matrix's shape
    (:meth:`Hardware.gemv_bandwidth`; one bandwidth for all without a measured grid) (units: seconds)."""
    hw = get_hardware(hardware)
    if not hw.gemv_efficiency_by_shape:
        return weight_bytes(shape, weight_dtype) / hw.bandwidth
    return sum(
        nbytes / hw.gemv_bandwidth(rows, cols) for rows, cols, nbytes in weight_matrices(shape, weight_dtype).values()
    )


def kv_stream_seconds(shape, context, batch, hardware: Hardware, kv_dtype: str = "bf16") -> np.ndarray:
    """Seconds for decode attention to read ``batch`` KV caches of ``context`` tokens once, at the profile's
    KV-streaming bandwidth for the GQA group n_h / n_kv (:meth:`Hardware.attention_bandwidth_at`) (units: seconds)."""
    hw = get_hardware(hardware)
    kv = np.asarray(batch, dtype=float) * np.asarray(context, dtype=float) * kv_cache_bytes_per_token(shape, kv_dtype)
    group = np.asarray(shape.n_heads, dtype=float) / np.asarray(shape.n_kv_heads, dtype=float)
    return kv / hw.attention_bandwidth_at(group)


def kernel_overhead_seconds(shape, hardware: Hardware) -> np.ndarray:
    """Fixed seconds of one forward pass from kernel launch/dispatch: ``hardware.kernel_overhead_seconds`` x
    (KERNELS_PER_LAYER x layers + KERNELS_PER_PASS) (units: seconds; 0 on datasheet profiles)."""
    hw = get_hardware(hardware)
    layers = np.asarray(shape.layers, dtype=float)
    return hw.kernel_overhead_seconds * (KERNELS_PER_LAYER * layers + KERNELS_PER_PASS)


#: Where cogqa's fused CPU decode step (:func:`cogqa.decode_kernel.decode_step`) runs a decode step: one sequence,
#: fp32 weights and cache, hidden size >= 256, at most 16 query rows per K/V head, head size <= 256 (the limits
#: of ``decode_kernel``: ``MIN_NORM_SIZE``, ``MAX_STEP_GROUP``; tests check that they agree).
FUSED_STEP_MIN_HIDDEN = 256
FUSED_STEP_MAX_GROUP = 16
FUSED_STEP_MAX_HEAD_DIM = 256


def decode_overhead_seconds(shape, batch, hardware: Hardware, weight_dtype: str, kv_dtype: str) -> np.ndarray:
    """Fixed seconds of one decode step (units: seconds): ``hardware.fused_step_seconds`` where cogqa's fused CPU
    step runs it (a profile that measured that step, and the shape, batch and dtypes it takes: see
    :data:`FUSED_STEP_MIN_HIDDEN`), else :func:`kernel_overhead_seconds`."""
    hw = get_hardware(hardware)
    per_kernel = kernel_overhead_seconds(shape, hw) + 0 * np.asarray(batch, dtype=float)
    if hw.fused_step_seconds is None or weight_dtype != "fp32" or kv_dtype != "fp32":
        return per_kernel
    group = np.asarray(shape.n_heads, dtype=float) / np.asarray(shape.n_kv_heads, dtype=float)
    fused = (
        (np.asarray(batch, dtype=float) == 1)
        & (np.asarray(shape.hidden_size) >= FUSED_STEP_MIN_HIDDEN)
        & (group <= FUSED_STEP_MAX_GROUP)
        & (np.asarray(shape.head_dim) <= FUSED_STEP_MAX_HEAD_DIM)
    )
    return np.where(fused, hw.fused_step_seconds, per_kernel)


def _pass_result(weights: dict, attention: dict, overhead, tokens) -> dict:
    """A forward pass's phases, its fixed ``overhead_seconds``, total ``seconds`` (the sum) and ``tokens_per_second``
    (``tokens`` produced or processed per pass / seconds)."""
    seconds = weights["seconds"] + attention["seconds"] + overhead
    return {
        "weights": weights,
        "attention": attention,
        "overhead_seconds": overhead,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
    }


def decode_step(shape, context, batch, hardware: Hardware, weight_dtype="bf16", kv_dtype="bf16") -> dict:
    """One decode step: each of ``batch`` sequences with ``context`` cached tokens produces one token.

    Returns ``{"weights": phase, "attention": phase, "seconds": step seconds, "seconds_per_token":
    seconds per output token of one sequence (= step seconds), "tokens_per_second": tokens/s per
    device}``; each phase holds ``flops``, ``bytes``, ``compute_seconds``, ``memory_seconds``,
    ``seconds`` and ``bound`` ("compute" or "memory").
    """
    hw = get_hardware(hardware)
    B = _batch(batch)
    f = forward_flops_per_token(shape, context)
    T = np.asarray(context, dtype=float)
    weights = _phase(
        B * f["time_invariant"],
        weight_bytes(shape, weight_dtype) + 0 * B * T,
        hw.matmul_flops,
        hw.bandwidth,
        memory_seconds=weight_stream_seconds(shape, hw, weight_dtype),
    )
    kv = B * T * kv_cache_bytes_per_token(shape, kv_dtype)
    attention = _phase(
        B * f["attention_computation"],
        kv,
        hw.attention_flops,
        hw.attention_bandwidth,
        memory_seconds=kv_stream_seconds(shape, T, B, hw, kv_dtype),
    )
    overhead = decode_overhead_seconds(shape, B, hw, weight_dtype, kv_dtype) + 0 * T
    result = _pass_result(weights, attention, overhead, tokens=B)
    result["seconds_per_token"] = result["seconds"]
    return result


def prefill(shape, prompt_tokens, batch, hardware: Hardware, weight_dtype="bf16", kv_dtype="bf16") -> dict:
    """Processing ``batch`` prompts of ``prompt_tokens`` tokens (causal; LM head at every position).

    Returns the two phases as :func:`decode_step`, ``seconds`` (time to first token, without
    queueing) and ``tokens_per_second`` (prompt tokens per second per device).
    """
    hw = get_hardware(hardware)
    B = _batch(batch)
    P = np.asarray(prompt_tokens, dtype=float)
    linear = P * forward_flops_per_token(shape, 0)["time_invariant"]
    attn = prefill_flops(shape, P) - linear
    weights = _phase(B * linear, weight_bytes(shape, weight_dtype) + 0 * B * P, hw.matmul_flops, hw.bandwidth)
    attention = _phase(B * attn, B * P * kv_cache_bytes_per_token(shape, kv_dtype), hw.attention_flops, hw.bandwidth)
    return _pass_result(weights, attention, kernel_overhead_seconds(shape, hw) + 0 * B * P, tokens=B * P)


def training_step(shape, train_context, hardware: Hardware, batch=1, weight_dtype="bf16") -> dict:
    """Training (forward + backward) on ``batch`` sequences of ``train_context`` tokens, Appendix C.

    FLOPs are ``3 x`` the forward FLOPs at T_bar = T/2 per token (``costs.training_flops``); the
    weights are read 3 times per step (forward, two backward products). Returns the two phases
    per step, ``seconds`` per step and ``tokens_per_second`` per device. Optimizer and
    activation traffic are not modelled.
    """
    hw = get_hardware(hardware)
    B = _batch(batch)
    T = np.asarray(train_context, dtype=float)
    tokens = B * T
    linear = 3 * tokens * forward_flops_per_token(shape, 0)["time_invariant"]
    attn = training_flops(shape, tokens, T) - linear
    weights = _phase(linear, 3 * weight_bytes(shape, weight_dtype) + 0 * tokens, hw.matmul_flops, hw.bandwidth)
    attention = _phase(attn, 0 * tokens, hw.attention_flops, hw.bandwidth)
    seconds = weights["seconds"] + attention["seconds"]
    return {
        "weights": weights,
        "attention": attention,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "mean_context": T / 2,
    }


def max_batch(shape, context, hardware: Hardware, weight_dtype="bf16", kv_dtype="bf16") -> np.ndarray:
    """The most sequences of ``context`` tokens whose KV caches fit next to the weights (0 when none fit)."""
    hw = get_hardware(hardware)
    free = hw.usable_memory_bytes - weight_bytes(shape, weight_dtype)
    per_seq = np.asarray(context, dtype=float) * kv_cache_bytes_per_token(shape, kv_dtype)
    return np.maximum(np.floor(free / per_seq), 0.0)


def max_context(shape, hardware: Hardware, batch=1, weight_dtype="bf16", kv_dtype="bf16") -> np.ndarray:
    """The longest context (tokens) whose KV cache for ``batch`` sequences fits next to the weights (0 if none)."""
    hw = get_hardware(hardware)
    free = hw.usable_memory_bytes - weight_bytes(shape, weight_dtype)
    per_token = _batch(batch) * kv_cache_bytes_per_token(shape, kv_dtype)
    return np.maximum(np.floor(free / per_token), 0.0)


def resolve_batch(shape, context, hardware: Hardware, batch="auto", weight_dtype="bf16", kv_dtype="bf16"):
    """(batch used, max batch that fits): ``"auto"`` means the max batch (at least 1, flagged by ``fits``)."""
    most = max_batch(shape, context, hardware, weight_dtype, kv_dtype)
    if isinstance(batch, str):
        require(batch == "auto", f"--batch: give a number of sequences or 'auto', got {batch!r}")
        return np.maximum(most, 1.0), most
    return _batch(batch) + 0 * most, most


def _plain(x):
    a = np.asarray(x)
    if a.ndim:
        return a.tolist()
    v = a.item()
    return float(v) if isinstance(v, (int, float)) else v


def serving_summary(
    shape, context, hardware, batch=1, prompt=None, weight_dtype="bf16", kv_dtype="bf16", train_context=None
) -> dict:
    """Everything ``cogqa serving`` prints for one shape at one context, as plain numbers.

    Keys: ``context`` (tokens), ``batch`` and ``max_batch`` (sequences), ``fits``,
    ``decode`` (phases, ``seconds_per_token``, ``tokens_per_second``), ``prefill`` (of ``prompt``
    tokens, default the context), ``max_context_batch1`` (tokens), ``weights_bytes``,
    ``kv_cache_bytes`` (at this batch), ``usable_memory_bytes`` and, with ``train_context``,
    ``training`` (T_bar = T/2). Units are in the key names or as stated.
    """
    hw = get_hardware(hardware)
    T = float(context)
    B, most = resolve_batch(shape, T, hw, batch, weight_dtype, kv_dtype)
    B = float(B)
    dec = decode_step(shape, T, B, hw, weight_dtype, kv_dtype)
    pre = prefill(shape, T if prompt is None else float(prompt), 1, hw, weight_dtype, kv_dtype)

    def phases(d):
        return {p: {k: _plain(v) for k, v in d[p].items()} for p in PHASES}

    out = {
        "hardware": hw.name,
        "context": int(T) if T.is_integer() else T,
        "batch": int(B),
        "batch_requested": batch,
        "max_batch": int(most),
        "fits": bool(B <= most),
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
        "weights_bytes": float(weight_bytes(shape, weight_dtype)),
        "kv_cache_bytes": float(B * T * kv_cache_bytes_per_token(shape, kv_dtype)),
        "usable_memory_bytes": hw.usable_memory_bytes,
        "decode": {
            "phases": phases(dec),
            "step_seconds": float(dec["seconds"]),
            "seconds_per_token": float(dec["seconds_per_token"]),
            "tokens_per_second": float(dec["tokens_per_second"]),
        },
        "prefill": {
            "prompt_tokens": int(T if prompt is None else prompt),
            "batch": 1,
            "phases": phases(pre),
            "seconds": float(pre["seconds"]),
            "tokens_per_second": float(pre["tokens_per_second"]),
        },
        "max_context_batch1": int(max_context(shape, hw, 1, weight_dtype, kv_dtype)),
    }
    if train_context is not None:
        tr = training_step(shape, float(train_context), hw, 1, weight_dtype)
        out["training"] = {
            "train_context": int(train_context),
            "mean_context": float(tr["mean_context"]),
            "batch": 1,
            "phases": phases(tr),
            "step_seconds": float(tr["seconds"]),
            "tokens_per_second": float(tr["tokens_per_second"]),
        }
    return out


# ---------------------------------------------------------------------------------------------
# For the search: objectives over arrays of candidate shapes, and the Pareto front
# ---------------------------------------------------------------------------------------------


def objective_values(
    shape,
    context,
    objective: str,
    hardware,
    batch=1,
    weight_dtype="bf16",
    kv_dtype="bf16",
    z_weights: ZWeights = ZWeights(),
    memory_unit: str = "values",
) -> dict[str, np.ndarray]:
    """The value to minimise for ``objective`` over candidate shapes (fields may be arrays), and printable columns.

    ``objective``: ``"z"`` (the paper's Z), ``"latency"`` (decode seconds per output token at
    ``batch``) or ``"throughput"`` (device-seconds per generated token = 1 / tokens/s/device, at
    ``batch`` or ``"auto"`` = the largest batch that fits). Returns arrays broadcast over the
    candidates: ``value`` (inf where the batch does not fit memory), ``seconds_per_token``,
    ``tokens_per_second`` (per device), ``batch`` and ``max_batch`` (sequences), ``fits``.
    """
    require(objective in OBJECTIVES, f"--objective: choose one of {', '.join(OBJECTIVES)}, got {objective!r}")
    hw = get_hardware(hardware)
    B, most = resolve_batch(shape, context, hw, batch, weight_dtype, kv_dtype)
    dec = decode_step(shape, context, B, hw, weight_dtype, kv_dtype)
    fits = B <= most
    if objective == "z":
        mem = z_memory(shape, context, B, weight_dtype, kv_dtype, memory_unit)
        value = z_cost(mem, inference_flops_per_token(shape, context), z_weights)
    elif objective == "latency":
        value = dec["seconds_per_token"]
    else:
        value = 1.0 / dec["tokens_per_second"]
    value = np.where(fits | (objective == "z"), value, np.inf)
    return {
        "value": np.asarray(value, dtype=float),
        "seconds_per_token": np.asarray(dec["seconds_per_token"]),
        "tokens_per_second": np.asarray(dec["tokens_per_second"]),
        "batch": np.asarray(B),
        "max_batch": np.asarray(most),
        "fits": np.asarray(fits),
    }


def pareto_front(*costs) -> np.ndarray:
    """Mask of the non-dominated points when every cost is minimised (arrays of equal length).

    A point is dominated when another is <= in every cost and < in at least one; NaN rows are
    never on the front. Example: ``pareto_front(loss, memory_bytes, flops_per_token)``.
    """
    require(len(costs) >= 1, "pareto_front needs at least one cost array")
    m = np.column_stack([np.asarray(c, dtype=float).ravel() for c in costs])
    valid = ~np.isnan(m).any(axis=1)
    le = (m[:, None, :] <= m[None, :, :]).all(axis=2)  # le[j, i]: j <= i everywhere
    lt = (m[:, None, :] < m[None, :, :]).any(axis=2)
    dominated = ((le & lt) & valid[:, None]).any(axis=0)
    return valid & ~dominated
