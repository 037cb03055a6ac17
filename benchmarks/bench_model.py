"""Model speed, cogqa vs transformers, side by side (fp32, CPU-sized shapes, same shape and batch).

(a) training step (forward + backward + fused AdamW) tokens/s: cogqa GQADecoder vs LlamaForCausalLM;
(b) decode tokens/s with a KV cache after a prompt of 2K and 16K tokens: cogqa ``generate``
    vs transformers ``generate``, both continuing from a cache prefilled once (prefill excluded),
    greedy; the new tokens must be identical (asserted);
(c) memory-bandwidth roofline of decode at 16K: bytes one step must read (all weights + the
    filled KV cache, ``cogqa.costs.inference_memory_bytes``) / the bandwidth a STREAM-like copy
    measures in this run (2 x 128 MiB arrays, bytes read + bytes written per second, best of 5),
    and the same decode with cogqa's CPU decode kernels (``cogqa.decode_kernel``: one numba call per
    decode step of one sequence, ``decode_step``) switched off;
(d) decode time per token of H = (32, 8) vs H = (8, 1) at 8K and 16K, next to the cost model's
    predicted ratio of bytes read per token (weights + KV cache), and next to the ratio that the
    ``local`` roofline predicts (``cogqa.serving.decode_step`` on this machine's profile measured in the
    same run, with its kernel-shape curves: the rate of each matrix width and GQA group), and each
    configuration's attention FLOPs per byte next to this core's ridge point (peak matmul FLOP/s / copy
    bandwidth): above the ridge decode attention is bound by arithmetic, not by bytes.

Contenders are alternated within one run (each timing is the best of the repeats), so load from
other processes hits them alike; ratios are the numbers to read, absolute speeds vary with load.

Usage: python benchmarks/bench_model.py [--json] [--quick] [--threads N]   (about 3 minutes, 1 thread)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cogqa import costs, decode_kernel, serving  # noqa: E402
from cogqa.hardware import measure_local  # noqa: E402
from cogqa.hf import export_hf  # noqa: E402
from cogqa.model import GQADecoder  # noqa: E402
from cogqa.shapes import ModelShape  # noqa: E402

TRAIN_SHAPE = ModelShape(layers=4, hidden_size=256, ffn_size=683, n_heads=8, n_kv_heads=2, head_dim=64, vocab_size=8192)
DECODE_SHAPE = ModelShape(
    layers=2, hidden_size=256, ffn_size=683, n_heads=8, n_kv_heads=2, head_dim=64, vocab_size=8192
)
_RATIO_BASE = dict(layers=2, hidden_size=256, ffn_size=683, head_dim=64, vocab_size=8192)
BIG, SMALL = ModelShape(n_heads=32, n_kv_heads=8, **_RATIO_BASE), ModelShape(n_heads=8, n_kv_heads=1, **_RATIO_BASE)


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


def copy_bandwidth(mib: int = 128, repeats: int = 5) -> float:
    """STREAM-like copy bandwidth (units: bytes per second): bytes read + bytes written by
    ``dst.copy_(src)`` of two ``mib``-MiB fp32 arrays (far larger than the CPU caches), best of ``repeats``."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() * 4 / alternate([lambda: dst.copy_(src)], repeats)[0]


def matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Peak-like fp32 FLOP/s of this machine at the current thread count: a [n, n] x [n, n] matmul (2 n^3
    FLOPs), best of ``repeats`` (units: FLOP per second)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / alternate([lambda: a @ b], repeats)[0]


def with_kernels(fn, enabled: bool):
    """``fn`` run with cogqa's decode kernels (:mod:`cogqa.decode_kernel`) switched on or off."""

    def run():
        before, decode_kernel.ENABLED = decode_kernel.ENABLED, enabled
        try:
            fn()
        finally:
            decode_kernel.ENABLED = before

    return run


def hf_twin(model, tmp):
    """The same weights loaded by transformers from a cogqa export (fp32, SDPA attention)."""
    import transformers

    export_hf(model, tmp)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
    return hf.eval()


def bench_train(shape, batch, T, steps, tmp) -> tuple[float, float]:
    """Training tokens/s (cogqa, transformers) for one shape (units: tokens per second)."""
    ours = GQADecoder(shape, max_seq_len=T)
    ours.init_weights(0)
    theirs = hf_twin(ours, tmp).train()
    ours.train()
    ids = torch.randint(0, shape.vocab_size, (batch, T))
    steps_fns = []
    for model, call in (
        (ours, lambda m: m(ids, labels=ids).loss),
        (theirs, lambda m: m(input_ids=ids, labels=ids, use_cache=False).loss),
    ):
        # fused AdamW: what both trainers run by default (cogqa train; transformers' Trainer from torch 2.8 on)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step(model=model, call=call, opt=opt):
            opt.zero_grad(set_to_none=True)
            call(model).backward()
            opt.step()

        step()  # warm-up
        steps_fns.append(step)
    t_ours, t_theirs = alternate(steps_fns, steps)
    return batch * T / t_ours, batch * T / t_theirs


