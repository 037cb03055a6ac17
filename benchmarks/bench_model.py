"""Model speed, cogqa vs transformers, side by side (fp32, CPU-sized shapes, same shape and batch).

(a) training step (forward + backward + AdamW) tokens/s: cogqa GQADecoder vs LlamaForCausalLM;
(b) decode tokens/s with a KV cache after a prompt of 2K and 16K tokens: cogqa ``generate``
    vs transformers ``generate``, both continuing from a cache prefilled once (prefill excluded);
(c) decode time per token of H = (32, 8) vs H = (8, 1) at long context, next to the cost
    model's predicted ratios (FLOPs per token, and bytes read per token = weights + KV cache).

Usage: python benchmarks/bench_model.py [--quick] [--threads N]   (about 2-3 minutes on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cogqa import costs  # noqa: E402
from cogqa.hf import export_hf  # noqa: E402
from cogqa.model import GQADecoder  # noqa: E402
from cogqa.shapes import ModelShape  # noqa: E402


def alternate(fns, repeats: int) -> list[float]:
    """Fastest time of each function (units: seconds), calling them in turn ``repeats`` times so
    that load from other processes on the machine hits all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def hf_twin(model, tmp):
    """The same weights loaded by transformers from a cogqa export (fp32, SDPA attention)."""
    import transformers

    export_hf(model, tmp)
    return transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa").eval()


def bench_train(shape, batch, T, steps, tmp) -> tuple[float, float]:
    """Training tokens/s (cogqa, transformers) for one shape (units: tokens per second)."""
    ours = GQADecoder(shape, max_seq_len=T)
    ours.init_weights(0)
    theirs = hf_twin(ours, tmp).train()
    ids = torch.randint(0, shape.vocab_size, (batch, T))
    steps_fns = []
    for model, call in ((ours, lambda m: m(ids, labels=ids).loss), (theirs, lambda m: m(input_ids=ids, labels=ids, use_cache=False).loss)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, call=call, opt=opt):
            opt.zero_grad(set_to_none=True)
            call(model).backward()
            opt.step()

        step()  # warm-up
        steps_fns.append(step)
    t_ours, t_theirs = alternate(steps_fns, steps)
    return batch * T / t_ours, batch * T / t_theirs


def bench_decode(model, hf, context, new, repeats) -> tuple[float, float, bool]:
    """Decode tokens/s after a ``context``-token prompt (cogqa, transformers; units: tokens per second)
    and whether both produced the same greedy tokens.

    Both caches are prefilled once with the first ``context - 1`` prompt tokens; each timed run
    restores that cache and calls ``generate`` for the last prompt token + ``new - 1`` decode steps.
    """
    import copy

    ids = torch.randint(0, model.shape.vocab_size, (1, context))
    mask = torch.ones_like(ids)
    outs = {}
    with torch.no_grad():
        cache = model.new_cache(1, context + new)
        model(ids[:, :-1], cache=cache)
        hf_cache = hf(input_ids=ids[:, :-1], use_cache=True).past_key_values

        def ours():
            cache.length = context - 1
            cache.seen.fill_(context - 1)
            outs["ours"] = model.generate(ids[:, -1:], new, cache=cache)[0, 1:]

        def theirs():
            kv = copy.deepcopy(hf_cache)
            outs["theirs"] = hf.generate(input_ids=ids, attention_mask=mask, past_key_values=kv, max_new_tokens=new,
                                         min_new_tokens=new, do_sample=False, pad_token_id=0)[0, context:]

        t_ours, t_theirs = alternate([ours, theirs], repeats)
    return new / t_ours, new / t_theirs, torch.equal(outs["ours"], outs["theirs"])


def decode_seconds_per_token(model, context, new, repeats) -> float:
    """cogqa decode time per token after a ``context``-token prompt (units: seconds), prefill excluded."""
    ids = torch.randint(0, model.shape.vocab_size, (1, context))
    with torch.no_grad():
        cache = model.new_cache(1, context + new)
        model(ids[:, :-1], cache=cache)

        def run():
            cache.length = context - 1
            cache.seen.fill_(context - 1)
            model.generate(ids[:, -1:], new, cache=cache)

        return alternate([run], repeats)[0] / new


def main(argv=None) -> int:
    import tempfile

    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller contexts and fewer repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier numbers on a shared machine; both sides use the same)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, fp32, CPU")

    # (a) training step
    shape = ModelShape(layers=4, hidden_size=256, ffn_size=683, n_heads=8, n_kv_heads=2, head_dim=64, vocab_size=8192)
    batch, T = (2, 128) if args.quick else (4, 256)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = bench_train(shape, batch, T, 3 if args.quick else 6, tmp)
    print(f"\n(a) training step, {shape.describe()}, batch {batch} x {T} tokens")
    print(f"    cogqa        {ours:10,.0f} tokens/s")
    print(f"    transformers {theirs:10,.0f} tokens/s   (cogqa / transformers = {ours / theirs:.2f}x)")

    # (b) decode with a KV cache
    shape = ModelShape(layers=2, hidden_size=256, ffn_size=683, n_heads=8, n_kv_heads=2, head_dim=64, vocab_size=8192)
    model = GQADecoder(shape)
    model.init_weights(0)
    model.eval()
    contexts = (512, 2048) if args.quick else (2048, 16384)
    new = 16 if args.quick else 32
    print(f"\n(b) decode tokens/s with a KV cache, batch 1, {shape.describe()}, {new} new tokens")
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_twin(model, tmp)
        for ctx in contexts:
            ours, theirs, same = bench_decode(model, hf, ctx, new, 3)
            print(f"    context {ctx:6,d} tokens: cogqa {ours:8,.1f} tokens/s   transformers {theirs:8,.1f} tokens/s"
                  f"   (cogqa / transformers = {ours / theirs:.2f}x; same tokens: {'yes' if same else 'NO'})")

    # (c) decode-time ratio H = (32, 8) vs H = (8, 1)
    ctx = 4096 if args.quick else 8192
    base = dict(layers=2, hidden_size=256, ffn_size=683, head_dim=64, vocab_size=8192)
    big, small = ModelShape(n_heads=32, n_kv_heads=8, **base), ModelShape(n_heads=8, n_kv_heads=1, **base)
    secs = {}
    for s in (big, small):
        m = GQADecoder(s)
        m.init_weights(0)
        secs[s.heads] = decode_seconds_per_token(m.eval(), ctx, new, 3)
    measured = secs[big.heads] / secs[small.heads]
    flops = float(costs.inference_flops_per_token(big, ctx) / costs.inference_flops_per_token(small, ctx))
    mem_b = costs.inference_memory_bytes(big, ctx, 1, "fp32", "fp32")["total"]
    mem_s = costs.inference_memory_bytes(small, ctx, 1, "fp32", "fp32")["total"]
    print(f"\n(c) decode time per token at context {ctx:,} tokens, L=2 d=256, fp32")
    print(f"    H=(32,8): {secs[big.heads] * 1e3:7.2f} ms/token   H=(8,1): {secs[small.heads] * 1e3:7.2f} ms/token")
    print(f"    measured ratio (32,8)/(8,1)          {measured:5.2f}x")
    print(f"    cost model, FLOPs per token ratio    {flops:5.2f}x")
    print(f"    cost model, bytes read ratio (weights + KV) {float(mem_b / mem_s):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
