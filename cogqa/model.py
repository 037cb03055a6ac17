"""The GQA decoder: a Llama-3-style transformer built from a :class:`~cogqa.shapes.ModelShape`.

One readable file, in the spirit of nanoGPT's ``model.py``:

* token embedding -> ``layers`` x [pre-norm RMSNorm -> grouped-query attention -> residual,
  pre-norm RMSNorm -> SwiGLU FFN -> residual] -> final RMSNorm -> LM head (tied or not);
* **decoupled heads** (the paper's change 1): ``q_proj`` maps ``d -> n_h d_h`` and ``o_proj``
  ``n_h d_h -> d``, whatever ``d`` is;
* RoPE in the rotate-half layout used by ``transformers`` (theta from the shape), applied to
  queries and keys after the optional per-head RMSNorm (``qk_norm``, Qwen3);
* attention through ``F.scaled_dot_product_attention(..., enable_gqa=True)``: K and V keep
  their ``n_kv`` heads and are never repeated in memory; causal (``is_causal`` when there is
  no padding, so fused kernels apply), an explicit boolean mask otherwise; a single new token
  (decode) goes through :func:`~cogqa.kvcache.decode_attention` instead (each K/V head read once);
* sliding-window attention when the shape has one (Mistral, Qwen2's ``use_sliding_window``): the last
  ``shape.windowed_layers`` layers let each query see only the last ``sliding_window`` positions, itself
  included (a banded causal mask; a decode step reads the last W cached positions). The cache keeps
  every position;
* the KV cache and the dtype names live in ``kvcache.py`` (re-exported here).

Parameter names follow the Hugging Face Llama layout without the ``model.`` prefix
(``layers.0.self_attn.q_proj.weight``), so export and import are a renaming.

**Initialisation** (:meth:`GQADecoder.init_weights`, GPT-2/nanoGPT practice): every linear
weight and the embedding ~ N(0, 0.02^2); the two projections that write into the residual
stream (``o_proj`` and ``down_proj``) ~ N(0, (0.02 / sqrt(2 L))^2); biases 0; norm gains 1.

**Padding and positions**: ``attention_mask`` (1 = token, 0 = padding, Hugging Face
convention) marks left padding. Without explicit ``position_ids`` positions count the real
tokens of each sequence (``cumsum(mask) - 1``), as ``transformers``' ``generate`` does.
Padded query rows attend only to themselves (their outputs are meaningless but finite).

**Loss**: Hugging Face convention: ``labels`` are the input ids, position t predicts token
t+1 (the shift happens inside), label -100 is ignored, mean over the predicted tokens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .decode_kernel import decode_step, one_row_linear, one_row_rms_norm
from .errors import CogqaError, require
from .kvcache import KVCache, decode_attention, dtype_name, lay_out_matrix, torch_dtype  # noqa: F401 (re-exported)
from .shapes import ModelShape

IGNORE_INDEX = -100


class CausalLMOutput(NamedTuple):
    """``logits`` [B, T, V] in the model's dtype; ``loss`` a scalar (fp32) or None without labels.

    ``logits`` is None for an fp32 training step with labels (``model.train()``, gradients on, no
    autocast): the loss then goes through :class:`LinearCrossEntropy`, which never builds them
    (``model.fused_loss = False`` restores them)."""

    logits: torch.Tensor
    loss: torch.Tensor | None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in fp32 and cast back (as transformers)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * x.shape[1] == 1 and not self.training:  # a decode step of one sequence
            y = one_row_rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one fused kernel (fwd and bwd)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling=None, device=None) -> torch.Tensor:
    """RoPE inverse frequencies (radians/token), fp32 [d_h/2]: ``theta^(-2i/d_h)``; with ``scaling``
    ``("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)`` as Llama 3.1
    (and transformers): wavelengths above original/low_freq_factor are divided by ``factor``, those below
    original/high_freq_factor kept, and the band between interpolated smoothly."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    _, factor, low, high, original = scaling
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling=None):
    """cos and sin of the rotary angles for ``position_ids`` [B, T]: two tensors [B, 1, T, d_h]
    (``scaling``: see :func:`rope_inv_freq`)."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, device=position_ids.device)
    freqs = position_ids[..., None].float() * inv_freq  # [B, T, d_h/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, heads, T, d_h] in the rotate-half layout (first half pairs with second half)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, for :func:`apply_rope_signed` (computed once per forward)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in three kernels: ``x cos + roll(x, d_h/2) sin_signed`` (the rotation's
    minus sign lives in ``sin_signed`` = :func:`signed_sin` of ``sin``)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; a single row (one decode step of one sequence) goes through
    :func:`cogqa.decode_kernel.one_row_linear` when it applies."""
    if x.shape[0] * x.shape[1] == 1 and not layer.training:
        y = one_row_linear(x, layer.weight, layer.bias)
        if y is not None:
            return y
    return layer(x)


