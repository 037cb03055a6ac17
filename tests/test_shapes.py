"""Shapes: validation, HF config parsing, paper sizes, Appendix B.1."""

import json

import numpy as np
import pytest

from cogqa.costs import params_non_embedding
from cogqa.errors import CogqaError
from cogqa.family import aspect_ratio_for_params, nearest_buildable, shape_for_params, shape_from_spec
from cogqa.shapes import ModelShape, paper_learning_rate, paper_shape, shape_from_hf_config


def test_paper_sweep_sizes_match_their_names():
    # Table 9 names are the non-embedding MHA sizes with d_ff = int(8d/3); the paper's "1.2B"
    # (L=36, d=1536) has 1.02B non-embedding parameters (1.10B with the embedding): a loose name.
    expected = {"3M": 3e6, "19M": 19e6, "85M": 85e6, "150M": 150e6, "200M": 200e6, "470M": 470e6, "680M": 680e6}
    assert float(params_non_embedding(paper_shape("1.2B"))) == 1_019_328_000
    for name, n in expected.items():
        got = float(params_non_embedding(paper_shape(name)))
        assert abs(got / n - 1) < 0.06, (name, got)
    assert paper_learning_rate("470M") == 5e-4
    s = paper_shape("470M", 8, 1)
    assert (s.layers, s.hidden_size, s.ffn_size, s.n_heads, s.n_kv_heads) == (24, 1280, 3413, 8, 1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(layers=2, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=3), "n_kv_heads"),
        (dict(layers=0, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2), "layers"),
        (dict(layers=2, hidden_size=-64, ffn_size=128, n_heads=4, n_kv_heads=2), "hidden_size"),
        (dict(layers=2, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=0), "head_dim"),
        (dict(layers=2.5, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2), "layers"),
        (dict(layers=2, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, ffn_kind="moe"), "ffn_kind"),
    ],
)
def test_shape_validation_names_the_field(kwargs, field):
    with pytest.raises(CogqaError, match=field):
        ModelShape(**kwargs)


def test_shape_dict_round_trip_and_unknown_keys():
    s = paper_shape("85M", 8, 2)
    assert ModelShape.from_dict(s.to_dict()) == s
    with pytest.raises(CogqaError, match="unknown shape field"):
        ModelShape.from_dict({**s.to_dict(), "n_experts": 8})


