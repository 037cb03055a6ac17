import json
import math

import numpy as np
import pytest
import torch

from cogqa.errors import CogqaError
from cogqa.evaluate import loss_at_contexts, loss_by_position, relative_delta, token_losses


def test_token_losses_hand_computed():
    # vocab 2; logits favour token 0 with log-odds log(3): p(0)=3/4, p(1)=1/4
    V = 2
    logits = torch.zeros(2, 3, V)
    logits[..., 0] = math.log(3)
    ids = torch.tensor([[0, 0, 1], [1, 1, 0]])
    L = token_losses(logits, ids)
    assert L.shape == (2, 2)
    a, b = -math.log(0.75), -math.log(0.25)
    np.testing.assert_allclose(L, [[a, b], [b, a]], rtol=1e-6)
    pos = loss_by_position(L)
    np.testing.assert_allclose(pos, [(a + b) / 2, (a + b) / 2], rtol=1e-6)


def test_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    ids = torch.randint(0, 11, (3, 7))
    L = token_losses(logits, ids)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert abs(L.mean() - ref.item()) < 1e-6


def test_contexts_and_delta():
    pos = np.array([4.0, 3.0, 2.0, 1.0])
    assert loss_at_contexts(pos, [2, 3, 5]) == {2: 4.0, 3: 3.5, 5: 2.5}
    np.testing.assert_allclose(relative_delta([2.2, 1.0], [2.0, 1.0]), [0.1, 0.0])
    with pytest.raises(CogqaError, match="needs chunks"):
        loss_at_contexts(pos, [8])


def test_tiny_model_positions_and_too_long_context():
    from cogqa.evaluate import evaluate_positions
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    shape = ModelShape(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=97)
    model = GQADecoder(shape, max_seq_len=32)
    model.init_weights(seed=1)
    chunks = [np.arange(i, i + 16) % 97 for i in range(5)]
    pos = evaluate_positions(model, chunks, batch=2)
    ids = torch.as_tensor(np.stack(chunks))
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert pos.shape == (15,) and abs(pos.mean() - ref) < 1e-5
    with pytest.raises(CogqaError, match="longer than the model is loaded for"):
        evaluate_positions(model, [np.zeros(64, dtype=np.int64)])


def _tiny(V=97, T=32, seed=1):
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    shape = ModelShape(layers=2, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=V)
    model = GQADecoder(shape, max_seq_len=T)
    model.init_weights(seed=seed)
    return model.eval()


