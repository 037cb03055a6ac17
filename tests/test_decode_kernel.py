"""The numba decode kernels compute what the torch path computes, and step aside where they do not apply."""

import pytest
import torch
import torch.nn.functional as F

from cogqa import decode_kernel
from cogqa.kvcache import lay_out_matrix
from cogqa.model import GQADecoder
from cogqa.shapes import ModelShape

pytest.importorskip("numba")


@pytest.fixture
def any_size(monkeypatch):
    """The kernels on caches, matrices and rows of any size (tests use tiny ones)."""
    monkeypatch.setattr(decode_kernel, "MIN_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(decode_kernel, "MIN_ONE_ROW_WEIGHTS", 0)
    monkeypatch.setattr(decode_kernel, "MIN_NORM_SIZE", 0)


def _reference(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize(
    "B,H,G,D,S,max_len",
    [
        (1, 2, 4, 64, 300, 320),
        (2, 3, 8, 32, 77, 100),
        (1, 1, 1, 128, 5, 9),
        (3, 2, 6, 64, 129, 129),
        (2, 1, 3, 16, 40, 64),
    ],
)
def test_attention_matches_sdpa_on_cache_views(any_size, B, H, G, D, S, max_len):
    torch.manual_seed(0)
    keys, values = torch.randn(B, H, max_len, D), torch.randn(B, H, max_len, D)
    k, v = keys[:, :, :S], values[:, :, :S]  # the filled part of a preallocated cache, as decode passes it
    q = torch.randn(B, H, G, D)
    mask = torch.rand(B, 1, 1, S) > 0.3
    mask[..., -1] = True
    for m in (None, mask):
        got = decode_kernel.grouped_decode_attention(q, k, v, m)
        assert got is not None
        torch.testing.assert_close(got, _reference(q, k, v, m), atol=2e-6, rtol=1e-5)
    window = min(S, 7)  # a sliding window's last W positions: a view that starts mid-buffer
    got = decode_kernel.grouped_decode_attention(q, k[:, :, -window:], v[:, :, -window:])
    torch.testing.assert_close(got, _reference(q, k[:, :, -window:], v[:, :, -window:]), atol=2e-6, rtol=1e-5)


def test_attention_loops_without_the_prefetch_hint_give_the_same_values(any_size, monkeypatch):
    """Where this LLVM cannot build ``llvm.prefetch``, :func:`_prefetch` falls back to a no-op, and the loops
    (both output arrangements: g <= 4 and g > 4) compute the same attention."""
    from numba.core import cgutils

    def refuse(*args, **kwargs):
        raise RuntimeError("no llvm.prefetch here")

    monkeypatch.setattr(cgutils, "get_or_insert_function", refuse)
    fallback = decode_kernel._prefetch.__wrapped__()  # built afresh, not the cached hint
    assert fallback is decode_kernel._no_prefetch()
    monkeypatch.undo()
    monkeypatch.setattr(decode_kernel, "MIN_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(decode_kernel, "_prefetch", lambda: fallback)
    caches = (
        decode_kernel._attention_loops,
        decode_kernel._attention_heads,
        decode_kernel._attend_kernels,
        decode_kernel._step_kernel,
    )
    for cached in caches:
        cached.cache_clear()
    try:
        torch.manual_seed(0)
        for G in (4, 8):
            q, k, v = torch.randn(2, 2, G, 32), torch.randn(2, 2, 90, 32), torch.randn(2, 2, 90, 32)
            got = decode_kernel.grouped_decode_attention(q, k, v)
            torch.testing.assert_close(got, _reference(q, k, v), atol=2e-6, rtol=1e-5)
    finally:
        for cached in caches:  # later tests build the loops with the hint again
            cached.cache_clear()


def test_fused_decode_attention_matches_sdpa_and_steps_aside():
    torch.manual_seed(0)
    for H, G, D, S in ((2, 4, 64, 300), (1, 16, 32, 77), (3, 1, 16, 5)):
        q, k, v = torch.randn(H, G, D), torch.randn(H, S, D), torch.randn(H, S, D)
        got = decode_kernel.fused_decode_attention(q, k, v)
        torch.testing.assert_close(got, _reference(q, k, v), atol=2e-6, rtol=1e-5)
    q, k, v = torch.randn(1, 32, 16), torch.randn(1, 9, 16), torch.randn(1, 9, 16)
    assert decode_kernel.fused_decode_attention(q, k, v) is None  # more query rows than the fused step takes
    assert decode_kernel.fused_decode_attention(q[:, :4].double(), k.double(), v.double()) is None
    with pytest.raises(ValueError, match="needs k, v"):  # mismatched shapes are refused, never read out of bounds
        decode_kernel.fused_decode_attention(torch.randn(2, 4, 16), k, v)
    with pytest.raises(ValueError, match=r"q must be \[n_kv, group, d_h\], got shape \(1, 1, 4, 16\)"):
        decode_kernel.fused_decode_attention(torch.randn(1, 1, 4, 16), k, v)


def test_attention_steps_aside_where_it_does_not_apply(any_size, monkeypatch):
    q, k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    kernel = decode_kernel.grouped_decode_attention
    assert kernel(q.bfloat16(), k.bfloat16(), v.bfloat16()) is None  # fp32 only
    assert kernel(q.requires_grad_(), k, v) is None  # autograd needs the torch path
    q = q.detach()
    assert kernel(torch.randn(1, 2, 16, 16), k, v) is None  # group 16: no faster than MKL
    assert kernel(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), v) is None  # not row-contiguous
    monkeypatch.setattr(decode_kernel, "MIN_CACHE_ELEMENTS", 1 << 18)
    assert kernel(q, k, v) is None  # short cache: the matmul path is as fast
    monkeypatch.setattr(decode_kernel, "MIN_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(decode_kernel, "_numba_imports", lambda: False)  # numba not installed
    assert kernel(q, k, v) is None and decode_kernel.one_row_linear(torch.randn(1, 16), torch.randn(8, 16)) is None
    monkeypatch.setattr(decode_kernel, "_numba_imports", lambda: True)
    assert kernel(q, k, v) is not None
    monkeypatch.setattr(decode_kernel, "ENABLED", False)
    assert kernel(q, k, v) is None


@pytest.mark.parametrize("rows,cols", [(96, 32), (32, 96), (64, 64), (300, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_one_row_linear_matches_f_linear_in_both_layouts(any_size, rows, cols, bias):
    torch.manual_seed(0)
    x = torch.randn(1, 1, cols)
    b = torch.randn(rows) if bias else None
    w = torch.randn(rows, cols)
    for weight in (w.contiguous(), w.t().contiguous().t(), lay_out_matrix(w)):
        got = decode_kernel.one_row_linear(x, weight, b)
        assert got is not None and got.shape == (1, 1, rows)
        torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_one_row_linear_steps_aside_where_it_does_not_apply(any_size):
    w = torch.randn(8, 4)
    assert decode_kernel.one_row_linear(torch.randn(2, 4), w) is None  # two rows: a GEMM
    assert decode_kernel.one_row_linear(torch.randn(1, 4), w[:, ::1][::2]) is None  # strided rows
    assert decode_kernel.one_row_linear(torch.randn(1, 4).bfloat16(), w.bfloat16()) is None
    assert decode_kernel.one_row_linear(torch.randn(1, 4), w.requires_grad_()) is None


def test_one_row_rms_norm_matches_torch(any_size):
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 48) * 3, torch.randn(48)
    got = decode_kernel.one_row_rms_norm(x, w, 1e-6)
    torch.testing.assert_close(got, F.rms_norm(x, (48,), w, 1e-6), atol=1e-6, rtol=1e-5)
    assert decode_kernel.one_row_rms_norm(torch.randn(2, 1, 48), w, 1e-6) is None


def test_tiny_models_keep_the_torch_path():
    assert decode_kernel.one_row_linear(torch.randn(1, 64), torch.randn(96, 64)) is None  # 6K weights
    assert decode_kernel.one_row_rms_norm(torch.randn(1, 1, 64), torch.randn(64), 1e-6) is None
    assert decode_kernel.one_row_linear(torch.randn(1, 256), torch.randn(512, 256)) is not None


def _generate(model, ids, mask, enabled, monkeypatch):
    monkeypatch.setattr(decode_kernel, "ENABLED", enabled)
    with torch.no_grad():
        tokens = model.generate(ids, 12, attention_mask=mask)
        logits = model(
            tokens,
            attention_mask=None
            if mask is None
            else torch.cat([mask, torch.ones(mask.shape[0], 12, dtype=mask.dtype)], 1),
        ).logits
    return tokens, logits


@pytest.mark.parametrize("n_heads,n_kv_heads", [(8, 2), (8, 1), (4, 4)])
def test_generate_is_the_same_with_and_without_the_kernels(any_size, monkeypatch, n_heads, n_kv_heads):
    shape = ModelShape(
        layers=2, hidden_size=64, ffn_size=96, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=16, vocab_size=97
    )
    model = GQADecoder(shape, max_seq_len=128)
    model.init_weights(0)
    model.eval()
    torch.manual_seed(1)
    one = torch.randint(0, 97, (1, 30))
    batch = torch.randint(0, 97, (2, 30))
    left_padded = torch.ones(2, 30, dtype=torch.long)
    left_padded[0, :5] = 0
    import cogqa.kvcache
    import cogqa.model

    used = {"attention": 0, "linear": 0, "step": 0}

    def spy(name, fn):
        def call(*args):
            out = fn(*args)
            used[name] += out is not None
            return out

        return call

    monkeypatch.setattr(
        cogqa.kvcache, "grouped_decode_attention", spy("attention", decode_kernel.grouped_decode_attention)
    )
    monkeypatch.setattr(cogqa.model, "one_row_linear", spy("linear", decode_kernel.one_row_linear))
    monkeypatch.setattr(cogqa.model, "decode_step", spy("step", decode_kernel.decode_step))
    for ids, mask in ((one, None), (batch, left_padded), (one, left_padded[:1])):
        tokens_on, logits_on = _generate(model, ids, mask, True, monkeypatch)
        tokens_off, logits_off = _generate(model, ids, mask, False, monkeypatch)
        assert torch.equal(tokens_on, tokens_off)
        torch.testing.assert_close(logits_on, logits_off, atol=1e-4, rtol=1e-4)
    # one sequence: every decode step in one fused call; padded ones: the per-operation kernels
    assert used["step"] >= 11 and used["attention"] >= 2 * 11 * 2 and used["linear"] >= 11 * 2 * 7


def test_kernels_step_aside_for_many_threads(any_size, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: decode_kernel.MAX_THREADS + 1)
    assert not decode_kernel.kernel_available()
    q, k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    assert decode_kernel.grouped_decode_attention(q, k, v) is None


# --------------------------------------------------------------------------- the fused decode step


def _step_spy(monkeypatch):
    import cogqa.model

    used = []

    def call(*args):
        out = decode_kernel.decode_step(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(cogqa.model, "decode_step", call)
    return used


def _perturbed_model(shape, seed=0):
    model = GQADecoder(shape, max_seq_len=256)
    model.init_weights(seed)
    with torch.no_grad():  # norm gains and biases away from 1 and 0, so a missed one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.2)
    return model.eval()


@pytest.mark.parametrize(
    "extra",
    [
        dict(n_heads=8, n_kv_heads=2),
        dict(n_heads=8, n_kv_heads=1, head_dim=32),
        dict(n_heads=10, n_kv_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True),
        dict(n_heads=4, n_kv_heads=4, sliding_window=9, window_layers=1, tie_embeddings=False),
    ],
)
def test_fused_step_matches_the_torch_path(any_size, monkeypatch, extra):
    shape = ModelShape(**{**dict(layers=2, hidden_size=64, ffn_size=96, head_dim=16, vocab_size=97), **extra})
    model = _perturbed_model(shape)
    ids = torch.randint(0, 97, (1, 21), generator=torch.Generator().manual_seed(3))
    used = _step_spy(monkeypatch)
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(decode_kernel, "ENABLED", enabled)
        cache = model.new_cache(1, 64)
        with torch.no_grad():
            tokens = model.generate(ids, 15, cache=cache)
            logits = model(tokens[:, -1:], cache=cache).logits
        results[enabled] = tokens, logits, cache
    assert used.count(True) == 15 and not any(used[15:])  # every decode step fused when on, none when off
    (tokens_on, logits_on, cache_on), (tokens_off, logits_off, cache_off) = results[True], results[False]
    assert torch.equal(tokens_on, tokens_off)
    torch.testing.assert_close(logits_on, logits_off, atol=1e-5, rtol=1e-5)
    assert cache_on.length == cache_off.length == 21 + 15  # the prompt, 14 decoded tokens, the last one fed above
    assert torch.equal(cache_on.seen, cache_off.seen) and torch.equal(cache_on.valid, cache_off.valid)
    for mine, theirs in zip(cache_on.keys + cache_on.values, cache_off.keys + cache_off.values):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_fused_step_steps_aside_and_writes_nothing(any_size, monkeypatch):
    shape = ModelShape(layers=1, hidden_size=64, ffn_size=96, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=50)
    model = _perturbed_model(shape)
    cos, sin = torch.ones(16), torch.zeros(16)

    def step(cache, token=3):
        before = [t.clone() for t in cache.keys + cache.values]
        out = decode_kernel.decode_step(model, token, cache, cos, sin)
        if out is None:
            assert all(torch.equal(a, b) for a, b in zip(before, cache.keys + cache.values))
        return out

    with torch.no_grad():
        assert step(model.new_cache(1, 8)) is not None
        assert step(model.new_cache(2, 8)) is None  # a batch: the per-operation path
        padded = model.new_cache(1, 8)
        model(torch.tensor([[0, 5]]), attention_mask=torch.tensor([[0, 1]]), cache=padded)
        assert step(padded) is None  # padding in the cache needs the mask
        assert step(model.new_cache(1, 8), token=50) is None  # out of the vocabulary: the torch path raises
        assert step(model.new_cache(1, 8, dtype="bf16")) is None
        monkeypatch.setattr(torch, "get_num_threads", lambda: decode_kernel.MAX_THREADS + 1)
        assert step(model.new_cache(1, 8)) is None
        monkeypatch.undo()
    assert step(model.new_cache(1, 8)) is None  # gradients wanted
    monkeypatch.setattr(decode_kernel, "MIN_NORM_SIZE", 128)
    with torch.no_grad():
        assert step(model.new_cache(1, 8)) is None  # test-sized models keep the torch path
    with pytest.raises(IndexError):
        model(torch.tensor([[50]]), cache=model.new_cache(1, 8))


def test_fused_step_follows_weights_changed_after_its_first_call(any_size, monkeypatch):
    shape = ModelShape(layers=2, hidden_size=64, ffn_size=96, n_heads=8, n_kv_heads=2, head_dim=16, vocab_size=97)
    model, other = _perturbed_model(shape, 0), _perturbed_model(shape, 1)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(5))
    used = _step_spy(monkeypatch)
    fused_cache, torch_cache = model.new_cache(1, 32), model.new_cache(1, 32)  # the kernel keeps its views on a cache

    def last_logits(enabled, cache):
        monkeypatch.setattr(decode_kernel, "ENABLED", enabled)
        cache.reset()
        with torch.no_grad():
            model(ids[:, :-1], cache=cache)
            return model(ids[:, -1:], cache=cache).logits

    def check():
        torch.testing.assert_close(last_logits(True, fused_cache), last_logits(False, torch_cache))

    check()
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight.mul_(3)  # in place: the kernel reads the same memory
    check()
    model.load_state_dict(other.state_dict(), assign=True)  # new tensors: the kernel's views are rebuilt
    check()
    with torch.no_grad():  # a parameter's data swapped (as .to() and lay_out_weights do): rebuilt
        model.layers[0].self_attn.k_proj.weight.data = model.layers[0].self_attn.k_proj.weight.data * 2
    check()
    fresh = torch.nn.Linear(shape.ffn_size, shape.hidden_size, bias=False)  # a submodule replaced: rebuilt
    with torch.no_grad():
        fresh.weight.copy_(model.layers[1].mlp.down_proj.weight * -1.5)
    model.layers[1].mlp.down_proj = fresh
    check()
    model.norm.weight = torch.nn.Parameter(model.norm.weight.detach() + 0.25)  # a parameter replaced: rebuilt
    check()
    assert used == [True, False] * 6  # fused with the kernels on, the torch path with them off
