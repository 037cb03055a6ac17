"""The GQA decoder: parameter and FLOP counts against the cost model, KV-cache decoding against the
full forward pass, generation, dtypes and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from cogqa import costs
from cogqa.errors import CogqaError
from cogqa.model import GQADecoder, KVCache, sample_next
from cogqa.shapes import ModelShape

# n_h d_h != d in every shape; GQA 3:1, MQA, MHA, untied, Qwen-style extras
SHAPES = {
    "gqa": ModelShape(layers=2, hidden_size=40, ffn_size=96, n_heads=6, n_kv_heads=2, head_dim=16, vocab_size=101),
    "gqa4": ModelShape(layers=2, hidden_size=48, ffn_size=64, n_heads=8, n_kv_heads=2, head_dim=8, vocab_size=97),
    "mqa": ModelShape(
        layers=3, hidden_size=32, ffn_size=80, n_heads=4, n_kv_heads=1, head_dim=16, vocab_size=64, tie_embeddings=False
    ),
    "mha": ModelShape(layers=1, hidden_size=24, ffn_size=64, n_heads=2, n_kv_heads=2, head_dim=32, vocab_size=50),
    "qwen3": ModelShape(
        layers=2, hidden_size=32, ffn_size=64, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=64, qk_norm=True
    ),
    "qwen2": ModelShape(
        layers=2, hidden_size=32, ffn_size=64, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=64, qkv_bias=True
    ),
}


def make(shape, seed=0):
    torch.manual_seed(seed)
    model = GQADecoder(shape, max_seq_len=256)
    model.init_weights(seed)
    with torch.no_grad():  # non-trivial norms and biases so that every parameter matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", SHAPES)
def test_parameter_count_equals_cost_model(name):
    shape = SHAPES[name]
    model = GQADecoder(shape)
    assert sum(p.numel() for p in model.parameters()) == costs.params_total(shape)
    assert model.num_parameters() == costs.params_total(shape)
    assert model.num_parameters(non_embedding=True) == costs.params_non_embedding(shape)


def test_projection_shapes_are_decoupled():
    model = GQADecoder(SHAPES["gqa"])
    attn = model.layers[0].self_attn
    assert tuple(attn.q_proj.weight.shape) == (6 * 16, 40)  # d -> n_h d_h = 96 != 40
    assert tuple(attn.k_proj.weight.shape) == (2 * 16, 40)
    assert tuple(attn.o_proj.weight.shape) == (40, 96)


@pytest.mark.parametrize("name", ["gqa", "mqa"])
def test_flops_match_cost_model(name):
    """Attention convention: the fused CPU SDPA kernel is invisible to FlopCounterMode, so the
    default run counts exactly the matmul components (projections, FFN, LM head); with the MATH
    backend SDPA is counted as the full T x T score matrix (the causal mask is applied after the
    product), i.e. the cost model's prefill with ``causal=False``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    shape = SHAPES[name]
    model = make(shape)
    B, T = 2, 12
    ids = torch.randint(0, shape.vocab_size, (B, T))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    per_token = costs.forward_flops_per_token(shape, 0)
    matmuls = per_token["attention_projections"] + per_token["ffn"] + per_token["lm_head"]
    assert counter.get_total_flops() == B * T * matmuls
    by_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    assert by_module["GQADecoder.layers.0.mlp"] * shape.layers == B * T * per_token["ffn"]

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(ids)
    assert counter.get_total_flops() == B * costs.prefill_flops(shape, T, causal=False)


