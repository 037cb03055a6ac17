"""Checkpoints: the model files, the training-run layout, trainer state, and averaging.

A model checkpoint is a directory with ``model.safetensors`` (weights) + ``shape.json`` (the
ModelShape). A training run keeps them as ``RUN/checkpoints/step_XXXXXXXX/`` (plus ``trainer.pt``:
optimizer, step, RNG states); :func:`checkpoint_step` alone decides what counts as one, so
``step_N.tmp`` / ``step_N.old`` leftovers of an interrupted save are ignored everywhere (resume,
``resolve_checkpoint``, averaging).

Writes are atomic: each file is written under a temporary name, flushed to disk and renamed
into place, weights first; a new directory is assembled under a temporary name and renamed as
a whole. The shape is also stored in the safetensors metadata, so a ``shape.json`` that does
not belong to its weights is detected. Loading never unpickles anything (safetensors only),
and refuses missing, extra, mis-shaped or truncated tensors with a one-line :class:`CogqaError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CogqaError, require
from .files import fsync_dir
from .shapes import ModelShape

#: safetensors metadata key: the context (tokens) a checkpoint was trained at.
CONTEXT_METADATA = "cogqa_context"

WEIGHTS_NAME = "model.safetensors"
SHAPE_NAME = "shape.json"
TRAINER_NAME = "trainer.pt"
CHECKPOINT_PREFIX = "step_"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def state_dict_for_saving(model) -> dict:
    """The model's tensors, contiguous and detached, tied LM head omitted (it is the embedding)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def save_model(model, directory, extra_metadata: dict | None = None) -> Path:
    """Save ``model`` (a GQADecoder) as ``directory/model.safetensors`` + ``directory/shape.json``.

    Returns the directory. Existing files are replaced atomically; a missing directory is
    created atomically (built under a temporary name, then renamed).
    """
    from safetensors.torch import save

    directory = Path(directory)
    shape_json = json.dumps(model.shape.to_dict(), indent=2, sort_keys=True) + "\n"
    metadata = {"format": "pt", "cogqa_shape": json.dumps(model.shape.to_dict(), sort_keys=True)}
    for k, v in (extra_metadata or {}).items():
        metadata[str(k)] = str(v)
    blob = save(state_dict_for_saving(model), metadata=metadata)
    if directory.is_dir():
        atomic_write_bytes(directory / WEIGHTS_NAME, blob)
        atomic_write_bytes(directory / SHAPE_NAME, shape_json.encode())
        return directory
    require(not directory.exists(), f"{directory}: exists and is not a directory; choose another checkpoint path")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        atomic_write_bytes(tmp / WEIGHTS_NAME, blob)
        atomic_write_bytes(tmp / SHAPE_NAME, shape_json.encode())
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory.parent)
    return directory


def load_shape(directory) -> ModelShape:
    """The ModelShape stored in ``directory/shape.json``."""
    path = Path(directory) / SHAPE_NAME
    require(
        path.is_file(), f"{path}: no such file; is {directory} a cogqa checkpoint (model.safetensors + shape.json)?"
    )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CogqaError(f"{path}: not valid JSON; is the file truncated?") from None
    return ModelShape.from_dict(data)


def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; a one-line CogqaError if it is truncated or not safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    require(path.is_file(), f"{path}: no such file")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CogqaError(f"{path}: not a readable safetensors file ({first}); is it truncated?") from None
    return tensors, header.get("__metadata__") or {}


