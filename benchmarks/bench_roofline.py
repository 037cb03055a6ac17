"""Roofline decode prediction vs measurement on this machine (CPU fp32 here; CUDA bf16 when present).

For each shape and context (2K and 16K tokens) it prints, side by side:

* ``model``: measured decode tokens/s of cogqa's ``GQADecoder`` (what ``cogqa bench throughput`` measures);
* ``ref``: measured decode tokens/s of a minimal reference decode step written here in plain torch
  (the same weights' bytes and FLOPs: fused QKV, grouped attention over a contiguous KV cache,
  SwiGLU, LM head), which isolates how well the *roofline* predicts a lean implementation from
  the overheads of the model code;
* ``predicted``: ``cogqa.serving.decode_step`` on the ``local`` profile, measured in the same
  run, alternated with the timings (profile, model, ref, profile) so that load from other
  processes hits both; the prediction uses the mean of the two profile measurements;
* the ratios measured / predicted (1.00 = exact; the issue's target is within 20%).

Usage: python benchmarks/bench_roofline.py [--quick] [--contexts 2k,16k] [--device cpu|cuda] [--repeats 3] [--threads N]
Re-run it after model.py changes: only the ``model`` column should move.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import torch

from cogqa.hardware import Hardware, default_device, default_dtype, measure_local
from cogqa.model import GQADecoder, torch_dtype
from cogqa.serving import decode_step
from cogqa.shapes import ModelShape
from cogqa.throughput import decode_timer, measure
from cogqa.units import parse_contexts

SHAPES = [  # (layers, hidden, n_heads, n_kv_heads): GQA groups from MHA to MQA, d_h = 64
    (4, 1024, 16, 16),
    (4, 1024, 16, 4),
    (4, 1024, 16, 1),
    (4, 1024, 32, 8),
    (2, 2048, 32, 8),
]
VOCAB = 16384


def shape_of(n_layers, d, nh, nkv) -> ModelShape:
    return ModelShape(
        layers=n_layers,
        hidden_size=d,
        ffn_size=int(8 * d / 3) // 64 * 64,
        n_heads=nh,
        n_kv_heads=nkv,
        head_dim=64,
        vocab_size=VOCAB,
        name=f"L{n_layers} d{d} H=({nh},{nkv})",
    )


class ReferenceDecoder:
    """A lean decode step over a contiguous KV cache [L, n_kv, T, d_h]; same FLOPs and bytes as the cost model."""

    def __init__(self, s: ModelShape, context: int, device, dtype):
        g = torch.Generator().manual_seed(0)

        def w(*size):
            return (torch.randn(*size, generator=g) * 0.02).to(device=device, dtype=dtype)

        d, dh, nh, nkv = s.hidden_size, s.head_dim, s.n_heads, s.n_kv_heads
        self.s, self.context = s, context
        self.qkv = [w(d, (nh + 2 * nkv) * dh) for _ in range(s.layers)]
        self.o = [w(nh * dh, d) for _ in range(s.layers)]
        self.up = [w(d, 2 * s.ffn_size) for _ in range(s.layers)]
        self.down = [w(s.ffn_size, d) for _ in range(s.layers)]
        self.emb = w(s.vocab_size, d)
        self.kt = w(s.layers, nkv, dh, context)  # keys stored transposed: q @ K^T without a copy
        self.v = w(s.layers, nkv, context, dh)
        self.x = w(1, d)

    @torch.no_grad()
    def step(self, T: int):
        s, x = self.s, self.x
        nh, nkv, dh, g = s.n_heads, s.n_kv_heads, s.head_dim, s.n_heads // s.n_kv_heads
        for i in range(s.layers):
            h = torch.nn.functional.rms_norm(x, (s.hidden_size,))
            qkv = h @ self.qkv[i]
            q = qkv[:, : nh * dh].view(nkv, g, dh)
            self.kt[i, :, :, T - 1] = qkv[:, nh * dh : (nh + nkv) * dh].view(nkv, dh)
            self.v[i, :, T - 1] = qkv[:, (nh + nkv) * dh :].view(nkv, dh)
            att = torch.softmax((q @ self.kt[i, :, :, :T]) / math.sqrt(dh), dim=-1)
            x = x + (att @ self.v[i, :, :T]).reshape(1, nh * dh) @ self.o[i]
            gate, up = (torch.nn.functional.rms_norm(x, (s.hidden_size,)) @ self.up[i]).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ self.down[i]
        return (self.emb @ x.view(-1)).argmax(-1)

    def decode(self, n: int):
        for t in range(self.context - n + 1, self.context + 1):
            self.step(t)


def local_now(device: str, dtype: str, seconds: float) -> Hardware:
    """The local profile measured now (``cogqa.hardware.measure_local``, shorter), not cached."""
    return measure_local(device, dtype, seconds=seconds)


def mean_profile(a: Hardware, b: Hardware) -> Hardware:
    """The two measurements' mean rates and overhead (one profile)."""
    fields = ("peak_flops", "memory_bandwidth", "bandwidth_efficiency", "attention_bandwidth_efficiency")
    values = {f: (getattr(a, f) + getattr(b, f)) / 2 for f in fields}
    values["kernel_overhead_seconds"] = (a.kernel_overhead_seconds + b.kernel_overhead_seconds) / 2
    for curve in ("gemv_efficiency_by_shape", "attention_efficiency_by_group"):
        ca, cb = getattr(a, curve), getattr(b, curve)
        values[curve] = {k: (ca[k] + cb[k]) / 2 for k in ca}
    return a.with_overrides(**values)