def test_forward_matches_a_hand_written_reference():
    """One layer computed step by step with plain tensor ops and K/V repeated explicitly."""
    shape = SHAPES["gqa"]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (1, 7))
    blk = model.layers[0]
    a = blk.self_attn

    def rms(x, w, eps=shape.norm_eps):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    x = model.embed_tokens.weight[ids[0]]  # [T, d]
    h = rms(x, blk.input_layernorm.weight)
    T, dh = 7, shape.head_dim
    q = (h @ a.q_proj.weight.T).view(T, 6, dh).transpose(0, 1)
    k = (h @ a.k_proj.weight.T).view(T, 2, dh).transpose(0, 1)
    v = (h @ a.v_proj.weight.T).view(T, 2, dh).transpose(0, 1)
    pos = torch.arange(T).double()
    inv = 1.0 / shape.rope_theta ** (torch.arange(0, dh, 2).double() / dh)
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    rot = lambda t: t * ang.cos().float() + torch.cat([-t[..., dh // 2 :], t[..., : dh // 2]], -1) * ang.sin().float()  # noqa: E731
    q, k = rot(q), rot(k)
    k, v = k.repeat_interleave(3, 0), v.repeat_interleave(3, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, 6 * dh) @ a.o_proj.weight.T
    x = x + y
    m = blk.mlp
    g = rms(x, blk.post_attention_layernorm.weight)
    x = x + (F.silu(g @ m.gate_proj.weight.T) * (g @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    with torch.no_grad():
        got = blk(model.embed_tokens(ids), *_rope(model, T), None, True)[0]
    assert torch.allclose(got, x, atol=1e-5)


def _rope(model, T):
    """cos and the signed sin that blocks take (see cogqa.model.signed_sin)."""
    from cogqa.model import rope_cos_sin, signed_sin

    cos, sin = rope_cos_sin(torch.arange(T)[None], model.shape.head_dim, model.shape.rope_theta, torch.float32)
    return cos, signed_sin(sin)


def test_loss_follows_the_hugging_face_convention():
    shape = SHAPES["mha"]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (2, 9))
    labels = ids.clone()
    labels[0, 4] = -100
    out = model(ids, labels=labels)
    logp = out.logits.log_softmax(-1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(8) if labels[b, t + 1] != -100]
    assert len(terms) == 15
    assert torch.allclose(out.loss, torch.stack(terms).mean(), atol=1e-6)
    assert model(ids).loss is None


@pytest.mark.parametrize("name", ["gqa", "mqa", "qwen3"])
def test_kv_cache_decode_equals_full_forward_batch1(name):
    shape = SHAPES[name]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (1, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1, 32)
        parts = [model(ids[:, :8], cache=cache).logits, model(ids[:, 8:11], cache=cache).logits]  # prefill, chunk
        parts += [model(ids[:, t : t + 1], cache=cache).logits for t in range(11, 20)]  # token by token
    assert cache.length == 20
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def test_kv_cache_decode_with_left_padding_batch3():
    """Three prompts of different lengths, left-padded: each row equals its own unpadded forward."""
    shape = SHAPES["gqa4"]
    model = make(shape)
    lengths, P, new = [5, 9, 2], 9, 6
    seqs = [torch.randint(0, shape.vocab_size, (n + new,)) for n in lengths]
    ids = torch.zeros(3, P, dtype=torch.long)
    mask = torch.zeros(3, P, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, P - n :] = seqs[b][:n]
        mask[b, P - n :] = 1
    with torch.no_grad():
        cache = model.new_cache(3, P + new)
        logits = [model(ids, attention_mask=mask, cache=cache).logits[:, -1]]
        for t in range(new - 1):
            step = torch.stack([seqs[b][lengths[b] + t] for b in range(3)])[:, None]
            logits.append(model(step, cache=cache).logits[:, -1])
        for b, n in enumerate(lengths):
            ref = model(seqs[b][None, : n + new - 1]).logits[0, n - 1 :]
            got = torch.stack([lg[b] for lg in logits])
            assert (got - ref).abs().max() < 1e-5, b
        # a padded full forward (no cache) agrees on the real tokens too
        padded = model(ids, attention_mask=mask).logits
        assert (padded[0, P - 5 :] - model(seqs[0][None, :5]).logits[0]).abs().max() < 1e-5
        assert torch.isfinite(padded).all()


def test_generate_greedy_matches_argmax_of_full_forward():
    shape = SHAPES["gqa"]
    model = make(shape)
    prompt = torch.randint(0, shape.vocab_size, (2, 5))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 11):
            assert torch.equal(model(out[:, :t]).logits[:, -1].argmax(-1), out[:, t])


def test_generate_left_padded_batch_equals_separate_runs():
    shape = SHAPES["mqa"]
    model = make(shape)
    a, b = torch.randint(0, 64, (1, 3)), torch.randint(0, 64, (1, 7))
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = torch.tensor([[0] * 4 + [1] * 3, [1] * 7])
    out = model.generate(ids, 5, attention_mask=mask)
    assert torch.equal(out[0, 7:], model.generate(a, 5)[0, 3:])
    assert torch.equal(out[1, 7:], model.generate(b, 5)[0, 7:])


def test_generate_eos_and_sampling():
    shape = SHAPES["gqa"]
    model = make(shape)
    prompt = torch.randint(0, shape.vocab_size, (3, 4))
    greedy = model.generate(prompt, 4)
    eos = int(greedy[0, 4])  # the first greedy token of row 0 ends it at once
    out = model.generate(prompt, 4, eos_id=eos)
    assert (out[0, 4:] == eos).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = model.generate(prompt, 5, temperature=0.8, top_k=10, top_p=0.9, generator=g1)
    s2 = model.generate(prompt, 5, temperature=0.8, top_k=10, top_p=0.9, generator=g2)
    assert torch.equal(s1, s2)


def test_sampling_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) <= {0, 1}
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.7, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8: the two most likely tokens
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.5, generator=g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}
    assert int(sample_next(logits)) == 0


@pytest.mark.parametrize("dtype,kv", [(torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_cache_nbytes_equals_cost_model(dtype, kv):
    shape = SHAPES["gqa"]
    T, batch = 37, 3
    cache = KVCache(shape, batch, T, dtype=dtype)
    assert cache.nbytes == costs.kv_cache_bytes_per_token(shape, kv) * T * batch
    big = ModelShape(layers=24, hidden_size=1280, ffn_size=3413, n_heads=8, n_kv_heads=1)
    assert (
        KVCache(big, 1, 1024, device="meta", dtype=torch.bfloat16).nbytes
        == costs.kv_cache_bytes_per_token(big, "bf16") * 1024
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_trains(dtype):
    shape = SHAPES["gqa"]
    model = make(shape).to(dtype).train()
    ids = torch.randint(0, shape.vocab_size, (2, 8))
    out = model(ids, labels=ids)
    assert out.logits.dtype == dtype and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.generate(ids[:, :3], 2).shape == (2, 5)


def test_init_weights_is_seeded_and_scaled():
    shape = ModelShape(layers=8, hidden_size=256, ffn_size=512, n_heads=4, n_kv_heads=1, head_dim=64, vocab_size=1000)
    a, b = GQADecoder(shape), GQADecoder(shape)
    a.init_weights(3)
    b.init_weights(3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert abs(a.embed_tokens.weight.std().item() - 0.02) < 1e-3
    assert abs(a.layers[0].mlp.down_proj.weight.std().item() - 0.02 / 4) < 3e-4  # 0.02 / sqrt(2 * 8)
    assert torch.equal(a.layers[0].input_layernorm.weight, torch.ones(256))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(CogqaError, match="must divide n_heads") as e:
        ModelShape(layers=1, hidden_size=32, ffn_size=64, n_heads=6, n_kv_heads=4)
    assert "\n" not in str(e.value)
    model = make(SHAPES["mha"])
    cache = model.new_cache(1, 8)
    with pytest.raises(CogqaError, match="do not fit the KV cache") as e:
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    assert "\n" not in str(e.value)
    with pytest.raises(CogqaError, match="max_seq_len"):
        model.generate(torch.zeros(1, 250, dtype=torch.long), 10)
    with pytest.raises(CogqaError, match="fit the KV cache"):
        model.generate(torch.zeros(1, 5, dtype=torch.long), 5, cache=model.new_cache(1, 8))
    with pytest.raises(CogqaError, match="batch"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    with pytest.raises(CogqaError, match="ffn_kind"):
        GQADecoder(ModelShape(layers=1, hidden_size=32, ffn_size=64, n_heads=2, n_kv_heads=1, ffn_kind="mlp"))


def test_torch_compile_matches_eager():
    pytest.importorskip("torch._dynamo")
    shape = SHAPES["mha"]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (1, 6))
    try:
        compiled = torch.compile(model, backend="eager")
        got = compiled(ids).logits
    except Exception as exc:  # pragma: no cover - no compiler on this machine
        pytest.skip(f"torch.compile unavailable: {exc}")
    assert torch.allclose(got, model(ids).logits, atol=1e-6)


def _reference_loss(model, ids, labels):
    logits = F.linear(model.norm(_hidden(model, ids)), model.output_weight)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100)


def _hidden(model, ids):
    from cogqa.model import rope_cos_sin, signed_sin

    x = model.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    cos, sin = rope_cos_sin(pos, model.shape.head_dim, model.shape.rope_theta, x.dtype)
    sin = signed_sin(sin)
    for block in model.layers:
        x = block(x, cos, sin, None, True)
    return x


@pytest.mark.parametrize("name", ["gqa", "mqa"])
def test_fused_training_loss_and_gradients_equal_the_plain_cross_entropy(name):
    """fp32 training with labels goes through LinearCrossEntropy (chunks of 256 rows: 2 x 150
    rows cross a chunk boundary); loss and every gradient equal logits -> F.cross_entropy."""
    shape = SHAPES[name]
    model = make(shape).train()
    ids = torch.randint(0, shape.vocab_size, (2, 150))
    labels = ids.clone()
    labels[0, 7] = labels[1, 100:120] = -100
    out = model(ids, labels=labels)
    assert out.logits is None
    out.loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = _reference_loss(model, ids, labels)
    ref.backward()
    assert torch.allclose(out.loss, ref, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(fused[n], p.grad, atol=1e-6, rtol=1e-4), n
    model.fused_loss = False
    assert model(ids, labels=labels).logits.shape == (2, 150, shape.vocab_size)
    with torch.no_grad():  # evaluation keeps the logits
        assert model(ids, labels=labels).logits is not None


def test_logits_to_keep_returns_the_last_positions():
    shape = SHAPES["gqa"]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        assert torch.allclose(model(ids, logits_to_keep=1).logits, full[:, -1:], atol=1e-6)
        assert torch.allclose(model(ids, logits_to_keep=3).logits, full[:, -3:], atol=1e-6)
        assert model(ids, logits_to_keep=20).logits.shape == full.shape
    with pytest.raises(CogqaError, match="logits_to_keep"):
        model(ids, labels=ids, logits_to_keep=1)
    with pytest.raises(CogqaError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


def test_grouped_decode_attention_equals_repeated_kv():
    """The single-token decode path (query heads of a group as rows of their K/V head) equals
    attention over K/V repeated to every query head."""
    shape = SHAPES["gqa4"]
    model = make(shape)
    attn = model.layers[0].self_attn
    x = torch.randn(2, 1, shape.hidden_size)
    cache = model.new_cache(2, 16)
    cache.keys[0][:, :, :9] = torch.randn(2, shape.n_kv_heads, 9, shape.head_dim)
    cache.values[0][:, :, :9] = torch.randn(2, shape.n_kv_heads, 9, shape.head_dim)
    cache.length = 9
    cos, sin = torch.ones(1, 1, 1, shape.head_dim), torch.zeros(1, 1, 1, shape.head_dim)
    with torch.no_grad():
        got = attn(x, cos, sin, None, False, cache, 0)
        q = attn.q_proj(x).view(2, 1, shape.n_heads, shape.head_dim).transpose(1, 2)
        group = shape.n_heads // shape.n_kv_heads
        k = cache.keys[0][:, :, :10].repeat_interleave(group, 1)
        v = cache.values[0][:, :, :10].repeat_interleave(group, 1)
        y = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(shape.head_dim), -1) @ v
        ref = attn.o_proj(y.transpose(1, 2).reshape(2, 1, -1))
    assert torch.allclose(got, ref, atol=1e-6)


def test_greedy_decode_matches_transformers_token_for_token(tmp_path):
    """Same weights, fp32 caches, greedy: cogqa's generate and transformers' generate agree on
    every new token (the benchmark asserts the same at 2K and 16K context)."""
    transformers = pytest.importorskip("transformers")
    from cogqa.hf import export_hf

    shape = ModelShape(layers=2, hidden_size=64, ffn_size=128, n_heads=8, n_kv_heads=2, head_dim=16, vocab_size=128)
    model = make(shape)
    export_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.randint(0, shape.vocab_size, (1, 40))
    ours = model.generate(ids, 12)
    theirs = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_inductor_compiled_training_step_matches_eager():
    """torch.compile with the default inductor backend on CPU: a training step's loss and
    gradients (through the fused loss) equal eager's (what ``cogqa train --compile`` runs)."""
    pytest.importorskip("torch._inductor")
    shape = SHAPES["gqa"]
    model = make(shape).train()
    ids = torch.randint(0, shape.vocab_size, (2, 16))
    eager = model(ids, labels=ids).loss
    eager.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)
    loss = compiled(ids, labels=ids).loss
    loss.backward()
    assert torch.allclose(loss, eager, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-5, rtol=1e-4), n


def test_cache_truncate_repeats_a_decode_from_the_same_prefix():
    """KVCache.truncate rolls length, valid mask and RoPE positions back: decoding again from the prefix gives
    the same tokens as the first time."""
    shape = SHAPES["gqa4"]
    model = make(shape)
    ids = torch.randint(0, shape.vocab_size, (1, 12))
    with torch.no_grad():
        cache = model.new_cache(1, 32)
        model(ids, cache=cache)
        first = model.generate(ids[:, -1:], 6, cache=cache)
        cache.truncate(12)
        assert cache.length == 12 and int(cache.seen[0]) == 12 and not bool(cache.valid[:, 12:].any())
        again = model.generate(ids[:, -1:], 6, cache=cache)
    assert torch.equal(first, again)
    with pytest.raises(CogqaError):
        cache.truncate(40)


@pytest.mark.parametrize("group", [1, 4])
def test_decode_attention_matches_sdpa(group):
    from cogqa.kvcache import decode_attention

    torch.manual_seed(0)
    q = torch.randn(2, 2, group, 16)
    k, v = torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    mask = torch.rand(2, 1, 1, 40) > 0.3
    mask[..., -1] = True
    for m in (None, mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(decode_attention(q, k, v, m), want, atol=1e-6, rtol=1e-5)


def _longer_side_contiguous(model) -> dict:
    """name -> whether the matrix is stored contiguous along its longer side (column-major when rows >= cols)."""
    out = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            rows, cols = p.shape
            out[name] = p.stride() == ((1, rows) if rows >= cols else (cols, 1))
    return out


def test_weights_are_laid_out_for_the_mode_through_training_and_loading(tmp_path):
    """Training mode (a new model's) stores every matrix (embedding, projections, untied LM head) row-major, and
    gradients and AdamW states follow; eval mode stores it contiguous along its longer side, and training mode
    again restores row-major, the optimiser still stepping; a checkpoint round trip (saved contiguous, loaded with
    assign=True) and a dtype cast keep the layout of the mode; the values never change."""
    from cogqa.checkpoint import load_model, save_model

    def row_major(m):
        return {n: p.is_contiguous() for n, p in m.named_parameters() if p.dim() == 2}

    shape = SHAPES["mqa"]  # untied: the LM head is a Linear [V, d]
    model, stayed = GQADecoder(shape, max_seq_len=64), GQADecoder(shape, max_seq_len=64)  # stayed: never in eval
    model.init_weights(0)
    stayed.init_weights(0)
    assert model.training and all(row_major(model).values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    opt_stayed = torch.optim.AdamW(stayed.parameters(), lr=1e-3, fused=True)
    ids = torch.randint(0, shape.vocab_size, (2, 12))

    def step(m, o):
        o.zero_grad()
        m(ids, labels=ids).loss.backward()
        o.step()

    step(model, opt)
    step(stayed, opt_stayed)
    for p in model.parameters():
        assert p.is_contiguous() and p.grad.is_contiguous() and opt.state[p]["exp_avg"].is_contiguous()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    assert model.eval() is model
    layout = _longer_side_contiguous(model)
    assert layout and all(layout.values()), layout
    assert model.embed_tokens.weight.stride() == (1, shape.vocab_size)
    assert model.layers[0].mlp.down_proj.weight.is_contiguous()  # [d, d_ff]: rows < columns
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), name
    logits = model(ids).logits
    assert model.train() is model
    assert all(row_major(model).values())
    step(model, opt)  # states created row-major, parameters row-major again
    step(stayed, opt_stayed)
    for name, p in stayed.state_dict().items():  # the round trip through eval mode changed no update
        assert torch.equal(model.state_dict()[name], p), name
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.training and all(row_major(loaded).values())
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    model.eval()
    loaded.eval()
    assert all(_longer_side_contiguous(loaded).values())
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert not torch.equal(logits, model(ids).logits)  # the second step changed the weights
    assert all(_longer_side_contiguous(load_model(tmp_path / "ckpt", dtype="bf16").eval()).values())


WINDOWED = {
    "all": ModelShape(
        layers=2, hidden_size=40, ffn_size=96, n_heads=6, n_kv_heads=2, head_dim=16, vocab_size=101, sliding_window=4
    ),
    "last": ModelShape(
        layers=3,
        hidden_size=48,
        ffn_size=64,
        n_heads=8,
        n_kv_heads=2,
        head_dim=8,
        vocab_size=97,
        sliding_window=5,
        window_layers=2,
    ),
}


@pytest.mark.parametrize("name", WINDOWED)
def test_sliding_window_decode_past_the_window_equals_the_full_forward(name):
    """Prefill, a prefill chunk and token-by-token decode through the cache give the full forward's logits
    well past the window; the window changes the logits there (and not before it); left-padded prompts
    decode as their own unpadded runs."""
    shape = WINDOWED[name]
    W = shape.sliding_window
    model = make(shape)
    assert [layer.self_attn.window for layer in model.layers] == [None] * (shape.layers - shape.windowed_layers) + [
        W
    ] * shape.windowed_layers
    ids = torch.randint(0, shape.vocab_size, (1, 6 * W))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1, 6 * W)
        parts = [model(ids[:, :3], cache=cache).logits, model(ids[:, 3 : 2 * W], cache=cache).logits]
        parts += [model(ids[:, t : t + 1], cache=cache).logits for t in range(2 * W, 6 * W)]
        assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
        unwindowed = GQADecoder(ModelShape(**{**shape.to_dict(), "sliding_window": None, "window_layers": None}))
        unwindowed.load_state_dict(model.state_dict())
        plain = unwindowed.eval()(ids).logits
        assert (plain - full)[:, :W].abs().max() < 1e-5 and (plain - full)[:, W:].abs().max() > 1e-3
        lengths, P, new = [3, 2 * W + 1, W], 2 * W + 1, 2 * W
        seqs = [torch.randint(0, shape.vocab_size, (n + new,)) for n in lengths]
        padded = torch.zeros(3, P, dtype=torch.long)
        mask = torch.zeros(3, P, dtype=torch.long)
        for b, n in enumerate(lengths):
            padded[b, P - n :] = seqs[b][:n]
            mask[b, P - n :] = 1
        cache = model.new_cache(3, P + new)
        logits = [model(padded, attention_mask=mask, cache=cache).logits[:, -1]]
        for t in range(new - 1):
            step = torch.stack([seqs[b][lengths[b] + t] for b in range(3)])[:, None]
            logits.append(model(step, cache=cache).logits[:, -1])
        for b, n in enumerate(lengths):
            ref = model(seqs[b][None, : n + new - 1]).logits[0, n - 1 :]
            assert (torch.stack([lg[b] for lg in logits]) - ref).abs().max() < 1e-5, b


@pytest.mark.parametrize("bias", [False, True])
def test_ffn_on_padded_width_equals_the_true_width(bias, monkeypatch):
    """512 rows and an odd d_ff (here 83) run on weights zero-padded to a multiple of 16: the same outputs and the
    same parameter gradients as the true width (the padded units are silu(0) * 0 = 0), and no padded parameter."""
    import cogqa.model as model_module
    from cogqa.model import SwiGLU

    shape = ModelShape(layers=1, hidden_size=32, ffn_size=83, n_heads=2, n_kv_heads=1, head_dim=16, mlp_bias=bias)
    torch.manual_seed(0)
    mlp = SwiGLU(shape)
    if bias:
        for layer in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            torch.nn.init.normal_(layer.bias, std=0.1)
    x = torch.randn(4, 128, 32)  # FFN_PAD_MIN_ROWS rows
    calls = []
    original = F.pad
    monkeypatch.setattr(F, "pad", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = {}
    for multiple in (1, 16):
        monkeypatch.setattr(model_module, "FFN_WIDTH_MULTIPLE", multiple)
        mlp.zero_grad(set_to_none=True)
        calls.clear()
        y = mlp(x)
        (y * torch.linspace(-1, 1, 32)).sum().backward()
        results[multiple] = (y.detach(), {n: p.grad.clone() for n, p in mlp.named_parameters()}, len(calls))
    (y1, g1, pads1), (y16, g16, pads16) = results[1], results[16]
    assert pads1 == 0 and pads16 >= 3  # the padded path ran (and only with the multiple)
    assert torch.allclose(y16, y1, rtol=1e-5, atol=1e-6)
    for name, grad in g1.items():
        assert g16[name].shape == grad.shape and torch.allclose(g16[name], grad, rtol=1e-5, atol=1e-6), name
    assert mlp.gate_proj.weight.shape == (83, 32) and mlp.down_proj.weight.shape == (32, 83)
    # a few rows (a decode step) keep the true width: no padding
    monkeypatch.setattr(model_module, "FFN_WIDTH_MULTIPLE", 16)
    calls.clear()
    with torch.no_grad():
        few = mlp(x[:1, :3])
    assert calls == [] and torch.allclose(few, y1[:1, :3], rtol=1e-5, atol=1e-6)
    # a hook on a projection (an adapter, per-layer sharding) keeps the module calls, and so the true width
    seen = []
    mlp.up_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        hooked = mlp(x)
    assert calls == [] and seen == [83] and torch.allclose(hooked, y1, rtol=1e-5, atol=1e-6)
