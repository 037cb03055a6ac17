"""``cogqa train`` (pre-training, resume, context extension) and ``cogqa lr-search`` (Appendix F).

Under ``torchrun`` the same command runs on every rank (see ``scripts/torchrun_train.sh``).
torch is imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CogqaError, require
from . import ConfigDefault as default
from . import config_value


def _add_common(p: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``lr-search`` share: data, output, then one group each for the model,
    the budget and batch, and the optimiser and run."""
    p.add_argument(
        "--data", required=True, metavar="DIR", help="prepared data directory (cogqa data prepare --out DIR)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run directory: config.json, metrics.jsonl, checkpoints/, result.json",
    )
    _add_model_options(p)
    _add_budget_options(p)
    _add_run_options(p)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The model: a paper size, an explicit shape, or weights to start from."""
    g = p.add_argument_group("model (one of --size, explicit --layers/--hidden/..., or --init-from)")
    g.add_argument("--size", help="a paper size from Table 9 (e.g. 470M); MHA with d_h = 64 unless --heads/--kv-heads")
    g.add_argument("--heads", help="query heads n_h, or a head configuration n_h,n_kv (e.g. 8,1; also 8:1, H=(8,1))")
    g.add_argument("--kv-heads", type=int, help="KV heads n_kv (default n_h)")
    g.add_argument("--layers", type=int, help="layers L (explicit shape)")
    g.add_argument("--hidden", type=int, help="hidden size d (explicit shape)")
    g.add_argument("--ffn", type=int, help="FFN size d_ff (default int(8d/3))")
    g.add_argument("--head-dim", type=int, default=64, help="head size d_h (default 64)")
    g.add_argument(
        "--init-from", metavar="CHECKPOINT", help="start from these weights with a fresh optimizer (context extension)"
    )


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    """The training length, token budget and batch."""
    t = p.add_argument_group("budget and batch")
    t.add_argument("--context", help="training length in tokens (must match the data; 8k = 8192)")
    t.add_argument("--tokens", help="training tokens, e.g. 9.4B or 2e6 (default: --tokens-per-param x N)")
    t.add_argument(
        "--tokens-per-param",
        default=default("tokens_per_param"),
        help="tokens per non-embedding parameter (default %(default)s)",
    )
    t.add_argument(
        "--batch-tokens", default=default("batch_tokens"), help="global batch in tokens (default %(default)s)"
    )
    t.add_argument(
        "--micro-batch",
        type=int,
        default=default("micro_batch"),
        help="sequences per forward pass per process (default %(default)s)",
    )
    t.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (the schedule still spans them)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The optimiser, evaluation, checkpoints, device and logging."""
    o = p.add_argument_group("optimiser and run")
    o.add_argument("--lr", help="max learning rate (default: the paper's for --size)")
    o.add_argument(
        "--seed", type=int, default=default("seed"), help="seed of weights and data order (default %(default)s)"
    )
    o.add_argument(
        "--eval-every",
        type=int,
        default=default("eval_every"),
        help="validation loss every N steps (always at the end)",
    )
    o.add_argument(
        "--val-tokens",
        default=default("val_tokens"),
        help="validation size in tokens, e.g. 16M or 65536: ceil(tokens / T) chunks, all of them (with a warning) "
        "if the data has fewer (default %(default)s: standard error ~0.002 nats/token at 8K)",
    )
    o.add_argument(
        "--eval-batches",
        type=int,
        help="instead of --val-tokens: validation on the first N x --micro-batch validation chunks",
    )
    o.add_argument(
        "--checkpoint-every",
        type=int,
        default=default("checkpoint_every"),
        help="checkpoint every N steps (always at the end and at the last 4 evaluation points)",
    )
    o.add_argument(
        "--checkpoint-interval",
        default=default("checkpoint_interval_minutes"),
        metavar="MINUTES",
        help="also checkpoint every MINUTES of wall time, to resume from (0: off; default %(default)s)",
    )
    o.add_argument(
        "--keep", type=int, default=default("keep_checkpoints"), help="checkpoints to keep (default %(default)s)"
    )
    o.add_argument(
        "--dtype",
        default=default("dtype"),
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    o.add_argument("--device", default=default("device"), help="cpu, cuda, cuda:1 (default %(default)s)")
    o.add_argument("--compile", action="store_true", help="torch.compile the model")
    o.add_argument("--fsdp", action="store_true", help="shard with FSDP2 fully_shard under torchrun (default DDP)")
    o.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic kernels (faster on GPU)")
    o.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    o.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (if installed)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. optim.grad_clip=0.5",
    )


