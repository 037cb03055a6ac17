"""CPU kernels (numba, optional) for what one decode step of one sequence runs in fp32: the attention of
the new token over a long KV cache, the one-row products with each weight matrix, and RMSNorm of one row.

* **Attention.** MKL multiplies the ``group`` query rows that share a K/V head by the cached [S, d_h]
  block as a matrix product with only ``group`` columns, which streams K and V at a third to a half of
  what a copy reaches. :func:`grouped_decode_attention` reads each cached row once and uses it for every
  query row of its group, by the fused step's loops (one copy of each, :func:`_attention_loops`): scores
  ``K q^T`` as dot products over blocks of 64 cached rows, two cached rows by four query rows at a time so their
  operands stay in registers (6 loads per 8 multiply-adds; 1.17x the one-row-by-four loop at group 8, 16K cached
  rows streamed from memory); softmax in torch; then ``softmax V``: up to 4 query rows, each V row is read once
  and updates every output row; from 5 on, four V rows per update of each output row (each measured the faster there).
  From 2 query rows on, the loops prefetch K and V 32 rows ahead (:func:`_prefetch`): 1.1-1.2x on caches
  larger than the last-level cache, where the hardware prefetcher alone leaves the core waiting.
  Each (group, d_h) is compiled once per process (~2-3 s), both sizes fixed at compile time. The work is
  ``group`` multiply-adds per cached number, so from ``group`` ~ 4 on a single CPU core it is bound by
  arithmetic (~20 G multiply-adds/s here), not by memory: fp32 attention at group 8 streams ~10 GB/s.
* **One-row products.** :func:`one_row_linear` streams a weight matrix once in its storage order
  (dot products for row-major, row updates for column-major); on this repo's AMD EPYC MKL's one-row path
  runs cold matrices of up to ~3000 outputs at 14-18 GB/s, the loops at 19-24 GB/s.
* **RMSNorm.** :func:`one_row_rms_norm`: one loop instead of torch's five kernels.

Each returns None whenever it does not apply (numba missing, not CPU fp32, gradients needed, inside
``torch.compile``, more than :data:`MAX_THREADS` torch threads, or work too small to be worth it); the
caller then takes the torch path, which computes the same numbers. ``COGQA_DECODE_KERNEL=0`` turns all of
them off.
"""

from __future__ import annotations

import functools
import os

import torch

MAX_GROUP = 8  # from 16 query rows per K/V head on, the kernel is compute-bound and no faster than MKL
MAX_HEAD_DIM = 256  # larger heads keep the torch path (the loops hold a few rows of d_h numbers in L1)
MIN_CACHE_ELEMENTS = 1 << 18  # below 256K cached K values per call the matmul path is as fast (and compiles nothing)


#: Whether the kernels may run at all: ``COGQA_DECODE_KERNEL=0`` in the environment (read at import) turns them
#: off; tests and benchmarks flip this attribute to compare against the torch path.
ENABLED = os.environ.get("COGQA_DECODE_KERNEL", "1").strip().lower() not in ("0", "false", "off", "no")


#: The kernels run on one thread; with at most this many torch threads they are as fast as MKL's parallel kernels
#: or faster (measured on 2 cores: 0.9-1.05x at 16K context, 1.1-1.4x at 2K), with more MKL's take over.
MAX_THREADS = 2


def kernel_available() -> bool:
    """Whether the kernels are :data:`ENABLED`, torch runs at most :data:`MAX_THREADS` threads and numba imports."""
    return ENABLED and torch.get_num_threads() <= MAX_THREADS and _numba_imports()