def check_state_dict(model, tensors: dict, source: str) -> None:
    """Refuse ``tensors`` unless names and shapes match ``model`` exactly (one-line error)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    require(
        not missing,
        f"{source}: missing tensor(s) {missing[:3]}{' ...' if len(missing) > 3 else ''} "
        f"for shape {model.shape.describe()}",
    )
    require(
        not extra,
        f"{source}: unexpected tensor(s) {extra[:3]}{' ...' if len(extra) > 3 else ''} "
        f"for shape {model.shape.describe()}",
    )
    for k, s in expected.items():
        got = tuple(tensors[k].shape)
        require(
            got == s,
            f"{source}: tensor {k} has shape {list(got)} but shape.json ({model.shape.describe()}) needs {list(s)}",
        )


def load_model(directory, device="cpu", dtype=None, max_seq_len: int = 8192):
    """A GQADecoder with the weights of a checkpoint directory (``save_model``'s output).

    ``dtype`` (``fp32``/``bf16``/``fp16`` or a torch dtype) casts the weights; default: as saved.
    """
    import torch

    from .model import GQADecoder, torch_dtype

    directory = Path(directory)
    require(directory.is_dir(), f"{directory}: no such checkpoint directory")
    shape = load_shape(directory)
    tensors, metadata = read_safetensors(directory / WEIGHTS_NAME)
    if "cogqa_shape" in metadata:
        try:
            stored = ModelShape.from_dict(json.loads(metadata["cogqa_shape"]))
        except (json.JSONDecodeError, CogqaError):
            stored = None
        require(
            stored == shape,
            f"{directory}: shape.json ({shape.describe()}) does not match the shape the weights were saved with "
            f"({stored.describe() if stored else 'unreadable'}); the checkpoint is inconsistent",
        )
    with torch.device("meta"):
        model = GQADecoder(shape, max_seq_len=max_seq_len)
    check_state_dict(model, tensors, str(directory / WEIGHTS_NAME))
    model.load_state_dict(tensors, strict=True, assign=True)
    target = torch_dtype(dtype) if dtype is not None else None
    return model.to(device=device, dtype=target)


# ---------------------------------------------------------------------------------------------
# Run layout: RUN/checkpoints/step_XXXXXXXX/
# ---------------------------------------------------------------------------------------------


def checkpoint_step(path) -> int | None:
    """The step of a complete checkpoint directory (``step_<digits>`` holding ``shape.json``), else None.

    The one rule for what a checkpoint directory is: ``step_N.tmp`` (a save in progress) and
    ``step_N.old`` (a replaced one) are not.
    """
    p = Path(path)
    digits = p.name[len(CHECKPOINT_PREFIX) :]
    if not (p.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit()):
        return None
    return int(digits) if p.is_dir() and (p / SHAPE_NAME).is_file() else None


def checkpoint_dir(run_dir, step: int) -> Path:
    """``run_dir/checkpoints/step_XXXXXXXX`` (step zero-padded to 8 digits)."""
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoint directories of a run (``run_dir/checkpoints/step_*``), oldest first.

    ``run_dir`` may also be the ``checkpoints`` directory itself.
    """
    root = Path(run_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from itself (it holds ``shape.json``) or from a training run directory
    (its newest complete ``checkpoints/step_*``); a one-line error otherwise."""
    p = Path(path)
    require(p.exists(), f"{p}: no such checkpoint or run directory")
    if (p / SHAPE_NAME).is_file():
        return p
    steps = list_checkpoints(p)
    require(
        steps, f"{p}: not a checkpoint (no shape.json) and no checkpoints/step_*/ inside; pass a checkpoint directory"
    )
    return steps[-1]


def average_weights(paths):
    """A GQADecoder whose weights are the element-wise mean (in float64, cast back) of the checkpoint
    directories ``paths``. Weight averaging; the paper's last-k evaluation averages *scores*
    (:func:`cogqa.evaluate.checkpoints_to_score`)."""
    paths = list(paths)
    require(len(paths) >= 1, "average_weights: no checkpoints given")
    model = load_model(paths[0])
    sums = {n: t.double().clone() for n, t in model.state_dict().items()}
    for p in paths[1:]:
        for n, t in load_model(p).state_dict().items():
            sums[n] += t.double()
    model.load_state_dict({n: (t / len(paths)).to(model.state_dict()[n].dtype) for n, t in sums.items()})
    return model


def average_last_k(path, k: int):
    """(model, chosen directories): a GQADecoder whose weights are the mean of the last ``k``
    complete checkpoints of a run (or of a ``checkpoints`` directory); a checkpoint directory
    itself averages to its own weights."""
    path = Path(path)
    require(isinstance(k, int) and k >= 1, f"--last-k: must be a whole number >= 1, got {k!r}")
    steps = list_checkpoints(path)
    if not steps and (path / SHAPE_NAME).exists():
        steps = [path]
    require(len(steps) >= 1, f"{path}: no checkpoints (step_*/) found")
    chosen = steps[-k:]
    return average_weights(chosen), chosen


# ---------------------------------------------------------------------------------------------
# Trainer checkpoints: model files + trainer.pt (optimizer, step, RNG states)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The torch, numpy, Python and CUDA RNG states (torch-loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


RESUME_ONLY_NAME = "resume_only"  # marker file: a checkpoint saved only to resume (a stop, the wall-clock interval)


def save_checkpoint(
    run_dir,
    step: int,
    shape,
    model,
    optimizer,
    dist_info,
    keep: int,
    extra: dict,
    context: int | None = None,
    resume_only: bool = False,
) -> Path | None:
    """Write ``checkpoints/step_<step>/`` atomically (rank 0) and prune to the newest ``keep``.

    A ``resume_only`` checkpoint (saved on a stop signal or the wall-clock interval, marked by a
    ``resume_only`` file) is removed by the next save and not counted in ``keep``, so it never
    pushes out the checkpoints kept for last-k scoring.

    Contents: ``model.safetensors`` (its metadata records the training ``context`` in tokens under
    :data:`CONTEXT_METADATA`) + ``shape.json`` (loadable with :func:`load_model`) and
    ``trainer.pt`` (optimizer state, step, RNG states, ``extra``). Every rank must call this (the
    state dicts are gathered collectively). Returns the directory on rank 0, None elsewhere.
    """
    from .distributed import barrier, full_state_dicts

    msd, osd = full_state_dicts(model, optimizer, dist_info)
    final = checkpoint_dir(run_dir, step)
    if dist_info.main:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        trainer = {"step": step, "optimizer": osd, "rng": rng_state(), **extra}
        _write_trainer_checkpoint(tmp, shape, model, msd, dist_info.world > 1, trainer, context)
        if resume_only:
            (tmp / RESUME_ONLY_NAME).write_text("saved to resume only; removed by the next checkpoint\n")
        if final.exists():  # re-saving the same step (e.g. the final one): replace atomically
            old = final.with_name(final.name + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
        older = [c for c in list_checkpoints(run_dir) if c.name != final.name]
        regular = [c for c in older if not (c / RESUME_ONLY_NAME).exists()]
        if not resume_only:
            regular.append(final)
        stale = [c for c in older if (c / RESUME_ONLY_NAME).exists()] + regular[:-keep]
        for c in stale:
            shutil.rmtree(c, ignore_errors=True)
    barrier(dist_info)
    return final if dist_info.main else None


def _write_trainer_checkpoint(
    directory: Path, shape, model, model_state: dict, gathered: bool, trainer: dict, context: int | None = None
) -> None:
    """Model files (with the training ``context`` in the weights' metadata) and ``trainer.pt`` into
    ``directory``, every file fsynced."""
    import torch

    from .distributed import unwrap
    from .model import GQADecoder

    plain = unwrap(model)
    if gathered:  # rebuild a plain CPU module from the gathered full state
        plain = GQADecoder(shape, max_seq_len=getattr(plain, "max_seq_len", 8192))
        plain.load_state_dict(model_state)
    save_model(plain, directory, extra_metadata=None if context is None else {CONTEXT_METADATA: int(context)})
    with open(directory / TRAINER_NAME, "wb") as fh:
        torch.save(trainer, fh)
        fh.flush()
        os.fsync(fh.fileno())
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def load_trainer_state(ckpt) -> dict:
    """The ``trainer.pt`` dict of a checkpoint (optimizer state, step, RNG states), tensors on CPU."""
    import torch

    with open(Path(ckpt) / TRAINER_NAME, "rb") as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)


def restore(ckpt, model, optimizer, dist_info) -> dict:
    """Load a checkpoint's weights and optimizer state into the (possibly wrapped) objects; returns its
    trainer state."""
    from .distributed import load_full_state_dicts

    state = load_trainer_state(ckpt)
    plain = load_model(ckpt, device="cpu")
    load_full_state_dicts(model, optimizer, plain.state_dict(), state["optimizer"], dist_info)
    return state
