"""Training (forward+backward) and decode (KV cache) throughput, next to the cost model's predicted ratios.

Decode at long context is memory-bound: its time per token should follow the bytes read per token
(weights + KV cache, ``inference_memory_bytes``) rather than FLOPs per token; both ratios are shown.
"""

from __future__ import annotations

import time

from .errors import require
from .shapes import ModelShape, paper_shape


def parse_shape(text: str) -> ModelShape:
    """A ModelShape from 'L,d,n_h,n_kv,d_h' (SwiGLU ffn = 4d rounded... taken as 8d/3 to a multiple of 64) or '470M:32,8'."""
    text = text.strip()
    if ":" in text:
        size, heads = text.split(":", 1)
        h = heads.split(",")
        require(len(h) == 2, f"shape {text!r}: heads must be 'n_h,n_kv' as in 470M:32,8")
        return paper_shape(size, n_heads=int(h[0]), n_kv_heads=int(h[1]))
    parts = text.split(",")
    require(len(parts) == 5 and all(p.strip().isdigit() for p in parts),
            f"shape {text!r}: give L,d,n_h,n_kv,d_h (e.g. 4,256,32,8,16) or a paper size with heads (470M:32,8)")
    L, d, nh, nkv, dh = (int(p) for p in parts)
    ffn = max(64, int(round(8 * d / 3 / 64)) * 64)
    return ModelShape(layers=L, hidden_size=d, ffn_size=ffn, n_heads=nh, n_kv_heads=nkv, head_dim=dh,
                      name=f"H=({nh},{nkv})")


def measure(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def bench_model(model, context: int, batch: int, decode_tokens: int = 16, repeats: int = 3) -> dict:
    """{'train_tok_s', 'decode_tok_s'} (tokens/s): forward+backward on [batch, context], decode after a context-long prefill."""
    import torch
    dev = next(model.parameters()).device
    V = model.shape.vocab_size
    ids = torch.randint(0, V, (batch, context), device=dev)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    model.train()
    t_train = measure(train_step, repeats=repeats)
    model.eval()
    prompt = ids[:, : context - decode_tokens]
    with torch.no_grad():
        cache = model.new_cache(batch, context)
        logits = model(prompt, cache=cache).logits[:, -1]
        start = cache.length

        def decode():
            cache.length = start
            nxt = logits.argmax(-1)
            for _ in range(decode_tokens):
                nxt = model(nxt[:, None], cache=cache).logits[:, -1].argmax(-1)

        t_dec = measure(decode, repeats=repeats)
    return {"train_tok_s": batch * context / t_train, "decode_tok_s": batch * decode_tokens / t_dec}


def predicted(shape: ModelShape, context: int, batch: int) -> dict:
    """Cost-model numbers at ``context``: inference FLOPs per token and bytes read per decode step (weights + KV)."""
    from .costs import inference_flops_per_token, inference_memory_bytes
    mem = inference_memory_bytes(shape, context, batch, "bfloat16", "bfloat16")
    total = mem["total"] if isinstance(mem, dict) and "total" in mem else sum(float(v) for v in mem.values())
    return {"flops_per_token": float(inference_flops_per_token(shape, context)), "memory_bytes": float(total)}
