import json

import pytest
from conftest import ideal_hardware

from cogqa.shapes import ModelShape
from cogqa.throughput import predict


def _local(monkeypatch, tmp_path):
    """A fixed 'local' profile in a temporary cache (no timing in tests)."""
    import cogqa.hardware as hwmod

    monkeypatch.setenv("COGQA_CACHE_DIR", str(tmp_path))
    fixed = ideal_hardware("local", 5e10, 1e10, 8e9)
    monkeypatch.setattr(hwmod, "measure_local", lambda device, dtype, seconds=1.0: fixed)
    return fixed


def test_predict_training_at_half_context():
    s = ModelShape(layers=2, hidden_size=128, ffn_size=320, n_heads=8, n_kv_heads=2, head_dim=16, vocab_size=256)
    hw = ideal_hardware("x", 1e11, 1e10, 1e10)
    p = predict(s, 4096, 1, hw, "fp32")
    from cogqa import costs

    train_flops = costs.training_flops(s, 4096, 4096)  # 3 x forward at T_bar = 2048
    assert train_flops == pytest.approx(3 * 4096 * costs.inference_flops_per_token(s, 2048))
    assert p["predicted_train_tokens_per_s"] <= 4096 / (train_flops / 1e11) * 1.0001
    assert p["decode_bytes_per_step"] == pytest.approx(
        costs.inference_memory_bytes(s, 4096, 1, "fp32", "fp32")["total"]
    )


def test_bench_throughput_json_cpu(capsys, monkeypatch, tmp_path):
    from cogqa.cli import main

    _local(monkeypatch, tmp_path)
    argv = [
        "bench",
        "throughput",
        "--shapes",
        "1,64,4,2,16;1,64,4,4,16",
        "--context",
        "64",
        "--decode-tokens",
        "4",
        "--repeats",
        "1",
        "--json",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "cpu" and data["dtype"] == "fp32" and len(data["rows"]) == 2
    for r in data["rows"]:
        assert r["decode_tokens_per_s"] > 0 and r["predicted_decode_tokens_per_s"] > 0
        assert r["train_tokens_per_s"] > 0 and r["predicted_train_tokens_per_s"] > 0
        assert r["decode_measured_over_predicted"] == pytest.approx(
            r["decode_tokens_per_s"] / r["predicted_decode_tokens_per_s"]
        )
    assert main(argv[:-3] + ["--no-train"]) == 0
    out = capsys.readouterr().out
    assert "meas/pred" in out and "tokens/s" in out


def test_bench_errors(capsys, monkeypatch, tmp_path):
    from cogqa.cli import main

    _local(monkeypatch, tmp_path)

    assert main(["bench", "throughput", "--shapes", "1,64,4,2,16", "--dtype", "int3"]) == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["bench", "throughput", "--shapes", "1,64,4,2,16", "--context", "8", "--decode-tokens", "16"]) == 2
    assert "--decode-tokens" in capsys.readouterr().err
