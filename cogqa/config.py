"""A training run's configuration: the one place its defaults and its step plan live.

:class:`TrainConfig` (with :class:`OptimConfig`) holds every setting of :func:`cogqa.train.train`
with the paper's defaults (Section 5.1, Appendix E): 20 tokens per non-embedding parameter,
524,288-token (512K) batches, AdamW (0.9, 0.95), weight decay 0.1, WSD with 10 % warmup and 20 %
decay to 10 % of the max LR. :func:`plan_steps` turns a config into batch geometry and a step count;
the sweep planner and the CLIs use these rather than repeating them. numpy only (no torch).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import CogqaError, require

PAPER_BATCH_TOKENS = 524_288
PAPER_TOKENS_PER_PARAM = 20.0
#: Appendix J.2: the paper scores the last four checkpoints and averages the scores (as cogqa.evaluate.PAPER_LAST_K)
PAPER_LAST_K = 4
#: Per-chunk standard deviation (nats/token) of the mean loss of 8K-token chunks of web text, as assumed for
#: sizing the validation set (an estimate, not a measurement on the paper's models; val_loss_se reports the real one)
ASSUMED_CHUNK_LOSS_STD = 0.09
#: Target standard error of the mean validation loss (nats/token) of a run on the paper's setup
TARGET_VAL_LOSS_SE = 0.002
#: Default validation size: 2,048 chunks at the paper's 8K context (16,777,216 tokens) --
#: cogqa.evaluate.chunks_for_standard_error(0.09, 0.002) = 2,025 chunks, rounded up to a power of two
DEFAULT_VAL_TOKENS = 2048 * 8192


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
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1), got {self.betas}",
        )
        if self.lr is not None:
            require(
                _is_number(self.lr) and 0 < self.lr < 1,
                f"optim.lr must be a number in (0, 1), got {self.lr!r}; e.g. --lr 5e-4",
            )
        require(_is_number(self.eps) and self.eps > 0, f"optim.eps must be positive, got {self.eps!r}")
        require(
            _is_number(self.weight_decay) and self.weight_decay >= 0,
            f"optim.weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        require(
            _is_number(self.grad_clip) and self.grad_clip >= 0,
            f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}",
        )
        require(
            _is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
            "optim.warmup_fraction must be in [0, 1)",
        )
        require(
            _is_number(self.decay_fraction) and 0 <= self.decay_fraction <= 1, "optim.decay_fraction must be in [0, 1]"
        )
        require(
            self.warmup_fraction + self.decay_fraction <= 1, "optim.warmup_fraction + optim.decay_fraction must be <= 1"
        )
        require(
            _is_number(self.final_lr_fraction) and 0 <= self.final_lr_fraction <= 1,
            "optim.final_lr_fraction must be in [0, 1]",
        )


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

    Validation: ceil(``val_tokens`` / T) validation chunks (all of them, with a warning, if the
    split has fewer); ``eval_batches`` (legacy) instead evaluates ``eval_batches`` x ``micro_batch``.

    Evaluation and checkpoints: the validation loss is measured every ``eval_every`` steps (0:
    none but the schedule below) and at the ``last_k_checkpoints`` last evaluation points (with
    ``eval_every`` 0: evenly spaced over the decay phase, the last at the end), where a checkpoint
    is saved too, so that the paper's last-k scoring (Appendix J.2) finds its k checkpoints;
    ``keep_checkpoints`` newest are kept (see :func:`score_steps`). Besides, a checkpoint is saved
    every ``checkpoint_interval_minutes`` of wall time (0: off) and on SIGTERM/SIGINT/SIGUSR1/SIGUSR2,
    to resume from only (removed by the next save).
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
    val_tokens: int = DEFAULT_VAL_TOKENS
    eval_batches: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = PAPER_LAST_K
    last_k_checkpoints: int = PAPER_LAST_K
    dtype: str = "auto"
    compile: bool = False
    fsdp: bool = False
    device: str = "auto"
    deterministic: bool = True
    checkpoint_interval_minutes: float = 30.0
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "cogqa"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**_known(OptimConfig, self.optim, "optim"))
        require(
            isinstance(self.data, (str, os.PathLike)) and str(self.data) != "",
            "data: give the prepared data directory (cogqa data prepare --out DIR)",
        )
        require(
            isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "",
            "out_dir: give an output directory (--out DIR)",
        )
        self.data, self.out_dir = str(self.data), str(self.out_dir)
        named = [self.size is not None, self.shape is not None, self.init_from is not None]
        require(
            sum(named) == 1,
            "name the model once: size (--size 470M), shape (--layers/--hidden/...) "
            "or init_from (--init-from CHECKPOINT)",
        )
        if self.size is None:
            require(
                self.n_heads is None and self.n_kv_heads is None,
                "n_heads/n_kv_heads only modify size; put heads into the explicit shape",
            )
        if self.context is not None:
            require(
                _is_int(self.context) and self.context > 0,
                f"context must be a positive whole number of tokens, got {self.context!r}",
            )
        if self.tokens is not None:
            require(
                _is_number(self.tokens) and self.tokens > 0,
                f"tokens must be a positive number of tokens, got {self.tokens!r}",
            )
        require(
            _is_number(self.tokens_per_param) and self.tokens_per_param > 0,
            f"tokens_per_param must be positive, got {self.tokens_per_param!r}",
        )
        for name in ("batch_tokens", "micro_batch", "keep_checkpoints", "val_tokens"):
            value = getattr(self, name)
            require(_is_int(value) and value > 0, f"{name} must be a positive whole number, got {value!r}")
        if self.eval_batches is not None:
            require(
                _is_int(self.eval_batches) and self.eval_batches > 0,
                f"eval_batches must be a positive whole number (or null: use val_tokens), got {self.eval_batches!r}",
            )
        for name in ("seed", "eval_every", "checkpoint_every", "last_k_checkpoints"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 0, f"{name} must be a whole number >= 0, got {value!r}")
        require(
            _is_number(self.checkpoint_interval_minutes) and self.checkpoint_interval_minutes >= 0,
            f"checkpoint_interval_minutes must be a number of minutes >= 0 (0 = off), "
            f"got {self.checkpoint_interval_minutes!r}",
        )
        require(
            self.dtype in ("auto", "fp32", "bf16", "fp16"),
            f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}",
        )
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
    """A finite real number (numpy scalars included), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x) -> bool:
    """A whole number (numpy integers included), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def default(name: str, cls: type | None = None) -> Any:
    """The default of field ``name`` of :class:`TrainConfig` (or of ``cls``, e.g. :class:`OptimConfig`).

    The one place run defaults are written; the sweep spec and the CLIs read them from here.
    """
    f = (cls or TrainConfig).__dataclass_fields__[name]
    return f.default_factory() if f.default is MISSING else f.default


def shape_dict(
    layers: int,
    hidden_size: int,
    n_heads: int,
    n_kv_heads: int | None = None,
    ffn_size: int | None = None,
    head_dim: int = 64,
) -> dict[str, int]:
    """An explicit model shape for :attr:`TrainConfig.shape` (vocab comes from the data): FFN size
    the paper's int(8d/3) rounded (:func:`cogqa.shapes.paper_ffn_size`) and n_kv = n_h unless given."""
    from .shapes import paper_ffn_size

    return {
        "layers": layers,
        "hidden_size": hidden_size,
        "ffn_size": ffn_size if ffn_size is not None else paper_ffn_size(hidden_size),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads if n_kv_heads is not None else n_heads,
        "head_dim": head_dim,
    }


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
    final_val_loss_se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return asdict(self)


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
    require(
        path.is_file(),
        f"init_from: {config.init_from} has no shape.json; give a checkpoint directory (.../checkpoints/step_XXXXXXXX)",
    )
    shape = ModelShape.from_dict(json.loads(path.read_text()))
    require(
        shape.vocab_size == vocab_size,
        f"init_from: the checkpoint's vocabulary ({shape.vocab_size}) differs from the data's ({vocab_size}); "
        "use data prepared with the same tokenizer",
    )
    return shape


