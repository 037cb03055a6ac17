"""The pre-training loop of the paper (Section 5.1, Appendix E), single process or torchrun.

Neighbouring rooms: the configuration and step plan in :mod:`cogqa.config`, the checkpoint layout
and trainer state in :mod:`cogqa.checkpoint`, DDP/FSDP plumbing in :mod:`cogqa.distributed`, the
LR search (Appendix F) in :mod:`cogqa.lr_search`, the opened data, data order and batches in
:mod:`cogqa.batches`, the metric sinks and the stop-signal flag in :mod:`cogqa.trainlog`. The loop
itself runs in named phases: :func:`_prepare` -> :func:`_build` -> :func:`_start_or_resume` ->
:func:`_loop` (:func:`_step`, evaluation, :class:`cogqa.trainlog.Sinks`, checkpoints) -> the result.

``train(TrainConfig(...)) -> TrainResult`` writes into ``config.out_dir``:

* ``config.json`` -- the resolved config, cogqa version and environment (torch, device, world size),
* ``metrics.jsonl`` -- one JSON object per optimiser step (``loss``, ``lr``, ``grad_norm``, tokens,
  tokens/s) and per validation (``val_loss``),
* ``checkpoints/step_XXXXXXXX/`` -- model (``model.safetensors`` + ``shape.json`` via
  :func:`cogqa.checkpoint.save_model`) and ``trainer.pt`` (optimizer, step, RNG states), written
  as ``step_XXXXXXXX.tmp/`` then renamed, so a directory without ``.tmp`` is always complete,
* ``result.json`` at the end (atomic).

Recipe: AdamW betas (0.9, 0.95), weight decay 0.1 on linear weights only (:mod:`cogqa.optim`),
WSD schedule, gradient clipping 1.0, 20 tokens per non-embedding parameter, 512K-token batches
reached by gradient accumulation, bf16 autocast on CUDA.

Exact resume: the data order is a pure function of (seed, global sample index) -- a seeded
permutation of the chunk indices per epoch -- so the data position is the step. With the RNG
states and optimizer restored, a run killed and resumed ends with bitwise the same weights on CPU.

Distributed: launched by ``torchrun``, each rank takes a disjoint slice of every global batch;
gradients are averaged by DDP (default) or FSDP2 ``fully_shard`` (``fsdp=True``); only rank 0
writes files.
"""

from __future__ import annotations

import json
import math
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed
from .batches import batch, open_data, sample_indices, validation_size  # noqa: F401  (sample_indices re-exported)
from .config import (  # noqa: F401  (re-exported: the configuration lives in cogqa.config)
    DEFAULT_VAL_TOKENS,
    PAPER_BATCH_TOKENS,
    PAPER_TOKENS_PER_PARAM,
    OptimConfig,
    TrainConfig,
    TrainResult,
    apply_overrides,
    plan_steps,
    repeat_warning,
    resolve_lr,
    resolve_shape,
    score_steps,
)
from .distributed import Dist
from .errors import CogqaError, require
from .files import write_json_atomic
from .trainlog import STOP_SIGNALS, Sinks, StopFlag, truncate_metrics  # noqa: F401  (STOP_SIGNALS re-exported)


class TrainingDiverged(CogqaError):
    """The training loss became NaN or infinite (the LR is too high)."""


