import pytest

from cogqa.errors import CogqaError
from cogqa.throughput import bench_model, parse_shape, predicted


def test_parse_and_predict():
    a, b = parse_shape("2,128,8,2,16"), parse_shape("2,128,2,1,16")
    assert (a.n_heads, a.n_kv_heads, a.head_dim) == (8, 2, 16)
    pa, pb = predicted(a, 512, 1), predicted(b, 512, 1)
    assert pa["flops_per_token"] > pb["flops_per_token"] and pa["memory_bytes"] > pb["memory_bytes"]
    with pytest.raises(CogqaError, match="L,d,n_h"):
        parse_shape("1,2,3")


def test_bench_runs_tiny():
    from cogqa.model import GQADecoder
    s = parse_shape("1,64,4,2,16").__class__(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2,
                                              head_dim=16, vocab_size=128)
    r = bench_model(GQADecoder(s, max_seq_len=64), 64, 1, decode_tokens=4, repeats=1)
    assert r["train_tok_s"] > 0 and r["decode_tok_s"] > 0
