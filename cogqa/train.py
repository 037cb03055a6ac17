"""The pre-training loop of the paper (Section 5.1, Appendices E, F), single process or torchrun.

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
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CogqaError, require
from .files import fsync_dir, write_json_atomic

PAPER_BATCH_TOKENS = 524_288
PAPER_TOKENS_PER_PARAM = 20.0
CHECKPOINT_PREFIX = "step_"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """AdamW and WSD settings (defaults: the paper's). ``lr`` None means the paper's LR for ``size``."""

    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.2
    final_lr_fraction: float = 0.1

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr is not None:
            require(_is_number(self.lr) and 0 < self.lr < 1, f"optim.lr must be a number in (0, 1), got {self.lr!r}; e.g. --lr 5e-4")
        require(_is_number(self.eps) and self.eps > 0, f"optim.eps must be positive, got {self.eps!r}")
        require(_is_number(self.weight_decay) and self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        require(_is_number(self.grad_clip) and self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        require(_is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, "optim.warmup_fraction must be in [0, 1)")
        require(_is_number(self.decay_fraction) and 0 <= self.decay_fraction <= 1, "optim.decay_fraction must be in [0, 1]")
        require(self.warmup_fraction + self.decay_fraction <= 1, "optim.warmup_fraction + optim.decay_fraction must be <= 1")
        require(_is_number(self.final_lr_fraction) and 0 <= self.final_lr_fraction <= 1, "optim.final_lr_fraction must be in [0, 1]")


@dataclass
class TrainConfig:
    """Everything a training run needs; JSON round-trippable (:meth:`to_dict` / :meth:`from_dict`).

    The model is named by ``size`` (a paper size such as ``"470M"``, with optional ``n_heads`` /
    ``n_kv_heads``), by ``shape`` (a :meth:`cogqa.shapes.ModelShape.to_dict` dict; its vocab is
    replaced by the data's padded vocab), or by ``init_from`` (a checkpoint directory: context
    extension -- weights only, fresh optimizer). ``tokens`` (a count of training tokens) overrides
    ``tokens_per_param`` x non-embedding parameters. ``batch_tokens`` is the global batch in
    tokens; it is rounded to whole sequences of the data's context length and to a multiple of
    ``micro_batch`` x world size.
    """

    data: str = ""
    out_dir: str = ""
    size: str | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    shape: dict | None = None
    init_from: str | None = None
    context: int | None = None
    tokens: float | None = None
    tokens_per_param: float = PAPER_TOKENS_PER_PARAM
    batch_tokens: int = PAPER_BATCH_TOKENS
    micro_batch: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    eval_every: int = 0
    eval_batches: int = 8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    dtype: str = "auto"
    compile: bool = False
    fsdp: bool = False
    device: str = "auto"
    deterministic: bool = True
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "cogqa"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**_known(OptimConfig, self.optim, "optim"))
        require(isinstance(self.data, (str, os.PathLike)) and str(self.data) != "", "data: give the prepared data directory (cogqa data prepare --out DIR)")
        require(isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "", "out_dir: give an output directory (--out DIR)")
        self.data, self.out_dir = str(self.data), str(self.out_dir)
        named = [self.size is not None, self.shape is not None, self.init_from is not None]
        require(sum(named) == 1, "name the model once: size (--size 470M), shape (--layers/--hidden/...) or init_from (--init-from CHECKPOINT)")
        if self.size is None:
            require(self.n_heads is None and self.n_kv_heads is None, "n_heads/n_kv_heads only modify size; put heads into the explicit shape")
        if self.context is not None:
            require(_is_int(self.context) and self.context > 0, f"context must be a positive whole number of tokens, got {self.context!r}")
        if self.tokens is not None:
            require(_is_number(self.tokens) and self.tokens > 0, f"tokens must be a positive number of tokens, got {self.tokens!r}")
        require(_is_number(self.tokens_per_param) and self.tokens_per_param > 0, f"tokens_per_param must be positive, got {self.tokens_per_param!r}")
        require(_is_int(self.batch_tokens) and self.batch_tokens > 0, f"batch_tokens must be a positive whole number, got {self.batch_tokens!r}")
        require(_is_int(self.micro_batch) and self.micro_batch > 0, f"micro_batch must be a positive whole number, got {self.micro_batch!r}")
        for name in ("seed", "eval_every", "checkpoint_every"):
            require(_is_int(getattr(self, name)) and getattr(self, name) >= 0, f"{name} must be a whole number >= 0, got {getattr(self, name)!r}")
        require(_is_int(self.eval_batches) and self.eval_batches > 0, f"eval_batches must be >= 1, got {self.eval_batches!r}")
        require(_is_int(self.keep_checkpoints) and self.keep_checkpoints > 0, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")
        require(self.dtype in ("auto", "fp32", "bf16", "fp16"), f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")
        if self.max_steps is not None:
            require(_is_int(self.max_steps) and self.max_steps > 0, f"max_steps must be >= 1, got {self.max_steps!r}")

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable values (round-trips through :meth:`from_dict`)."""
        d = asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from :meth:`to_dict` output; unknown keys are a one-line error naming them."""
        require(isinstance(data, dict), "a train config must be a JSON object")
        return cls(**_known(cls, data, "config"))


def _known(cls, data: dict, where: str) -> dict:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    require(not unknown, f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return dict(data)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A new config with dotted ``key=value`` overrides applied (``optim.lr=1e-3``, ``seed=3``).

    Values are parsed as JSON when possible (numbers, true/false, null, lists), else kept as text;
    the result is validated again. Unknown keys are a one-line error naming them.
    """
    d = config.to_dict()
    for item in overrides:
        require("=" in item, f"--set: {item!r} is not key=value; e.g. --set optim.lr=1e-3")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = d
        for p in parts[:-1]:
            require(isinstance(node.get(p), dict), f"--set: unknown section {p!r} in {key!r}")
            node = node[p]
        require(parts[-1] in node, f"--set: unknown key {key!r}; known: {sorted(node)}")
        node[parts[-1]] = value
    return TrainConfig.from_dict(d)


class TrainingDiverged(CogqaError):
    """The training loss became NaN or infinite (the LR is too high)."""


@dataclass
class TrainResult:
    """Outcome of :func:`train` (also written to ``result.json``)."""

    out_dir: str
    steps: int
    tokens: int
    final_val_loss: float | None
    final_train_loss: float | None
    wall_time_s: float
    params_non_embedding: int
    params_total: int
    n_heads: int
    n_kv_heads: int
    context: int
    lr: float
    batch_tokens: int
    resumed_from_step: int = 0

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Small helpers: atomic files, data order
# ---------------------------------------------------------------------------------------------


def sample_indices(step: int, global_batch: int, n_chunks: int, seed: int) -> np.ndarray:
    """Chunk indices of global batch ``step`` (``global_batch`` of them; units: chunk indices).

    The order is a fresh permutation of ``range(n_chunks)`` per epoch, seeded by (seed, epoch);
    global sample ``g = step * global_batch + i`` is element ``g % n_chunks`` of epoch
    ``g // n_chunks``. Pure: the data position of a run is just its step.
    """
    g = step * global_batch + np.arange(global_batch)
    epochs, pos = g // n_chunks, g % n_chunks
    out = np.empty(global_batch, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([int(seed), int(e)]).permutation(n_chunks)
        mask = epochs == e
        out[mask] = perm[pos[mask]]
    return out


def list_checkpoints(out_dir) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (``.tmp`` leftovers are ignored)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


# ---------------------------------------------------------------------------------------------
# Distributed setup
# ---------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_type: str) -> _Dist:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        here = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), initialised_here=here)


def _pick_device(config: TrainConfig, dist_info: _Dist):
    import torch

    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Resolving the run: data, shape, steps
# ---------------------------------------------------------------------------------------------


def _open_data(config: TrainConfig):
    root = Path(config.data)
    require(root.is_dir(), f"data: {config.data} does not exist; prepare it with `cogqa data prepare ... --out {config.data}`")
    require((root / "manifest.json").is_file(), f"data: no manifest.json in {config.data}; prepare it with `cogqa data prepare`")
    from .data import TokenChunks

    train_chunks = TokenChunks(root, split="train")
    val_chunks = TokenChunks(root, split="val")
    T = int(train_chunks.context)
    require(
        len(train_chunks) > 0,
        f"data: {config.data} has no training chunk of {T} tokens (the corpus is shorter than one chunk or empty); "
        "add text or prepare with a smaller --context",
    )
    require(len(val_chunks) > 0, f"data: {config.data} has no validation chunk of {T} tokens; prepare with a larger --val-fraction or more text")
    if config.context is not None:
        require(config.context == T, f"context: the data in {config.data} is cut into {T}-token chunks, not {config.context}; "
                "prepare the data at the training length (cogqa data prepare --context ...)")
    return train_chunks, val_chunks, T


def resolve_shape(config: TrainConfig, vocab_size: int):
    """The ModelShape to train: from ``size``/``shape``/``init_from``, vocab set to the data's padded vocab."""
    from .shapes import ModelShape, paper_shape

    if config.size is not None:
        shape = paper_shape(config.size, config.n_heads, config.n_kv_heads)
        return replace(shape, vocab_size=vocab_size)
    if config.shape is not None:
        shape = ModelShape.from_dict(config.shape)
        return replace(shape, vocab_size=vocab_size)
    path = Path(config.init_from) / "shape.json"
    require(path.is_file(), f"init_from: {config.init_from} has no shape.json; give a checkpoint directory (.../checkpoints/step_XXXXXXXX)")
    shape = ModelShape.from_dict(json.loads(path.read_text()))
    require(shape.vocab_size == vocab_size, f"init_from: the checkpoint's vocabulary ({shape.vocab_size}) differs from the data's ({vocab_size}); use data prepared with the same tokenizer")
    return shape


def resolve_lr(config: TrainConfig) -> float:
    """The max LR: ``optim.lr``, else the paper's LR for a paper ``size``; else a one-line error."""
    if config.optim.lr is not None:
        return float(config.optim.lr)
    from .shapes import paper_learning_rate

    require(config.size is not None, "optim.lr: give a max learning rate (--lr 5e-4); only paper sizes (--size 470M) have a default")
    try:
        return paper_learning_rate(config.size)
    except CogqaError:
        raise CogqaError(f"optim.lr: the paper gives no LR for size {config.size!r}; pass --lr (cogqa lr-search finds one)") from None


def plan_steps(config: TrainConfig, n_non_embedding: float, context: int, world: int) -> dict[str, int]:
    """Batch geometry and step count: sequences per step, accumulation, steps, tokens (units in keys).

    Returns ``global_batch`` (sequences per optimiser step, a multiple of micro_batch x world),
    ``accum`` (micro-batches per rank per step), ``batch_tokens`` (tokens per step), ``steps`` and
    ``tokens`` (the token budget rounded up to whole steps).
    """
    unit = config.micro_batch * world
    seqs = max(1, int(round(config.batch_tokens / context)))
    global_batch = max(unit, int(math.ceil(seqs / unit)) * unit)
    budget = float(config.tokens) if config.tokens is not None else config.tokens_per_param * float(n_non_embedding)
    batch_tokens = global_batch * context
    steps = max(1, int(math.ceil(budget / batch_tokens)))
    if config.max_steps is not None:
        steps = min(steps, int(config.max_steps))
    return {"global_batch": global_batch, "accum": global_batch // unit, "batch_tokens": batch_tokens, "steps": steps, "tokens": steps * batch_tokens}


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_state_dicts(model, optimizer, dist_info: _Dist, sharded: bool):
    """(model state dict, optimizer state dict), full and on CPU on rank 0 (None elsewhere when sharded)."""
    if dist_info.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=opts)
        osd = get_optimizer_state_dict(model, optimizer, options=opts)
        return msd, osd
    return model.state_dict(), optimizer.state_dict()


def save_checkpoint(out_dir: Path, step: int, shape, model, optimizer, dist_info: _Dist, sharded: bool, keep: int, extra: dict) -> Path | None:
    """Write ``checkpoints/step_<step>/`` atomically (rank 0) and prune to the newest ``keep``.

    Contents: ``model.safetensors`` + ``shape.json`` (loadable with
    :func:`cogqa.checkpoint.load_model`) and ``trainer.pt`` (optimizer state, step, RNG states,
    ``extra``). Every rank must call this (the state dicts are gathered collectively).
    """
    import torch

    msd, osd = _full_state_dicts(model, optimizer, dist_info, sharded)
    final = Path(out_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
    if dist_info.main:
        from .checkpoint import save_model
        from .model import GQADecoder

        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        plain = _unwrap(model)
        if dist_info.world > 1:  # rebuild a plain CPU module from the gathered full state
            plain = GQADecoder(shape, max_seq_len=getattr(_unwrap(model), "max_seq_len", 8192))
            plain.load_state_dict(msd)
        save_model(plain, tmp)
        with open(tmp / "trainer.pt", "wb") as fh:
            torch.save({"step": step, "optimizer": osd, "rng": _rng_state(), **extra}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. the final one): replace atomically
            old = final.with_name(final.name + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return final if dist_info.main else None


def _load_trainer_state(ckpt: Path) -> dict:
    import torch

    with open(ckpt / "trainer.pt", "rb") as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)


def _unwrap(model):
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

_COMPAT_KEYS = ("data", "size", "n_heads", "n_kv_heads", "shape", "init_from", "context", "tokens", "tokens_per_param",
                "batch_tokens", "micro_batch", "optim", "seed", "max_steps")


def _check_out_dir(config: TrainConfig, resolved: dict) -> int:
    """Validate ``out_dir`` before anything is written; returns the step to resume from (0: fresh)."""
    out = Path(config.out_dir)
    require(not out.exists() or out.is_dir(), f"out_dir: {out} exists and is not a directory")
    existing = out / "config.json"
    ckpts = list_checkpoints(out)
    if not config.resume:
        require(not existing.exists() and not ckpts,
                f"out_dir: {out} already holds a run; pass --resume to continue it or choose another --out")
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
        require(old_cfg.get(key) == new_cfg.get(key),
                f"resume: {out} was trained with {key}={old_cfg.get(key)!r}, not {new_cfg.get(key)!r}; use the same settings or another --out")
    for key in ("shape", "global_batch", "steps", "context", "data_hash", "world_size"):
        require(old_res.get(key) == resolved.get(key),
                f"resume: {out} was trained with a different {key} ({old_res.get(key)!r} vs {resolved.get(key)!r}); use the same settings or another --out")
    return int(ckpts[-1].name[len(CHECKPOINT_PREFIX):]) if ckpts else 0


def _environment(device, dist_info: _Dist) -> dict:
    import torch

    from . import __version__

    return {
        "cogqa_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
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
    from .costs import params_non_embedding, params_total

    device_type = "cuda" if (config.device == "auto" and torch.cuda.is_available()) or config.device.startswith("cuda") else "cpu"
    dist_info = _setup_distributed(device_type)
    try:
        return _train(config, dist_info, params_non_embedding, params_total)
    finally:
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, dist_info: _Dist, params_non_embedding, params_total) -> TrainResult:
    import torch

    from .model import GQADecoder

    device = _pick_device(config, dist_info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    lr = resolve_lr(config)
    train_chunks, val_chunks, T = _open_data(config)
    shape = resolve_shape(config, int(train_chunks.manifest["padded_vocab_size"]))
    n_ne = int(params_non_embedding(shape))
    plan = plan_steps(config, n_ne, T, dist_info.world)
    resolved = {
        "shape": shape.to_dict(), "context": T, "lr": lr, **plan, "world_size": dist_info.world,
        "params_non_embedding": n_ne, "params_total": int(params_total(shape)),
        "data_hash": train_chunks.manifest["content_hash"],
        "train_chunks": len(train_chunks), "val_chunks": len(val_chunks),
    }
    start_step = _check_out_dir(config, resolved)
    out = Path(config.out_dir)

    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    # -- model ------------------------------------------------------------------------------
    if config.init_from is not None:
        from .checkpoint import load_model

        model = load_model(config.init_from, device="cpu")
        model.max_seq_len = max(int(getattr(model, "max_seq_len", T)), T)  # context extension: RoPE is computed on the fly
    else:
        model = GQADecoder(shape, max_seq_len=T)
        model.init_weights(seed=config.seed)
    model.to(device)
    sharded = False
    if dist_info.world > 1:
        if config.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in _blocks(model):
                fully_shard(block)
            fully_shard(model)
            sharded = True
            train_model = model
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    groups = _param_groups_for(model, config.optim.weight_decay)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=config.optim.betas, eps=config.optim.eps, fused=fused or None)
    forward_model = torch.compile(train_model) if config.compile else train_model

    # -- resume --------------------------------------------------------------------------------
    if start_step > 0:
        ckpt = out / "checkpoints" / f"{CHECKPOINT_PREFIX}{start_step:08d}"
        _restore(ckpt, model, optimizer, dist_info, sharded, device)
        state = _load_trainer_state(ckpt)
        _set_rng_state(state["rng"])
    elif dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", {"config": config.to_dict(), "resolved": resolved,
                                                "environment": _environment(device, dist_info)})
    if dist_info.main:
        _truncate_metrics(out / "metrics.jsonl", start_step)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()

    # -- logging ---------------------------------------------------------------------------------
    tb = wb = bar = None
    if dist_info.main and config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CogqaError("tensorboard: not installed; pip install tensorboard, or drop --tensorboard") from None
        tb = SummaryWriter(str(out / "tensorboard"))
    if dist_info.main and config.wandb:
        try:
            import wandb
        except ImportError:
            raise CogqaError("wandb: not installed; pip install wandb, or drop --wandb") from None
        wb = wandb.init(project=config.wandb_project, dir=str(out), config={**config.to_dict(), **resolved}, resume="allow",
                        id=(out.resolve().name + "-" + str(abs(hash(str(out.resolve()))) % 10**8)))
    steps, accum, global_batch = plan["steps"], plan["accum"], plan["global_batch"]
    if dist_info.main and config.progress:
        from tqdm import tqdm

        bar = tqdm(total=plan["tokens"], initial=start_step * plan["batch_tokens"], unit="tok", unit_scale=True,
                   desc="train", dynamic_ncols=True, file=sys.stderr)

    from .optim import wsd_lr

    amp_dtype = _autocast_dtype(config, device)
    per_rank = global_batch // dist_info.world
    # the same validation sequences whatever the world size, split evenly (FSDP needs equal forward counts)
    n_val = min(len(val_chunks), config.eval_batches * config.micro_batch)
    n_val = max(dist_info.world, n_val - n_val % dist_info.world)
    require(len(val_chunks) >= n_val, f"data: {len(val_chunks)} validation chunks cannot be split over {dist_info.world} processes")
    val_ids = np.arange(n_val)

    def batch_of(chunks, ids):
        return torch.from_numpy(np.stack([np.asarray(chunks[int(i)], dtype=np.int64) for i in ids])).to(device, non_blocking=True)

    def evaluate() -> float:
        was = train_model.training
        train_model.eval()
        mine = np.array_split(val_ids, dist_info.world)[dist_info.rank]
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for i in range(0, len(mine), config.micro_batch):
                x = batch_of(val_chunks, mine[i:i + config.micro_batch])
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = forward_model(x, labels=x).loss
                total[0] += loss.double() * x.shape[0]
                total[1] += x.shape[0]
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        train_model.train(was)
        return float(total[0] / total[1])

    t0 = time.perf_counter()
    run_t0 = t0
    last_loss = None
    val_loss = None
    metrics_fh = open(out / "metrics.jsonl", "a") if dist_info.main else None
    train_model.train()
    try:
        for step in range(start_step, steps):
            step_lr = wsd_lr(step, steps, lr, config.optim.warmup_fraction, config.optim.decay_fraction, config.optim.final_lr_fraction)
            for g in optimizer.param_groups:
                g["lr"] = step_lr
            ids = sample_indices(step, global_batch, len(train_chunks), config.seed)
            mine = ids[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for m in range(accum):
                x = batch_of(train_chunks, mine[m * config.micro_batch:(m + 1) * config.micro_batch])
                last_micro = m == accum - 1
                ctx = _no_sync(train_model, sharded, last_micro)
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = forward_model(x, labels=x).loss
                    (loss / accum).backward()
                loss_sum += loss.detach().double()
            if config.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if dist_info.world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_sum)
            train_loss = float(loss_sum) / (accum * dist_info.world)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training diverged at step {step + 1} (loss {train_loss}); lower --lr")
            last_loss = train_loss
            done = step + 1
            now = time.perf_counter()
            record = {"step": done, "loss": train_loss, "lr": step_lr, "grad_norm": float(_full(grad_norm)),
                      "tokens": done * plan["batch_tokens"], "tokens_per_s": plan["batch_tokens"] / max(now - t0, 1e-9),
                      "elapsed_s": now - run_t0}
            t0 = now
            if (config.eval_every and done % config.eval_every == 0) or done == steps:
                val_loss = evaluate()
                record["val_loss"] = val_loss
            if dist_info.main:
                metrics_fh.write(json.dumps(record) + "\n")
                metrics_fh.flush()
                if tb is not None:
                    for k in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss"):
                        if k in record:
                            tb.add_scalar(f"train/{k}" if k != "val_loss" else "val/loss", record[k], done)
                if wb is not None:
                    wb.log(record, step=done)
                if bar is not None:
                    bar.update(plan["batch_tokens"])
                    bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{step_lr:.2e}", refresh=False)
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == steps:
                if dist_info.main:
                    metrics_fh.flush()
                    os.fsync(metrics_fh.fileno())
                save_checkpoint(out, done, shape, model, optimizer, dist_info, sharded, config.keep_checkpoints,
                                {"val_loss": val_loss})
    finally:
        if metrics_fh is not None:
            metrics_fh.close()
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        if wb is not None:
            wb.finish()

    if val_loss is None:  # resumed at the very end: nothing ran
        val_loss = evaluate()
    result = TrainResult(
        out_dir=str(out), steps=steps, tokens=plan["tokens"], final_val_loss=val_loss, final_train_loss=last_loss,
        wall_time_s=time.perf_counter() - run_t0, params_non_embedding=n_ne, params_total=resolved["params_total"],
        n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads, context=T, lr=lr, batch_tokens=plan["batch_tokens"],
        resumed_from_step=start_step,
    )
    if dist_info.main:
        write_json_atomic(out / "result.json", result.to_dict())
    return result


def _full(t):
    """A plain tensor from a possibly-DTensor value (FSDP2 grad norms are DTensors)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _blocks(model):
    """The transformer blocks of a GQADecoder (for per-block FSDP2 sharding)."""
    import torch

    for name in ("layers", "blocks", "h"):
        found = getattr(model, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return list(found)
    return []


def _param_groups_for(model, weight_decay: float) -> list[dict]:
    from .optim import param_groups

    return [g for g in param_groups(model, weight_decay) if g["params"]]


def _no_sync(train_model, sharded: bool, last_micro: bool):
    import contextlib

    if last_micro:
        return contextlib.nullcontext()
    if hasattr(train_model, "no_sync"):  # DDP
        return train_model.no_sync()
    if sharded and hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        return _ReenableSync(train_model)
    return contextlib.nullcontext()


class _ReenableSync:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False


def _restore(ckpt: Path, model, optimizer, dist_info: _Dist, sharded: bool, device) -> None:
    """Load model weights and optimizer state from a checkpoint into the (possibly wrapped) objects."""
    from .checkpoint import load_model

    plain = load_model(ckpt, device="cpu")
    msd = plain.state_dict()
    state = _load_trainer_state(ckpt)
    if dist_info.world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, msd, options=opts)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    else:
        model.load_state_dict(msd)
        optimizer.load_state_dict(state["optimizer"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written by a run that was killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line
        if int(rec.get("step", 0)) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# LR grid search (Appendix F)
# ---------------------------------------------------------------------------------------------

PAPER_LR_GRID = tuple(m * 10.0**e for e in (-3, -4, -5) for m in (1, 2, 5))


def lr_search(config: TrainConfig, lrs=PAPER_LR_GRID) -> dict[str, Any]:
    """Short trainings of ``config`` at each max LR, each in ``out_dir/lr_<lr>``; returns the table.

    Finished runs (with ``result.json``) are reused, so an interrupted search resumes. Returns
    ``{"runs": [{"lr", "final_val_loss", "out_dir"}...], "best_lr", "best_val_loss"}`` (losses in
    nats per token) and writes it to ``out_dir/lr_search.json``.
    """
    lrs = [float(x) for x in lrs]
    require(len(lrs) > 0, "lrs: give at least one learning rate")
    for x in lrs:
        require(math.isfinite(x) and 0 < x < 1, f"lrs: {x!r} is not a learning rate in (0, 1)")
    root = Path(config.out_dir)
    rows = []
    for x in lrs:
        sub = root / f"lr_{x:.0e}"
        done = sub / "result.json"
        if done.is_file():
            res = json.loads(done.read_text())
        else:
            cfg = replace(config, out_dir=str(sub), optim=replace(config.optim, lr=x), resume=True)
            try:
                res = train(cfg).to_dict()
            except TrainingDiverged:
                res = {"final_val_loss": None}
        loss = res.get("final_val_loss")
        rows.append({"lr": x, "final_val_loss": loss if loss is not None and math.isfinite(loss) else None, "out_dir": str(sub)})
    ok = [r for r in rows if r["final_val_loss"] is not None]
    require(bool(ok), "lr-search: every run diverged; try smaller learning rates (--lrs)")
    best = min(ok, key=lambda r: r["final_val_loss"])
    table = {"runs": rows, "best_lr": best["lr"], "best_val_loss": best["final_val_loss"]}
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(root / "lr_search.json", table)
    return table