class TrainingStopped(CogqaError):
    """A stop signal (SIGTERM, SIGINT, SIGUSR1, SIGUSR2) ended the run after a checkpoint; ``--resume``
    continues it. ``exit_status`` is 128 + the signal number (the shell's convention)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_status = 128 + int(signum)


# ---------------------------------------------------------------------------------------------
# The loop, in phases: prepare -> build -> start or resume -> steps (with evaluation, logging,
# checkpoints) -> result
# ---------------------------------------------------------------------------------------------

_COMPAT_KEYS = (
    "data",
    "size",
    "n_heads",
    "n_kv_heads",
    "shape",
    "init_from",
    "context",
    "tokens",
    "tokens_per_param",
    "batch_tokens",
    "micro_batch",
    "optim",
    "seed",
    "max_steps",
)


def _check_out_dir(config: TrainConfig, resolved: dict) -> int:
    """Validate ``out_dir`` before anything is written; returns the step to resume from (0: fresh)."""
    from .checkpoint import checkpoint_step, list_checkpoints

    out = Path(config.out_dir)
    require(not out.exists() or out.is_dir(), f"out_dir: {out} exists and is not a directory")
    existing = out / "config.json"
    ckpts = list_checkpoints(out)
    if not config.resume:
        require(
            not ckpts,
            f"out_dir: {out} already holds a run; pass --resume to continue it or choose another --out",
        )
        require(
            not existing.exists(),
            f"out_dir: {out} holds a run stopped before its first checkpoint (nothing to resume); "
            "delete it or choose another --out",
        )
        return 0
    if not existing.exists():
        require(not ckpts, f"out_dir: {out} has checkpoints but no config.json; cannot resume safely")
        return 0  # nothing to resume: start fresh
    old = json.loads(existing.read_text())
    old_cfg, old_res = old.get("config", {}), old.get("resolved", {})
    new_cfg = config.to_dict()
    for key in _COMPAT_KEYS:
        if key == "data":
            continue  # the data may move; its content hash is compared below
        require(
            old_cfg.get(key) == new_cfg.get(key),
            f"resume: {out} was trained with {key}={old_cfg.get(key)!r}, not {new_cfg.get(key)!r}; "
            "use the same settings or another --out",
        )
    for key in ("shape", "global_batch", "steps", "context", "data_hash", "world_size"):
        require(
            old_res.get(key) == resolved.get(key),
            f"resume: {out} was trained with a different {key} ({old_res.get(key)!r} vs {resolved.get(key)!r}); "
            "use the same settings or another --out",
        )
    return checkpoint_step(ckpts[-1]) if ckpts else 0


def _environment(device, dist_info: Dist) -> dict:
    import torch

    from . import __version__

    return {
        "cogqa_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "world_size": dist_info.world,
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }


def _autocast_dtype(config: TrainConfig, device):
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.dtype]


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume, or context-extend) a model as described by ``config``; returns the result.

    Everything is written under ``config.out_dir`` (see the module docstring). Raises
    :class:`CogqaError` on bad input before writing anything.
    """
    import torch

    require(isinstance(config, TrainConfig), "train() takes a TrainConfig")
    on_cuda = (config.device == "auto" and torch.cuda.is_available()) or config.device.startswith("cuda")
    dist_info = distributed.setup("cuda" if on_cuda else "cpu")
    try:
        return _train(config, dist_info)
    finally:
        distributed.teardown(dist_info)


@dataclass
class _Run:
    """What :func:`_prepare` resolves before anything is written (data, shape, plan, resume step)."""

    out: Path
    device: Any
    amp_dtype: Any
    lr: float
    train_chunks: Any
    val_chunks: Any
    n_val: int
    context: int
    shape: Any
    plan: dict
    resolved: dict
    start_step: int


@dataclass
class _Model:
    """The model as saved (``model``), as trained (DDP/FSDP ``train_model``), as called (``forward``,
    maybe compiled)."""

    model: Any
    train_model: Any
    forward: Any
    optimizer: Any
    sharded: bool


def _train(config: TrainConfig, dist_info: Dist) -> TrainResult:
    run = _prepare(config, dist_info)
    _seed_everything(config, run.device)
    m = _build(config, run, dist_info)
    _start_or_resume(config, run, m, dist_info)
    evaluate = _evaluator(config, run, m, dist_info)
    sinks = Sinks(config, run, dist_info)
    t_start = time.perf_counter()
    try:
        last_loss, val_loss = _loop(config, run, m, dist_info, evaluate, sinks, t_start)
    finally:
        sinks.close()
    if val_loss is None:  # resumed at the very end: nothing ran
        val_loss, val_se = evaluate()
    else:
        val_loss, val_se = val_loss
    result = TrainResult(
        out_dir=str(run.out),
        steps=run.plan["steps"],
        tokens=run.plan["tokens"],
        final_val_loss=val_loss,
        final_val_loss_se=_finite(val_se),
        final_train_loss=last_loss,
        wall_time_s=time.perf_counter() - t_start,
        params_non_embedding=run.resolved["params_non_embedding"],
        params_total=run.resolved["params_total"],
        n_heads=run.shape.n_heads,
        n_kv_heads=run.shape.n_kv_heads,
        context=run.context,
        lr=run.lr,
        batch_tokens=run.plan["batch_tokens"],
        resumed_from_step=run.start_step,
    )
    if dist_info.main:
        write_json_atomic(run.out / "result.json", result.to_dict())
    return result