class Attention(nn.Module):
    """Grouped-query self-attention with decoupled heads (n_h d_h need not equal d); with ``window`` = W
    (tokens) each query attends only to the last W positions, itself included (Mistral's sliding window)."""

    def __init__(self, shape: ModelShape, window: int | None = None):
        super().__init__()
        d, nh, nkv, dh = shape.hidden_size, shape.n_heads, shape.n_kv_heads, shape.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = nh, nkv, dh
        self.window = window
        self.q_proj = nn.Linear(d, nh * dh, bias=shape.qkv_bias)
        self.k_proj = nn.Linear(d, nkv * dh, bias=shape.qkv_bias)
        self.v_proj = nn.Linear(d, nkv * dh, bias=shape.qkv_bias)
        self.o_proj = nn.Linear(nh * dh, d, bias=shape.o_bias)
        if shape.qk_norm:
            self.q_norm = RMSNorm(dh, shape.norm_eps)
            self.k_norm = RMSNorm(dh, shape.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask, is_causal, cache=None, layer=0):
        """Attention output [B, T, d] for ``x`` [B, T, d]; ``sin`` is :func:`signed_sin` of the RoPE sin; ``mask``
        already holds this layer's window when T > 1 (see :func:`_window_mask`)."""
        B, T, _ = x.shape
        q = project(self.q_proj, x).view(B, T, self.n_heads, self.head_dim)
        k = project(self.k_proj, x).view(B, T, self.n_kv_heads, self.head_dim)
        v = project(self.v_proj, x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope_signed(q, cos, sin), apply_rope_signed(k, cos, sin)  # sin: signed_sin(...) of the decoder
        if cache is not None:
            k, v = cache.update(layer, k, v)
        group = self.n_heads // self.n_kv_heads
        if T == 1:
            if self.window is not None and k.shape[2] > self.window:  # decode: the last W cached positions only
                k, v = k[:, :, -self.window :], v[:, :, -self.window :]
                mask = None if mask is None else mask[..., -self.window :]
            y = decode_attention(q.reshape(B, self.n_kv_heads, group, self.head_dim), k, v, mask)
            y = y.view(B, self.n_heads, 1, self.head_dim)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=group > 1)
        return project(self.o_proj, y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


#: The FFN width the matrix products of many rows run at: d_ff rounded up to a multiple of this (see SwiGLU).
FFN_WIDTH_MULTIPLE = 16
#: Fewer rows than this run at the true width: the padded products measured no faster at 64-256 rows (0.6-1.0x of
#: the true width's speed) and 1.1-1.3x faster at 512-1,024 (d_ff 341 and 683, forward + backward, 1 thread).
FFN_PAD_MIN_ROWS = 512


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: three matrices of d x d_ff.

    With at least :data:`FFN_PAD_MIN_ROWS` rows and a d_ff that is not a multiple of :data:`FFN_WIDTH_MULTIPLE` (the
    demo's 170 and 341, the benchmark's 683), the products run on weights zero-padded to the next multiple: CPU BLAS
    kernels run such odd widths 1.3-1.6x slower (measured on one product; 170 -> 176 gained nothing measurable).
    The padded units are exactly zero (silu(0) * 0), so the output is the same function of the same parameters (up
    to rounding) and the parameters' gradients are the padded ones' slices.
    CPU only: the padded copies live until backward (as much memory as the FFN weights), which a GPU should not
    pay for a speed-up nobody measured there.
    """

    def __init__(self, shape: ModelShape):
        super().__init__()
        d, f, b = shape.hidden_size, shape.ffn_size, shape.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=b)
        self.up_proj = nn.Linear(d, f, bias=b)
        self.down_proj = nn.Linear(f, d, bias=b)

    def forward(self, x):
        pad = -self.gate_proj.out_features % FFN_WIDTH_MULTIPLE
        if pad and x.device.type == "cpu" and x.numel() >= FFN_PAD_MIN_ROWS * x.shape[-1] and self._plain():
            return self._padded(x, pad)
        return project(self.down_proj, F.silu(project(self.gate_proj, x)) * project(self.up_proj, x))

    def _plain(self) -> bool:
        """Whether the three projections are plain ``nn.Linear`` without hooks: the padded path calls ``F.linear`` on
        their weights directly, which would bypass a wrapper (an adapter) or a hook (per-layer sharding)."""
        return all(
            type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)
            for m in (self.gate_proj, self.up_proj, self.down_proj)
        )

    def _padded(self, x, pad: int):
        """:meth:`forward` on weights with ``pad`` zero units appended (zero rows of gate, up; zero columns of down)."""
        gate, up, down = self.gate_proj, self.up_proj, self.down_proj
        rows = (0, 0, 0, pad)
        g = F.linear(x, F.pad(gate.weight, rows), None if gate.bias is None else F.pad(gate.bias, (0, pad)))
        u = F.linear(x, F.pad(up.weight, rows), None if up.bias is None else F.pad(up.bias, (0, pad)))
        return F.linear(F.silu(g) * u, F.pad(down.weight, (0, pad)), down.bias)


class Block(nn.Module):
    """One pre-norm decoder layer: attention and FFN, each inside a residual connection."""

    def __init__(self, shape: ModelShape, window: int | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.self_attn = Attention(shape, window)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.mlp = SwiGLU(shape)

    def forward(self, x, cos, sin, mask, is_causal, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LinearCrossEntropy(torch.autograd.Function):
    """Mean next-token cross-entropy (nats, fp32) of ``x @ w.T`` against ``targets``, without the
    [N, V] logits ever existing whole: rows go in chunks, and because the loss is the end of the
    graph each chunk's gradients (softmax - one-hot) are turned into ``dx`` and ``dw`` right away,
    so backward is only a scale. Saves the log-softmax backward pass and its [N, V] buffers."""

    @staticmethod
    def forward(ctx, x, w, targets, chunk: int = 256):
        valid = targets != IGNORE_INDEX
        count = valid.sum()
        scale = 1.0 / count.clamp(min=1)  # a tensor: no host sync, no graph break under torch.compile
        safe = targets.clamp(min=0)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x, grad_w = torch.empty_like(x), torch.zeros_like(w)
        buffer = x.new_empty(min(chunk, x.shape[0]), w.shape[0])  # one [chunk, V] buffer, reused
        for i in range(0, x.shape[0], chunk):
            xc, tc, vc = x[i : i + chunk], safe[i : i + chunk, None], valid[i : i + chunk, None]
            logits = torch.mm(xc, w.t(), out=buffer[: xc.shape[0]])
            top = logits.amax(-1, keepdim=True)
            picked = logits.gather(1, tc)
            exp = logits.sub_(top).exp_()  # in place: the buffer now holds exp(logits - max)
            sums = exp.sum(-1, keepdim=True)
            total += ((sums.log() + top - picked) * vc).sum()
            weight = vc * scale  # d(mean loss)/d(row loss), 0 for ignored rows
            exp.mul_(weight / sums)  # softmax, scaled
            exp.scatter_add_(1, tc, -weight.to(exp.dtype))  # minus the one-hot
            torch.mm(exp, w, out=grad_x[i : i + xc.shape[0]])
            grad_w.addmm_(exp.t(), xc)
        ctx.save_for_backward(grad_x, grad_w)
        return total / count  # nan without any target, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        if not torch.compiler.is_compiling() and grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
            return grad_x, grad_w, None, None  # loss.backward(): nothing to scale (CPU: no sync to ask)
        return grad_x * grad_loss.to(grad_x.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class GQADecoder(nn.Module):
    """A Llama-3-style decoder for ``shape``; ``max_seq_len`` bounds ``generate`` (tokens)."""

    def __init__(self, shape: ModelShape, max_seq_len: int = 8192):
        super().__init__()
        require(isinstance(shape, ModelShape), f"shape must be a ModelShape, got {type(shape).__name__}")
        require(shape.ffn_kind == "swiglu", f"ffn_kind {shape.ffn_kind!r} is not supported by the model; use 'swiglu'")
        require(shape.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {shape.head_dim}")
        require(
            isinstance(max_seq_len, int) and max_seq_len >= 1,
            f"max_seq_len must be a positive whole number, got {max_seq_len!r}",
        )
        self.shape = shape
        self.max_seq_len = max_seq_len
        #: training with labels: the loss through :class:`LinearCrossEntropy` (logits not returned)
        self.fused_loss = True
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        first_windowed = shape.layers - shape.windowed_layers  # the last windowed_layers layers (Qwen2's reading)
        self.layers = nn.ModuleList(
            Block(shape, shape.sliding_window if i >= first_windowed else None) for i in range(shape.layers)
        )
        self.norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.lm_head = None if shape.tie_embeddings else nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        self.register_load_state_dict_post_hook(_lay_out_after_load)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # --------------------------------------------------------------------------- weights

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """(Re)initialise all weights as documented in the module docstring; ``seed`` makes it reproducible."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out_std = 0.02 / math.sqrt(2 * self.shape.layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))

    def train(self, mode: bool = True) -> "GQADecoder":
        """``nn.Module.train(mode)`` (``eval()`` is ``train(False)``), then :meth:`lay_out_weights` for the new mode;
        returns the model."""
        super().train(mode)
        self.lay_out_weights()
        return self

    @torch.no_grad()
    def lay_out_weights(self) -> None:
        """Store every matrix (``nn.Linear`` [out, in] weights, the embedding [V, d]) in the layout of the model's
        mode; values, shapes and names are unchanged, and a matrix already so stored is not copied.

        * Training mode (a new model's): row-major, PyTorch's default. Training steps (GEMMs, gradients and
          fused AdamW, which follow the parameters' strides) measured 1.5-5% faster than in the decode layout
          (L=4 d=256 V=8192, and the demo's d=128).
        * Eval mode: contiguous along each matrix's longer side (:func:`~cogqa.kvcache.lay_out_matrix`:
          column-major when rows >= columns). Decode steps multiply one row by every weight and stream such
          weights ~1.5-2.7x faster on CPU.

        :meth:`train` and ``eval()`` call it, and so does every ``load_state_dict`` (``assign=True`` brings
        row-major tensors). Checkpoints and exports store contiguous copies. Switching modes copies the matrices
        whose layout changes (the trainer's evaluations switch twice); an optimiser's states keep the layout they
        were created in, which fused AdamW accepts.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and type(module.weight.data) is torch.Tensor:
                w = module.weight.data  # (FSDP2's DTensors keep their layout)
                module.weight.data = w.contiguous() if self.training else lay_out_matrix(w)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters (units: parameters), tied embeddings once; ``non_embedding`` drops the
        input embedding and an untied LM head (the paper's N)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed_tokens.weight.numel()
            if self.lm_head is not None:
                total -= self.lm_head.weight.numel()
        return total

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM head matrix [V, d] (the embedding when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    # --------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Logits [B, T, V] for ``input_ids`` [B, T] and, with ``labels``, the mean next-token loss (nats).

        With ``cache`` the tokens are appended after the cached ones (prefill or decode) and the
        cache advances by T. ``attention_mask`` [B, T] (or [B, cached + T]) has 1 for tokens and
        0 for (left) padding. ``logits_to_keep`` = k > 0 computes the logits of the last k
        positions only ([B, k, V]; a prefill needs k = 1); it cannot be combined with ``labels``.
        """
        B, T = self._check_inputs(input_ids, labels, logits_to_keep)
        start = self._cache_start(cache, B, T)
        if T == 1 and B == 1 and cache is not None and labels is None and attention_mask is None:
            if position_ids is None and not self.training:  # one decode step: every layer in one CPU kernel call
                out = self._fused_decode_step(input_ids, cache, start)
                if out is not None:
                    return out
        new_mask = _new_token_mask(attention_mask, B, T, start, input_ids.device)
        explicit_positions = position_ids is not None
        position_ids = _positions(position_ids, new_mask, cache, B, T, input_ids.device)
        mask, is_causal = _attention_mask(new_mask, cache, start, B, T, input_ids.device)
        if cache is not None:
            cache.valid[:, start : start + T] = True if new_mask is None else new_mask
            if new_mask is not None:
                cache.padded = True

        x = self.embed_tokens(input_ids)
        cos, sin = self._rope(position_ids, x.dtype, None if explicit_positions else start + T)
        masks = {None: (mask, is_causal)}  # per window length (tokens): full attention, and the window if any
        for i, block in enumerate(self.layers):
            w = block.self_attn.window  # decode (T = 1) narrows its keys itself; up to W keys a window is no change
            window = w if w is not None and T > 1 and start + T > w else None
            if window not in masks:
                masks[window] = _window_mask(mask, window, start, T, input_ids.device)
            x = block(x, cos, sin, *masks[window], cache, i)
        if 0 < logits_to_keep < T:
            x = x[:, -logits_to_keep:]
        x = self.norm(x)
        if labels is not None and self._fused_loss_applies(x):
            loss = LinearCrossEntropy.apply(x.reshape(B * T, -1), self.output_weight, _shifted(labels, x.device))
            return CausalLMOutput(None, loss)
        logits = F.linear(x, self.output_weight)
        if cache is not None:
            cache.length += T
            cache.seen += T if new_mask is None else new_mask.long().sum(-1)
        loss = None
        if labels is not None:
            # shift the labels, not the logits: no copy of the [B, T, V] logits
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), _shifted(labels, x.device), ignore_index=IGNORE_INDEX
            )
        return CausalLMOutput(logits, loss)

    @staticmethod
    def _check_inputs(input_ids, labels, logits_to_keep) -> tuple[int, int]:
        """(batch, new tokens) of ``input_ids`` after checking it, ``labels`` and ``logits_to_keep``
        (plain ``if``s: a message is formatted only for a failing check, as every decode step comes here)."""
        if input_ids.dim() != 2:
            raise CogqaError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T < 1:
            raise CogqaError("input_ids must hold at least one token")
        if not (isinstance(logits_to_keep, int) and logits_to_keep >= 0):
            raise CogqaError(f"logits_to_keep must be a whole number >= 0 (0 = all positions), got {logits_to_keep!r}")
        if logits_to_keep and labels is not None:
            raise CogqaError("logits_to_keep needs every position's logits when labels are given; pass 0")
        if labels is not None and labels.shape != input_ids.shape:
            raise CogqaError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
            )
        return B, T

    @staticmethod
    def _cache_start(cache, B: int, T: int) -> int:
        """Tokens already in ``cache`` (0 without one), after checking that T more fit."""
        if cache is None:
            return 0
        if cache.batch != B:
            raise CogqaError(f"cache holds {cache.batch} sequences but input_ids has batch {B}")
        if cache.length + T > cache.max_len:
            raise CogqaError(
                f"{cache.length + T} tokens do not fit the KV cache of {cache.max_len} tokens; "
                "allocate a longer cache (max_len) or shorten the prompt"
            )
        return cache.length

    def _fused_loss_applies(self, x: torch.Tensor) -> bool:
        """Whether the loss is computed by :class:`LinearCrossEntropy` (fp32 training, no autocast)."""
        return (
            self.fused_loss
            and self.training
            and torch.is_grad_enabled()
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
        )

    def _fused_decode_step(self, input_ids: torch.Tensor, cache: KVCache, start: int) -> CausalLMOutput | None:
        """One decode step of one unpadded sequence by :func:`cogqa.decode_kernel.decode_step` (every layer in one
        numba call, CPU fp32), or None (nothing done) when that does not apply."""
        if cache.padded or torch.compiler.is_compiling():
            return None
        position = start  # unpadded: every cached token is real, so the next position is the fill length
        _, cos, sin = self._rope_table_for(position + 1, input_ids.device, self.embed_tokens.weight.dtype)
        x = decode_step(self, input_ids.item(), cache, cos[position], sin[position])
        if x is None:
            return None
        logits = F.linear(x, self.output_weight)
        cache.count_decoded_token()
        return CausalLMOutput(logits, None)

    def _rope_table_for(self, bound: int, device, dtype):
        """(key, cos, :func:`signed_sin`) tables [n, d_h] for positions 0..n-1, n >= ``bound``, kept between calls."""
        key = (device, dtype)
        table = self._rope_table if getattr(self, "_rope_table", None) and self._rope_table[0] == key else None
        if table is None or table[1].shape[0] < bound:
            n = max(bound, 256, 2 * table[1].shape[0] if table else 0)
            cos, sin = rope_cos_sin(
                torch.arange(n, device=device)[None],
                self.shape.head_dim,
                self.shape.rope_theta,
                dtype,
                self.shape.rope_scaling,
            )
            table = self._rope_table = (key, cos[0, 0], signed_sin(sin)[0, 0])
        return table

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype, bound: int | None):
        """cos and :func:`signed_sin` [B, 1, T, d_h] at ``position_ids`` (all < ``bound``, or found
        here when None), gathered from a table of :func:`rope_cos_sin` kept between calls (a decode
        step then costs two lookups instead of a dozen small kernels)."""
        if torch.compiler.is_compiling():
            cos, sin = rope_cos_sin(
                position_ids, self.shape.head_dim, self.shape.rope_theta, dtype, self.shape.rope_scaling
            )
            return cos, signed_sin(sin)
        bound = int(position_ids.max()) + 1 if bound is None else bound
        table = self._rope_table_for(bound, position_ids.device, dtype)
        return table[1][position_ids][:, None], table[2][position_ids][:, None]

    # --------------------------------------------------------------------------- inference

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens (default ``max_seq_len``)."""
        p = self.embed_tokens.weight
        return KVCache(self.shape, batch, max_len or self.max_seq_len, device=p.device, dtype=dtype or p.dtype)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        attention_mask: torch.Tensor | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Prompt + up to ``max_new_tokens`` new tokens: a LongTensor [B, P + new] (token ids).

        Greedy at ``temperature=0``; otherwise samples from softmax(logits / temperature),
        restricted to the ``top_k`` most likely tokens and/or the smallest set with cumulative
        probability >= ``top_p``. Prompts of different lengths are left-padded with
        ``attention_mask`` marking real tokens. Finished sequences (``eos_id``) repeat ``eos_id``;
        generation stops when every sequence has finished.
        """
        require(
            input_ids.dim() == 2 and input_ids.shape[1] >= 1,
            "input_ids must be [batch, tokens] with at least one token",
        )
        require(
            isinstance(max_new_tokens, int) and max_new_tokens >= 0,
            f"max_new_tokens must be >= 0, got {max_new_tokens!r}",
        )
        require(temperature >= 0 and math.isfinite(temperature), f"temperature must be >= 0, got {temperature}")
        require(
            top_k is None or (isinstance(top_k, int) and top_k >= 1),
            f"top_k must be a positive whole number, got {top_k!r}",
        )
        require(top_p is None or 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p!r}")
        B, P = input_ids.shape
        total = P + max_new_tokens
        if cache is None:
            require(
                total <= self.max_seq_len,
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len ({self.max_seq_len} "
                "tokens)",
            )
            cache = self.new_cache(B, total)
        else:
            require(
                cache.length + total <= cache.max_len,
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) do not fit the KV cache "
                f"({cache.max_len - cache.length} free tokens)",
            )
        if max_new_tokens == 0:
            return input_ids
        out = input_ids.new_empty(B, total)  # preallocated: one write per step, no per-step concatenation
        out[:, :P] = input_ids
        logits = self(input_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1).logits[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out[:, P + step] = nxt
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                return out[:, : P + step + 1]
            logits = self(out[:, P + step : P + step + 1], cache=cache).logits[:, -1]
        return out


def _lay_out_after_load(model: GQADecoder, _incompatible_keys) -> None:
    """``load_state_dict`` post-hook (a module-level function, so the model stays picklable)."""
    model.lay_out_weights()


def _shifted(labels: torch.Tensor, device) -> torch.Tensor:
    """Next-token targets, flattened: ``labels`` shifted left by one, the last position ignored."""
    return F.pad(labels.to(device), (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)


def _new_token_mask(attention_mask, B: int, T: int, start: int, device) -> torch.Tensor | None:
    """[B, T] bool mask of the new tokens (False = padding), or None when nothing is padded."""
    if attention_mask is None:
        return None
    require(
        attention_mask.dim() == 2 and attention_mask.shape[0] == B,
        f"attention_mask must be [batch, tokens], got shape {tuple(attention_mask.shape)}",
    )
    require(
        attention_mask.shape[1] in (T, start + T),
        f"attention_mask has {attention_mask.shape[1]} columns; expected {T} (new tokens) or {start + T} "
        "(cached + new)",
    )
    new_mask = attention_mask[:, -T:].to(device=device, dtype=torch.bool)
    return None if bool(new_mask.all()) else new_mask


def _positions(position_ids, new_mask, cache, B: int, T: int, device) -> torch.Tensor:
    """[B, T] RoPE positions of the new tokens: given, or counted after the cache's tokens
    (padding does not advance the count)."""
    if position_ids is not None:
        return position_ids.to(device).expand(B, T)
    base = cache.seen[:, None] if cache is not None else 0
    if new_mask is None and T == 1 and cache is not None:
        return base.clone()  # a decode step: the next position of each sequence (seen advances in place later)
    if new_mask is None:
        return (torch.arange(T, device=device)[None, :] + base).expand(B, T)
    return (new_mask.long().cumsum(-1) - 1).clamp(min=0) + base


def _attention_mask(new_mask, cache, start: int, B: int, T: int, device):
    """(mask, is_causal) for the attention of T new tokens after ``start`` cached ones: is_causal
    (fused kernels) when nothing is padded, no mask for one unpadded decode token, else a bool mask
    [T, S] or [B, 1, T, S] (True = attend; a padded query still attends to itself)."""
    padded = new_mask is not None or (cache is not None and cache.padded)
    if not padded and start == 0:
        return None, T > 1
    if not padded and T == 1:
        return None, False  # one new token attends to everything cached
    S = start + T
    key_pos = torch.arange(S, device=device)
    query_pos = torch.arange(start, S, device=device)
    allowed = key_pos[None, :] <= query_pos[:, None]  # [T, S]
    if not padded:
        return allowed, False
    valid = torch.ones(B, S, dtype=torch.bool, device=device)
    if cache is not None and start > 0:
        valid[:, :start] = cache.valid[:, :start]
    if new_mask is not None:
        valid[:, start:] = new_mask
    is_self = key_pos[None, :] == query_pos[:, None]
    return ((allowed[None] & valid[:, None, :]) | is_self[None])[:, None], False  # [B, 1, T, S]


def _window_mask(mask, window: int, start: int, T: int, device):
    """(mask, False) for T > 1 new tokens after ``start`` cached ones in a layer with a sliding window of
    ``window`` tokens: ``mask`` (None = plain causal, else [T, S] or [B, 1, T, S] from :func:`_attention_mask`)
    narrowed to keys at most ``window - 1`` positions behind each query (cache positions, as transformers)."""
    S = start + T
    key_pos = torch.arange(S, device=device)
    query_pos = torch.arange(start, S, device=device)[:, None]
    near = (key_pos > query_pos - window) & (key_pos <= query_pos)  # [T, S]
    return (near if mask is None else mask & near), False


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: argmax at temperature 0, else top-k/top-p sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the more likely tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def compile_model(model: GQADecoder, **kwargs) -> GQADecoder:
    """``torch.compile(model)`` (optional; returns the compiled module, same call signature)."""
    return torch.compile(model, **kwargs)


__all__ = ["GQADecoder", "KVCache", "CausalLMOutput", "sample_next", "torch_dtype", "compile_model", "CogqaError"]
