"""``cogqa export``, ``cogqa import`` and ``cogqa generate``: checkpoints <-> Hugging Face, and sampling.

torch and transformers are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import CogqaError, require
from ..files import check_output_dir, write_output_dir
from ..units import fmt_bytes


def _tokenizer(name):
    if not name:
        return None
    try:
        from ..tokenizer import get_tokenizer
    except ImportError:
        raise CogqaError("--tokenizer: cogqa.tokenizer is not available in this installation") from None
    return get_tokenizer(name)


def cmd_export(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model, resolve_checkpoint
    from ..hf import export_hf

    ckpt = resolve_checkpoint(args.checkpoint)
    require(
        1 <= args.max_positions <= 1 << 30, f"--max-positions: must be in [1, 2^30] tokens, got {args.max_positions}"
    )
    inputs = (args.checkpoint, ckpt) + ((args.tokenizer,) if args.tokenizer and Path(args.tokenizer).is_dir() else ())
    check_output_dir(args.out_dir, "export", args.overwrite, "OUT_DIR", inputs=inputs)
    model = load_model(ckpt, dtype=args.dtype)
    tok = args.tokenizer
    if tok and tok != "gpt2" and not Path(tok).is_dir():
        tok = _tokenizer(tok)  # another cogqa tokenizer name: its object decides whether it has HF files
    out = write_output_dir(
        args.out_dir,
        "export",
        lambda tmp: export_hf(model, tmp, tokenizer=tok, max_position_embeddings=args.max_positions),
        args.overwrite,
        "OUT_DIR",
        inputs=inputs,
    )
    from ..hf import hf_model_type

    print(f"exported {ckpt} -> {out} ({hf_model_type(model.shape)}, {model.num_parameters():,} parameters)")
    if args.verify:
        _verify(model, out)
    return 0


def _verify(model, out) -> None:
    """Load the exported directory with transformers and compare logits (max-abs, units: logits)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.randint(0, model.shape.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model.float()(ids).logits - hf(ids).logits).abs().max().item()
    require(
        diff < 1e-4, f"verify: transformers' logits differ from cogqa's by {diff:.3g} (max-abs); the export is wrong"
    )
    print(f"verified: transformers {type(hf).__name__} logits match cogqa within {diff:.2g} (max-abs, fp32)")


def cmd_import(args: argparse.Namespace) -> int:
    from ..checkpoint import save_model
    from ..hf import import_hf

    check_output_dir(args.out, "import", args.overwrite, "OUT", inputs=(args.hf_dir,))
    model = import_hf(args.hf_dir, dtype=args.dtype)
    # the model's native context (max_position_embeddings) is recorded: `cogqa eval` loads it at that context
    write_output_dir(
        args.out,
        "import",
        lambda tmp: save_model(model, tmp, {"cogqa_context": model.max_seq_len}),
        args.overwrite,
        "OUT",
        inputs=(args.hf_dir,),
    )
    print(
        f"imported {args.hf_dir} -> {args.out} ({model.shape.describe()}, {model.num_parameters():,} parameters, "
        f"context {model.max_seq_len:,} tokens)"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    require(args.max_new_tokens >= 0, f"--max-new-tokens: must be >= 0, got {args.max_new_tokens}")
    from ..evaluate import checkpoint_context

    context = checkpoint_context(ckpt) or 8192  # tokens: the training context, else the loader's default table
    require(
        args.max_new_tokens < context,
        f"--max-new-tokens: {args.max_new_tokens:,} tokens exceed the model's context ({context:,} tokens); "
        "generate fewer tokens",
    )
    require(args.max_new_tokens <= 1 << 24, f"--max-new-tokens: {args.max_new_tokens:,} tokens is absurd; at most 2^24")
    model = load_model(ckpt, dtype=args.dtype, max_seq_len=context).eval()
    tok = _tokenizer(args.tokenizer)
    ids = tok.encode(args.prompt)
    require(ids, "--prompt: give at least one token of text")
    require(
        len(ids) + args.max_new_tokens <= context,
        f"--max-new-tokens: the prompt ({len(ids):,} tokens) + {args.max_new_tokens:,} new tokens exceed the model's "
        f"context ({context:,} tokens); generate at most {max(context - len(ids), 0):,}",
    )
    _check_kv_cache_fits(model, len(ids) + args.max_new_tokens)
    require(
        max(ids) < model.shape.vocab_size,
        f"--tokenizer {args.tokenizer}: token ids exceed the model's vocabulary ({model.shape.vocab_size}); "
        "use the tokenizer the model was trained with",
    )
    gen = torch.Generator().manual_seed(args.seed)
    model.max_seq_len = max(model.max_seq_len, len(ids) + args.max_new_tokens)
    out = model.generate(
        torch.tensor([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=getattr(tok, "eos_id", None),
        generator=gen,
    )
    print(args.prompt + tok.decode(out[0, len(ids) :].tolist()))
    return 0


def _check_kv_cache_fits(model, tokens: int) -> None:
    """Refuse (one line) when the KV cache of ``tokens`` tokens would not fit in half of the free memory."""
    sh = model.shape
    need = 2 * sh.layers * sh.n_kv_heads * sh.head_dim * tokens * model.embed_tokens.weight.element_size()
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    require(
        need <= free // 2,
        f"--max-new-tokens: a KV cache of {tokens:,} tokens needs {fmt_bytes(need)}, more "
        f"than half the free memory ({fmt_bytes(free)}); generate fewer tokens",
    )


def register(subparsers) -> None:
    """Add ``export``, ``import`` and ``generate``."""
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face transformers directory",
        description="Write a cogqa checkpoint (or a run directory's newest one) as a directory "
        "transformers.AutoModelForCausalLM.from_pretrained loads offline.",
    )
    p.add_argument(
        "checkpoint", help="checkpoint directory (model.safetensors + shape.json) or a training run directory"
    )
    p.add_argument("out_dir", help="output directory")
    p.add_argument(
        "--tokenizer", default=None, help="also write this tokenizer's files (gpt2, or a local HF tokenizer directory)"
    )
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: as saved)")
    p.add_argument(
        "--max-positions",
        type=int,
        default=131072,
        help="max_position_embeddings in config.json (tokens, default 131072)",
    )
    p.add_argument("--verify", action="store_true", help="load the result with transformers and compare logits")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if an earlier cogqa export wrote it")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "import",
        help="load a Hugging Face Llama-family directory as a cogqa checkpoint",
        description="Read a transformers directory (llama, mistral, qwen2, qwen3; safetensors weights) "
        "and save it as a cogqa checkpoint.",
    )
    p.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("out", help="output checkpoint directory")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: as stored)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier cogqa import wrote it")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("generate", help="continue a prompt with a checkpoint (KV-cache decoding)")
    p.add_argument("checkpoint", help="checkpoint directory or training run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer the model was trained with (default gpt2)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: as saved)")
    p.set_defaults(func=cmd_generate)