@functools.cache
def _numba_imports() -> bool:
    """Whether numba can be imported here (asked once per process)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _prefetch():
    """The numba intrinsic ``prefetch(a, row, col)``: asks the CPU to start loading the cache line of ``a[row, col]``
    (``a`` a 2-D C-contiguous array, the indices in bounds) for reading (LLVM's ``llvm.prefetch``). A hint: it
    changes no value and cannot fault. The attention loops call it a few rows ahead of the row they read, which
    keeps more of the K/V stream in flight than the hardware prefetcher does while the core computes (measured
    1.1-1.25x on caches larger than the CPU's last-level cache; no change on cached data). Where this LLVM cannot
    build it, a function that does nothing."""
    import numba
    import numpy as np
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, a, row, col):
        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            array = context.make_array(array_type)(context, builder, args[0])
            pointer = cgutils.get_item_pointer(context, builder, array_type, array, args[1:], wraparound=False)
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            hint = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, hint, "llvm.prefetch.p0i8")
            # read (0), keep in all cache levels (3), data cache (1)
            builder.call(fn, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(a, row, col), codegen

    @numba.njit
    def probe(a):
        prefetch(a, 0, 0)

    try:
        probe(np.zeros((1, 1), np.float32))
    except Exception:  # noqa: BLE001 - any LLVM or numba refusal: no prefetching, same values
        return _no_prefetch()
    return prefetch


@functools.cache
def _no_prefetch():
    """A numba function with :func:`_prefetch`'s signature that does nothing."""
    import numba

    @numba.njit
    def prefetch(a, row, col):
        pass

    return prefetch


@functools.cache
def _attention_loops(group: int, head_dim: int):
    """The (scores, output) numba loops of the ``group`` query rows sharing one K/V head, for one (group, head_dim),
    both compile-time constants: the one copy of each, used by the fused step and by
    :func:`grouped_decode_attention`."""
    import numba
    import numpy as np

    prefetch = _prefetch()
    G, D = group, head_dim
    SCORE_BLOCK = 64  # cached rows per block of the scores (16 KB of K at d_h = 64)
    AHEAD = 32  # rows: how far ahead of the row being read the next K/V rows are prefetched (8 KB at d_h = 64)
    LINE = 16  # fp32 numbers per 64-byte cache line

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def fetch_ahead(x, t):  # start loading row t + AHEAD of x (or its last row)
        r = min(t + AHEAD, x.shape[0] - 1)
        for e in range(0, D, LINE):
            prefetch(x, r, e)

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def scores(q, q0, k, lo, n, s):
        """s[j, t] = q[q0 + j] . k[lo + t] for j < G, t < n (the query rows pre-scaled)."""
        for t0 in range(0, n, SCORE_BLOCK):  # a block of cached rows, read by every query row while in L1
            t1 = min(n, t0 + SCORE_BLOCK)
            pairs = t0 + (t1 - t0) // 2 * 2
            for c in range(0, G - G % 4, 4):  # four query rows at a time: their operands stay in registers
                r0, r1, r2, r3 = q[q0 + c], q[q0 + c + 1], q[q0 + c + 2], q[q0 + c + 3]
                for t in range(t0, pairs, 2):  # two cached rows x four query rows: 6 loads per 8 multiply-adds
                    if c == 0:  # the first pass over the block reads it from memory
                        fetch_ahead(k, lo + t)
                        fetch_ahead(k, lo + t + 1)
                    ka, kb = k[lo + t], k[lo + t + 1]
                    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
                    for e in range(D):
                        x, y = ka[e], kb[e]
                        a0 += x * r0[e]
                        b0 += y * r0[e]
                        a1 += x * r1[e]
                        b1 += y * r1[e]
                        a2 += x * r2[e]
                        b2 += y * r2[e]
                        a3 += x * r3[e]
                        b3 += y * r3[e]
                    s[c, t], s[c + 1, t], s[c + 2, t], s[c + 3, t] = a0, a1, a2, a3
                    s[c, t + 1], s[c + 1, t + 1], s[c + 2, t + 1], s[c + 3, t + 1] = b0, b1, b2, b3
                for t in range(pairs, t1):  # an odd last row
                    if c == 0:
                        fetch_ahead(k, lo + t)
                    row = k[lo + t]
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for e in range(D):
                        x = row[e]
                        a0 += x * r0[e]
                        a1 += x * r1[e]
                        a2 += x * r2[e]
                        a3 += x * r3[e]
                    s[c, t], s[c + 1, t], s[c + 2, t], s[c + 3, t] = a0, a1, a2, a3
            for j in range(G - G % 4, G):
                rj = q[q0 + j]
                for t in range(t0, t1):
                    if 1 < G < 4 and j == 0:  # (one query row streams K too lightly to need the hint)
                        fetch_ahead(k, lo + t)
                    row = k[lo + t]
                    acc = np.float32(0.0)
                    for e in range(D):
                        acc += row[e] * rj[e]
                    s[j, t] = acc

    if G <= 4:

        @numba.njit(fastmath=True, boundscheck=False, nogil=True)
        def output_few(s, v, lo, n, out, q0):
            """out[q0 + j] = sum over t < n of s[j, t] v[lo + t], for j < G <= 4: every V row is read once
            and updates all G accumulator rows (they stay in L1; the branches on G are resolved at compile time)."""
            a0, a1 = np.zeros(D, np.float32), np.zeros(D, np.float32)
            a2, a3 = np.zeros(D, np.float32), np.zeros(D, np.float32)
            w1 = w2 = w3 = np.float32(0.0)
            for t in range(n):
                if G > 1:
                    fetch_ahead(v, lo + t)
                row = v[lo + t]
                w0 = s[0, t]
                if G > 1:
                    w1 = s[1, t]
                if G > 2:
                    w2 = s[2, t]
                if G > 3:
                    w3 = s[3, t]
                for e in range(D):
                    x = row[e]
                    a0[e] += w0 * x
                    if G > 1:
                        a1[e] += w1 * x
                    if G > 2:
                        a2[e] += w2 * x
                    if G > 3:
                        a3[e] += w3 * x
            out[q0] = a0
            if G > 1:
                out[q0 + 1] = a1
            if G > 2:
                out[q0 + 2] = a2
            if G > 3:
                out[q0 + 3] = a3

        return scores, output_few

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def output(s, v, lo, n, out, q0):
        """out[q0 + j] = sum over t < n of s[j, t] v[lo + t], for j < G."""
        for j in range(G):
            for e in range(D):
                out[q0 + j, e] = 0
        m = n - n % 4
        for t in range(0, m, 4):  # four cached rows of V per update of each output row
            for i in range(4):
                fetch_ahead(v, lo + t + i)
            v0, v1, v2, v3 = v[lo + t], v[lo + t + 1], v[lo + t + 2], v[lo + t + 3]
            for j in range(G):
                w0, w1, w2, w3 = s[j, t], s[j, t + 1], s[j, t + 2], s[j, t + 3]
                for e in range(D):
                    out[q0 + j, e] += w0 * v0[e] + w1 * v1[e] + w2 * v2[e] + w3 * v3[e]
        for t in range(m, n):
            v0 = v[lo + t]
            for j in range(G):
                w0 = s[j, t]
                for e in range(D):
                    out[q0 + j, e] += w0 * v0[e]

    return scores, output


@functools.cache
def _attention_heads(group: int, head_dim: int):
    """The (scores, output) numba kernels of :func:`grouped_decode_attention`: :func:`_attention_loops` over every
    (batch, K/V head)."""
    import numba

    scores, output = _attention_loops(group, head_dim)

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def scores_heads(q, k, s, start, length):  # q [H, G, D] (pre-scaled), k [H, rows, D], s [H, G, length]
        for h in range(q.shape[0]):
            scores(q[h], 0, k[h], start, length, s[h])

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def output_heads(p, v, o, start, length):  # p [H, G, length], v [H, rows, D], o [H, G, D]
        for h in range(p.shape[0]):
            output(p[h], v[h], start, length, o[h], 0)

    return scores_heads, output_heads


def _as_heads(x: torch.Tensor):
    """``x`` [B, n_kv, S, d_h] as (a numpy array [B n_kv, rows, d_h] over the same memory, the row of its
    first position), or None: a cache view (or a window of one) is widened to its buffer's whole rows, so
    numba gets a C-contiguous array (a strided one runs ~10x slower)."""
    B, H, S, D = x.shape
    if x.stride(3) != 1 or x.stride(2) != D or x.stride(1) % D or (B > 1 and x.stride(0) != H * x.stride(1)):
        return None
    rows = x.stride(1) // D  # positions per head in the underlying buffer
    start = (x.storage_offset() % x.stride(1)) // D
    base = x.storage_offset() - start * D
    if start + S > rows or base + B * H * rows * D > x.untyped_storage().nbytes() // x.element_size():
        return None
    wide = torch.empty(0, dtype=x.dtype).set_(x.untyped_storage(), base, (B * H, rows, D), (rows * D, D, 1))
    return wide.numpy(), start


def grouped_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """Attention of one new token, as :func:`cogqa.kvcache.decode_attention` computes it: ``q`` [B, n_kv,
    group, d_h] over ``k``, ``v`` [B, n_kv, S, d_h] -> [B, n_kv, group, d_h], or None when the kernel
    does not apply (see the module docstring). ``mask`` (bool, True = attend) broadcasts to [B, *, 1, S]."""
    B, H, G, D = q.shape
    S = k.shape[2]
    if (
        q.device.type != "cpu"
        or not (q.dtype == k.dtype == v.dtype == torch.float32)
        or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        or torch.compiler.is_compiling()
        or B * H * S * D < MIN_CACHE_ELEMENTS
        or D > MAX_HEAD_DIM
        or G > MAX_GROUP
        or not kernel_available()
    ):
        return None
    k_heads, v_heads = _as_heads(k), _as_heads(v)
    if k_heads is None or v_heads is None:
        return None
    scores_kernel, output_kernel = _attention_heads(G, D)
    (k_rows, k_start), (v_rows, v_start) = k_heads, v_heads
    qs = (q * D**-0.5).reshape(B * H, G, D).contiguous().numpy()
    scores = torch.empty(B * H, G, S)
    scores_kernel(qs, k_rows, scores.numpy(), k_start, S)
    scores = scores.view(B, H, G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, -1).reshape(B * H, G, S).numpy()
    out = torch.empty(B * H, G, D)
    output_kernel(probs, v_rows, out.numpy(), v_start, S)
    return out.view(B, H, G, D)


# --------------------------------------------------------------------------- one-row products

MIN_ONE_ROW_WEIGHTS = 1 << 14  # smaller matrices (test-sized models) keep MKL, and numba stays unloaded
MAX_ONE_ROW_OUTPUTS = 3072  # up to here the outputs (12 KB) stay in L1; from ~4096 on MKL streams as fast or faster


def one_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.linear(x, weight, bias)`` for ``x`` holding a single row (one decode step of one sequence), by a
    loop that streams ``weight`` once in its storage order: 1.1-1.4x faster than MKL's one-row path on this
    repo's CPU for up to ~3000 outputs (small cold matrices: 19-24 GB/s vs 14-18). Returns a tensor shaped
    ``x.shape[:-1] + (out,)``, or None when the kernel does not apply (more than one row, not CPU fp32,
    gradients needed, inside ``torch.compile``, numba missing, more than :data:`MAX_ONE_ROW_OUTPUTS` outputs,
    or a strided weight): the caller then calls ``F.linear``."""
    out_features, in_features = weight.shape
    if (
        x.numel() != in_features
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or out_features > MAX_ONE_ROW_OUTPUTS
        or weight.numel() < MIN_ONE_ROW_WEIGHTS
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.compiler.is_compiling()
        or not kernel_available()
    ):
        return None
    view = _as_matrix(weight)
    if view is None:
        return None
    matvec = _step_helpers()[0]
    y = torch.empty(out_features)
    no_bias = torch.empty(0) if bias is None else bias.detach()
    matvec(view[0], view[1], x.reshape(in_features).contiguous().numpy(), no_bias.numpy(), y.numpy())
    return y.view(*x.shape[:-1], out_features)


MIN_NORM_SIZE = 256  # below a hidden size of 256 (test-sized models) torch's kernels are kept and numba stays unloaded


def one_row_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """``F.rms_norm(x, weight.shape, weight, eps)`` for ``x`` holding a single fp32 row on CPU with no gradient
    needed, in one small loop (torch's CPU rms_norm runs five kernels, ~10 us even on 256 numbers), or None when
    that does not apply."""
    if (
        x.numel() != weight.numel()
        or x.numel() < MIN_NORM_SIZE
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.compiler.is_compiling()
        or not kernel_available()
    ):
        return None
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _step_helpers()[1](x.reshape(-1).contiguous().numpy(), weight.detach().numpy(), eps, y.view(-1).numpy())
    return y


# --------------------------------------------------------------------------- one whole decode step

MAX_STEP_GROUP = 16  # query rows per K/V head the fused step handles (its scores keep 4 rows' dot products at once)


@functools.cache
def _step_helpers():
    """Generic numba helpers of the fused decode step (cached on disk): a one-row product in either weight
    layout, RMSNorm of one row, and the softmax of score rows (exp by a degree-7 polynomial, so it vectorises)."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def matvec(w, transposed, x, bias, y):  # y = W x (+ bias); w is W [out, in], or W^T [in, out] when transposed
        if transposed:
            n_out = w.shape[1]
            for o in range(n_out):
                y[o] = 0
            for i in range(w.shape[0]):
                a = x[i]
                for o in range(n_out):
                    y[o] += a * w[i, o]
        else:
            for o in range(w.shape[0]):
                acc = np.float32(0.0)
                for i in range(w.shape[1]):
                    acc += w[o, i] * x[i]
                y[o] = acc
        if bias.shape[0]:
            for o in range(y.shape[0]):
                y[o] += bias[o]

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def rms_norm(x, w, eps, y):  # y = x / sqrt(mean(x^2) + eps) * w (x and y may be the same array)
        total = np.float32(0.0)
        for i in range(x.shape[0]):
            total += x[i] * x[i]
        scale = np.float32(1.0) / np.sqrt(total / np.float32(x.shape[0]) + np.float32(eps))
        for i in range(x.shape[0]):
            y[i] = x[i] * scale * w[i]

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def softmax_rows(s, rows, n, bits):  # softmax of s[r, :n] for r < rows, in place; bits: int32 scratch [>= n]
        powers = bits.view(np.float32)
        for r in range(rows):
            top = s[r, 0]
            for t in range(1, n):
                top = max(top, s[r, t])
            for t in range(n):  # exp(y) = 2^m e^f, y = s - top <= 0, m whole, |f| <= ln(2) / 2
                z = max(s[r, t] - top, np.float32(-87.0)) * np.float32(1.4426950408889634)
                m = np.int32(z - np.float32(0.5))
                f = (z - np.float32(m)) * np.float32(0.6931471805599453)
                p = np.float32(1.0 / 5040)
                p = p * f + np.float32(1.0 / 720)
                p = p * f + np.float32(1.0 / 120)
                p = p * f + np.float32(1.0 / 24)
                p = p * f + np.float32(1.0 / 6)
                p = p * f + np.float32(0.5)
                p = p * f + np.float32(1.0)
                s[r, t] = p * f + np.float32(1.0)
                bits[t] = (m + np.int32(127)) << np.int32(23)  # the float 2^m
            total = np.float32(0.0)
            for t in range(n):
                e = s[r, t] * powers[t]
                s[r, t] = e
                total += e
            inv = np.float32(1.0) / total
            for t in range(n):
                s[r, t] *= inv

    return matvec, rms_norm, softmax_rows


@functools.cache
def _attend_kernels(group: int, head_dim: int):
    """(attend, attend_heads): the fused step's attention of one K/V head's ``group`` query rows, and the same
    over every head of a cache (what :func:`fused_decode_attention` runs), for one (group, head_dim)."""
    import numba
    import numpy as np

    _, _, softmax_rows = _step_helpers()
    scores, output = _attention_loops(group, head_dim)
    G = group

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def attend(q, q0, k, v, lo, n, out, s, bits):
        """out[q0:q0+G] = attention of the pre-scaled query rows q[q0:q0+G] over rows lo..lo+n-1 of k, v."""
        scores(q, q0, k, lo, n, s)
        softmax_rows(s, G, n, bits)
        output(s, v, lo, n, out, q0)

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def attend_heads(q, k, v, n, out):  # q [H G, D] pre-scaled; k, v [H, rows, D]; out [H G, D]
        s = np.empty((G, n), np.float32)
        bits = np.empty(n, np.int32)
        for h in range(k.shape[0]):
            attend(q, h * G, k[h], v[h], 0, n, out, s, bits)

    return attend, attend_heads


def fused_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Attention of one new token as the fused decode step computes it, head by head: ``q`` [n_kv, group, d_h]
    over ``k``, ``v`` [n_kv, S, d_h] (contiguous, CPU fp32) -> [n_kv, group, d_h], or None where the fused step
    would not run (numba missing, kernels off or too many threads, group > :data:`MAX_STEP_GROUP`, d_h >
    :data:`MAX_HEAD_DIM`, not contiguous CPU fp32). What the ``local`` hardware profile measures decode
    attention by. Shapes that do not fit each other are a ValueError (the loops do not check bounds)."""
    if q.dim() != 3:
        raise ValueError(f"fused_decode_attention: q must be [n_kv, group, d_h], got shape {tuple(q.shape)}")
    H, G, D = q.shape
    if k.dim() != 3 or k.shape != v.shape or k.shape[0] != H or k.shape[2] != D:
        raise ValueError(
            f"fused_decode_attention: q {tuple(q.shape)} needs k, v [{H}, S, {D}]; got "
            f"{tuple(k.shape)} and {tuple(v.shape)}"
        )
    if (
        not (q.dtype == k.dtype == v.dtype == torch.float32)
        or not (q.device.type == k.device.type == v.device.type == "cpu")
        or not (k.is_contiguous() and v.is_contiguous())
        or G > MAX_STEP_GROUP
        or D > MAX_HEAD_DIM
        or not kernel_available()
    ):
        return None
    out = torch.empty(H * G, D)
    qs = (q * D**-0.5).reshape(H * G, D).contiguous()
    _attend_kernels(G, D)[1](qs.numpy(), k.numpy(), v.numpy(), k.shape[1], out.numpy())
    return out.view(H, G, D)


@functools.cache
def _step_kernel(group: int, head_dim: int):
    """The numba function of :func:`decode_step` for one (group, head_dim), both compile-time constants."""
    import numba
    import numpy as np

    matvec, rms_norm, _ = _step_helpers()
    attend, _ = _attend_kernels(group, head_dim)
    G, D = group, head_dim
    HALF = D // 2

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def rope(rows, cos, sin, scale):  # rows [r, D] in place: x cos + roll(x, D/2) sin (sin signed), times scale
        for r in range(rows.shape[0]):
            for e in range(HALF):
                a, b = rows[r, e], rows[r, e + HALF]
                rows[r, e] = (a * cos[e] + b * sin[e]) * scale
                rows[r, e + HALF] = (b * cos[e + HALF] + a * sin[e + HALF]) * scale

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def step(token, mats, transposed, norms, biases, qk_norms, keys, values, windows, cos, sin, slot, eps, out):
        """Every layer of one decode step; ``out`` = the final-normed hidden state [d]."""
        L = len(keys)
        H = keys[0].shape[0]
        emb = mats[7 * L]
        if transposed[7 * L]:
            x = emb[:, token].copy()
        else:
            x = emb[token].copy()
        d = x.shape[0]
        h = np.empty(d, np.float32)
        q = np.empty((H * G, D), np.float32)
        kn = np.empty((H, D), np.float32)
        vn = np.empty((H, D), np.float32)
        y = np.empty((H * G, D), np.float32)
        attn = np.empty(d, np.float32)
        f = mats[4].shape[1] if transposed[4] else mats[4].shape[0]
        gate, up, ffn = np.empty(f, np.float32), np.empty(f, np.float32), np.empty(d, np.float32)
        s = np.empty((G, slot + 1), np.float32)
        bits = np.empty(slot + 1, np.int32)
        scale = np.float32(1.0 / np.sqrt(D))
        for layer in range(L):
            m = 7 * layer
            rms_norm(x, norms[2 * layer], eps, h)
            matvec(mats[m], transposed[m], h, biases[m], q.reshape(H * G * D))
            matvec(mats[m + 1], transposed[m + 1], h, biases[m + 1], kn.reshape(H * D))
            matvec(mats[m + 2], transposed[m + 2], h, biases[m + 2], vn.reshape(H * D))
            if qk_norms[2 * layer].shape[0]:
                for r in range(H * G):
                    rms_norm(q[r], qk_norms[2 * layer], eps, q[r])
                for r in range(H):
                    rms_norm(kn[r], qk_norms[2 * layer + 1], eps, kn[r])
            rope(q, cos, sin, scale)
            rope(kn, cos, sin, np.float32(1.0))
            k_all, v_all = keys[layer], values[layer]
            for kv in range(H):
                for e in range(D):
                    k_all[kv, slot, e] = kn[kv, e]
                    v_all[kv, slot, e] = vn[kv, e]
            n = slot + 1
            lo = 0
            if windows[layer] > 0 and n > windows[layer]:
                lo = n - windows[layer]
                n = windows[layer]
            for kv in range(H):
                attend(q, kv * G, k_all[kv], v_all[kv], lo, n, y, s, bits)
            matvec(mats[m + 3], transposed[m + 3], y.reshape(H * G * D), biases[m + 3], attn)
            for i in range(d):
                x[i] += attn[i]
            rms_norm(x, norms[2 * layer + 1], eps, h)
            matvec(mats[m + 4], transposed[m + 4], h, biases[m + 4], gate)
            matvec(mats[m + 5], transposed[m + 5], h, biases[m + 5], up)
            for i in range(f):
                gate[i] = gate[i] / (np.float32(1.0) + np.exp(min(-gate[i], np.float32(80.0)))) * up[i]
            matvec(mats[m + 6], transposed[m + 6], gate, biases[m + 6], ffn)
            for i in range(d):
                x[i] += ffn[i]
        rms_norm(x, norms[2 * L], eps, out)

    return step


def _as_matrix(weight: torch.Tensor):
    """(a C-contiguous numpy view of ``weight`` [out, in] or of its transpose, whether transposed), or None when
    ``weight`` is laid out in neither order."""
    rows, cols = weight.shape
    if weight.stride() == (cols, 1):
        return weight.detach().numpy(), 0
    if weight.stride() == (1, rows):
        return weight.detach().t().numpy(), 1
    return None


def _fingerprint(modules) -> tuple:
    """Which submodules and parameters ``modules`` hold, and where each parameter's data lives: it changes when a
    submodule or parameter is replaced or a parameter's ``.data`` moved (``.to``, ``load_state_dict(assign=True)``,
    :meth:`~cogqa.model.GQADecoder.lay_out_weights`), not when values change in place. Reads the modules' own
    dicts: ~2x cheaper than walking ``model.parameters()`` (18-32 against ~50 us), which a small model's decode
    step notices."""
    key = []
    for module in modules:
        key.extend(map(id, module._modules.values()))
        for p in module._parameters.values():
            key.append(None if p is None else (id(p), p.data_ptr()))
    return tuple(key)


def _step_arguments(model, cache):
    """The numpy views :func:`decode_step` passes to its kernel (model weights and cache buffers), or None when a
    weight's layout is not supported. Kept on ``cache`` and rebuilt whenever a submodule or parameter was replaced
    or moved (see :func:`_fingerprint`)."""
    import numpy as np

    kept = getattr(cache, "_step_arguments", None)
    if kept is not None and kept[0] is model and kept[2] == _fingerprint(kept[1]):
        return kept[3]
    modules = list(model.modules())
    key = _fingerprint(modules)
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return None
    none = np.empty(0, np.float32)
    mats, flags, biases, norms, qk_norms = [], [], [], [], []
    for block in model.layers:
        attention, mlp = block.self_attn, block.mlp
        for linear in (
            attention.q_proj,
            attention.k_proj,
            attention.v_proj,
            attention.o_proj,
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        ):
            view = _as_matrix(linear.weight)
            if view is None:
                return None
            mats.append(view[0])
            flags.append(view[1])
            biases.append(none if linear.bias is None else linear.bias.detach().numpy())
        norms += [block.input_layernorm.weight.detach().numpy(), block.post_attention_layernorm.weight.detach().numpy()]
        if attention.q_norm is None:
            qk_norms += [none, none]
        else:
            qk_norms += [attention.q_norm.weight.detach().numpy(), attention.k_norm.weight.detach().numpy()]
    view = _as_matrix(model.embed_tokens.weight)
    if view is None:
        return None
    mats.append(view[0])
    flags.append(view[1])
    norms.append(model.norm.weight.detach().numpy())
    H, rows, D = cache.shape.n_kv_heads, cache.max_len, cache.shape.head_dim
    keys = tuple(t.view(H, rows, D).numpy() for t in cache.keys)
    values = tuple(t.view(H, rows, D).numpy() for t in cache.values)
    windows = np.array([block.self_attn.window or 0 for block in model.layers], dtype=np.int64)
    args = (tuple(mats), np.array(flags, dtype=np.int8), tuple(norms), tuple(biases), tuple(qk_norms), keys, values)
    cache._step_arguments = (model, modules, key, (args, windows))
    return args, windows


def decode_step(model, token: int, cache, cos: torch.Tensor, sin: torch.Tensor):
    """One decode step of one sequence through every layer of ``model`` (a :class:`~cogqa.model.GQADecoder`) in one
    numba call: the new token ``token``'s keys and values are written at position ``cache.length`` of ``cache`` and
    its hidden state after the final norm is returned ([1, 1, d], fp32), or None when the fused step does not apply
    (as the other kernels, plus: batch > 1, padding in the cache, a weight in neither storage order, more than
    :data:`MAX_STEP_GROUP` query rows per K/V head); nothing is written then. ``cos`` and ``sin`` are the RoPE
    cosines and signed sines (:func:`~cogqa.model.signed_sin`) of the token's position ([d_h] each). The caller
    advances the cache's counters."""
    shape = model.shape
    group = shape.n_heads // shape.n_kv_heads
    if (
        cache.batch != 1
        or cache.padded
        or shape.hidden_size < MIN_NORM_SIZE
        or not 0 <= token < shape.vocab_size
        or group > MAX_STEP_GROUP
        or shape.head_dim > MAX_HEAD_DIM
        or cache.keys[0].dtype != torch.float32
        or cache.keys[0].device.type != "cpu"
        or model.embed_tokens.weight.dtype != torch.float32
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()))
        or not kernel_available()
    ):
        return None
    arguments = _step_arguments(model, cache)
    if arguments is None:
        return None
    (mats, flags, norms, biases, qk_norms, keys, values), windows = arguments
    out = torch.empty(1, 1, shape.hidden_size)
    _step_kernel(group, shape.head_dim)(
        token,
        mats,
        flags,
        norms,
        biases,
        qk_norms,
        keys,
        values,
        windows,
        cos.numpy(),
        sin.numpy(),
        cache.length,
        shape.norm_eps,
        out.view(-1).numpy(),
    )
    return out
