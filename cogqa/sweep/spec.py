"""Sweep specs and plans: which runs a sweep holds, and what they cost before anything runs.

A :class:`SweepSpec` (YAML/JSON file, dict or CLI flags) is validated through
:class:`cogqa.config.TrainConfig`, the one source of run settings; :func:`plan` prices every run
with the trainer's own step plan. No torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import default
from ..errors import CogqaError, require

#: The paper's candidate set (Section 5 / Appendix): n_h, n_kv powers of two, n_kv <= n_h <= 32.
PAPER_HEAD_CONFIGS: tuple[tuple[int, int], ...] = tuple(
    (h, kv) for h in (1, 2, 4, 8, 16, 32) for kv in (1, 2, 4, 8, 16, 32) if kv <= h
)
HEAD_PRESETS = {"paper": PAPER_HEAD_CONFIGS}

# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------


def parse_heads(value: Any) -> list[tuple[int, int]]:
    """Head configurations from ``"paper"``, a string list (``"8,1 16,4"``, ``"8:1,16:4"``: any
    :func:`cogqa.units.parse_head_configs` spelling) or a list of pairs / strings (``[[8, 1]]``,
    ``["8,1"]``). Returns a list of (n_heads, n_kv_heads); a one-line CogqaError for anything else,
    invalid GQA, or a configuration listed twice.
    """
    from ..units import parse_head_config, parse_head_configs

    if value is None:
        return list(PAPER_HEAD_CONFIGS)
    if isinstance(value, str):
        if value.strip().lower() in HEAD_PRESETS:
            return list(HEAD_PRESETS[value.strip().lower()])
        out = parse_head_configs(value, "heads")
    else:
        require(
            isinstance(value, (list, tuple)) and len(value) > 0,
            f"heads: expected 'paper', '8,1 16,4' or a list of [n_h, n_kv], got {value!r}",
        )
        out = [parse_head_config(item, "heads") for item in value]
    for i, h in enumerate(out):
        require(h not in out[:i], f"heads: ({h[0]},{h[1]}) is listed twice")
    return out


@dataclass(frozen=True)
class SweepSize:
    """One model size of a sweep: layers, hidden size, FFN size, head size (an MHA family shape)."""

    name: str
    layers: int
    hidden_size: int
    ffn_size: int
    head_dim: int = 64
    lr: float | None = None

    def shape(self, n_heads: int, n_kv_heads: int, vocab_size: int):
        """The :class:`cogqa.shapes.ModelShape` of this size with heads (n_heads, n_kv_heads)."""
        from ..shapes import ModelShape

        return ModelShape(
            layers=self.layers,
            hidden_size=self.hidden_size,
            ffn_size=self.ffn_size,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=self.head_dim,
            vocab_size=vocab_size,
            name=self.name,
        )


def _smallest_paper_params() -> float:
    from ..costs import params_non_embedding
    from ..shapes import PAPER_SWEEP_SHAPES, paper_shape

    return float(min(params_non_embedding(paper_shape(n)) for n in PAPER_SWEEP_SHAPES))


def parse_size(value: Any, lrs: dict[str, float] | float | None = None) -> SweepSize:
    """A :class:`SweepSize` from a Table 9 name (``"470M"``), a size in parameters (``"50M"``,
    ``5e7``: Appendix B.1 shape, rounded to a buildable one) or a dict ``{name, layers,
    hidden_size, ffn_size?, head_dim?, lr?}``. The LR comes from the dict, then ``lrs``, then the
    paper's Table 9 LR; a size without any LR is an error at :class:`SweepSpec` validation."""
    from ..family import nearest_buildable, shape_for_params
    from ..shapes import PAPER_SWEEP_SHAPES, paper_ffn_size, paper_learning_rate
    from ..units import parse_count

    def lr_for(name: str, explicit: float | None) -> float | None:
        if explicit is not None:
            return float(explicit)
        if isinstance(lrs, dict) and name in lrs:
            return float(lrs[name])
        if isinstance(lrs, (int, float)) and not isinstance(lrs, bool):
            return float(lrs)
        if name.upper() in {k.upper() for k in PAPER_SWEEP_SHAPES}:
            return paper_learning_rate(name)
        return None

    if isinstance(value, dict):
        known = {"name", "layers", "hidden_size", "ffn_size", "head_dim", "lr"}
        unknown = sorted(set(value) - known)
        require(not unknown, f"sizes: unknown key(s) {unknown} in {value!r}; known: {sorted(known)}")
        for key in ("layers", "hidden_size"):
            v = value.get(key)
            require(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"sizes: {key} must be a positive integer in {value!r}",
            )
        hidden = value["hidden_size"]
        name = str(value.get("name") or f"L{value['layers']}d{hidden}")
        ffn = value.get("ffn_size", paper_ffn_size(hidden))
        head_dim = value.get("head_dim", 64)
        for key, v in (("ffn_size", ffn), ("head_dim", head_dim)):
            require(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"sizes: {key} must be a positive integer in {value!r}",
            )
        return SweepSize(name, value["layers"], hidden, ffn, head_dim, lr_for(name, value.get("lr")))
    text = str(value).strip()
    table = {k.upper(): k for k in PAPER_SWEEP_SHAPES}
    if text.upper() in table:
        name = table[text.upper()]
        layers, hidden, _ = PAPER_SWEEP_SHAPES[name]
        return SweepSize(name, layers, hidden, paper_ffn_size(hidden), 64, lr_for(name, None))
    n = parse_count(value, "sizes")
    smallest = _smallest_paper_params()
    require(
        n >= smallest,
        f"sizes: {text} is below the smallest shape (3M: {smallest:.3g} non-embedding parameters); "
        "give tiny models as explicit shapes {layers, hidden_size, head_dim, lr}",
    )
    real = shape_for_params(n)
    shape = nearest_buildable(real, heads_follow_hidden=True)
    return SweepSize(text, shape.layers, shape.hidden_size, shape.ffn_size, shape.head_dim, lr_for(text, None))


