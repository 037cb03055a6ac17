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

    s = parse_shape("1,64,4,2,16").__class__(
        layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=128
    )
    r = bench_model(GQADecoder(s, max_seq_len=64), 64, 1, decode_tokens=4, repeats=1)
    assert r["train_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0


def test_cli_one_line_errors(capsys, tmp_path):
    from cogqa.cli import main

    assert main(["eval", "niah", str(tmp_path), "--depths", "0,150"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --depths") and err.count("\n") == 1
    assert main(["bench", "throughput", "--shapes", "1,2"]) == 2
    assert "L,d,n_h" in capsys.readouterr().err


def test_harness_command_and_average(tmp_path):
    import torch

    from cogqa.checkpoint import average_last_k, save_model
    from cogqa.cli.evaluate import harness_command
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    assert harness_command("/x", ["piqa", "arc_easy"]) == [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        "pretrained=/x",
        "--tasks",
        "piqa,arc_easy",
        "--batch_size",
        "auto",
        "--device",
        "cpu",
    ]
    shape = ModelShape(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=64)
    ms = []
    for i in range(3):
        m = GQADecoder(shape, max_seq_len=32)
        m.init_weights(seed=i)
        save_model(m, tmp_path / "checkpoints" / f"step_{i:08d}")
        ms.append(m)
    avg, chosen = average_last_k(tmp_path, 2)
    assert [p.name for p in chosen] == ["step_00000001", "step_00000002"]
    w = "embed_tokens.weight"
    ref = (ms[1].state_dict()[w] + ms[2].state_dict()[w]) / 2
    assert torch.allclose(avg.state_dict()[w], ref, atol=1e-6)


def test_harness_without_lm_eval(capsys, tmp_path, monkeypatch):
    import importlib.util

    from cogqa.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "lm_eval" else real(n, *a))
    assert main(["eval", "harness", str(tmp_path)]) == 2
    assert "pip install lm-eval" in capsys.readouterr().err


def test_harness_loads_exported_model_in_lm_eval(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from cogqa.checkpoint import save_model
    from cogqa.cli import main
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    shape = ModelShape(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=50304)
    m = GQADecoder(shape, max_seq_len=64)
    save_model(m, tmp_path / "checkpoints" / "step_00000001")
    assert main(["eval", "harness", str(tmp_path), "--tasks", "no_such_task"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "harness",
                str(tmp_path),
                "--tasks",
                "piqa",
                "--last-k",
                "1",
                "--dry-run",
                "--export-dir",
                str(tmp_path / "hf"),
            ]
        )
        == 0
    )
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=1)
    req = type("Req", (), {"args": ("The grass is green.",)})()
    (ll,) = lm.loglikelihood_rolling([req])
    assert ll < 0