def bench_decode(model, hf, context, new, repeats) -> tuple[float, float]:
    """Decode tokens/s after a ``context``-token prompt (cogqa, transformers; units: tokens per second).

    Both caches are prefilled once with the first ``context - 1`` prompt tokens; each timed run
    restores that cache and calls ``generate`` for the last prompt token + ``new - 1`` decode
    steps. Raises AssertionError unless both produce the same greedy tokens.
    """
    ids = torch.randint(0, model.shape.vocab_size, (1, context))
    mask = torch.ones_like(ids)
    outs = {}
    with torch.no_grad():
        cache = model.new_cache(1, context + new)
        model(ids[:, :-1], cache=cache, logits_to_keep=1)
        hf_cache = hf(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).past_key_values

        def ours():
            cache.truncate(context - 1)
            outs["ours"] = model.generate(ids[:, -1:], new, cache=cache)[0, 1:]

        def theirs():
            kv = copy.deepcopy(hf_cache)
            outs["theirs"] = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=kv,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )[0, context:]

        t_ours, t_theirs = alternate([ours, theirs], repeats)
    assert torch.equal(outs["ours"], outs["theirs"]), f"greedy tokens differ at context {context}"
    return new / t_ours, new / t_theirs


def decode_runner(shape, context, new):
    """A function that decodes ``new`` tokens after a prefilled ``context``-token cache (cogqa, fp32)."""
    model = GQADecoder(shape, max_seq_len=context + new)
    model.init_weights(0)
    model.eval()
    ids = torch.randint(0, shape.vocab_size, (1, context))
    with torch.no_grad():
        cache = model.new_cache(1, context + new)
        model(ids[:, :-1], cache=cache, logits_to_keep=1)

    @torch.no_grad()
    def run():
        cache.truncate(context - 1)
        model.generate(ids[:, -1:], new, cache=cache)

    return run


def step_bytes(shape, context) -> float:
    """Bytes one fp32 decode step reads at ``context`` tokens: every weight + the KV cache (units: bytes)."""
    return float(costs.inference_memory_bytes(shape, context, 1, "fp32", "fp32")["total"])


