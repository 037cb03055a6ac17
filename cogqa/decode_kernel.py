"""CPU kernels (numba, optional) for what one decode step of one sequence runs in fp32: the attention of
the new token over a long KV cache, the one-row products with each weight matrix, and RMSNorm of one row.

* **Attention.** MKL multiplies the ``group`` query rows that share a K/V head by the cached [S, d_h]
  block as a matrix product with only ``group`` columns, which streams K and V at a third to a half of
  what a copy reaches. :func:`grouped_decode_attention` reads each cached row once and uses it for every
  query row of its group: scores ``K q^T`` as dot products, softmax in torch, then ``softmax V`` as row
  updates of a [group, d_h] accumulator, four query rows at a time so their operands stay in registers.
  Each (group, d_h) is compiled once per process (~1 s), both sizes fixed at compile time. The work is
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

ROWS_PER_PASS = 4  # query rows handled together: 4 x d_h accumulators fit the 32 vector registers at d_h <= 128
ROWS_PER_BLOCK = 32  # cached positions per block: the block stays in L1 while each 4-row pass reads it
MAX_GROUP = 8  # from 16 query rows per K/V head on, the kernel is compute-bound and no faster than MKL
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
def _compiled(group: int, head_dim: int):
    """The (scores, output) numba kernels for one (group, head_dim), both compile-time constants; for a group
    that is a multiple of 4, the loops with four named accumulators (15-20% faster)."""
    import numba
    import numpy as np

    G, D, GC, TB = group, head_dim, ROWS_PER_PASS, ROWS_PER_BLOCK
    passes = (G + GC - 1) // GC

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def scores(q, k, s, start, length):  # q [H, G, D] (pre-scaled), k [H, S_max, D], s [H, G, length]
        for h in range(q.shape[0]):
            for t0 in range(start, start + length, TB):
                t1 = min(start + length, t0 + TB)
                for c in range(passes):
                    j0 = c * GC
                    j1 = min(G, j0 + GC)
                    for t in range(t0, t1):
                        for j in range(j0, j1):
                            acc = np.float32(0.0)
                            for e in range(D):
                                acc += k[h, t, e] * q[h, j, e]
                            s[h, j, t - start] = acc

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def output(p, v, o, start, length):  # p [H, G, length], v [H, S_max, D], o [H, G, D]
        for h in range(p.shape[0]):
            for c in range(passes):
                j0 = c * GC
                acc = np.zeros((GC, D), dtype=np.float32)
                for t in range(length):
                    for jj in range(GC):
                        if j0 + jj < G:
                            w = p[h, j0 + jj, t]
                            for e in range(D):
                                acc[jj, e] += w * v[h, start + t, e]
                for jj in range(GC):
                    if j0 + jj < G:
                        for e in range(D):
                            o[h, j0 + jj, e] = acc[jj, e]

    if G % 4:
        return scores, output

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def scores_by_four(q, k, s, start, length):  # G a multiple of 4: four named accumulators share each K load
        for h in range(q.shape[0]):
            for c in range(0, G, 4):
                q0, q1, q2, q3 = q[h, c], q[h, c + 1], q[h, c + 2], q[h, c + 3]
                for t in range(start, start + length):
                    row = k[h, t]
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for e in range(D):
                        x = row[e]
                        a0 += x * q0[e]
                        a1 += x * q1[e]
                        a2 += x * q2[e]
                        a3 += x * q3[e]
                    i = t - start
                    s[h, c, i], s[h, c + 1, i], s[h, c + 2, i], s[h, c + 3, i] = a0, a1, a2, a3

    @numba.njit(fastmath=True, boundscheck=False, nogil=True)
    def output_by_four(p, v, o, start, length):  # G a multiple of 4: four accumulator rows share each V load
        for h in range(p.shape[0]):
            for c in range(0, G, 4):
                a0, a1 = np.zeros(D, dtype=np.float32), np.zeros(D, dtype=np.float32)
                a2, a3 = np.zeros(D, dtype=np.float32), np.zeros(D, dtype=np.float32)
                for t in range(length):
                    w0, w1, w2, w3 = p[h, c, t], p[h, c + 1, t], p[h, c + 2, t], p[h, c + 3, t]
                    row = v[h, start + t]
                    for e in range(D):
                        x = row[e]
                        a0[e] += w0 * x
                        a1[e] += w1 * x
                        a2[e] += w2 * x
                        a3[e] += w3 * x
                o[h, c], o[h, c + 1], o[h, c + 2], o[h, c + 3] = a0, a1, a2, a3

    return scores_by_four, output_by_four


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
        or D > 256
        or G > MAX_GROUP
        or not kernel_available()
    ):
        return None
    k_heads, v_heads = _as_heads(k), _as_heads(v)
    if k_heads is None or v_heads is None:
        return None
    scores_kernel, output_kernel = _compiled(G, D)
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


@functools.cache
def _one_row_kernels():
    """(``y = x W^T`` for W row-major, the same for W column-major): numba loops over one weight matrix."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def rows_dot(x, w, y):  # w [out, in] row-major: one dot product per output
        for o in range(w.shape[0]):
            acc = np.float32(0.0)
            for i in range(w.shape[1]):
                acc += w[o, i] * x[i]
            y[o] = acc

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def columns_axpy(x, wt, y):  # wt = W^T [in, out] row-major: y accumulates x_i times row i
        for o in range(wt.shape[1]):
            y[o] = 0
        for i in range(wt.shape[0]):
            a = x[i]
            for o in range(wt.shape[1]):
                y[o] += a * wt[i, o]

    return rows_dot, columns_axpy


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
    rows_dot, columns_axpy = _one_row_kernels()
    xs = x.reshape(in_features).contiguous().numpy()
    y = torch.empty(out_features)
    if weight.stride() == (in_features, 1):
        rows_dot(xs, weight.detach().numpy(), y.numpy())
    elif weight.stride() == (1, out_features):
        columns_axpy(xs, weight.detach().t().numpy(), y.numpy())
    else:
        return None
    if bias is not None:
        y += bias.detach()
    return y.view(*x.shape[:-1], out_features)


MIN_NORM_SIZE = 256  # below a hidden size of 256 (test-sized models) torch's kernels are kept and numba stays unloaded


@functools.cache
def _one_row_norm_kernel():
    """The numba loop of :func:`one_row_rms_norm`."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True, boundscheck=False, nogil=True, cache=True)
    def rms_norm(x, w, eps, y):
        total = np.float32(0.0)
        for i in range(x.shape[0]):
            total += x[i] * x[i]
        scale = np.float32(1.0) / np.sqrt(total / np.float32(x.shape[0]) + np.float32(eps))
        for i in range(x.shape[0]):
            y[i] = x[i] * scale * w[i]

    return rms_norm


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
    _one_row_norm_kernel()(x.reshape(-1).contiguous().numpy(), weight.detach().numpy(), eps, y.view(-1).numpy())
    return y