def _prepare(config: TrainConfig, dist_info: Dist) -> _Run:
    """Device, LR, data, shape and step plan; checks ``out_dir`` (resume step) before anything is written."""
    import torch

    from .costs import params_non_embedding, params_total

    device = distributed.pick_device(config.device, dist_info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    lr = resolve_lr(config)
    train_chunks, val_chunks, T = open_data(config)
    shape = resolve_shape(config, int(train_chunks.manifest["padded_vocab_size"]))
    n_ne = int(params_non_embedding(shape))
    plan = plan_steps(config, n_ne, T, dist_info.world)
    n_val, warnings = validation_size(config, len(val_chunks), T, dist_info)
    warnings.append(repeat_warning(plan["tokens"], len(train_chunks) * T))
    resolved = {
        "shape": shape.to_dict(),
        "context": T,
        "lr": lr,
        **plan,
        "world_size": dist_info.world,
        "params_non_embedding": n_ne,
        "params_total": int(params_total(shape)),
        "data_hash": train_chunks.manifest["content_hash"],
        "train_chunks": len(train_chunks),
        "val_chunks": len(val_chunks),
        "val_sequences": n_val,
        "val_tokens": n_val * T,
    }
    start_step = _check_out_dir(config, resolved)
    for w in warnings:
        if w and dist_info.main:
            print(f"warning: {w}", file=sys.stderr)
    return _Run(
        Path(config.out_dir),
        device,
        _autocast_dtype(config, device),
        lr,
        train_chunks,
        val_chunks,
        n_val,
        T,
        shape,
        plan,
        resolved,
        start_step,
    )


def _seed_everything(config: TrainConfig, device) -> None:
    import torch

    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)


def _build(config: TrainConfig, run: _Run, dist_info: Dist) -> _Model:
    """The model (fresh, or the weights of ``init_from``), wrapped for DDP/FSDP, and its AdamW optimizer."""
    import torch

    from .model import GQADecoder
    from .optim import param_groups

    if config.init_from is not None:
        from .checkpoint import load_model

        model = load_model(config.init_from, device="cpu")
        # context extension: RoPE is computed on the fly
        model.max_seq_len = max(int(getattr(model, "max_seq_len", run.context)), run.context)
    else:
        model = GQADecoder(run.shape, max_seq_len=run.context)
        model.init_weights(seed=config.seed)
    model.to(run.device)
    train_model, sharded = distributed.wrap(model, dist_info, config.fsdp, run.device)
    groups = [g for g in param_groups(model, config.optim.weight_decay) if g["params"]]
    # one fused kernel per step (CUDA and CPU; also transformers Trainer's default AdamW): on the CPU the optimizer
    # step of 5.5M fp32 parameters took 18 ms against 24 ms for the per-parameter loop
    fused = run.device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(
        groups, lr=run.lr, betas=config.optim.betas, eps=config.optim.eps, fused=fused or None
    )
    forward = torch.compile(train_model) if config.compile else train_model
    return _Model(model, train_model, forward, optimizer, sharded)


def _start_or_resume(config: TrainConfig, run: _Run, m: _Model, dist_info: Dist) -> None:
    """Restore weights, optimizer and RNG from the resume checkpoint, or write ``config.json`` of a fresh run."""
    from .checkpoint import checkpoint_dir, restore, set_rng_state

    if run.start_step > 0:
        state = restore(checkpoint_dir(run.out, run.start_step), m.model, m.optimizer, dist_info)
        set_rng_state(state["rng"])
    elif dist_info.main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run.out / "config.json",
            {"config": config.to_dict(), "resolved": run.resolved, "environment": _environment(run.device, dist_info)},
        )
    if dist_info.main:
        truncate_metrics(run.out / "metrics.jsonl", run.start_step)
    distributed.barrier(dist_info)


def _finite(x: float | None) -> float | None:
    """``x``, or None when it is None or not finite (JSON has no infinity)."""
    return x if x is not None and math.isfinite(x) else None


def _evaluator(config: TrainConfig, run: _Run, m: _Model, dist_info: Dist):
    """A function returning (mean validation loss, its standard error), both nats/token, over a fixed
    set of ``run.n_val`` validation sequences.

    The standard error is std(per-sequence mean losses, ddof=1) / sqrt(n) (inf for one sequence).
    The same sequences whatever the world size, split evenly (FSDP needs equal forward counts).
    """
    import torch
    import torch.nn.functional as F

    mine = np.array_split(np.arange(run.n_val), dist_info.world)[dist_info.rank]

    def evaluate() -> tuple[float, float]:
        was = m.train_model.training
        m.train_model.eval()
        total = torch.zeros(3, dtype=torch.float64, device=run.device)  # sum, sum of squares, count
        with torch.no_grad():
            for i in range(0, len(mine), config.micro_batch):
                x = batch(run.val_chunks, mine[i : i + config.micro_batch], run.device)
                with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                    logits = m.forward(x).logits
                for b in range(x.shape[0]):  # one sequence's fp32 logits at a time
                    seq = F.cross_entropy(logits[b, :-1].float(), x[b, 1:]).double()
                    total[0] += seq
                    total[1] += seq * seq
                    total[2] += 1
                del logits
        distributed.all_reduce_sum(total, dist_info)
        m.train_model.train(was)
        s, s2, n = (float(v) for v in total)
        mean = s / n
        if n < 2:
            return mean, float("inf")
        var = max(s2 - n * mean * mean, 0.0) / (n - 1)
        return mean, math.sqrt(var / n)

    return evaluate


