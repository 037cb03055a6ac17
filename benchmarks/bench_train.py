"""Training throughput on this machine: cogqa's GQADecoder vs transformers' LlamaForCausalLM, and MFU.

Both models get the same tiny shape, batch, fused AdamW (betas 0.9/0.95, wd 0.1) and clipping 1.0, in
the same hand loop (forward with labels, backward, clip, step). When ``cogqa.data`` is installed
it also runs ``cogqa.train.train`` end to end on the offline corpus and reports its steady-state
tokens/s from ``metrics.jsonl``. MFU = cost-model training FLOPs (``cogqa.costs.training_flops``)
/ time / peak, with the peak measured here by a large fp32 matmul.

With ``--compile`` it also times ``torch.compile(model)`` (inductor, what ``cogqa train --compile`` runs);
the compilation happens in the warm-up steps and is reported on its own line (seconds).

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--context 256] [--batch 8] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from cogqa.costs import training_flops
from cogqa.model import GQADecoder
from cogqa.optim import param_groups
from cogqa.shapes import ModelShape

SHAPE = ModelShape(layers=4, hidden_size=256, ffn_size=688, n_heads=8, n_kv_heads=2, head_dim=32, vocab_size=320)


def peak_flops(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul throughput of this machine (units: FLOP/s), best of ``reps``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def hand_loop(model, x, steps: int, forward=None) -> float:
    """Seconds per optimiser step of a plain loop (after 2 warm-up steps); ``forward`` (default ``model``)
    is what is called, e.g. ``torch.compile(model)``."""
    groups = [g for g in param_groups(model, 0.1) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=True)  # as cogqa train runs it
    model.train()
    forward = model if forward is None else forward
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss = forward(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def llama_for(shape: ModelShape):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        head_dim=shape.head_dim,
        rms_norm_eps=shape.norm_eps,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_embeddings,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def trainer_end_to_end(context: int, batch: int, steps: int) -> float | None:
    """Median tokens/s that ``cogqa.train.train`` logs on the offline corpus, or None without cogqa.data."""
    try:
        from cogqa import data
        from cogqa.train import OptimConfig, TrainConfig, train
    except ImportError:
        return None
    if not hasattr(data, "prepare"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.txt"
        src.write_bytes(Path(data.offline_corpus("shakespeare")).read_bytes()[: context * batch * (steps + 4) * 2])
        data.prepare([str(src)], str(Path(tmp) / "d"), tokenizer="bytes", context=context, val_fraction=0.1)
        shape = {k: v for k, v in SHAPE.to_dict().items() if k not in ("vocab_size",)}
        cfg = TrainConfig(
            data=str(Path(tmp) / "d"),
            out_dir=str(Path(tmp) / "run"),
            shape=shape,
            optim=OptimConfig(lr=1e-3),
            tokens=context * batch * (steps + 2),
            batch_tokens=context * batch,
            micro_batch=batch,
            progress=False,
        )
        train(cfg)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        return float(np.median([r["tokens_per_s"] for r in rows[2:] if "val_loss" not in r]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) (inductor)")
    args = p.parse_args()
    torch.manual_seed(0)
    T, B = args.context, args.batch
    x = torch.randint(0, 256, (B, T))
    tokens = B * T
    flops_step = float(training_flops(SHAPE, tokens, T))
    peak = peak_flops()
    print(f"shape: {SHAPE.describe()}; batch {B} x {T} = {tokens} tokens/step; threads {torch.get_num_threads()}")
    print(
        f"measured peak (fp32 matmul 2048^3): {peak / 1e9:.1f} GFLOP/s; "
        f"cost-model training FLOPs/step: {flops_step / 1e9:.2f} GFLOP"
    )
    results = {}
    results["cogqa GQADecoder (hand loop)"] = hand_loop(GQADecoder(SHAPE, max_seq_len=T), x, args.steps)
    results["transformers LlamaForCausalLM (hand loop)"] = hand_loop(llama_for(SHAPE), x, args.steps)
    if args.compile:
        model = GQADecoder(SHAPE, max_seq_len=T)
        t0 = time.perf_counter()
        results["cogqa GQADecoder, torch.compile (hand loop)"] = hand_loop(
            model, x, args.steps, forward=torch.compile(model)
        )
        print(f"torch.compile: {time.perf_counter() - t0:.1f} s including {args.steps + 2} steps (2 warm-up)")
    e2e = trainer_end_to_end(T, B, args.steps)
    print(f"{'loop':<44} {'s/step':>8} {'tokens/s':>10} {'MFU':>7} {'vs HF':>7}")
    ref = results["transformers LlamaForCausalLM (hand loop)"]
    for name, sec in results.items():
        print(f"{name:<44} {sec:>8.3f} {tokens / sec:>10.0f} {flops_step / sec / peak:>6.1%} {ref / sec:>6.2f}x")
    if e2e is not None:
        sec = tokens / e2e
        print(
            f"{'cogqa train (end to end, data + logging)':<44} {sec:>8.3f} {e2e:>10.0f} "
            f"{flops_step / sec / peak:>6.1%} {ref / sec:>6.2f}x"
        )
    else:
        print("cogqa train end to end: skipped (cogqa.data not available)")


if __name__ == "__main__":
    main()
