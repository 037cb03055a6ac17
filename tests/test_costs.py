"""The cost model against hand-computed values, against transformers, and its properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogqa import costs
from cogqa.errors import CogqaError
from cogqa.shapes import ModelShape, paper_shape, shape_from_hf_config

TINY = ModelShape(layers=2, hidden_size=48, ffn_size=96, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=100)


# ----------------------------------------------------------------------------- hand-computed


def test_parameters_by_hand():
    c = costs.parameter_counts(TINY)
    # attention per layer: q 48*64, k 48*32, v 48*32, o 64*48 = 3072 + 1536 + 1536 + 3072
    assert c["attention"] == 2 * 9216
    assert c["ffn"] == 2 * 3 * 48 * 96
    assert c["norms"] == 2 * 2 * 48 + 48
    assert c["embedding"] == 4800 and c["lm_head"] == 0
    assert c["non_embedding"] == 18432 + 27648 + 240
    assert c["total"] == 18432 + 27648 + 240 + 4800


def test_flops_by_hand_table2():
    T = 1000
    f = costs.forward_flops_per_token(TINY, T)
    # Table 2 with decoupled heads: projections 2 x (d d_h (n_h + 2 n_kv) + n_h d_h d) per layer
    assert f["attention_projections"] == 2 * 2 * 9216
    assert f["attention_computation"] == 4 * 2 * T * 4 * 16
    assert f["ffn"] == 2 * 2 * 3 * 48 * 96
    assert f["lm_head"] == 2 * 48 * 100
    assert f["total"] == f["time_invariant"] + f["time_variant"]
    # Eq. 3 with N = all parameters: 2N + 4 T L d_h n_h, which differs from the exact count only by norms
    paper = costs.paper_inference_flops(TINY, T)
    assert paper == 2 * costs.params_total(TINY) + 4 * T * 2 * 16 * 4
    assert paper - f["total"] == 2 * costs.parameter_counts(TINY)["norms"]


def test_memory_by_hand_table3():
    T, batch = 4096, 3
    m = costs.inference_memory_bytes(TINY, T, batch=batch, weight_dtype="fp32", kv_dtype="fp8")
    assert m["weights"] == costs.params_total(TINY) * 4
    assert m["kv_cache"] == batch * T * 2 * 2 * 2 * 16 * 1  # batch T 2 L n_kv d_h bytes
    assert costs.paper_inference_memory(TINY, T) == costs.params_total(TINY) + 2 * T * 2 * 16 * 2
    assert costs.kv_cache_bytes_per_token(TINY, "int4") == 2 * 2 * 2 * 16 * 0.5


def test_training_costs_table8():
    D, T = 1e9, 2048
    # Eq. 11: 6 D (N + 2 L T_bar d_h n_h), T_bar = T/2
    expected = 6 * D * (costs.params_total(TINY) + 2 * 2 * (T / 2) * 16 * 4)
    assert costs.paper_training_flops(TINY, D, T) == pytest.approx(expected, rel=1e-12)
    exact = costs.training_flops(TINY, D, T)
    assert exact == pytest.approx(3 * D * costs.inference_flops_per_token(TINY, T / 2), rel=1e-12)
    mem = costs.training_memory_bytes(TINY, T, batch=1, param_dtype="fp32", activation_dtype="fp32")
    assert mem["states"] == 4 * costs.params_total(TINY) * 4
    assert mem["activations"] == T * 48 * 2 * 4


def test_prefill_is_the_causal_lower_triangle():
    P = 10
    per_token = costs.forward_flops_per_token(TINY, 0)["time_invariant"]
    attn_unit = 4 * 2 * 4 * 16
    assert costs.prefill_flops(TINY, P) == P * per_token + attn_unit * 55  # 1 + 2 + ... + 10
    assert costs.prefill_flops(TINY, P, causal=False) == P * per_token + attn_unit * 100
    # summing decode steps at contexts 1..P gives the same causal prefill
    assert sum(costs.inference_flops_per_token(TINY, t) for t in range(1, P + 1)) == costs.prefill_flops(TINY, P)


def test_z_by_hand():
    w = costs.ZWeights(lam=0.9, alpha=0.5, beta=1 / 3)
    assert costs.z_cost(1e10, 1e9, w) == pytest.approx(0.9 * 1e5 + 0.1 * 1e3, rel=1e-12)
    assert costs.z_cost(4.0, 8.0, costs.ZWeights(1.0, 0.5, 1.0)) == pytest.approx(2.0)
    with pytest.raises(CogqaError, match="lambda"):
        costs.ZWeights(lam=-0.1)


def test_expected_cost_over_a_length_distribution():
    lengths, counts = [1024, 8192, 131072], [5, 3, 2]
    t_mean = costs.expected_context(lengths, counts)
    assert t_mean == (5 * 1024 + 3 * 8192 + 2 * 131072) / 10
    # costs are affine in T: the mean cost equals the cost at the mean length
    per_length = costs.inference_flops_per_token(TINY, np.array(lengths, dtype=float))
    assert np.average(per_length, weights=counts) == pytest.approx(costs.inference_flops_per_token(TINY, t_mean))
    mem = costs.inference_memory_bytes(TINY, np.array(lengths, dtype=float))["total"]
    assert np.average(mem, weights=counts) == pytest.approx(costs.inference_memory_bytes(TINY, t_mean)["total"])
    assert costs.expected_context([10, 20]) == 15
    with pytest.raises(CogqaError, match="counts"):
        costs.expected_context([1, 2], [1])


def test_bad_values():
    with pytest.raises(CogqaError, match="dtype"):
        costs.dtype_bytes("fp12")
    with pytest.raises(CogqaError, match="context"):
        costs.inference_flops_per_token(TINY, -1)
    with pytest.raises(CogqaError, match="batch"):
        costs.inference_memory_bytes(TINY, 10, batch=0)


def test_paper_appendix_g_kv_share_at_128k():
    # "With 1B parameters, roughly 90% of memory is KV cache at 128K" (MHA, equal precision)
    s = paper_shape("1.2B")
    m = costs.inference_memory_bytes(s, 131072)
    assert 0.85 < m["kv_cache"] / m["total"] < 0.97


def test_vectorised_grid_broadcasts():
    from cogqa.shapes import RealShape

    grid = RealShape(
        layers=np.array([[12.0], [24.0]]),
        hidden_size=np.array([[768.0], [1280.0]]),
        ffn_size=np.array([[2048.0], [3413.0]]),
        n_heads=8.0,
        n_kv_heads=1.0,
    )
    T = np.array([1024.0, 8192.0, 131072.0])
    f = costs.inference_flops_per_token(grid, T)
    assert f.shape == (2, 3)
    assert f[1, 2] == pytest.approx(float(costs.inference_flops_per_token(ModelShape(24, 1280, 3413, 8, 1), 131072)))


# ----------------------------------------------------------------------------- properties

shapes = st.builds(
    lambda n_layers, d, ff, kv, g, dh: ModelShape(n_layers, d, ff, kv * g, kv, dh),
    st.integers(1, 96),
    st.integers(1, 16384),
    st.integers(1, 65536),
    st.sampled_from([1, 2, 4, 8, 16]),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([32, 64, 128, 256]),
)


@settings(max_examples=200, deadline=None)
@given(shapes, st.floats(0, 1e6), st.floats(1, 1e6))
def test_costs_monotone_and_linear_in_T(shape, t1, dt):
    t2 = t1 + dt
    f1, f2 = costs.inference_flops_per_token(shape, t1), costs.inference_flops_per_token(shape, t2)
    m1 = costs.inference_memory_bytes(shape, t1)["total"]
    m2 = costs.inference_memory_bytes(shape, t2)["total"]
    assert f2 > f1 and m2 > m1
    # the time-variant part is linear in T
    tv = lambda t: costs.forward_flops_per_token(shape, t)["time_variant"]  # noqa: E731
    assert tv(t2) - tv(t1) == pytest.approx(tv(dt) - tv(0), rel=1e-9)
    assert tv(2 * t2) == pytest.approx(2 * tv(t2), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(shapes, st.floats(1, 1e6))
def test_costs_monotone_in_heads_and_gqa_ends(shape, T):
    more_q = shape.with_heads(shape.n_heads * 2, shape.n_kv_heads)
    more_kv = shape.with_heads(shape.n_heads * 2, shape.n_kv_heads * 2)
    f = costs.inference_flops_per_token
    m = lambda s: costs.inference_memory_bytes(s, T)["total"]  # noqa: E731
    assert f(more_q, T) > f(shape, T) and m(more_q) > m(shape)  # more query heads: more projections
    assert f(more_kv, T) > f(more_q, T) and m(more_kv) > m(more_q)  # more KV heads: bigger cache
    # MHA and MQA bound every GQA configuration with the same query heads
    mha, mqa = shape.with_heads(shape.n_heads, shape.n_heads), shape.with_heads(shape.n_heads, 1)
    assert m(mqa) <= m(shape) <= m(mha)
    assert costs.kv_cache_bytes_per_token(mha) == shape.n_heads * costs.kv_cache_bytes_per_token(mqa)


# ----------------------------------------------------------------------------- against transformers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILIES = [
    ("llama", "LlamaConfig", "LlamaForCausalLM", {}),
    ("llama", "LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    ("mistral", "MistralConfig", "MistralForCausalLM", {}),
    ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", {}),
    ("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {}),
]


def _hf_config_dict(model_type, extra, tie, head_dim):
    cfg = {
        "model_type": model_type,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 101,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f[0] + ("+bias" if f[3] else ""))
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("head_dim", [None, 8])  # 8 * 4 heads = 32 != hidden 64
def test_parameter_count_equals_transformers(family, tie, head_dim):
    model_type, config_cls, model_cls, extra = family
    cfg = _hf_config_dict(model_type, extra, tie, head_dim)
    kwargs = {k: v for k, v in cfg.items() if k != "model_type"}
    hf_cfg = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(hf_cfg)
    n_hf = sum(p.numel() for p in model.parameters())  # tied weights appear once
    shape = shape_from_hf_config(hf_cfg.to_dict())
    assert costs.params_total(shape) == n_hf
    assert shape.head_dim == (head_dim or getattr(hf_cfg, "head_dim", None) or 16)  # Qwen3 defaults to 128
    # the KV cache a real forward pass allocates
    ids = torch.randint(0, 101, (3, 7))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = out.past_key_values
    nbytes = 0
    for layer in cache.layers:
        nbytes += layer.keys.nbytes + layer.values.nbytes
    assert nbytes == costs.kv_cache_bytes_per_token(shape, "fp32") * 3 * 7


def test_kv_cache_bytes_equal_real_tensors():
    for shape in (TINY, paper_shape("19M", 8, 1), shape_from_hf_config("tests/data/llama-3.2-1b-config.json")):
        for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            batch, T = 2, 5
            k = torch.empty(batch, shape.n_kv_heads, T, shape.head_dim, dtype=torch_dtype)
            total = 2 * shape.layers * k.nbytes
            assert total == costs.kv_cache_bytes_per_token(shape, dtype) * batch * T
            assert total == costs.inference_memory_bytes(shape, T, batch, kv_dtype=dtype)["kv_cache"]


@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (4, 1)])
def test_forward_flops_equal_flop_counter(heads):
    from torch.utils.flop_counter import FlopCounterMode

    n_h, n_kv = heads
    cfg = _hf_config_dict("llama", {}, True, 8) | {"num_attention_heads": n_h, "num_key_value_heads": n_kv}
    kwargs = {k: v for k, v in cfg.items() if k != "model_type"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, attn_implementation="eager"))
    shape = shape_from_hf_config(cfg)
    batch, P = 2, 12
    ids = torch.randint(0, 101, (batch, P))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, use_cache=False)
    counted = counter.get_total_flops()
    # FlopCounterMode counts the matmuls only (as the cost model) and the full P x P score matrix:
    # the eager attention computes the masked upper triangle too, so compare with causal=False.
    assert counted == batch * costs.prefill_flops(shape, P, causal=False)
    by_module = counter.get_flop_counts()
    lm_head = sum(by_module.get("LlamaForCausalLM.lm_head", {}).values())
    assert lm_head == batch * P * costs.forward_flops_per_token(shape, 0)["lm_head"]


# ---------------------------------------------------------------------------------------------
# Sliding windows (issue 13): hand-computed numbers
# ---------------------------------------------------------------------------------------------


def _windowed(window=4, window_layers=None):
    from cogqa.shapes import ModelShape

    return ModelShape(
        layers=2,
        hidden_size=8,
        ffn_size=16,
        n_heads=2,
        n_kv_heads=1,
        head_dim=4,
        vocab_size=10,
        sliding_window=window,
        window_layers=window_layers,
    )


@pytest.mark.parametrize(
    "window_layers, T, attended",
    [
        (None, 3, 2 * 3),  # T <= W: both layers attend to all 3
        (None, 10, 2 * 4),  # both layers capped at W = 4
        (1, 10, 10 + 4),  # one full layer, one windowed
        (0, 10, 2 * 10),  # no windowed layer: full attention
    ],
)
def test_sliding_window_decode_and_kv_by_hand(window_layers, T, attended):
    from cogqa.costs import forward_flops_per_token, inference_memory_bytes

    s = _windowed(4, window_layers)
    # attention computation 4 x n_h x d_h x (positions attended, summed over layers) = 4 * 2 * 4 * attended
    assert float(forward_flops_per_token(s, T)["attention_computation"]) == 32 * attended
    # KV cache: 2 (K, V) x n_kv 1 x d_h 4 x positions cached x 2 bytes (bf16)
    assert float(inference_memory_bytes(s, T)["kv_cache"]) == 16 * attended


def test_sliding_window_prefill_and_training_by_hand():
    from cogqa.costs import forward_flops_per_token, mean_attended_context, prefill_flops, training_flops

    s = _windowed(4)
    ti = float(forward_flops_per_token(s, 0)["time_invariant"])
    # P = 10, W = 4: keys attended 1+2+3+4+4*6 = 34 per layer, 2 layers; 4 n_h d_h = 32 FLOPs per pair
    assert float(prefill_flops(s, 10)) == 10 * ti + 32 * 2 * 34
    assert float(prefill_flops(s, 3)) == 3 * ti + 32 * 2 * 6  # P <= W: the full triangle
    # training mean over [0, T] of min(t, W): W - W^2 / (2T) = 4 - 16/20 = 3.2 for T = 10
    assert float(mean_attended_context(10, 4)) == pytest.approx(3.2)
    assert float(mean_attended_context(3, 4)) == 1.5
    assert float(training_flops(s, 100, 10)) == pytest.approx(3 * 100 * (ti + 32 * 2 * 3.2))


def test_no_window_costs_unchanged():
    from cogqa.costs import cost_summary

    full = _windowed(None)
    wide = _windowed(10**9)  # a window longer than every context changes nothing but the summary's keys
    a, b = cost_summary(full, 4096), cost_summary(wide, 4096)
    assert "sliding_window" not in a and b["sliding_window"] == 10**9
    for k in ("inference_flops_per_token", "inference_memory_bytes", "z", "paper_inference_flops"):
        assert a[k] == b[k]


@pytest.mark.parametrize("T", [-1, 1e24, float("nan"), 2**40 + 1])
def test_absurd_contexts_refused(T):
    from cogqa.costs import inference_flops_per_token

    with pytest.raises(CogqaError):
        inference_flops_per_token(_windowed(None), T)


# ---------------------------------------------------------------------------------------------
# Issue 13 item 1: options never ignored without a word
# ---------------------------------------------------------------------------------------------

_LLAMA_1B = "tests/data/llama-3.2-1b-config.json"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["cost", "--size", "470M", "--head-dim", "128"], "--head-dim cannot modify --size"),
        (["cost", "--size", "470M", "--vocab", "1000"], "--vocab cannot modify --size"),
        (["cost", "--size", "470M", "--untied"], "--untied cannot modify --size"),
        (["cost", "--size", "470M:8,1", "--head-dim", "128", "--untied"], "--head-dim/--untied"),
        (["cost", "--hf-config", _LLAMA_1B, "--vocab", "1000"], "--vocab cannot modify --hf-config"),
        (["cost", "--hf-config", _LLAMA_1B, "--head-dim", "32"], "--head-dim cannot modify --hf-config"),
        (["cost", "--size", "470M", "--context", "1k", "--context-dist", "1k:1"], "--context-dist"),
        (["compare", "470M", "1.2B", "--context", "8k", "--context-dist", "1k:1"], "--context-dist"),
        (["cost", "--size", "470M", "--context", "1e24"], "2**40"),
        (["cost", "--size", "1e31"], "1e30"),
        (["cost", "--size", "1e20"], "1e15 parameters"),
        (["cost", "--layers", "100000", "--hidden", "64", "--heads", "1"], "layers must be between"),
    ],
)
def test_cost_options_never_ignored(argv, needle, capsys):
    from cogqa.cli import main

    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err


def test_cost_prints_the_window(tmp_path, capsys):
    import json

    from cogqa.cli import main

    cfg = json.loads(open(_LLAMA_1B).read())
    cfg.update(model_type="mistral", sliding_window=4096)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["cost", "--hf-config", str(path), "--context", "128k"]) == 0
    out = capsys.readouterr().out
    assert "sliding window 4,096 tokens on every layer" in out
    assert main(["cost", "--hf-config", str(path), "--context", "128k", "--json"]) == 0
    windowed = json.loads(capsys.readouterr().out)
    assert main(["cost", "--hf-config", _LLAMA_1B, "--context", "128k", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert windowed["sliding_window"] == 4096
    assert windowed["kv_cache_bytes"] == full["kv_cache_bytes"] * 4096 / 131072