def _loop(config: TrainConfig, run: _Run, m: _Model, dist_info: Dist, evaluate, sinks: Sinks, t_start: float):
    """Optimiser steps from the resume step to the end; returns (last train loss, (last validation loss,
    its standard error)), in nats/token.

    Evaluates every ``eval_every`` steps and at :func:`cogqa.config.score_steps`; checkpoints every
    ``checkpoint_every`` steps, at the score steps, every ``checkpoint_interval_minutes`` of wall
    time and on a stop signal (then raises :class:`TrainingStopped`). Ranks agree on the
    time- and signal-driven saves (a max all-reduce of the flags), so all of them save together.
    """
    import torch

    steps, batch_tokens = run.plan["steps"], run.plan["batch_tokens"]
    scored = set(score_steps(steps, config.eval_every, config.optim.decay_fraction, config.last_k_checkpoints))
    interval_s = config.checkpoint_interval_minutes * 60.0
    last_loss = val = None
    t0 = t_last_save = t_start
    m.train_model.train()
    with StopFlag() as stop:
        for step in range(run.start_step, steps):
            step_lr, train_loss, grad_norm = _step(config, run, m, dist_info, step)
            done = step + 1
            last_loss = train_loss
            now = time.perf_counter()
            record = {
                "step": done,
                "loss": train_loss,
                "lr": step_lr,
                "grad_norm": grad_norm,
                "tokens": done * batch_tokens,
                "tokens_per_s": batch_tokens / max(now - t0, 1e-9),
                "elapsed_s": now - t_start,
            }
            t0 = now
            if (config.eval_every and done % config.eval_every == 0) or done == steps or done in scored:
                val = evaluate()
                record["val_loss"], record["val_loss_se"] = val[0], _finite(val[1])
            sinks.log(record)
            saved = False
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == steps or done in scored:
                _save(config, run, m, dist_info, sinks, done, val, resume_only=False)
                saved, t_last_save = True, time.perf_counter()
            if done == steps:
                break
            flags = torch.tensor(
                [float(stop.signum), float(interval_s > 0 and time.perf_counter() - t_last_save >= interval_s)],
                device=run.device,
            )
            distributed.all_reduce_max(flags, dist_info)
            signum, due = int(flags[0]), bool(flags[1])
            if (signum or due) and not saved:
                _save(config, run, m, dist_info, sinks, done, val, resume_only=True)
                t_last_save = time.perf_counter()
            if signum:
                name = signal.Signals(signum).name
                raise TrainingStopped(
                    f"stopped by {name} after step {done} of {steps}; checkpoint saved in "
                    f"{run.out / 'checkpoints'}; continue with the same command and --resume",
                    signum,
                )
    return last_loss, val


def _save(config: TrainConfig, run: _Run, m: _Model, dist_info: Dist, sinks, done: int, val, resume_only: bool):
    """Checkpoint step ``done`` (every rank calls it; metrics flushed first so a resume finds them complete)."""
    from .checkpoint import save_checkpoint

    sinks.sync()
    save_checkpoint(
        run.out,
        done,
        run.shape,
        m.model,
        m.optimizer,
        dist_info,
        config.keep_checkpoints,
        {"val_loss": None if val is None else val[0]},
        context=run.context,
        resume_only=resume_only,
    )


def _step(config: TrainConfig, run: _Run, m: _Model, dist_info: Dist, step: int) -> tuple[float, float, float]:
    """One optimiser step (gradient accumulation over micro-batches); returns (LR, mean train loss, grad norm)."""
    import torch

    from .optim import wsd_lr

    o, accum, global_batch = config.optim, run.plan["accum"], run.plan["global_batch"]
    step_lr = wsd_lr(step, run.plan["steps"], run.lr, o.warmup_fraction, o.decay_fraction, o.final_lr_fraction)
    for g in m.optimizer.param_groups:
        g["lr"] = step_lr
    per_rank = global_batch // dist_info.world
    ids = sample_indices(step, global_batch, len(run.train_chunks), config.seed)
    mine = ids[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank]
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    for k in range(accum):
        x = batch(run.train_chunks, mine[k * config.micro_batch : (k + 1) * config.micro_batch], run.device)
        with distributed.no_sync(m.train_model, m.sharded, last_micro=k == accum - 1):
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss = m.forward(x, labels=x).loss
            (loss / accum).backward()
        loss_sum += loss.detach().double()
    clip = o.grad_clip if o.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(m.model.parameters(), clip)
    m.optimizer.step()
    m.optimizer.zero_grad(set_to_none=True)
    distributed.all_reduce_sum(loss_sum, dist_info)
    train_loss = float(loss_sum) / (accum * dist_info.world)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training diverged at step {step + 1} (loss {train_loss}); lower --lr")
    return step_lr, train_loss, float(distributed.full_tensor(grad_norm))