def main(argv=None) -> int:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller contexts and fewer repeats (smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steadier numbers on a shared machine; both sides use the same)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover - older transformers
        pass
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    out = {
        "threads": torch.get_num_threads(),
        "dtype": "fp32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    say = (lambda *a, **k: None) if args.json else print
    say(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} thread(s), fp32, CPU"
    )
    repeats = 2 if args.quick else 3
    bandwidths = [copy_bandwidth()]

    # (a) training step
    batch, T = (2, 128) if args.quick else (4, 256)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = bench_train(TRAIN_SHAPE, batch, T, 3 if args.quick else 6, tmp)
    out.update(train_tokens_per_s=ours, train_tokens_per_s_transformers=theirs, train_ratio=ours / theirs)
    say(f"\n(a) training step, {TRAIN_SHAPE.describe()}, batch {batch} x {T} tokens")
    say(f"    cogqa        {ours:10,.0f} tokens/s")
    say(f"    transformers {theirs:10,.0f} tokens/s   (cogqa / transformers = {ours / theirs:.2f}x)")

    # (b) decode with a KV cache, side by side with transformers
    model = GQADecoder(DECODE_SHAPE, max_seq_len=32768)
    model.init_weights(0)
    model.eval()
    contexts = {"2k": 512, "16k": 2048} if args.quick else {"2k": 2048, "16k": 16384}
    new = 16 if args.quick else 32
    say(f"\n(b) decode tokens/s with a KV cache, batch 1, {DECODE_SHAPE.describe()}, {new} new tokens, greedy")
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_twin(model, tmp)
        for key, ctx in contexts.items():
            ours, theirs = bench_decode(model, hf, ctx, new, repeats)
            out.update(
                {
                    f"decode_tokens_per_s_{key}": ours,
                    f"decode_tokens_per_s_{key}_transformers": theirs,
                    f"decode_ratio_{key}": ours / theirs,
                }
            )
            say(
                f"    context {ctx:6,d} tokens: cogqa {ours:8,.1f} tokens/s   transformers {theirs:8,.1f} tokens/s"
                f"   (cogqa / transformers = {ours / theirs:.2f}x; same tokens: yes)"
            )
    del hf

    # (c) roofline at 16K: bandwidth measured again right before and after the decode timing
    ctx16 = contexts["16k"]
    run = decode_runner(DECODE_SHAPE, ctx16, new)
    bandwidths.append(copy_bandwidth())
    secs, secs_torch = (t / new for t in alternate([with_kernels(run, True), with_kernels(run, False)], repeats))
    bandwidths.append(copy_bandwidth())
    bw = max(bandwidths)
    need = step_bytes(DECODE_SHAPE, ctx16)
    fraction = need / bw / secs
    out.update(
        bandwidth_gb_s=bw / 1e9,
        bandwidth_gb_s_samples=[b / 1e9 for b in bandwidths],
        decode_ms_per_token_16k=secs * 1e3,
        decode_bytes_per_token_16k=need,
        roofline_fraction_16k=fraction,
        decode_ms_per_token_16k_torch_path=secs_torch * 1e3,
        decode_kernel_speedup_16k=secs_torch / secs,
        decode_kernels=decode_kernel.kernel_available(),
    )
    say(f"\n(c) decode at {ctx16:,} tokens vs the memory-bandwidth roofline")
    say(
        f"    copy bandwidth (STREAM-like, read + write) {bw / 1e9:6.1f} GB/s   (samples: "
        + ", ".join(f"{b / 1e9:.1f}" for b in bandwidths)
        + " GB/s)"
    )
    say(
        f"    bytes per step (weights + KV cache)        {need / 1e6:6.1f} MB  "
        f"-> roofline {need / bw * 1e3:.2f} ms/token"
    )
    say(f"    measured                                   {secs * 1e3:6.2f} ms/token  -> {fraction:.0%} of the roofline")
    say(
        f"    the same without cogqa's decode kernels    {secs_torch * 1e3:6.2f} ms/token  "
        f"(kernels {'on' if decode_kernel.kernel_available() else 'UNAVAILABLE'}: {secs_torch / secs:.2f}x faster)"
    )

    # (d) decode-time ratio H = (32, 8) vs H = (8, 1), measured vs the cost model's bytes ratio
    say("\n(d) decode time per token, H=(32,8) vs H=(8,1), L=2 d=256 d_h=64, fp32")
    hw = measure_local("cpu", "fp32", seconds=0.5)
    peak = matmul_flops()
    ridge = peak / bw
    out.update(peak_gflop_s=peak / 1e9, ridge_flop_per_byte=ridge)
    # decode attention does 2 g FLOPs per 4-byte cached number: g / 2 FLOP per byte
    fpb_big, fpb_small = (s.n_heads // s.n_kv_heads / 2 for s in (BIG, SMALL))
    out.update(attention_flop_per_byte_big=fpb_big, attention_flop_per_byte_small=fpb_small)
    bound = "above: bound by arithmetic" if fpb_small > ridge else "below: bound by bytes"
    say(
        f"    decode attention: 2 g FLOPs per cached fp32 number = {fpb_big:.1f} FLOP/byte for (32,8), "
        f"{fpb_small:.1f} for (8,1); this core's ridge {peak / 1e9:.0f} GFLOP/s (1024^3 matmul) / "
        f"{bw / 1e9:.1f} GB/s = {ridge:.1f} FLOP/byte ((8,1) {bound})"
    )
    for key, ctx in ({"4k": 4096} if args.quick else {"8k": 8192, "16k": 16384}).items():
        # more repeats: the two configurations' ratio is the number read here, and (8,1) steps are short
        t_big, t_small = alternate([decode_runner(BIG, ctx, new), decode_runner(SMALL, ctx, new)], 2 * repeats)
        measured = t_big / t_small
        predicted = step_bytes(BIG, ctx) / step_bytes(SMALL, ctx)
        flops = float(costs.inference_flops_per_token(BIG, ctx) / costs.inference_flops_per_token(SMALL, ctx))
        error = abs(measured / predicted - 1)
        t_roof_big, t_roof_small = (
            float(serving.decode_step(s, ctx, 1, hw, "fp32", "fp32")["seconds"]) for s in (BIG, SMALL)
        )
        roofline = t_roof_big / t_roof_small
        out.update(
            {
                f"ratio_predicted_local_roofline_{key}": roofline,
                f"local_roofline_vs_measured_error_{key}": abs(measured / roofline - 1),
                f"local_roofline_fraction_big_{key}": t_roof_big / (t_big / new),
                f"local_roofline_fraction_small_{key}": t_roof_small / (t_small / new),
            }
        )
        out.update(
            {
                f"ratio_measured_{key}": measured,
                f"ratio_predicted_bytes_{key}": predicted,
                f"ratio_predicted_flops_{key}": flops,
                f"predicted_vs_measured_error_{key}": error,
                f"effective_gb_s_big_{key}": step_bytes(BIG, ctx) / (t_big / new) / 1e9,
                f"effective_gb_s_small_{key}": step_bytes(SMALL, ctx) / (t_small / new) / 1e9,
            }
        )
        say(
            f"    context {ctx:6,d}: {t_big / new * 1e3:6.2f} vs {t_small / new * 1e3:6.2f} ms/token; measured "
            f"{measured:4.2f}x, cost-model bytes {predicted:4.2f}x (off by {error:.0%}), FLOPs {flops:4.2f}x; "
            f"effective {step_bytes(BIG, ctx) / (t_big / new) / 1e9:4.1f} vs "
            f"{step_bytes(SMALL, ctx) / (t_small / new) / 1e9:4.1f} GB/s"
        )
        say(
            f"                    local roofline (kernel-shape curves) predicts {roofline:4.2f}x "
            f"(off by {abs(measured / roofline - 1):.0%}); measured at {t_roof_big / (t_big / new):.0%} and "
            f"{t_roof_small / (t_small / new):.0%} of its predicted speed"
        )
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
