"""The KV cache of :class:`~cogqa.model.GQADecoder` and the attention of one new token over it
(split from ``model.py``; everything here is re-exported there), the weight layout that makes a
decode step's one-row products fast, plus the dtype names."""

from __future__ import annotations

import torch

from .decode_kernel import grouped_decode_attention
from .errors import require
from .shapes import ModelShape

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def torch_dtype(dtype) -> torch.dtype:
    """A torch floating dtype from a name (``fp32``, ``bf16``, ``fp16``) or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        require(
            dtype in (torch.float32, torch.bfloat16, torch.float16),
            f"dtype {dtype} is not supported; use fp32, bf16 or fp16",
        )
        return dtype
    key = str(dtype).strip().lower()
    require(key in _DTYPES, f"dtype {dtype!r} is not supported; use fp32, bf16 or fp16")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``fp32``, ``bf16``, ``fp16``) of a torch floating dtype."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """Attention of one new token: ``q`` [B, n_kv, group, d_h] (the query heads sharing a K/V head
    are rows of that head) over ``k``, ``v`` [B, n_kv, S, d_h] -> [B, n_kv, group, d_h].

    Each cached K/V head is read once, as a contiguous [S, d_h] block, by two matmuls: scores
    ``K q^T`` [S, group] (K streamed row by row, which MKL does ~2x faster on CPU than ``q K^T``)
    and ``softmax(scores)^T V``. ``mask`` (bool, True = attend) broadcasts to [B, *, 1, S].
    On CPU in fp32 over a long cache, :func:`cogqa.decode_kernel.grouped_decode_attention` computes the
    same with one pass over each row of K and V for all query rows of its group (1.5-2x faster).
    """
    out = grouped_decode_attention(q, k, v, mask)
    if out is not None:
        return out
    scores = torch.matmul(k, (q * q.shape[-1] ** -0.5).transpose(-1, -2)).transpose(-1, -2)  # [B, n_kv, group, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


def lay_out_matrix(w: torch.Tensor) -> torch.Tensor:
    """``w`` [rows, cols] with the same values, stored contiguous along its longer side: column-major when
    rows >= cols, row-major otherwise (a view of a new tensor, or ``w`` itself when already so laid out).

    A decode step multiplies one row by each weight matrix; on CPU (MKL) a cold matrix streams at
    ~20 GB/s when its contiguous runs are the longer side and at 8-15 GB/s when they are the shorter
    one. :meth:`GQADecoder.lay_out_weights` applies it to every matrix in eval mode (training keeps
    row-major weights: its steps measured 1.5-5% faster so), and the ``local`` hardware profile measures
    one-row products in this layout."""
    rows, cols = w.shape
    if rows >= cols:
        return w if w.stride() == (1, rows) else w.t().contiguous().t()
    return w if w.is_contiguous() else w.contiguous()


# ---------------------------------------------------------------------------------------------


class KVCache:
    """A preallocated key/value cache: per layer two tensors [batch, n_kv, max_len, d_h].

    ``length`` positions are filled (shared by the batch: shorter prompts are left-padded);
    ``valid`` [batch, max_len] marks real tokens (False for padding) and ``seen`` [batch]
    counts each sequence's real tokens (its next RoPE position). ``nbytes`` is exactly
    ``2 L n_kv d_h x bytes(dtype) x max_len x batch`` (the cost model's KV bytes).
    """

    def __init__(self, shape: ModelShape, batch: int, max_len: int, device="cpu", dtype=torch.float32):
        require(isinstance(batch, int) and batch >= 1, f"cache batch must be >= 1 sequence, got {batch!r}")
        require(isinstance(max_len, int) and max_len >= 1, f"cache max_len must be >= 1 token, got {max_len!r}")
        dtype = torch_dtype(dtype)
        size = (batch, shape.n_kv_heads, max_len, shape.head_dim)
        self.shape, self.batch, self.max_len = shape, batch, max_len
        self.keys = [torch.zeros(size, device=device, dtype=dtype) for _ in range(shape.layers)]
        self.values = [torch.zeros(size, device=device, dtype=dtype) for _ in range(shape.layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.padded = False  # True once any padding entered the cache

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value tensors (units: bytes)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write new keys/values at ``[length, length + T)`` of ``layer``; return the filled views."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def count_decoded_token(self) -> None:
        """Book one real token written at position ``length`` of every sequence (a decode step without padding):
        the valid mask, each sequence's count of real tokens and the fill length advance."""
        self.valid[:, self.length] = True
        self.seen += 1
        self.length += 1

    def truncate(self, length: int) -> None:
        """Roll the cache back to its first ``length`` positions (tokens), as if nothing after them had been
        decoded: the fill length, the valid mask and each sequence's count of real tokens (its next RoPE
        position) all go back, so benchmarks can repeat a decode from the same prefix."""
        require(0 <= length <= self.length, f"truncate: length must be in [0, {self.length}] tokens, got {length}")
        self.valid[:, length:] = False
        self.seen = self.valid[:, :length].sum(-1)
        self.length = length

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept)."""
        self.valid.zero_()
        self.seen.zero_()
        self.length = 0
        self.padded = False