@pytest.mark.parametrize("block", [1, 5, 1024])
def test_blocked_losses_equal_the_full_logits(block):
    """Loss by position from hidden states a block of positions at a time equals the loss from the full logits."""
    from cogqa.evaluate import final_hidden, hidden_token_losses

    model = _tiny()
    ids = torch.randint(0, 97, (3, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = token_losses(model(ids).logits, ids)
        hidden, weight = final_hidden(model, ids)
    assert hidden.shape == (3, 23, 64)
    np.testing.assert_allclose(hidden_token_losses(hidden, weight, ids, position_block=block), full, rtol=0, atol=2e-5)


def test_hf_model_positions_equal_full_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from cogqa.evaluate import evaluate_chunks
    from cogqa.hf import export_hf

    export_hf(_tiny(), tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    chunks = [np.arange(i, i + 20) % 97 for i in range(3)]
    ids = torch.as_tensor(np.stack(chunks))
    with torch.no_grad():
        ref = token_losses(hf(ids).logits, ids).mean(axis=0)
    got = evaluate_chunks(hf, chunks, batch=2, position_block=7)
    np.testing.assert_allclose(got.position, ref, atol=2e-5)
    np.testing.assert_allclose(got.position, evaluate_chunks(_tiny(), chunks).position, atol=2e-5)  # same model


def test_standard_error_of_the_mean_loss():
    from cogqa.evaluate import chunks_for_standard_error, evaluate_chunks, mean_and_standard_error

    m, se = mean_and_standard_error([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and abs(se - np.std([1, 2, 3, 4], ddof=1) / 2) < 1e-12
    assert mean_and_standard_error([2.0]) == (2.0, float("inf"))
    assert chunks_for_standard_error(0.04, 0.002) == 400
    from cogqa.evaluate import paired_standard_error

    d, dse = paired_standard_error([3.0, 2.0, 4.0], [2.9, 1.8, 3.9])
    assert abs(d - 0.4 / 3) < 1e-12 and 0 < dse < mean_and_standard_error([3.0, 2.0, 4.0])[1]
    r = evaluate_chunks(_tiny(), [np.arange(i, i + 16) % 97 for i in range(6)], batch=4)
    assert r.chunk.shape == (6,) and abs(r.mean - r.position.mean()) < 1e-9 and 0 < r.standard_error < 1


def test_device_and_dtype_resolution():
    from cogqa.evaluate import resolve_device, resolve_dtype

    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(CogqaError, match="--dtype"):
        resolve_dtype("int8", dev)
    with pytest.raises(CogqaError, match="--device"):
        resolve_device("tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(CogqaError, match="no CUDA"):
            resolve_device("cuda")


def test_bf16_weights_evaluate_close_to_fp32():
    """The reduced-precision path (what CUDA runs by default) is the same code: bf16 weights, fp32 losses."""
    from cogqa.evaluate import evaluate_chunks

    chunks = [np.arange(i, i + 16) % 97 for i in range(4)]
    a = evaluate_chunks(_tiny(), chunks)
    b = evaluate_chunks(_tiny().to(torch.bfloat16), chunks)
    assert abs(a.mean - b.mean) < 0.05 and b.position.dtype == np.float64


# ------------------------------------------------------------------ issue 13: data of another tokenizer


def _prepared(tmp_path, tokenizer="bytes"):
    from cogqa.data import prepare

    (tmp_path / "t.txt").write_text("In the beginning God created the heaven and the earth. " * 50)
    out = tmp_path / f"data-{tokenizer}"
    prepare([str(tmp_path / "t.txt")], out, tokenizer=tokenizer, context=32, val_fraction=0.2, progress=False)
    return out


def _checkpoint(tmp_path, vocab, trained_on=None):
    from cogqa.checkpoint import save_model
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    shape = ModelShape(layers=1, hidden_size=16, ffn_size=32, n_heads=2, n_kv_heads=1, head_dim=8, vocab_size=vocab)
    run = tmp_path / f"run{vocab}"
    ckpt = run / "checkpoints" / "step_00000001"
    save_model(GQADecoder(shape, max_seq_len=32), ckpt)
    if trained_on is not None:
        (run / "config.json").write_text(json.dumps({"data": str(trained_on)}))
    return ckpt


@pytest.mark.parametrize(
    "vocab, trained_tokenizer, needle",
    [
        (320, None, None),  # the bytes tokenizer's padded vocabulary: accepted
        (50304, None, "vocabulary 50304: another tokenizer"),  # a gpt2-sized model on byte data
        (256, None, "vocabulary 256"),
        (320, "fake", "trained on data of tokenizer 'fake'"),
    ],
)
def test_eval_refuses_data_of_another_tokenizer(tmp_path, vocab, trained_tokenizer, needle):
    from cogqa.data import load_manifest
    from cogqa.errors import CogqaError
    from cogqa.evaluate import check_data_tokenizer, load_for_eval

    data = _prepared(tmp_path)
    trained = None
    if trained_tokenizer:  # the run's training data: same vocabulary, another tokenizer name
        trained = tmp_path / "trained"
        trained.mkdir()
        manifest = json.loads((data / "manifest.json").read_text())
        (trained / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": trained_tokenizer}))
    ckpt = _checkpoint(tmp_path, vocab, trained)
    model, _, _ = load_for_eval(ckpt, "cpu", "fp32", max_seq_len=32)
    if needle is None:
        check_data_tokenizer(ckpt, model, load_manifest(data), data)
        return
    with pytest.raises(CogqaError, match=needle) as info:
        check_data_tokenizer(ckpt, model, load_manifest(data), data)
    assert "\n" not in str(info.value) and "--tokenizer" in str(info.value)


def test_eval_niah_refuses_a_tokenizer_of_another_vocabulary(tmp_path, capsys):
    from cogqa.cli import main

    ckpt = _checkpoint(tmp_path, 320)  # trained on byte tokens
    argv = ["eval", "niah", str(ckpt), "--contexts", "32", "--samples", "1", "--device", "cpu"]
    assert main(argv + ["--tokenizer", "gpt2"]) != 0
    err = capsys.readouterr().err
    assert "--tokenizer gpt2: padded vocabulary 50304" in err and err.count("\n") == 1, err
