"""Model checkpoints: ``model.safetensors`` (weights) + ``shape.json`` (the ModelShape).

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
from .shapes import ModelShape
from .files import fsync_dir

WEIGHTS_NAME = "model.safetensors"
SHAPE_NAME = "shape.json"


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
    require(path.is_file(), f"{path}: no such file; is {directory} a cogqa checkpoint (model.safetensors + shape.json)?")
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
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CogqaError(f"{path}: not a readable safetensors file ({first}); is it truncated?") from None
    return tensors, header.get("__metadata__") or {}


def check_state_dict(model, tensors: dict, source: str) -> None:
    """Refuse ``tensors`` unless names and shapes match ``model`` exactly (one-line error)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    require(not missing, f"{source}: missing tensor(s) {missing[:3]}{' ...' if len(missing) > 3 else ''} for shape {model.shape.describe()}")
    require(not extra, f"{source}: unexpected tensor(s) {extra[:3]}{' ...' if len(extra) > 3 else ''} for shape {model.shape.describe()}")
    for k, s in expected.items():
        got = tuple(tensors[k].shape)
        require(got == s, f"{source}: tensor {k} has shape {list(got)} but shape.json ({model.shape.describe()}) needs {list(s)}")


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