@dataclass
class SweepSpec:
    """A sweep: every (size, head configuration, seed) is one training run.

    ``data`` is a prepared directory (``cogqa data prepare --out``) or a dict ``{inputs: [...],
    tokenizer, context, val_fraction}`` prepared once into ``SWEEP/data``. ``tokens`` (a fixed
    token budget per run) overrides ``tokens_per_param`` x non-embedding parameters. ``lr`` is a
    float for every size or a dict size-name -> LR (default: Table 9's LR for paper sizes).
    ``train`` holds extra :class:`cogqa.train.TrainConfig` fields (e.g. ``eval_batches``).
    """

    data: Any = None
    sizes: list = field(default_factory=lambda: ["3M", "19M", "85M", "150M"])
    heads: Any = "paper"
    tokens_per_param: float = default("tokens_per_param")
    tokens: float | None = default("tokens")
    context: int | None = default("context")
    lr: Any = None
    seeds: list = field(default_factory=lambda: [default("seed")])
    batch_tokens: int = default("batch_tokens")
    micro_batch: int = default("micro_batch")
    max_steps: int | None = default("max_steps")
    checkpoint_every: int = default("checkpoint_every")
    eval_batches: int | None = default("eval_batches")
    val_tokens: Any = default("val_tokens")
    position_eval_chunks: int = 32
    train: dict = field(default_factory=dict)
    name: str = "sweep"

    def __post_init__(self) -> None:
        from ..units import parse_context, parse_count

        self.head_configs = parse_heads(self.heads)
        self.heads = [list(h) for h in self.head_configs]
        require(
            isinstance(self.sizes, (list, tuple)) and len(self.sizes) > 0, "sizes: give at least one size, e.g. 3M,19M"
        )
        require(
            self.lr is None or isinstance(self.lr, (dict, int, float)),
            f"lr: a number or a dict size -> LR, got {self.lr!r}",
        )
        self.size_specs = [parse_size(s, self.lr) for s in self.sizes]
        names = [s.name for s in self.size_specs]
        require(len(set(names)) == len(names), f"sizes: duplicate size names {names}")
        for s in self.size_specs:
            require(
                s.lr is not None,
                f"lr: no learning rate for size {s.name!r}; give lr: {{{s.name}: 1e-3}} or a global lr "
                "(cogqa lr-search finds one)",
            )
            require(0 < s.lr < 1, f"lr: {s.lr} for size {s.name!r} must be in (0, 1)")
        # numbers may be written as text (2e6, 512K); their ranges are TrainConfig's to check (below)
        self.tokens_per_param = float(parse_count(self.tokens_per_param, "tokens_per_param"))
        if self.tokens is not None:
            self.tokens = float(parse_count(self.tokens, "tokens"))
        if self.context is not None:
            self.context = parse_context(self.context, "context")
        require(
            isinstance(self.seeds, (list, tuple)) and len(self.seeds) > 0,
            f"seeds: a list of whole numbers >= 0, got {self.seeds!r}",
        )
        self.batch_tokens = parse_count(self.batch_tokens, "batch_tokens")
        require(
            float(self.batch_tokens).is_integer(),
            f"batch_tokens must be a whole number of tokens, got {self.batch_tokens!r}",
        )
        self.batch_tokens = int(self.batch_tokens)
        self.val_tokens = parse_count(self.val_tokens, "val_tokens")
        require(
            float(self.val_tokens).is_integer(), f"val_tokens must be a whole number of tokens, got {self.val_tokens!r}"
        )
        self.val_tokens = int(self.val_tokens)
        v = self.position_eval_chunks
        require(isinstance(v, int) and v > 0, f"position_eval_chunks must be a positive whole number, got {v!r}")
        require(isinstance(self.train, dict), "train: a dict of extra TrainConfig fields")
        require(
            isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None,
            f"name: letters, digits, _.- only, got {self.name!r}",
        )
        self._check_data()
        self._check_run_ids()
        # validated through TrainConfig, the one source of run settings: first the sweep-wide
        # settings (errors name the field), then the config of every run must be valid before anything runs
        train_config_dict(self, RunSpec(self.size_specs[0], *self.head_configs[0], 0), "/nonexistent", prefix="")
        for run in self.runs():
            train_config_dict(self, run, "/nonexistent")

    def _check_run_ids(self) -> None:
        """Two runs of the plan must never share a run directory (e.g. sizes '19 M' and '19-M', repeated
        seeds or heads; compared case-insensitively, as some file systems do)."""
        seen: dict[str, RunSpec] = {}
        for run in self.runs():
            other = seen.setdefault(run.run_id.casefold(), run)
            if other is not run:

                def what(r: RunSpec) -> str:
                    return f"size {r.size.name!r} H=({r.n_heads},{r.n_kv_heads}) seed {r.seed!r}"

                raise CogqaError(
                    f"sizes/heads/seeds: {what(other)} and {what(run)} map to one run directory "
                    f"runs/{run.run_id}; rename the size or remove the repeated seed/heads"
                )

    def _check_data(self) -> None:
        d = self.data
        require(
            d is not None and d != "",
            "data: give a prepared data directory (cogqa data prepare --out DIR) "
            "or {inputs: [...], tokenizer, context}",
        )
        if isinstance(d, dict):
            known = {"inputs", "tokenizer", "context", "val_fraction", "text_field"}
            unknown = sorted(set(d) - known)
            require(not unknown, f"data: unknown key(s) {unknown}; known: {sorted(known)}")
            inputs = d.get("inputs")
            require(isinstance(inputs, list) and inputs, "data.inputs: a list of text files or corpus names (kjv)")
            for x in inputs:
                require(
                    str(x) in ("kjv", "shakespeare") or Path(x).exists(), f"data.inputs: {x}: no such file or directory"
                )
            if d.get("context") is not None:
                from ..units import parse_context

                d["context"] = parse_context(d["context"], "data.context")
            if self.context is None and d.get("context") is not None:
                self.context = d["context"]
            return
        path = Path(str(d))
        require(path.is_dir(), f"data: {d}: no such directory; prepare it with `cogqa data prepare INPUT --out {d}`")
        require(
            (path / "manifest.json").is_file(),
            f"data: {d} has no manifest.json; prepare it with `cogqa data prepare INPUT --out {d}`",
        )
        self.data = str(path.resolve())

    def runs(self) -> list["RunSpec"]:
        """Every run of the sweep, in order size, heads, seed."""
        return [
            RunSpec(size, h, kv, seed)
            for size in self.size_specs
            for (h, kv) in self.head_configs
            for seed in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-serialisable dict (round-trips through :func:`load_spec`)."""
        d = {k: v for k, v in asdict(self).items()}
        d["sizes"] = [asdict(s) for s in self.size_specs]
        return d


@dataclass(frozen=True)
class RunSpec:
    """One run: a size, a head configuration and a seed."""

    size: SweepSize
    n_heads: int
    n_kv_heads: int
    seed: int = 0

    @property
    def run_id(self) -> str:
        """Directory name of the run, e.g. ``19M_h8kv1_s0``."""
        safe = re.sub(r"[^A-Za-z0-9.]+", "-", self.size.name)
        return f"{safe}_h{self.n_heads}kv{self.n_kv_heads}_s{self.seed}"


def load_spec(source: str | Path | dict, **overrides) -> SweepSpec:
    """A :class:`SweepSpec` from a YAML/JSON file or a dict; ``overrides`` (not None) win."""
    if isinstance(source, dict):
        data = dict(source)
    else:
        from ..readers import read_yaml_or_json

        path = Path(source)
        require(path.is_file(), f"spec: {path}: no such file")
        data = read_yaml_or_json(path, f"spec: {path}")
        require(isinstance(data, dict), f"spec: {path}: expected a mapping of spec fields")
        if isinstance(data.get("data"), str) and not Path(data["data"]).is_absolute():
            data["data"] = str(path.parent / data["data"])
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    require(not unknown, f"spec: unknown field(s) {unknown}; known: {sorted(known)}")
    return SweepSpec(**data)


#: SweepSpec fields that every run's TrainConfig takes as they are (same name, same meaning).
SPEC_TRAIN_FIELDS = (
    "context",
    "tokens",
    "tokens_per_param",
    "batch_tokens",
    "micro_batch",
    "max_steps",
    "checkpoint_every",
    "eval_batches",
    "val_tokens",
)


def train_config_dict(
    spec: SweepSpec, run: RunSpec, run_dir: str, data_dir: str | None = None, prefix: str | None = None
) -> dict:
    """The TrainConfig (as a dict, validated) of one run, writing into ``run_dir``; errors start with
    ``prefix`` (default ``run <id>: ``)."""
    from ..config import TrainConfig, shape_dict

    size = run.size
    shape = shape_dict(size.layers, size.hidden_size, run.n_heads, run.n_kv_heads, size.ffn_size, size.head_dim)
    cfg = dict(
        data=data_dir or (spec.data if isinstance(spec.data, str) else "pending"),
        out_dir=run_dir,
        shape=shape,
        optim={"lr": run.size.lr},
        seed=run.seed,
        resume=True,
        progress=False,
        **{name: getattr(spec, name) for name in SPEC_TRAIN_FIELDS},
    )
    for key, value in spec.train.items():
        if key == "optim":
            require(isinstance(value, dict), "train.optim: a dict of optimiser fields")
            cfg["optim"] = {**cfg["optim"], **value}
        else:
            require(
                key not in ("data", "out_dir", "shape", "size", "resume"), f"train: {key!r} is set by the sweep itself"
            )
            cfg[key] = value
    try:
        return TrainConfig.from_dict(cfg).to_dict()
    except CogqaError as exc:
        raise CogqaError(f"{f'run {run.run_id}: ' if prefix is None else prefix}{exc}") from None


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


def vocab_size(spec: SweepSpec) -> int:
    """Padded vocabulary (embedding rows) of the prepared data, or of the tokenizer the spec names."""
    if isinstance(spec.data, str):
        from ..data import load_manifest

        return int(load_manifest(spec.data)["padded_vocab_size"])
    from ..tokenizer import get_tokenizer

    return int(get_tokenizer(spec.data.get("tokenizer", "gpt2")).padded_vocab_size)


def train_tokens(spec: SweepSpec) -> int | None:
    """Unique tokens of the training split of the prepared data (whole chunks), None if not prepared yet."""
    if not isinstance(spec.data, str):
        return None
    from ..data import load_manifest

    m = load_manifest(spec.data)
    chunks = sum(int(s.get("chunks", 0)) for s in m["splits"]["train"]["shards"])
    return chunks * int(m["context"])


def data_context(spec: SweepSpec) -> int | None:
    """Chunk length of the prepared data (tokens), if known."""
    if isinstance(spec.data, str):
        from ..data import load_manifest

        return int(load_manifest(spec.data)["context"])
    return spec.data.get("context")


def plan(spec: SweepSpec, gpu_tflops: float = 312.0, mfu: float = 0.4) -> dict[str, Any]:
    """Every run with its shape, parameters, steps, tokens, predicted training FLOPs and GPU-hours.

    Steps and tokens are the trainer's own (:func:`cogqa.config.plan_steps` on the run's
    TrainConfig, one process): the budget rounded up to whole batches of whole sequences, capped
    by ``max_steps``. GPU-hours = FLOPs / (``gpu_tflops`` x 1e12 x ``mfu``) / 3600. Training FLOPs
    come from :func:`cogqa.costs.training_flops` at the spec's context (2048 tokens if none is
    known). Returns ``{"runs": [...], "totals": {...}, "context": T, "gpu_tflops", "mfu"}``.
    """
    from ..config import TrainConfig, plan_steps, repeat_warning
    from ..costs import params_non_embedding, params_total, training_flops

    require(gpu_tflops > 0, f"--gpu-tflops must be positive, got {gpu_tflops}")
    require(0 < mfu <= 1, f"--mfu must be in (0, 1], got {mfu}")
    T = spec.context or data_context(spec) or 2048
    vocab = vocab_size(spec)
    rows = []
    for run in spec.runs():
        shape = run.size.shape(run.n_heads, run.n_kv_heads, vocab)
        n = float(params_non_embedding(shape))
        steps = plan_steps(TrainConfig.from_dict(train_config_dict(spec, run, "/nonexistent")), n, T, world=1)
        tokens = steps["tokens"]
        flops = float(training_flops(shape, tokens, T))
        rows.append(
            {
                "id": run.run_id,
                "size": run.size.name,
                "n_heads": run.n_heads,
                "n_kv_heads": run.n_kv_heads,
                "seed": run.seed,
                "layers": shape.layers,
                "hidden_size": shape.hidden_size,
                "ffn_size": shape.ffn_size,
                "head_dim": shape.head_dim,
                "params_non_embedding": int(n),
                "params_total": int(params_total(shape)),
                "steps": steps["steps"],
                "batch_tokens": steps["batch_tokens"],
                "tokens": int(tokens),
                "lr": run.size.lr,
                "training_flops": flops,
                "gpu_hours": flops / (gpu_tflops * 1e12 * mfu) / 3600,
            }
        )
    unique = train_tokens(spec)
    warnings = [f"run {r['id']}: {w}" for r in rows if (w := repeat_warning(r["tokens"], unique) if unique else None)]
    totals = {
        "runs": len(rows),
        "tokens": int(sum(r["tokens"] for r in rows)),
        "training_flops": float(sum(r["training_flops"] for r in rows)),
        "gpu_hours": float(sum(r["gpu_hours"] for r in rows)),
    }
    return {
        "runs": rows,
        "totals": totals,
        "context": T,
        "gpu_tflops": gpu_tflops,
        "mfu": mfu,
        "train_tokens": unique,
        "warnings": warnings,
    }
