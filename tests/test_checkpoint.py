"""Checkpoints: safetensors + shape.json, atomic, bit-exact, and refusing inconsistent files."""

import json

import pytest
import torch

from cogqa.checkpoint import load_model, load_shape, save_model
from cogqa.errors import CogqaError
from cogqa.model import GQADecoder
from cogqa.shapes import ModelShape

SHAPE = ModelShape(layers=2, hidden_size=40, ffn_size=64, n_heads=6, n_kv_heads=2, head_dim=8, vocab_size=77)


def _model(shape=SHAPE, seed=0):
    m = GQADecoder(shape)
    m.init_weights(seed)
    return m


def test_round_trip_is_bit_exact(tmp_path):
    model = _model()
    save_model(model, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.safetensors", "shape.json"]
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    loaded = load_model(tmp_path / "ck")
    assert loaded.shape == SHAPE and load_shape(tmp_path / "ck") == SHAPE
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.output_weight is loaded.embed_tokens.weight  # still tied
    assert not any(p.is_meta for p in loaded.parameters())


def test_overwrite_and_dtype(tmp_path):
    save_model(_model(seed=0), tmp_path / "ck")
    m1 = _model(seed=1)
    save_model(m1, tmp_path / "ck")  # existing directory: files replaced
    loaded = load_model(tmp_path / "ck", dtype="bf16")
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.embed_tokens.weight, m1.embed_tokens.weight.bfloat16())
    save_model(loaded, tmp_path / "bf")
    assert load_model(tmp_path / "bf").embed_tokens.weight.dtype == torch.bfloat16


def test_untied_and_extras(tmp_path):
    shape = ModelShape(
        layers=1,
        hidden_size=32,
        ffn_size=48,
        n_heads=4,
        n_kv_heads=1,
        head_dim=8,
        vocab_size=50,
        tie_embeddings=False,
        qk_norm=True,
    )
    model = _model(shape)
    save_model(model, tmp_path / "ck")
    loaded = load_model(tmp_path / "ck")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    ids = torch.randint(0, 50, (1, 5))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_mismatched_shape_json_is_refused(tmp_path):
    save_model(_model(), tmp_path / "ck")
    path = tmp_path / "ck" / "shape.json"
    data = json.loads(path.read_text())
    data["n_kv_heads"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(CogqaError, match="does not match") as e:
        load_model(tmp_path / "ck")
    assert "\n" not in str(e.value)


def test_weights_of_another_shape_are_refused(tmp_path):
    """Weights saved without cogqa metadata (e.g. edited by hand) are checked tensor by tensor."""
    from safetensors.torch import save_file

    other = _model(SHAPE.with_heads(6, 3))
    save_model(_model(), tmp_path / "ck")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CogqaError, match=r"k_proj.weight has shape \[24, 40\].*needs \[16, 40\]") as e:
        load_model(tmp_path / "ck")
    assert "\n" not in str(e.value)
    sd = {k: v.contiguous() for k, v in _model().state_dict().items()}
    sd.pop("norm.weight")
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CogqaError, match="missing tensor"):
        load_model(tmp_path / "ck")


def test_truncated_safetensors_is_refused(tmp_path):
    save_model(_model(), tmp_path / "ck")
    path = tmp_path / "ck" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CogqaError, match="truncated") as e:
        load_model(tmp_path / "ck")
    assert "\n" not in str(e.value)
    path.write_bytes(b"")
    with pytest.raises(CogqaError, match="truncated"):
        load_model(tmp_path / "ck")


def test_missing_files_are_refused(tmp_path):
    with pytest.raises(CogqaError, match="no such checkpoint"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CogqaError, match="shape.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "shape.json").write_text('{"layers": 2')
    with pytest.raises(CogqaError, match="truncated"):
        load_model(tmp_path / "empty")


def test_run_layout_ignores_tmp_and_old_leftovers(tmp_path):
    from cogqa.checkpoint import average_last_k, checkpoint_dir, checkpoint_step, list_checkpoints, resolve_checkpoint

    run = tmp_path / "run"
    a, b = _model(seed=0), _model(seed=1)
    save_model(a, checkpoint_dir(run, 10))
    save_model(b, checkpoint_dir(run, 20))
    save_model(_model(seed=2), run / "checkpoints" / "step_00000030.tmp")  # an interrupted save
    save_model(_model(seed=3), run / "checkpoints" / "step_00000040.old")  # a replaced one
    (run / "checkpoints" / "step_00000050").mkdir()  # no shape.json: not a checkpoint
    assert [checkpoint_step(p) for p in list_checkpoints(run)] == [10, 20]
    assert list_checkpoints(run) == list_checkpoints(run / "checkpoints")
    assert resolve_checkpoint(run) == checkpoint_dir(run, 20)
    model, chosen = average_last_k(run, 5)
    assert chosen == [checkpoint_dir(run, 10), checkpoint_dir(run, 20)]
    for name, t in model.state_dict().items():
        want = (a.state_dict()[name].double() + b.state_dict()[name].double()) / 2
        assert torch.allclose(t.double(), want, atol=1e-6)
    with pytest.raises(CogqaError, match="no checkpoints"):
        average_last_k(tmp_path / "empty_run_dir_missing", 2)