def register(subparsers) -> None:
    """Add ``train`` and ``lr-search``."""
    p = subparsers.add_parser("train", help="pre-train a GQA decoder (paper recipe; resumable; torchrun-ready)")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue OUT from its newest complete checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    s = subparsers.add_parser("lr-search", help="short runs over a grid of max LRs; report the best by validation loss")
    _add_common(s)
    s.add_argument("--lrs", help="comma-separated LRs (default {1,2,5}x10^{-3,-4,-5})")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(func=cmd_lr_search)


def _heads(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(n_heads, n_kv_heads) from ``--heads 8`` [``--kv-heads 1``] or ``--heads 8,1`` (one parser: cogqa.units)."""
    from ..units import parse_count, parse_head_config

    if args.heads is None:
        return None, args.kv_heads
    if str(args.heads).strip().isdigit():
        return _whole(parse_count(args.heads, "--heads"), "--heads"), args.kv_heads
    require(args.kv_heads is None, "--heads: give the head configuration once: --heads 8,1 or --heads 8 --kv-heads 1")
    return parse_head_config(args.heads, "--heads")


def config_from_args(args: argparse.Namespace, resume: bool = False):
    """The :class:`cogqa.config.TrainConfig` named by the command-line options."""
    from ..config import TrainConfig, apply_overrides, shape_dict
    from ..units import parse_context, parse_count, parse_float

    n_heads, n_kv_heads = _heads(args)
    shape = None
    explicit = any(getattr(args, k) is not None for k in ("layers", "hidden", "ffn"))
    ways = [args.size is not None, explicit, args.init_from is not None]
    require(
        sum(ways) == 1,
        "name the model once: --size 470M, --layers/--hidden/--heads/--kv-heads, or --init-from CHECKPOINT",
    )
    if explicit:
        for name, value in (("layers", args.layers), ("hidden", args.hidden), ("heads", n_heads)):
            require(value is not None, f"--{name} is required with explicit sizes")
        shape = shape_dict(args.layers, args.hidden, n_heads, n_kv_heads, args.ffn, args.head_dim)
    elif args.init_from is not None:
        require(n_heads is None and n_kv_heads is None, "--heads/--kv-heads cannot change an --init-from checkpoint")
    optim = {} if args.lr is None else {"lr": parse_float(args.lr, "--lr")}
    config = TrainConfig(
        data=args.data,
        out_dir=args.out,
        size=args.size,
        n_heads=n_heads if args.size is not None else None,
        n_kv_heads=n_kv_heads if args.size is not None else None,
        shape=shape,
        init_from=args.init_from,
        context=parse_context(args.context) if args.context is not None else None,
        tokens=parse_count(args.tokens, "--tokens") if args.tokens is not None else None,
        tokens_per_param=parse_count(config_value(args.tokens_per_param), "--tokens-per-param"),
        batch_tokens=_whole(parse_count(config_value(args.batch_tokens), "--batch-tokens"), "--batch-tokens"),
        micro_batch=config_value(args.micro_batch),
        max_steps=args.max_steps,
        optim=optim,
        seed=config_value(args.seed),
        eval_every=config_value(args.eval_every),
        val_tokens=_whole(parse_count(config_value(args.val_tokens), "--val-tokens"), "--val-tokens"),
        eval_batches=args.eval_batches,
        checkpoint_interval_minutes=parse_float(config_value(args.checkpoint_interval), "--checkpoint-interval"),
        checkpoint_every=config_value(args.checkpoint_every),
        keep_checkpoints=config_value(args.keep),
        dtype=config_value(args.dtype),
        device=config_value(args.device),
        compile=args.compile,
        fsdp=args.fsdp,
        deterministic=not args.nondeterministic,
        tensorboard=args.tensorboard,
        wandb=args.wandb,
        progress=not args.no_progress,
        resume=resume,
    )
    return apply_overrides(config, args.set) if args.set else config


def _whole(x: float, field: str) -> int:
    require(float(x).is_integer(), f"{field}: must be a whole number, got {x:g}")
    return int(x)


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``cogqa train``."""
    from ..train import TrainingStopped, train
    from ..units import fmt_params, fmt_tokens

    config = config_from_args(args, resume=args.resume)
    if args.resume:
        _require_checkpoint(Path(config.out_dir))
    try:
        result = train(config)
    except TrainingStopped as exc:
        import sys

        print(f"stopped: {exc}", file=sys.stderr)
        return exc.exit_status
    from ..distributed import is_main_process

    if not is_main_process():
        return 0
    if args.json:
        from . import print_json

        print_json(result.to_dict())
        return 0
    val = "n/a" if result.final_val_loss is None else f"{result.final_val_loss:.4f} nats/token"
    print(
        f"trained H=({result.n_heads},{result.n_kv_heads}) N={fmt_params(result.params_non_embedding)} (non-embedding) "
        f"at T={result.context} tokens"
    )
    print(
        f"  steps {result.steps}, tokens {fmt_tokens(result.tokens)}, batch {result.batch_tokens} tokens, "
        f"max LR {result.lr:g}"
    )
    print(f"  final validation loss {val}; wall time {result.wall_time_s:.1f} s")
    print(f"  written to {Path(result.out_dir) / 'result.json'}")
    return 0


def _require_checkpoint(out: Path) -> None:
    """``--resume`` needs a checkpoint: a one-line refusal instead of silently restarting at step 0."""
    from ..checkpoint import list_checkpoints

    if out.is_dir() and list_checkpoints(out):
        return
    if (out / "config.json").is_file():
        raise CogqaError(
            f"resume: {out} has no checkpoint (the run stopped before its first one); nothing to resume -- "
            "delete it or choose another --out to start over"
        )
    raise CogqaError(f"resume: {out} holds no run to resume; drop --resume to start a new run there")


def cmd_lr_search(args: argparse.Namespace) -> int:
    """Handler of ``cogqa lr-search``."""
    from ..lr_search import PAPER_LR_GRID, lr_search
    from ..units import parse_float

    lrs = PAPER_LR_GRID
    if args.lrs:
        lrs = [parse_float(x.strip(), "--lrs") for x in args.lrs.split(",") if x.strip()]
        require(bool(lrs), "--lrs: give at least one learning rate, e.g. 1e-3,5e-4")
    require(args.lr is None, "--lr has no meaning in lr-search; use --lrs")
    config = config_from_args(args, resume=True)
    table = lr_search(config, lrs)
    from ..distributed import is_main_process

    if not is_main_process():
        return 0
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'max LR':>10}  {'final val loss (nats/token)':>28}")
    for row in table["runs"]:
        loss = "diverged" if row["final_val_loss"] is None else f"{row['final_val_loss']:.4f}"
        mark = "  <- best" if row["lr"] == table["best_lr"] else ""
        print(f"{row['lr']:>10.0e}  {loss:>28}{mark}")
    print(
        f"best max LR {table['best_lr']:.0e} (validation loss {table['best_val_loss']:.4f} nats/token); "
        f"table in {Path(config.out_dir) / 'lr_search.json'}"
    )
    return 0