def test_hf_config_head_dim_and_defaults(tmp_path):
    cfg = {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000,
    }
    s = shape_from_hf_config(cfg)
    assert (s.head_dim, s.n_heads, s.n_kv_heads, s.qk_norm, s.tie_embeddings) == (128, 16, 8, True, True)
    # without head_dim: d / n_heads
    cfg2 = {k: v for k, v in cfg.items() if k != "head_dim"} | {"model_type": "llama"}
    assert shape_from_hf_config(cfg2).head_dim == 64
    q2 = shape_from_hf_config(cfg2 | {"model_type": "qwen2"})
    assert q2.qkv_bias and not q2.o_bias
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert shape_from_hf_config(tmp_path) == s


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"model_type": "gpt2", "n_embd": 768}', "model_type 'gpt2' is not supported"),
        ('{"model_type": "llama", "hidden_size": 64', "not valid JSON"),
        ('{"model_type": "llama", "hidden_size": 64}', "missing field 'num_attention_heads'"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_hf_config_errors(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(CogqaError, match=message):
        shape_from_hf_config(path)


def test_appendix_b1_reproduces_reference_shapes():
    # At a reference size the aspect ratio is the reference's, and solving for L recovers it exactly.
    ref = ModelShape(layers=36, hidden_size=2048, ffn_size=2048 * 8 // 3, n_heads=32, n_kv_heads=32)
    n = 36 * (2 * 2048 * 64 * 64 + 8 * 2048**2 + 2 * 2048) + 2048  # real-valued d_ff = 8d/3
    real = shape_for_params(n)
    assert real.layers == pytest.approx(36, rel=1e-9)
    assert real.hidden_size == pytest.approx(2048, rel=1e-9)
    assert real.n_heads == pytest.approx(32, rel=1e-9)
    built = nearest_buildable(real, heads_follow_hidden=True)
    assert (built.layers, built.hidden_size, built.n_heads) == (36, 2048, 32)
    assert abs(float(params_non_embedding(built)) / float(params_non_embedding(ref)) - 1) < 1e-9


def test_appendix_b1_solves_the_size_to_double_precision_in_every_head_mode():
    # L solves the cubic N(L) by Newton's method; the shape must have exactly N non-embedding parameters.
    from cogqa.family import _real_non_embedding

    rng = np.random.default_rng(1)
    n = 10 ** rng.uniform(6, 15, 500)
    h = rng.integers(1, 128, 500).astype(float)
    kv = np.maximum(1.0, h // rng.integers(1, 9, 500))
    for heads in ((h, kv), (None, None), (h, None)):
        real = shape_for_params(n, *heads)
        count = _real_non_embedding(real.layers, real.hidden_size, real.n_heads, real.n_kv_heads, real.head_dim)
        assert np.max(np.abs(count / n - 1)) < 1e-13
        assert np.allclose(real.hidden_size / real.layers, aspect_ratio_for_params(n), rtol=1e-13)
    one = shape_for_params(3.3e8, 8, 2)  # a scalar in, floats out
    assert isinstance(one.layers, float) and isinstance(one.n_heads, float)
    for heads, name in (((-8, 1), "n_heads"), ((8, 0), "n_kv_heads"), ((float("nan"), 1), "n_heads")):
        with pytest.raises(CogqaError, match=f"^{name} must be positive"):  # named, before any arithmetic
            shape_for_params(1e9, *heads)


def test_appendix_b1_interpolates_monotonically():
    n = np.geomspace(2e6, 1e11, 400)
    ratio = aspect_ratio_for_params(n)
    real = shape_for_params(n, 8, 1)
    # The references' d/L is not monotone in N (85M: 64, 150M: 85.3, 200M: 64), so neither is L:
    # within each segment between two references the ratio moves monotonically from one to the other.
    from cogqa.family import _reference_points

    ref_n, ref_a = _reference_points()
    for lo, hi, a_lo, a_hi in zip(ref_n[:-1], ref_n[1:], ref_a[:-1], ref_a[1:]):
        inside = (n >= lo) & (n <= hi)
        seg = ratio[inside]
        assert np.all(np.diff(seg) * np.sign(a_hi - a_lo) >= -1e-12)
        assert np.all((seg >= min(a_lo, a_hi) - 1e-9) & (seg <= max(a_lo, a_hi) + 1e-9))
    assert np.all(np.diff(real.layers * real.hidden_size**2) > 0)  # the model still grows with N
    # between 1.2B (a = 1536/36) and 1.8B (a = 2048/36) the ratio lies between the two
    mid = aspect_ratio_for_params(1.5e9)
    assert 1536 / 36 < mid < 2048 / 36
    assert np.all(np.isfinite(ratio))
    # the real-valued shape has exactly the requested size
    recount = (
        real.layers * (2 * real.hidden_size * 64 * 9 + 8 * real.hidden_size**2 + 2 * real.hidden_size)
        + real.hidden_size
    )
    np.testing.assert_allclose(recount, n, rtol=1e-10)


def test_shape_specs():
    assert shape_from_spec("470M:8,1") == paper_shape("470M", 8, 1)
    real = shape_from_spec("2.5B:8,1")
    assert real.n_heads == 8 and real.n_kv_heads == 1
    for bad in ("470M:8,3", "470M:x", "12q", ""):
        with pytest.raises(CogqaError):
            shape_from_spec(bad)


# ---------------------------------------------------------------------------------------------
# Issue 13: silently wrong readings of HF configs and absurd sizes
# ---------------------------------------------------------------------------------------------

_BASE = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "vocab_size": 32000,
}


@pytest.mark.parametrize(
    "extra, window, windowed",
    [
        ({"model_type": "mistral", "sliding_window": 4096}, 4096, 32),  # Mistral-7B-v0.1
        ({"model_type": "mistral", "sliding_window": None}, None, 0),  # Mistral-7B-v0.2+
        ({"model_type": "llama", "sliding_window": None}, None, 0),
        ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 4096}, None, 0),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 28}, 4096, 4),
        ({"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 0}, 4096, 32),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 40}, None, 0),
        (
            {
                "model_type": "qwen3",
                "use_sliding_window": True,
                "sliding_window": 128,
                "layer_types": ["sliding_attention", "full_attention"] * 16,
            },
            128,
            16,
        ),
    ],
)
def test_hf_sliding_window_read(extra, window, windowed):
    s = shape_from_hf_config({**_BASE, **extra})
    assert s.sliding_window == window and s.windowed_layers == windowed
    if window:
        assert f"sliding window {window:,} tokens" in s.describe()
        assert ModelShape.from_dict(s.to_dict()) == s
    else:
        assert "sliding_window" not in s.to_dict()


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"num_key_value_heads": 0}, "num_key_value_heads"),
        ({"num_key_value_heads": -8}, "num_key_value_heads"),
        ({"num_key_value_heads": 5}, "num_key_value_heads"),
        ({"num_key_value_heads": "8"}, "num_key_value_heads"),
        ({"num_key_value_heads": [8]}, "num_key_value_heads"),
        ({"num_key_value_heads": 8.0}, "num_key_value_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"model_type": "mistral", "sliding_window": "4096"}, "sliding_window"),
        ({"model_type": "mistral", "sliding_window": -1}, "sliding_window"),
        (
            {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, "max_window_layers": "x"},
            "max_window_layers",
        ),
        ({"num_hidden_layers": 10**9}, "layers"),
        ({"vocab_size": 10**12}, "vocab_size"),
        ({"hidden_size": "4096"}, "hidden_size"),
        ({"hidden_size": [1] * 10000}, "hidden_size"),
    ],
)
def test_hf_config_bad_fields_refused(extra, field):
    cfg = {"model_type": "llama", **_BASE, **extra}
    with pytest.raises(CogqaError, match=field) as info:
        shape_from_hf_config(cfg)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layers": 2**14 + 1},
        {"hidden_size": 2**20 + 1},
        {"n_heads": 2**15, "n_kv_heads": 1},
        {"vocab_size": 2**24 + 1},
        {"sliding_window": 0},
        {"sliding_window": 2**41},
        {"window_layers": 1},
        {"sliding_window": 8, "window_layers": 3},
    ],
)
def test_absurd_shapes_refused(kwargs):
    base = dict(layers=2, hidden_size=8, ffn_size=16, n_heads=2, n_kv_heads=1, head_dim=4, vocab_size=10)
    with pytest.raises(CogqaError):
        ModelShape(**{**base, **kwargs})


@pytest.mark.parametrize("spec", ["1e31", "2e15", "1e24:8,1"])
def test_absurd_sizes_refused(spec):
    with pytest.raises(CogqaError, match="1e(15|30)"):
        shape_from_spec(spec)