def fastest(fn, repeats: int, device: str) -> float:
    """Fastest wall time (seconds) of ``fn()`` over ``repeats`` runs after one warm-up (best case under load,
    as the profile's rates are)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        best = min(best, measure(fn, repeats=1, warmup=0, device=device))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="2k,16k")
    ap.add_argument("--device", default=None)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="first 4 shapes, 2 repeats")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    dtype = default_dtype(device)
    shapes = SHAPES[:4] if args.quick else SHAPES
    repeats = 2 if args.quick else args.repeats
    n = args.decode_tokens
    print(
        f"{device} {dtype}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
        "(run on a quiet machine); profile and decode timings alternated in one run"
    )
    print(
        f"{'shape':<20}{'context':>8}{'model tok/s':>12}{'ref tok/s':>11}{'predicted':>11}{'model/pred':>11}"
        f"{'ref/pred':>9}  bound (weights, attention)   profile at this shape (GFLOP/s, gemv GB/s at d x d, "
        "attention GB/s at n_h/n_kv, us/kernel)"
    )
    ratios = []
    for T in parse_contexts(args.contexts):
        for n_layers, d, nh, nkv in shapes:
            s = shape_of(n_layers, d, nh, nkv)
            model = GQADecoder(s, max_seq_len=T).to(device=device, dtype=torch_dtype(dtype))
            fn, dev = decode_timer(model, T, 1, n)
            ref = ReferenceDecoder(s, T, device, torch_dtype(dtype))
            hw1 = local_now(device, dtype, 0.3)
            t_model = fastest(fn, repeats, dev)
            t_ref = fastest(functools.partial(ref.decode, n), repeats, dev)
            hw2 = local_now(device, dtype, 0.3)
            hw = mean_profile(hw1, hw2)
            mean_T = T - n + (n + 1) / 2
            pred = decode_step(s, mean_T, 1, hw, dtype, dtype)
            p = float(pred["tokens_per_second"])
            m, r = n / t_model, n / t_ref
            ratios.append((m / p, r / p))
            bound = f"{pred['weights']['bound']}, {pred['attention']['bound']}"
            print(
                f"{s.name:<20}{T:>8}{m:>12.1f}{r:>11.1f}{p:>11.1f}{m / p:>11.2f}{r / p:>9.2f}  {bound:<28}"
                f"{hw.peak_flops / 1e9:.0f}, {float(hw.gemv_bandwidth(d, d)) / 1e9:.1f}, "
                f"{float(hw.attention_bandwidth_at(nh // nkv)) / 1e9:.1f}, "
                f"{hw.kernel_overhead_seconds * 1e6:.1f}"
            )
            del model, ref
    within = [sum(abs(x[i] - 1) <= 0.2 for x in ratios) for i in (0, 1)]
    print(
        f"within 20% of the prediction: model {within[0]}/{len(ratios)}, reference {within[1]}/{len(ratios)} "
        f"(time {time.strftime('%H:%M:%S')})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
