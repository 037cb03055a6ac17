"""Step 2 of the recipe at scale: sweeps over head configurations x sizes, run, status, collect.

A sweep is described by a :class:`SweepSpec` (YAML/JSON file or CLI flags) and lives in one
directory::

    SWEEP/spec.json            the resolved spec
    SWEEP/data/                the prepared data (when the spec names raw inputs)
    SWEEP/runs/<id>/run.json   the run's TrainConfig and identity (size, H, seed)
    SWEEP/runs/<id>/...        the trainer's config.json, metrics.jsonl, checkpoints/
    SWEEP/runs/<id>/log.txt    the run's stdout/stderr (appended on every attempt)
    SWEEP/runs/<id>/result.json  written atomically when the run is done (status "done")
    SWEEP/runs/<id>/failed.json  the error tail of the last failed attempt
    SWEEP/results.csv, results.parquet   written by :func:`collect`

Every run executes in a child process (``python -m cogqa.sweep run-one RUN_DIR``) that holds an
exclusive ``flock`` on ``RUN_DIR/.lock`` while it works: two workers never run the same run, and a
killed worker releases its claim. Locally the child dies with its parent (``PR_SET_PDEATHSIG``),
so a SIGKILLed sweep leaves the trainer's last complete checkpoint, from which the next
``sweep run`` resumes (the trainer's ``resume``). Finished runs are skipped; failed runs are
reported and skipped unless ``retry_failed`` is given.

torch is imported only by the child process (and by :func:`execute_run`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CogqaError, require
from .files import write_json_atomic
from .threads import available_cores, thread_env, thread_plan  # issue 15

#: The paper's candidate set (Section 5 / Appendix): n_h, n_kv powers of two, n_kv <= n_h <= 32.
PAPER_HEAD_CONFIGS: tuple[tuple[int, int], ...] = tuple(
    (h, kv) for h in (1, 2, 4, 8, 16, 32) for kv in (1, 2, 4, 8, 16, 32) if kv <= h
)
HEAD_PRESETS = {"paper": PAPER_HEAD_CONFIGS}
BUSY_EXIT = 75  # run-one: another worker holds the run's lock
INTERRUPTED_EXITS = (130, -signal.SIGINT, -signal.SIGTERM)  # run-one stopped by the user, not failed
STATUSES = ("done", "running", "failed", "pending")


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------


def parse_heads(value: Any) -> list[tuple[int, int]]:
    """Head configurations from ``"paper"``, ``"8:1,16:4"``, ``[[8, 1], [16, 4]]`` or ``["8:1"]``.

    Returns a list of (n_heads, n_kv_heads); raises a one-line CogqaError for anything else,
    n_kv > n_h, or n_kv not dividing n_h.
    """
    if value is None:
        return list(PAPER_HEAD_CONFIGS)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in HEAD_PRESETS:
            return list(HEAD_PRESETS[text.lower()])
        items: list[Any] = [x for x in text.split(",") if x.strip()]
    else:
        require(isinstance(value, (list, tuple)), f"heads: expected 'paper', '8:1,16:4' or a list of [n_h, n_kv], got {value!r}")
        items = list(value)
    require(len(items) > 0, "heads: give at least one head configuration, e.g. 8:1,16:4")
    out = []
    for item in items:
        if isinstance(item, str):
            m = re.fullmatch(r"\s*(\d+)\s*[:,/x]\s*(\d+)\s*", item)
            require(m is not None, f"heads: unknown head configuration {item.strip()!r}; write N_HEADS:N_KV_HEADS (e.g. 8:1) or 'paper'")
            h, kv = int(m.group(1)), int(m.group(2))
        else:
            ok = isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            require(ok, f"heads: unknown head configuration {item!r}; write [n_heads, n_kv_heads] with integers")
            h, kv = item
        require(h > 0 and kv > 0, f"heads: ({h},{kv}) must have positive head counts")
        require(kv <= h, f"heads: ({h},{kv}) has n_kv_heads > n_heads; GQA needs n_kv <= n_h")
        require(h % kv == 0, f"heads: ({h},{kv}): n_kv_heads must divide n_heads")
        require((h, kv) not in out, f"heads: ({h},{kv}) is listed twice")
        out.append((h, kv))
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
        from .shapes import ModelShape

        return ModelShape(layers=self.layers, hidden_size=self.hidden_size, ffn_size=self.ffn_size, n_heads=n_heads,
                          n_kv_heads=n_kv_heads, head_dim=self.head_dim, vocab_size=vocab_size, name=self.name)


def _smallest_paper_params() -> float:
    from .costs import params_non_embedding
    from .shapes import PAPER_SWEEP_SHAPES, paper_shape

    return float(min(params_non_embedding(paper_shape(n)) for n in PAPER_SWEEP_SHAPES))


def parse_size(value: Any, lrs: dict[str, float] | float | None = None) -> SweepSize:
    """A :class:`SweepSize` from a Table 9 name (``"470M"``), a size in parameters (``"50M"``,
    ``5e7``: Appendix B.1 shape, rounded to a buildable one) or a dict ``{name, layers,
    hidden_size, ffn_size?, head_dim?, lr?}``. The LR comes from the dict, then ``lrs``, then the
    paper's Table 9 LR; a size without any LR is an error at :class:`SweepSpec` validation."""
    from .shapes import PAPER_SWEEP_SHAPES, nearest_buildable, paper_ffn_size, paper_learning_rate, shape_for_params
    from .units import parse_count

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
            require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"sizes: {key} must be a positive integer in {value!r}")
        hidden = value["hidden_size"]
        name = str(value.get("name") or f"L{value['layers']}d{hidden}")
        ffn = value.get("ffn_size", paper_ffn_size(hidden))
        head_dim = value.get("head_dim", 64)
        for key, v in (("ffn_size", ffn), ("head_dim", head_dim)):
            require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"sizes: {key} must be a positive integer in {value!r}")
        return SweepSize(name, value["layers"], hidden, ffn, head_dim, lr_for(name, value.get("lr")))
    text = str(value).strip()
    table = {k.upper(): k for k in PAPER_SWEEP_SHAPES}
    if text.upper() in table:
        name = table[text.upper()]
        layers, hidden, _ = PAPER_SWEEP_SHAPES[name]
        return SweepSize(name, layers, hidden, paper_ffn_size(hidden), 64, lr_for(name, None))
    n = parse_count(value, "sizes")
    smallest = _smallest_paper_params()
    require(n >= smallest, f"sizes: {text} is below the smallest shape (3M: {smallest:.3g} non-embedding parameters); "
            "give tiny models as explicit shapes {layers, hidden_size, head_dim, lr}")
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
    tokens_per_param: float = 20.0
    tokens: float | None = None
    context: int | None = None
    lr: Any = None
    seeds: list = field(default_factory=lambda: [0])
    batch_tokens: int = 524_288
    micro_batch: int = 1
    max_steps: int | None = None
    checkpoint_every: int = 0
    eval_batches: int = 8
    position_eval_chunks: int = 32
    train: dict = field(default_factory=dict)
    name: str = "sweep"

    def __post_init__(self) -> None:
        from .units import parse_context, parse_count

        self.head_configs = parse_heads(self.heads)
        self.heads = [list(h) for h in self.head_configs]
        require(isinstance(self.sizes, (list, tuple)) and len(self.sizes) > 0, "sizes: give at least one size, e.g. 3M,19M")
        require(self.lr is None or isinstance(self.lr, (dict, int, float)), f"lr: a number or a dict size -> LR, got {self.lr!r}")
        self.size_specs = [parse_size(s, self.lr) for s in self.sizes]
        names = [s.name for s in self.size_specs]
        require(len(set(names)) == len(names), f"sizes: duplicate size names {names}")
        for s in self.size_specs:
            require(s.lr is not None, f"lr: no learning rate for size {s.name!r}; give lr: {{{s.name}: 1e-3}} or a global lr "
                    "(cogqa lr-search finds one)")
            require(0 < s.lr < 1, f"lr: {s.lr} for size {s.name!r} must be in (0, 1)")
        self.tokens_per_param = float(parse_count(self.tokens_per_param, "tokens_per_param"))
        require(self.tokens_per_param > 0, "tokens_per_param must be positive")
        if self.tokens is not None:
            self.tokens = float(parse_count(self.tokens, "tokens"))
            require(self.tokens > 0, "tokens must be a positive number of tokens")
        if self.context is not None:
            self.context = parse_context(self.context, "context")
        require(isinstance(self.seeds, (list, tuple)) and len(self.seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in self.seeds),
                f"seeds: a list of whole numbers >= 0, got {self.seeds!r}")
        self.batch_tokens = int(parse_count(self.batch_tokens, "batch_tokens"))
        for key in ("batch_tokens", "micro_batch", "eval_batches", "position_eval_chunks"):
            v = getattr(self, key)
            require(isinstance(v, int) and v > 0, f"{key} must be a positive whole number, got {v!r}")
        require(isinstance(self.train, dict), "train: a dict of extra TrainConfig fields")
        require(isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", self.name) is not None, f"name: letters, digits, _.- only, got {self.name!r}")
        self._check_data()
        # the training config of every run must be valid before anything runs
        for run in self.runs():
            _train_config_dict(self, run, "/nonexistent")

    def _check_data(self) -> None:
        d = self.data
        require(d is not None and d != "", "data: give a prepared data directory (cogqa data prepare --out DIR) or {inputs: [...], tokenizer, context}")
        if isinstance(d, dict):
            known = {"inputs", "tokenizer", "context", "val_fraction", "text_field"}
            unknown = sorted(set(d) - known)
            require(not unknown, f"data: unknown key(s) {unknown}; known: {sorted(known)}")
            inputs = d.get("inputs")
            require(isinstance(inputs, list) and inputs, "data.inputs: a list of text files or corpus names (kjv)")
            for x in inputs:
                require(str(x) in ("kjv", "shakespeare") or Path(x).exists(), f"data.inputs: {x}: no such file or directory")
            if d.get("context") is not None:
                from .units import parse_context

                d["context"] = parse_context(d["context"], "data.context")
            if self.context is None and d.get("context") is not None:
                self.context = d["context"]
            return
        path = Path(str(d))
        require(path.is_dir(), f"data: {d}: no such directory; prepare it with `cogqa data prepare INPUT --out {d}`")
        require((path / "manifest.json").is_file(), f"data: {d} has no manifest.json; prepare it with `cogqa data prepare INPUT --out {d}`")
        self.data = str(path.resolve())

    def runs(self) -> list["RunSpec"]:
        """Every run of the sweep, in order size, heads, seed."""
        return [RunSpec(size, h, kv, seed) for size in self.size_specs for (h, kv) in self.head_configs for seed in self.seeds]

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
        path = Path(source)
        require(path.is_file(), f"spec: {path}: no such file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise CogqaError(f"spec: {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CogqaError(f"spec: {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        require(isinstance(data, dict), f"spec: {path}: expected a mapping of spec fields")
        if isinstance(data.get("data"), str) and not Path(data["data"]).is_absolute():
            data["data"] = str((path.parent / data["data"]))
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    require(not unknown, f"spec: unknown field(s) {unknown}; known: {sorted(known)}")
    return SweepSpec(**data)


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


def _vocab_size(spec: SweepSpec) -> int:
    """Padded vocabulary (embedding rows) of the prepared data, or of the tokenizer the spec names."""
    if isinstance(spec.data, str):
        from .data import load_manifest

        return int(load_manifest(spec.data)["padded_vocab_size"])
    from .tokenizer import get_tokenizer

    return int(get_tokenizer(spec.data.get("tokenizer", "gpt2")).padded_vocab_size)


def _data_context(spec: SweepSpec) -> int | None:
    """Chunk length of the prepared data (tokens), if known."""
    if isinstance(spec.data, str):
        from .data import load_manifest

        return int(load_manifest(spec.data)["context"])
    return spec.data.get("context")


def _budget_tokens(spec: SweepSpec, n_non_embedding: float) -> float:
    return float(spec.tokens) if spec.tokens is not None else spec.tokens_per_param * float(n_non_embedding)


def plan(spec: SweepSpec, gpu_tflops: float = 312.0, mfu: float = 0.4) -> dict[str, Any]:
    """Every run with its shape, parameters, tokens, predicted training FLOPs and GPU-hours.

    GPU-hours = FLOPs / (``gpu_tflops`` x 1e12 x ``mfu``) / 3600. Training FLOPs come from
    :func:`cogqa.costs.training_flops` at the spec's context (2048 tokens if none is known).
    Returns ``{"runs": [...], "totals": {...}, "context": T, "gpu_tflops", "mfu"}``.
    """
    from .costs import params_non_embedding, params_total, training_flops

    require(gpu_tflops > 0, f"--gpu-tflops must be positive, got {gpu_tflops}")
    require(0 < mfu <= 1, f"--mfu must be in (0, 1], got {mfu}")
    T = spec.context or _data_context(spec) or 2048
    vocab = _vocab_size(spec)
    rows = []
    for run in spec.runs():
        shape = run.size.shape(run.n_heads, run.n_kv_heads, vocab)
        n = float(params_non_embedding(shape))
        tokens = _budget_tokens(spec, n)
        flops = float(training_flops(shape, tokens, T))
        rows.append({
            "id": run.run_id, "size": run.size.name, "n_heads": run.n_heads, "n_kv_heads": run.n_kv_heads, "seed": run.seed,
            "layers": shape.layers, "hidden_size": shape.hidden_size, "ffn_size": shape.ffn_size, "head_dim": shape.head_dim,
            "params_non_embedding": int(n), "params_total": int(params_total(shape)), "tokens": int(round(tokens)),
            "lr": run.size.lr, "training_flops": flops, "gpu_hours": flops / (gpu_tflops * 1e12 * mfu) / 3600,
        })
    totals = {"runs": len(rows), "tokens": int(sum(r["tokens"] for r in rows)),
              "training_flops": float(sum(r["training_flops"] for r in rows)), "gpu_hours": float(sum(r["gpu_hours"] for r in rows))}
    return {"runs": rows, "totals": totals, "context": T, "gpu_tflops": gpu_tflops, "mfu": mfu}


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def _train_config_dict(spec: SweepSpec, run: RunSpec, run_dir: str, data_dir: str | None = None) -> dict:
    """The TrainConfig (as a dict, validated) of one run, writing into ``run_dir``."""
    from .train import TrainConfig

    shape = {"layers": run.size.layers, "hidden_size": run.size.hidden_size, "ffn_size": run.size.ffn_size,
             "n_heads": run.n_heads, "n_kv_heads": run.n_kv_heads, "head_dim": run.size.head_dim}
    cfg = dict(data=data_dir or (spec.data if isinstance(spec.data, str) else "pending"), out_dir=run_dir, shape=shape,
               context=spec.context, tokens=spec.tokens, tokens_per_param=spec.tokens_per_param,
               batch_tokens=spec.batch_tokens, micro_batch=spec.micro_batch, max_steps=spec.max_steps,
               optim={"lr": run.size.lr}, seed=run.seed, checkpoint_every=spec.checkpoint_every,
               eval_batches=spec.eval_batches, resume=True, progress=False)
    for key, value in spec.train.items():
        if key == "optim":
            require(isinstance(value, dict), "train.optim: a dict of optimiser fields")
            cfg["optim"] = {**cfg["optim"], **value}
        else:
            require(key not in ("data", "out_dir", "shape", "size", "resume"), f"train: {key!r} is set by the sweep itself")
            cfg[key] = value
    try:
        return TrainConfig.from_dict(cfg).to_dict()
    except CogqaError as exc:
        raise CogqaError(f"run {run.run_id}: {exc}") from None


def check_out_dir(out: str | Path) -> Path:
    """Create ``out`` (and ``out/runs``) and check it is writable; one-line error otherwise."""
    out = Path(out)
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CogqaError(f"--out: cannot write to {out} ({exc.strerror or exc}); choose a writable directory") from None
    return out


def prepare_data(spec: SweepSpec, out: Path, progress: bool = True) -> str:
    """The prepared data directory of the sweep: ``spec.data`` itself, or ``out/data`` prepared
    once from ``spec.data['inputs']`` (skipped when its manifest exists)."""
    if isinstance(spec.data, str):
        return spec.data
    target = out / "data"
    if not (target / "manifest.json").is_file():
        from .data import prepare

        d = spec.data
        kwargs = {k: d[k] for k in ("tokenizer", "context", "val_fraction", "text_field") if d.get(k) is not None}
        prepare([str(x) for x in d["inputs"]], str(target), progress=progress, **kwargs)
    return str(target.resolve())


def materialise(spec: SweepSpec, out: str | Path, progress: bool = True) -> list[Path]:
    """Create the sweep directory: data, ``spec.json`` and one ``runs/<id>/run.json`` per run.

    An existing sweep directory may gain or lose head configurations, sizes and seeds, but its
    training settings (tokens, LRs, batch, ...) must be the same, and a run that has started must
    keep its exact config (else a one-line error naming the field or run). Returns the run
    directories in spec order.
    """
    out = check_out_dir(out)
    spec_path = out / "spec.json"
    new = json.loads(json.dumps(spec.to_dict()))
    if spec_path.is_file():
        old = json.loads(spec_path.read_text())
        changed = sorted(k for k in set(old) | set(new) if k not in EXTENDABLE_FIELDS and old.get(k) != new.get(k))
        require(not changed, f"--out: {out} holds a sweep with other settings ({', '.join(changed)} differ); "
                "use another --out, or change only heads/sizes/seeds")
    infos = []
    for run in spec.runs():
        run_dir = out / "runs" / run.run_id
        info = {"id": run.run_id, "size": asdict(run.size), "n_heads": run.n_heads, "n_kv_heads": run.n_kv_heads,
                "seed": run.seed, "position_eval_chunks": spec.position_eval_chunks,
                "train": _train_config_dict(spec, run, str(run_dir.resolve()), "DATA")}
        info = json.loads(json.dumps(info))
        if (run_dir / "run.json").is_file() and ((run_dir / "config.json").exists() or (run_dir / "result.json").exists()):
            old_info = json.loads((run_dir / "run.json").read_text())
            old_info["train"]["data"] = "DATA"
            require(old_info == info, f"--out: run {run.run_id} has started with another config (its size or settings changed); "
                    "give the size another name or use another --out")
        infos.append((run_dir, info))
    data_dir = prepare_data(spec, out, progress)
    write_json_atomic(spec_path, new)
    dirs = []
    for run_dir, info in infos:
        run_dir.mkdir(parents=True, exist_ok=True)
        info["train"]["data"] = data_dir
        if not (run_dir / "run.json").is_file() or json.loads((run_dir / "run.json").read_text()) != info:
            write_json_atomic(run_dir / "run.json", info)
        dirs.append(run_dir)
    return dirs


#: Spec fields that may change between invocations on the same sweep directory (the grid itself).
EXTENDABLE_FIELDS = ("data", "heads", "sizes", "seeds", "name")


def _locked(run_dir: Path) -> bool:
    """True if a live process holds the run's lock (it is running)."""
    import fcntl

    lock = run_dir / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def run_status(run_dir: str | Path) -> str:
    """``done`` (result.json with status done), ``running`` (locked), ``failed`` (failed.json) or ``pending``."""
    run_dir = Path(run_dir)
    result = run_dir / "result.json"
    if result.is_file():
        try:
            if json.loads(result.read_text()).get("status") == "done":
                return "done"
        except json.JSONDecodeError:
            pass
    if _locked(run_dir):
        return "running"
    if (run_dir / "failed.json").is_file():
        return "failed"
    return "pending"


def sweep_status(out: str | Path) -> dict[str, Any]:
    """Status of every run of the sweep in ``out``: ``{"runs": {id: status}, "counts": {status: n}, "failed": {id: error}}``."""
    out = Path(out)
    require((out / "spec.json").is_file(), f"{out}: not a sweep directory (no spec.json); run `cogqa sweep run SPEC --out {out}` first")
    runs = {}
    failed = {}
    for run_dir in sorted((out / "runs").iterdir()):
        if not (run_dir / "run.json").is_file():
            continue
        s = run_status(run_dir)
        runs[run_dir.name] = s
        if s == "failed":
            failed[run_dir.name] = json.loads((run_dir / "failed.json").read_text()).get("error", "")
    counts = {s: sum(1 for v in runs.values() if v == s) for s in STATUSES}
    return {"runs": runs, "counts": counts, "failed": failed, "total": len(runs)}


# ---------------------------------------------------------------------------------------------
# Executing one run (in the child process)
# ---------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def execute_run(run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, measure loss by position, write ``result.json``.

    Holds ``run_dir/.lock`` (raises :class:`RunBusy` if another process holds it). Returns the
    result dict: status ``done``, the trainer's result (steps, tokens, final validation loss in
    nats/token, parameters, wall time in s) and ``loss_by_position`` (mean loss in nats/token
    over the first t-1 predicted positions, for t = 2, 4, 8, ..., T).
    """
    import fcntl

    run_dir = Path(run_dir).resolve()
    info = json.loads((run_dir / "run.json").read_text())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    lock = open(run_dir / ".lock", "a")
    try:
        if rank0:  # under torchrun the launching job is the claim; rank 0 holds the lock
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RunBusy(f"run {info['id']} is being run by another worker") from None
    try:
        if rank0 and run_status(run_dir) == "done":
            return json.loads((run_dir / "result.json").read_text())
        if rank0 and (run_dir / "failed.json").exists():
            (run_dir / "failed.json").unlink()
        from .train import TrainConfig, list_checkpoints, train

        config = TrainConfig.from_dict(info["train"])
        t0 = time.time()
        result = train(config).to_dict()
        if not rank0:
            return result
        positions = _loss_by_position(run_dir, config, info.get("position_eval_chunks", 32))
        out = {"status": "done", "id": info["id"], "size": info["size"]["name"], "seed": info["seed"], **result,
               "layers": info["size"]["layers"], "hidden_size": info["size"]["hidden_size"],
               "ffn_size": info["size"]["ffn_size"], "head_dim": info["size"]["head_dim"],
               "loss_by_position": positions, "attempt_wall_time_s": time.time() - t0,
               "checkpoint": str(list_checkpoints(run_dir)[-1]) if list_checkpoints(run_dir) else None}
        write_json_atomic(run_dir / "result.json", out)
        return out
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


class RunBusy(CogqaError):
    """Another worker holds the run's lock."""


def _loss_by_position(run_dir: Path, config, max_chunks: int) -> dict[str, float]:
    """Mean validation loss (nats/token) over the first t-1 positions, t = 2, 4, ..., T, from the last checkpoint."""
    from .checkpoint import load_model
    from .data import TokenChunks
    from .evaluate import evaluate_positions, loss_at_contexts
    from .train import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return {}
    chunks = TokenChunks(config.data, split="val")
    T = int(chunks.context)
    model = load_model(ckpts[-1], max_seq_len=max(T, 8))
    pos = evaluate_positions(model, chunks, max_chunks=max_chunks, batch=4)
    points = sorted({2 ** k for k in range(1, int(math.log2(T)) + 1)} | {T})
    return {str(k): v for k, v in loss_at_contexts(pos, points).items()}


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


@dataclass
class SlurmOptions:
    """SLURM settings of ``sweep run --executor slurm`` (submitit). ``time`` in minutes."""

    partition: str | None = None
    time: int = 60 * 24
    gpus_per_run: int = 1
    nodes: int = 1
    cpus_per_gpu: int = 8
    mem_gb: int | None = None
    account: str | None = None
    qos: str | None = None
    array: bool = True
    array_parallelism: int = 64
    cluster: str | None = None  # None: auto (slurm if available); "local"/"debug" for tests

    def __post_init__(self) -> None:
        for key in ("time", "gpus_per_run", "nodes", "cpus_per_gpu", "array_parallelism"):
            v = getattr(self, key)
            require(isinstance(v, int) and v > 0, f"--{key.replace('_', '-')} must be a positive whole number, got {v!r}")
        require(self.cluster in (None, "slurm", "local", "debug"), f"cluster must be slurm, local or debug, got {self.cluster!r}")

    def executor_parameters(self) -> dict[str, Any]:
        """Parameters for ``submitit.AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {"timeout_min": self.time, "nodes": self.nodes, "tasks_per_node": 1,
                                  "gpus_per_node": self.gpus_per_run, "cpus_per_task": self.cpus_per_gpu * self.gpus_per_run,
                                  "name": "cogqa-sweep"}
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.cluster in (None, "slurm"):
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.account:
                params["slurm_account"] = self.account
            if self.qos:
                params["slurm_qos"] = self.qos
            params["slurm_array_parallelism"] = self.array_parallelism
        return params

    def sbatch_preview(self, command: str, folder: str | Path) -> str:
        """The sbatch script submitit would submit for ``command`` (for review and tests)."""
        from submitit.slurm.slurm import _make_sbatch_string

        return _make_sbatch_string(command=command, folder=str(folder), job_name="cogqa-sweep", partition=self.partition,
                                   time=self.time, nodes=self.nodes, ntasks_per_node=1, gpus_per_node=self.gpus_per_run,
                                   cpus_per_task=self.cpus_per_gpu * self.gpus_per_run, account=self.account, qos=self.qos,
                                   mem=f"{self.mem_gb}GB" if self.mem_gb else None, array_parallelism=self.array_parallelism)


def run_command(run_dir: str | Path, gpus: int = 1, nodes: int = 1, python: str | None = None) -> list[str]:
    """The command that executes one run: ``python -m cogqa.sweep run-one RUN_DIR``, or under
    ``torchrun --nproc_per_node G`` when the run uses G > 1 GPUs (with ``--nnodes``/rendezvous
    from SLURM's environment when it spans several nodes)."""
    python = python or sys.executable
    if gpus <= 1 and nodes <= 1:
        return [python, "-m", "cogqa.sweep", "run-one", str(run_dir)]
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    if nodes > 1:
        cmd += [f"--nnodes={nodes}", "--rdzv_backend=c10d", "--rdzv_endpoint=${MASTER_ADDR}:29500", "--rdzv_id=${SLURM_JOB_ID}"]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "cogqa.sweep", "run-one", str(run_dir)]


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def launch_run(run_dir: str | Path, command: list[str] | None = None, die_with_parent: bool = True,
               threads: int | None = None) -> str:  # threads: issue 15 thread policy
    """Run one run in a child process (output appended to ``log.txt``); returns its status after.

    A non-zero exit other than "busy" or an interruption (Ctrl-C, SIGTERM: the run stays pending
    and resumes next time) leaves ``failed.json`` with the error tail (the child writes its own;
    a crash or another signal gets the log tail here).
    """
    run_dir = Path(run_dir)
    command = command or run_command(run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **thread_env(threads))  # issue 15: child's intra-op threads
    with open(run_dir / "log.txt", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                              preexec_fn=_pdeathsig if die_with_parent and sys.platform.startswith("linux") else None)
    if proc.returncode == BUSY_EXIT:
        return "running"
    if proc.returncode in INTERRUPTED_EXITS:  # Ctrl-C / SIGTERM: interrupted, not failed; re-run resumes it
        return run_status(run_dir)
    if proc.returncode != 0 and run_status(run_dir) != "done" and not (run_dir / "failed.json").is_file():
        tail = _tail(run_dir / "log.txt")
        last = tail.splitlines()[-1] if tail else f"exit status {proc.returncode}"
        write_json_atomic(run_dir / "failed.json", {"error": last, "returncode": proc.returncode, "tail": tail})
    return run_status(run_dir)


def _to_run(run_dirs: list[Path], retry_failed: bool) -> list[Path]:
    todo = []
    for d in run_dirs:
        s = run_status(d)
        if s == "pending" or (s == "failed" and retry_failed):
            todo.append(d)
    return todo


def run_sweep(spec: SweepSpec, out: str | Path, executor: str = "local", workers: int = 1, retry_failed: bool = False,
              slurm: SlurmOptions | None = None, progress: bool = True, wait: bool = True) -> dict[str, Any]:
    """Run every unfinished run of ``spec`` in ``out`` and return :func:`sweep_status`.

    ``executor="local"``: ``workers`` child processes at a time on this machine.
    ``executor="slurm"``: one submitit job per run (a job array with ``slurm.array``), each
    executing :func:`run_command`; ``wait`` blocks until the jobs end. Done runs are skipped,
    interrupted runs resume from their last checkpoint, failed runs are retried only with
    ``retry_failed``.
    """
    require(executor in ("local", "slurm"), f"--executor must be local or slurm, got {executor!r}")
    require(isinstance(workers, int) and workers > 0, f"--workers must be a positive whole number, got {workers!r}")
    run_dirs = materialise(spec, out, progress)
    todo = _to_run(run_dirs, retry_failed)
    if executor == "local":
        _run_local(todo, workers, progress, total=len(run_dirs))
    else:
        _run_submitit(todo, Path(out), slurm or SlurmOptions(), wait)
    return sweep_status(out)


def _run_local(todo: list[Path], workers: int, progress: bool, total: int) -> None:
    from tqdm import tqdm

    threads = thread_plan(available_cores(), os.environ, workers=workers).threads  # issue 15: workers x threads <= cores

    bar = tqdm(total=total, initial=total - len(todo), desc="sweep runs", unit="run", disable=not progress, file=sys.stderr)
    def one(d: Path) -> str:
        bar.set_postfix_str(d.name)
        status = launch_run(d, threads=threads)  # issue 15
        bar.update(1)
        if status == "failed":
            err = json.loads((d / "failed.json").read_text()).get("error", "")
            bar.write(f"run {d.name} failed: {err} (log: {d / 'log.txt'})")
        return status

    try:
        if workers == 1:
            for d in todo:
                one(d)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, todo))
    finally:
        bar.close()


class _SubmititRun:
    """The picklable callable of one submitit job: runs :func:`run_command` for a run directory."""

    def __init__(self, run_dir: str, gpus: int, nodes: int):
        self.run_dir, self.gpus, self.nodes = run_dir, gpus, nodes

    def __call__(self) -> str:
        if self.nodes > 1 and "MASTER_ADDR" not in os.environ:  # torchrun's rendezvous host: the job's first node
            import submitit

            os.environ["MASTER_ADDR"] = submitit.JobEnvironment().hostnames[0]
        command = [os.path.expandvars(c) for c in run_command(self.run_dir, self.gpus, self.nodes)]
        return launch_run(self.run_dir, command, die_with_parent=False)


def _run_submitit(todo: list[Path], out: Path, opts: SlurmOptions, wait: bool) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=str(out / "submitit" / "%j"), cluster=opts.cluster)
    executor.update_parameters(**opts.executor_parameters())
    calls = [_SubmititRun(str(d.resolve()), opts.gpus_per_run, opts.nodes) for d in todo]
    if opts.array and len(calls) > 1 and opts.cluster in (None, "slurm"):
        jobs = executor.submit_array(calls)
    else:
        jobs = [executor.submit(c) for c in calls]
    for d, job in zip(todo, jobs):
        write_json_atomic(d / "submitted.json", {"job_id": str(job.job_id), "time": time.time()})
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # the run's own failed.json holds the details
                print(f"job {job.job_id} raised: {str(exc).splitlines()[-1] if str(exc) else exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Collect
# ---------------------------------------------------------------------------------------------

RESULT_COLUMNS = ("id", "size", "n_heads", "n_kv_heads", "seed", "params_non_embedding", "params_total", "loss",
                  "final_val_loss", "final_train_loss", "tokens", "context", "steps", "layers", "hidden_size", "ffn_size",
                  "head_dim", "lr", "batch_tokens", "wall_time_s", "resumed_from_step", "loss_by_position")


def collect(out: str | Path, write: bool = True):
    """The results table of the finished runs in ``out`` (a pandas DataFrame, one row per run).

    Columns: those ``cogqa fit`` reads (``n_heads, n_kv_heads, params_non_embedding, loss,
    tokens, context``; ``loss`` = final validation loss in nats/token) plus shape, steps, LR,
    wall time (s) and ``loss_by_position`` (a JSON string {t: mean loss over the first t-1
    positions}) and ``loss_at_<t>`` columns for a few t. With ``write``, also writes
    ``out/results.csv`` and ``out/results.parquet`` atomically.
    """
    import pandas as pd

    status = sweep_status(out)
    rows = []
    for run_id, s in status["runs"].items():
        if s != "done":
            continue
        r = json.loads((Path(out) / "runs" / run_id / "result.json").read_text())
        require(r.get("final_val_loss") is not None, f"run {run_id}: no final validation loss in result.json")
        row = {k: r.get(k) for k in RESULT_COLUMNS if k not in ("loss", "loss_by_position")}
        row["loss"] = r["final_val_loss"]
        pos = r.get("loss_by_position") or {}
        row["loss_by_position"] = json.dumps(pos)
        for t in sorted(pos, key=int):
            row[f"loss_at_{t}"] = pos[t]
        rows.append(row)
    require(rows, f"{out}: no finished run to collect ({status['counts']})")
    df = pd.DataFrame(rows)
    df = df.sort_values(["params_non_embedding", "n_heads", "n_kv_heads", "seed"]).reset_index(drop=True)
    if write:
        out = Path(out)
        tmp = out / "results.csv.tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, out / "results.csv")
        tmp = out / "results.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out / "results.parquet")
    return df


# ---------------------------------------------------------------------------------------------
# Child entry point
# ---------------------------------------------------------------------------------------------


def _child_main(argv: list[str]) -> int:  # pragma: no cover - exercised through subprocesses
    if len(argv) != 2 or argv[0] != "run-one":
        print("usage: python -m cogqa.sweep run-one RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[1])
    try:
        result = execute_run(run_dir)
    except RunBusy as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return BUSY_EXIT
    except KeyboardInterrupt:
        print("interrupted; re-run the sweep to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BaseException as exc:  # record any failure, then exit non-zero
        import traceback

        if int(os.environ.get("RANK", "0")) == 0:
            tb = traceback.format_exc()
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            write_json_atomic(run_dir / "failed.json", {"error": msg, "tail": "\n".join(tb.splitlines()[-20:])})
            print(tb, file=sys.stderr)
        return 1
    if result.get("status") == "done":
        print(f"run {result['id']}: done, final validation loss {result['final_val_loss']:.4f} nats/token, "
              f"{result['steps']} steps, {result['wall_time_s']:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main(sys.argv[1:]))
