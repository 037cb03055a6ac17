"""The sweep directory on disk: creating it, the state of every run, and executing one run.

A run's state is read from its files only: ``result.json`` with status ``done``, a live
``flock`` on ``.lock`` (running), ``failed.json`` (failed), else pending. :func:`execute_run`
(in the child process) holds the lock while it trains, so two workers never run the same run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..errors import CogqaError, require
from ..files import write_json_atomic
from ..readers import field, read_json, read_json_object, short
from .spec import SweepSpec, train_config_dict

STATUSES = ("done", "running", "failed", "pending")


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
        from ..data import prepare

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
        old = read_json_object(spec_path)
        changed = sorted(k for k in set(old) | set(new) if k not in EXTENDABLE_FIELDS and old.get(k) != new.get(k))
        require(
            not changed,
            f"--out: {out} holds a sweep with other settings ({', '.join(changed)} differ); "
            "use another --out, or change only heads/sizes/seeds",
        )
    infos = []
    for run in spec.runs():
        run_dir = out / "runs" / run.run_id
        info = {
            "id": run.run_id,
            "size": asdict(run.size),
            "n_heads": run.n_heads,
            "n_kv_heads": run.n_kv_heads,
            "seed": run.seed,
            "position_eval_chunks": spec.position_eval_chunks,
            "train": train_config_dict(spec, run, str(run_dir.resolve()), "DATA"),
        }
        info = json.loads(json.dumps(info))
        info["train"]["out_dir"] = f"runs/{run.run_id}"  # relative to the sweep directory: a copy still works
        if (run_dir / "run.json").is_file() and (
            (run_dir / "config.json").exists() or (run_dir / "result.json").exists()
        ):
            old_info = read_run_info(run_dir)
            old_info["train"]["out_dir"] = f"runs/{run.run_id}"  # old files: absolute, maybe of another location
            old_info["train"]["data"] = "DATA"
            require(
                old_info == info,
                f"--out: run {run.run_id} has started with another config (its size or settings changed); "
                "give the size another name or use another --out",
            )
        infos.append((run_dir, info))
    data_dir = prepare_data(spec, out, progress)
    write_json_atomic(spec_path, new)
    dirs = []
    if Path(data_dir).resolve().is_relative_to(out.resolve()):
        data_dir = Path(data_dir).resolve().relative_to(out.resolve()).as_posix()  # stored relative to the sweep
    for run_dir, info in infos:
        run_dir.mkdir(parents=True, exist_ok=True)
        info["train"]["data"] = data_dir
        if not (run_dir / "run.json").is_file() or _stored(run_dir / "run.json") != info:
            write_json_atomic(run_dir / "run.json", info)
        dirs.append(run_dir)
    return dirs


def _stored(path: Path) -> Any:
    try:
        return read_json(path)
    except CogqaError:
        return None  # unreadable: rewritten


def read_run_info(run_dir: Path) -> dict:
    """``run.json`` of a run, checked: an object with ``id``, ``size`` (object), ``n_heads``, ``n_kv_heads``,
    ``seed`` and ``train`` (object); one-line error naming the file and the field otherwise."""
    path = Path(run_dir) / "run.json"
    info = read_json_object(path)
    field(info, "id", "str", str(path))
    size = field(info, "size", "dict", str(path))
    field(size, "name", "str", str(path), where="size.")
    for key in ("n_heads", "n_kv_heads"):
        field(info, key, "int", str(path), low=1, high=2**14)
    field(info, "seed", "int", str(path), low=0)
    train = field(info, "train", "dict", str(path))
    for key in ("out_dir", "data"):
        field(train, key, "str", str(path), where="train.")
    return info


def resolve_run_paths(info: dict, run_dir: Path) -> dict:
    """``info["train"]`` with its paths made absolute: ``out_dir`` is the run directory itself (old files
    stored the absolute path of where the sweep was made); a relative ``data`` is relative to the sweep."""
    train = dict(info["train"])
    train["out_dir"] = str(run_dir)
    if not Path(train["data"]).is_absolute():
        train["data"] = str((run_dir.parent.parent / train["data"]).resolve())
    return train


#: Spec fields that may change between invocations on the same sweep directory (the grid itself).
EXTENDABLE_FIELDS = ("data", "heads", "sizes", "seeds", "name")


def is_locked(run_dir: Path) -> bool:
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
        try:  # lenient here (NaN, big numbers): collect checks the values and names the run
            done = json.loads(result.read_text(encoding="utf-8"))
            if isinstance(done, dict) and done.get("status") == "done":
                return "done"
        except (OSError, ValueError, RecursionError):
            pass
    if is_locked(run_dir):
        return "running"
    if (run_dir / "failed.json").is_file():
        return "failed"
    return "pending"


def sweep_status(out: str | Path) -> dict[str, Any]:
    """Status of every run of the sweep in ``out``:
    ``{"runs": {id: status}, "counts": {status: n}, "failed": {id: error}, "total": n}``."""
    out = Path(out)
    require(
        (out / "spec.json").is_file(),
        f"{out}: not a sweep directory (no spec.json); run `cogqa sweep run SPEC --out {out}` first",
    )
    runs = {}
    failed = {}
    for run_dir in sorted((out / "runs").iterdir()):
        if not (run_dir / "run.json").is_file():
            continue
        s = run_status(run_dir)
        runs[run_dir.name] = s
        if s == "failed":
            err = _stored(run_dir / "failed.json")
            failed[run_dir.name] = (
                short(err.get("error", ""), 300) if isinstance(err, dict) else "unreadable failed.json"
            )
    counts = {s: sum(1 for v in runs.values() if v == s) for s in STATUSES}
    return {"runs": runs, "counts": counts, "failed": failed, "total": len(runs)}


def log_tail(path: Path, lines: int = 20) -> str:
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
    info = read_run_info(run_dir)
    rank0 = is_main_process()
    lock = open(run_dir / ".lock", "a")
    try:
        if rank0:  # under torchrun the launching job is the claim; rank 0 holds the lock
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RunBusy(f"run {info['id']} is being run by another worker") from None
    try:
        if rank0 and run_status(run_dir) == "done":
            return read_json_object(run_dir / "result.json")
        if rank0 and (run_dir / "failed.json").exists():
            (run_dir / "failed.json").unlink()
        from ..checkpoint import list_checkpoints
        from ..train import TrainConfig, train

        config = TrainConfig.from_dict(resolve_run_paths(info, run_dir))
        t0 = time.time()
        result = train(config).to_dict()
        if not rank0:
            return result
        positions = _loss_by_position(run_dir, config, info.get("position_eval_chunks", 32))
        out = {
            "status": "done",
            "id": info["id"],
            "size": info["size"]["name"],
            "seed": info["seed"],
            **result,
            "layers": info["size"]["layers"],
            "hidden_size": info["size"]["hidden_size"],
            "ffn_size": info["size"]["ffn_size"],
            "head_dim": info["size"]["head_dim"],
            "loss_by_position": positions,
            "attempt_wall_time_s": time.time() - t0,
            "checkpoint": str(list_checkpoints(run_dir)[-1]) if list_checkpoints(run_dir) else None,
        }
        write_json_atomic(run_dir / "result.json", out)
        return out
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


class RunBusy(CogqaError):
    """Another worker holds the run's lock."""


def _loss_by_position(run_dir: Path, config, max_chunks: int) -> dict[str, float]:
    """Mean validation loss (nats/token) over the first t-1 positions, t = 2, 4, ..., T, from the last checkpoint."""
    from ..checkpoint import list_checkpoints, load_model
    from ..data import TokenChunks
    from ..evaluate import evaluate_positions, loss_at_contexts

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return {}
    chunks = TokenChunks(config.data, split="val")
    T = int(chunks.context)
    model = load_model(ckpts[-1], max_seq_len=max(T, 8))
    pos = evaluate_positions(model, chunks, max_chunks=max_chunks, batch=4)
    points = sorted({2**k for k in range(1, int(math.log2(T)) + 1)} | {T})
    return {str(k): v for k, v in loss_at_contexts(pos, points).items()}
