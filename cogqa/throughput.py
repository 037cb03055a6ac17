"""Measured training (forward + backward) and decode (KV cache) throughput, beside the roofline prediction.

One code path for every device: the model, its inputs and its KV cache live on ``device`` in
``dtype`` (CUDA + bf16 when present, CPU + fp32 otherwise); timings synchronise CUDA. The
prediction comes from :mod:`cogqa.serving` on a :class:`~cogqa.hardware.Hardware` profile
(normally ``local``, measured on this machine): decode at the measured context and batch, and
training with Appendix C's mean attended context T_bar = T/2.
"""

from __future__ import annotations

import time

from .errors import require
from .shapes import ModelShape, paper_shape
from .units import parse_head_config


def parse_shape(text: str) -> ModelShape:
    """A ModelShape from ``L,d,n_h,n_kv,d_h`` (SwiGLU d_ff = 8d/3 rounded to a multiple of 64) or ``470M:32,8``."""
    text = text.strip()
    if ":" in text:
        size, heads = text.split(":", 1)
        n_heads, n_kv_heads = parse_head_config(heads, field=f"shape {text!r}")  # 32,8 (also 32:8, (32,8))
        return paper_shape(size, n_heads=n_heads, n_kv_heads=n_kv_heads)
    parts = text.split(",")
    require(
        len(parts) == 5 and all(p.strip().isdigit() for p in parts),
        f"shape {text!r}: give L,d,n_h,n_kv,d_h (e.g. 4,256,32,8,16) or a paper size with heads (470M:32,8)",
    )
    n_layers, d, nh, nkv, dh = (int(p) for p in parts)
    ffn = max(64, int(round(8 * d / 3 / 64)) * 64)
    return ModelShape(
        layers=n_layers, hidden_size=d, ffn_size=ffn, n_heads=nh, n_kv_heads=nkv, head_dim=dh, name=f"H=({nh},{nkv})"
    )


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timings(fn, repeats: int = 3, warmup: int = 1, device="cpu") -> list[float]:
    """Sorted wall times (seconds) of ``repeats`` runs of ``fn()`` after ``warmup`` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)


def measure(fn, repeats: int = 3, warmup: int = 1, device="cpu") -> float:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    times = timings(fn, repeats, warmup, device)
    return times[len(times) // 2]


def decode_timer(model, context: int, batch: int, decode_tokens: int = 16, prefill_chunk: int = 2048):
    """A callable that decodes ``decode_tokens`` tokens per sequence after a prefill to ``context - decode_tokens``
    tokens (done once, here, in chunks of ``prefill_chunk`` tokens). Returns (fn, device)."""
    import torch

    dev = next(model.parameters()).device
    require(context > decode_tokens, f"--context ({context} tokens) must exceed --decode-tokens ({decode_tokens})")
    ids = torch.randint(0, model.shape.vocab_size, (batch, context - decode_tokens), device=dev)
    model.eval()
    with torch.no_grad():
        cache = model.new_cache(batch, context)
        for i in range(0, ids.shape[1], prefill_chunk):  # chunks keep the logits at [batch, chunk, V]
            logits = model(ids[:, i : i + prefill_chunk], cache=cache).logits[:, -1]
    start = cache.length

    @torch.no_grad()
    def decode():
        cache.truncate(start)  # back to the prefix: length, valid mask and RoPE positions
        nxt = logits.argmax(-1)
        for _ in range(decode_tokens):
            nxt = model(nxt[:, None], cache=cache).logits[:, -1].argmax(-1)

    return decode, dev


def bench_model(model, context: int, batch: int, decode_tokens: int = 16, repeats: int = 3, train: bool = True) -> dict:
    """Measured tokens/s (medians over ``repeats``): ``train_tokens_per_s`` (forward + backward on
    [batch, context]; absent with ``train=False``) and ``decode_tokens_per_s`` (greedy decode after a
    prefill, prefill excluded), each with ``*_range`` = [slowest, fastest] tokens/s over the repeats."""
    import torch

    dev = next(model.parameters()).device
    out = {}
    if train:
        ids = torch.randint(0, model.shape.vocab_size, (batch, context), device=dev)

        def train_step():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()

        model.train()
        t = timings(train_step, repeats=repeats, device=dev)
        out["train_tokens_per_s"] = batch * context / t[len(t) // 2]
        out["train_tokens_per_s_range"] = [batch * context / t[-1], batch * context / t[0]]
        model.zero_grad(set_to_none=True)
    decode, dev = decode_timer(model, context, batch, decode_tokens)
    t = timings(decode, repeats=repeats, device=dev)
    out["decode_tokens_per_s"] = batch * decode_tokens / t[len(t) // 2]
    out["decode_tokens_per_s_range"] = [batch * decode_tokens / t[-1], batch * decode_tokens / t[0]]
    return out


def predict(shape: ModelShape, context: int, batch: int, hardware, dtype: str = "fp32") -> dict:
    """Roofline predictions on ``hardware`` with weights and KV cache in ``dtype``: ``predicted_decode_tokens_per_s``
    (at ``context`` cached tokens), ``predicted_train_tokens_per_s`` (T_bar = T/2), the decode bound per
    phase, and the cost model's ``flops_per_token`` and ``decode_bytes_per_step`` (weights + KV cache)."""
    from .costs import inference_flops_per_token
    from .serving import decode_step, training_step

    dec = decode_step(shape, context, batch, hardware, dtype, dtype)
    tr = training_step(shape, context, hardware, batch, dtype)
    return {
        "predicted_decode_tokens_per_s": float(dec["tokens_per_second"]),
        "predicted_train_tokens_per_s": float(tr["tokens_per_second"]),
        "decode_bound": {p: str(dec[p]["bound"]) for p in ("weights", "attention")},
        "flops_per_token": float(inference_flops_per_token(shape, context)),
        "decode_bytes_per_step": float(dec["weights"]["bytes"] + dec["attention"]["bytes"]),
    }


def predicted(shape: ModelShape, context: int, batch: int) -> dict:
    """Cost-model numbers at ``context``: inference FLOPs per token and bytes read per decode step
    (weights + KV, bf16)."""
    from .costs import inference_flops_per_token, inference_memory_bytes

    mem = inference_memory_bytes(shape, context, batch, "bf16", "bf16")
    return {"flops_per_token": float(inference_flops_per_token(shape, context)), "memory_bytes": float(mem["total"])}