def resolve_lr(config: TrainConfig) -> float:
    """The max LR: ``optim.lr``, else the paper's LR for a paper ``size``; else a one-line error."""
    if config.optim.lr is not None:
        return float(config.optim.lr)
    from .shapes import paper_learning_rate

    require(
        config.size is not None,
        "optim.lr: give a max learning rate (--lr 5e-4); only paper sizes (--size 470M) have a default",
    )
    try:
        return paper_learning_rate(config.size)
    except CogqaError:
        raise CogqaError(
            f"optim.lr: the paper gives no LR for size {config.size!r}; pass --lr (cogqa lr-search finds one)"
        ) from None


def repeat_warning(tokens: float, unique_tokens: float) -> str | None:
    """A one-line warning when ``tokens`` training tokens exceed the ``unique_tokens`` of the training
    split (the data is repeated), naming the number of epochs; None when the data is seen at most once."""
    if unique_tokens <= 0 or tokens <= unique_tokens:
        return None
    return (
        f"the run trains on {tokens:,.0f} tokens but the training split holds {unique_tokens:,.0f} unique tokens: "
        f"the data is repeated over {tokens / unique_tokens:.2f} epochs (more text, or fewer --tokens, avoids it)"
    )


def score_steps(steps: int, eval_every: int, decay_fraction: float, k: int) -> list[int]:
    """The steps (1-based, ascending, at most ``k``) where a run of ``steps`` optimiser steps evaluates
    and checkpoints for last-k scoring: the last ``k`` evaluation points (multiples of ``eval_every``
    and the end) when ``eval_every`` > 0, else ``k`` points evenly spaced over the WSD decay phase
    (the last ``k`` steps if the decay phase is shorter), the last one at the end. Empty if ``k`` is 0."""
    from .optim import wsd_phase_steps

    if k <= 0:
        return []
    if eval_every > 0:
        points = sorted({s for s in range(eval_every, steps + 1, eval_every)} | {steps})
        return points[-k:]
    _, decay = wsd_phase_steps(steps, 0.0, decay_fraction)
    span = max(decay, min(k, steps))
    start = steps - span
    return sorted({start + int(math.ceil(span * i / k)) for i in range(1, k + 1)} - {start})


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
    return {
        "global_batch": global_batch,
        "accum": global_batch // unit,
        "batch_tokens": batch_tokens,
        "steps": steps,
        "tokens": steps * batch_tokens,
    }
