"""Loss by token position and by evaluation context length; relative loss difference ΔL(T) (Section 5.7);
the device and dtype evaluation runs on; the standard error of a mean validation loss.

Convention (Hugging Face): the logits at position t predict token t+1, so a chunk of T tokens
gives T-1 losses, indexed by the predicted token's position 1..T-1 (position p has p tokens of context).

Memory: the losses are computed from the final hidden states [B, T, d] a block of positions at a
time (``position_block`` positions -> logits [B, block, V] in fp32), so evaluating at 128K tokens
never holds the [B, T, V] logits (26 GB per sequence at V = 50,304): O(T d + block V), not O(T V).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CONTEXT_METADATA  # the safetensors key of the training context; re-exported
from .errors import CogqaError, require

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"  # (cogqa.cli.evaluate repeats these)
DTYPE_HELP = "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16"


def resolve_device(name: str | None = "auto"):
    """The torch.device to evaluate on: ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        require(False, f"--device: {name!r} is not a device; use {DEVICE_HELP}")
    require(
        device.type != "cuda" or torch.cuda.is_available(), f"--device {name}: no CUDA GPU is visible; use --device cpu"
    )
    return device


def resolve_dtype(name: str | None, device):
    """The torch dtype of the weights: ``auto`` is bf16 on CUDA and fp32 elsewhere (fp16/bf16 matmuls on
    CPU are slow or missing); ``fp32``/``bf16``/``fp16`` as named."""
    import torch

    from .model import torch_dtype

    name = (name or "auto").strip().lower()
    require(name in DTYPE_CHOICES, f"--dtype: {name!r} is not supported; use {DTYPE_HELP}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch_dtype(name)


def token_losses(logits, input_ids):
    """Per-token next-token losses (nats), a float64 numpy array [B, T-1] from logits [B, T, V] and ids [B, T]."""
    import torch

    logits = torch.as_tensor(logits).float()
    ids = torch.as_tensor(input_ids).long()
    require(
        logits.dim() == 3 and ids.dim() == 2 and logits.shape[:2] == ids.shape,
        f"logits {tuple(logits.shape)} and input_ids {tuple(ids.shape)} do not line up",
    )
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll.double().cpu().numpy()


def hidden_token_losses(hidden, weight, input_ids, position_block: int = 1024):
    """Per-token next-token losses (nats), float64 numpy [B, T-1], from final hidden states [B, T, d] and the
    LM-head matrix [V, d], ``position_block`` positions at a time (fp32 logits of one block only)."""
    import torch

    require(position_block >= 1, f"position_block must be >= 1 position, got {position_block}")
    ids = torch.as_tensor(input_ids, device=hidden.device).long()
    require(
        hidden.dim() == 3 and ids.dim() == 2 and hidden.shape[:2] == ids.shape,
        f"hidden {tuple(hidden.shape)} and input_ids {tuple(ids.shape)} do not line up",
    )
    with torch.no_grad():
        w = weight.float()
        out = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64, device=hidden.device)
        for s in range(0, ids.shape[1] - 1, position_block):
            e = min(s + position_block, ids.shape[1] - 1)
            logits = hidden[:, s:e].float() @ w.T
            out[:, s:e] = (
                torch.logsumexp(logits, -1) - logits.gather(-1, ids[:, s + 1 : e + 1, None])[..., 0]
            ).double()
    return out.cpu().numpy()


def final_hidden(model, ids):
    """(final normed hidden states [B, T, d], LM-head matrix [V, d]) of a cogqa GQADecoder or a transformers
    causal LM, without computing the [B, T, V] logits."""
    if hasattr(model, "output_weight") and hasattr(model, "norm"):  # cogqa: catch the final norm's output
        caught = {}

        def keep(module, args, output):
            caught["h"] = output
            return output[:, :1]  # the LM head then costs one position

        handle = model.norm.register_forward_hook(keep)
        try:
            model(ids)
        finally:
            handle.remove()
        return caught["h"], model.output_weight
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return base(input_ids=ids).last_hidden_state, model.get_output_embeddings().weight


def loss_by_position(losses: np.ndarray) -> np.ndarray:
    """Mean loss (nats/token) per predicted position, averaged over the batch: [T-1] from [B, T-1]."""
    losses = np.asarray(losses, dtype=np.float64)
    require(losses.ndim == 2 and losses.shape[0] >= 1, "losses must be [chunks, positions]")
    return losses.mean(axis=0)


def mean_and_standard_error(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of independent per-chunk losses (nats/token): std(ddof=1)/sqrt(n);
    one value has no measurable spread, so its error is ``inf`` (never NaN, never a false 0)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    require(v.size >= 1, "no values to average")
    if v.size == 1:
        return float(v[0]), float("inf")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def paired_standard_error(chunk_a, chunk_b) -> tuple[float, float]:
    """(mean difference, its standard error) of two models' per-chunk losses on the same chunks (nats/token):
    the error that separates models evaluated on one validation set (what chunks they share cancels)."""
    a, b = np.asarray(chunk_a, dtype=np.float64), np.asarray(chunk_b, dtype=np.float64)
    require(a.shape == b.shape, f"paired losses need the same chunks: {a.shape} vs {b.shape}")
    return mean_and_standard_error(a - b)


def chunks_for_standard_error(chunk_std: float, target_se: float) -> int:
    """Validation chunks needed so that the standard error of the mean loss is <= ``target_se`` (nats/token),
    given the standard deviation of per-chunk mean losses ``chunk_std`` (nats/token): ceil((std/se)^2)."""
    require(chunk_std >= 0 and target_se > 0, "chunk_std must be >= 0 and target_se > 0 (nats/token)")
    return max(2, int(np.ceil((chunk_std / target_se) ** 2)))


def loss_at_contexts(position_loss: np.ndarray, contexts) -> dict:
    """Mean loss (nats/token) over the first T-1 predicted positions for each evaluation context T (tokens)."""
    position_loss = np.asarray(position_loss, dtype=np.float64)
    out = {}
    for T in contexts:
        require(
            2 <= T <= position_loss.shape[0] + 1,
            f"evaluation context {T} tokens needs chunks of at least {T} tokens; the data has "
            f"{position_loss.shape[0] + 1}",
        )
        out[int(T)] = float(position_loss[: T - 1].mean())
    return out


def relative_delta(loss, base):
    """ΔL(T) = (L(T) - L_base(T)) / L_base(T), a dimensionless fraction (vectorised)."""
    loss = np.asarray(loss, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    require(bool(np.all(base > 0)), "baseline loss must be positive")
    return (loss - base) / base


def model_max_context(model) -> int:
    """The longest sequence (tokens) ``model`` is evaluated at: an explicit ``eval_max_context`` (set by the
    loader), cogqa ``max_seq_len`` or HF ``max_position_embeddings``."""
    if getattr(model, "eval_max_context", None):
        return int(model.eval_max_context)
    if hasattr(model, "max_seq_len"):
        return int(model.max_seq_len)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_position_embeddings", 1 << 30))


@dataclass(frozen=True)
class PositionLoss:
    """Loss by position of one model: ``position`` [T-1] mean loss per predicted position (nats/token),
    ``chunk`` [n] mean loss of each evaluated chunk (nats/token); ``mean`` and ``standard_error`` of the
    mean loss over chunks (nats/token)."""

    position: np.ndarray
    chunk: np.ndarray

    @property
    def mean(self) -> float:
        """Mean loss over all evaluated tokens (nats/token)."""
        return mean_and_standard_error(self.chunk)[0]

    @property
    def standard_error(self) -> float:
        """Standard error of :attr:`mean` from the spread of per-chunk losses (nats/token)."""
        return mean_and_standard_error(self.chunk)[1]


def evaluate_chunks(model, chunks, max_chunks: int = 64, batch: int = 4, position_block: int = 1024) -> PositionLoss:
    """Loss by position and per chunk (nats/token) of ``model`` over up to ``max_chunks`` token chunks, on the
    device and in the dtype of the model's weights (losses in fp32, accumulated in fp64)."""
    import torch

    n = min(len(chunks), max_chunks)
    require(n >= 1, "no evaluation chunks: prepare more validation data")
    T = len(chunks[0])
    require(
        T <= model_max_context(model),
        f"chunks of {T} tokens are longer than the model is loaded for ({model_max_context(model)} tokens); "
        "pass --max-seq-len to evaluate beyond it, or prepare the data with a shorter --context",
    )
    device = next(model.parameters()).device
    total = np.zeros(T - 1)
    per_chunk = []
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            ids = torch.as_tensor(
                np.stack([np.asarray(chunks[j]) for j in range(i, min(n, i + batch))]), dtype=torch.long, device=device
            )
            hidden, weight = final_hidden(model, ids)
            losses = hidden_token_losses(hidden, weight, ids, position_block)
            total += losses.sum(axis=0)
            per_chunk.extend(losses.mean(axis=1).tolist())
    return PositionLoss(total / n, np.asarray(per_chunk))


def evaluate_positions(
    model, chunks, max_chunks: int = 64, batch: int = 4, device=None, position_block: int = 1024
) -> np.ndarray:
    """Mean loss per predicted position (nats/token) of ``model`` over up to ``max_chunks`` token chunks
    (``device``, if given, moves the model there first)."""
    if device is not None:
        model.to(device)
    return evaluate_chunks(model, chunks, max_chunks, batch, position_block).position


# ---------------------------------------------------------------------------------------------
# Which checkpoints, loaded at which context
# ---------------------------------------------------------------------------------------------

PAPER_LAST_K = 4  # Appendix J.2: the last four checkpoints are scored and their scores averaged


def run_checkpoints(run_dir) -> list:
    """Complete checkpoint directories ``checkpoints/step_*`` of a training run, oldest first
    (:func:`cogqa.checkpoint.list_checkpoints`: the one rule for what a checkpoint directory is)."""
    from .checkpoint import list_checkpoints

    return list_checkpoints(run_dir)


def checkpoints_to_score(path, last_k: int | None = None) -> list:
    """The model directories to score for ``path``: a checkpoint or Hugging Face directory is itself (``last_k``
    must be None or 1); a training run directory gives its last ``last_k`` checkpoints (default
    :data:`PAPER_LAST_K`, as the paper), an error naming the fix if it has fewer."""
    from pathlib import Path

    p = Path(path)
    require(p.is_dir(), f"{p}: no such directory; give a training run, a checkpoint or a Hugging Face model directory")
    require(last_k is None or (isinstance(last_k, int) and last_k >= 1), f"--last-k must be >= 1, got {last_k!r}")
    if (p / "shape.json").is_file() or ((p / "config.json").is_file() and not (p / "checkpoints").is_dir()):
        require(
            last_k in (None, 1),
            f"--last-k {last_k}: {p} is a single checkpoint; give its training run "
            "directory to score the run's last checkpoints",
        )
        return [p]
    found = run_checkpoints(p)
    require(
        bool(found),
        f"{p}: not a checkpoint (no shape.json), a Hugging Face directory (no config.json) "
        "or a training run (no checkpoints/step_*/)",
    )
    k = PAPER_LAST_K if last_k is None else last_k
    require(
        len(found) >= k,
        f"--last-k {k}: {p} has {len(found)} checkpoint(s) ({', '.join(d.name for d in found)}); "
        f"train keeping {k} (--checkpoint-every, --keep-checkpoints {k}) or pass --last-k {len(found)}",
    )
    return found[-k:]


def checkpoint_context(ckpt) -> int | None:
    """The context (tokens) a cogqa checkpoint was trained at: its weights' ``cogqa_context`` metadata, else
    its run's ``config.json`` (``resolved.context``); None if neither records it."""
    import json
    from pathlib import Path

    ckpt = Path(ckpt)
    try:
        with open(ckpt / "model.safetensors", "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        value = (header.get("__metadata__") or {}).get(CONTEXT_METADATA)
        if value is not None:
            return int(value)
    except (OSError, ValueError):
        pass
    run_config = ckpt.parent.parent / "config.json"
    from .readers import read_json_object

    try:
        resolved = read_json_object(run_config).get("resolved")
        value = resolved.get("context") if isinstance(resolved, dict) else None
    except CogqaError:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**40:
        return value
    return None


def _training_manifest(ckpt: Path) -> dict | None:
    """The manifest of the data a cogqa checkpoint was trained on (via its run's ``config.json``), or None."""
    from .readers import read_json_object

    run_config = ckpt.parent.parent / "config.json"
    try:
        config = read_json_object(run_config)
        data = config.get("data")
        if not isinstance(data, str):
            return None
        return read_json_object(Path(data) / "manifest.json")
    except CogqaError:
        return None


def check_data_tokenizer(ckpt, model, manifest: dict, data) -> None:
    """Refuse, in one line, to evaluate ``model`` (loaded from ``ckpt``) on data prepared with another tokenizer:
    a cogqa checkpoint's vocabulary must equal the data's padded vocabulary and, when its run records its
    training data, the tokenizers must have the same name; any model's vocabulary must hold every id of the data."""
    ckpt = Path(ckpt)
    shape = getattr(model, "shape", None)
    model_vocab = int(shape.vocab_size if shape is not None else model.config.vocab_size)
    data_tok, padded = manifest.get("tokenizer"), int(manifest["padded_vocab_size"])
    used = int(manifest.get("vocab_size") or padded)
    fix = "prepare the data with the checkpoint's tokenizer (cogqa data prepare --tokenizer NAME)"
    trained = _training_manifest(ckpt) if (ckpt / "shape.json").is_file() else None
    if trained is not None and trained.get("tokenizer") is not None:
        require(
            trained.get("tokenizer") == data_tok,
            f"--data {data}: prepared with tokenizer {str(data_tok)[:60]!r}, but {ckpt.name} was trained on data of "
            f"tokenizer {str(trained.get('tokenizer'))[:60]!r}; {fix}",
        )
    if (ckpt / "shape.json").is_file():
        require(
            model_vocab == padded,
            f"--data {data}: padded vocabulary {padded} (tokenizer {str(data_tok)[:60]!r}) but {ckpt.name} has "
            f"vocabulary {model_vocab}: another tokenizer; {fix}",
        )
    require(
        used <= model_vocab,
        f"--data {data}: token ids up to {used - 1} (tokenizer {str(data_tok)[:60]!r}) but {ckpt.name} has only "
        f"{model_vocab} tokens; {fix}",
    )


def load_for_eval(path, device="auto", dtype="auto", max_seq_len: int | None = None, need: int = 0):
    """(model, Hugging Face tokenizer or None, context in tokens) for a cogqa checkpoint or a local transformers
    directory, on ``device`` in ``dtype`` (see :func:`resolve_device`, :func:`resolve_dtype`), in eval mode.

    The context the model is loaded at (``model_max_context``) is ``max_seq_len`` when given, else the
    checkpoint's training context (HF: ``max_position_embeddings``), else ``need`` (tokens, when unrecorded).
    """
    import os
    from pathlib import Path

    p = Path(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    require(max_seq_len is None or max_seq_len >= 2, f"--max-seq-len must be >= 2 tokens, got {max_seq_len}")
    if (p / "shape.json").is_file():
        from .checkpoint import load_model

        context = max_seq_len or checkpoint_context(p) or max(int(need), 2)
        model = load_model(p, device=dev, dtype=dt, max_seq_len=int(context))
        tok = None
    else:
        require((p / "config.json").is_file(), f"{p}: neither shape.json (cogqa) nor config.json (Hugging Face) found")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(p, dtype=dt).to(dev)
        context = max_seq_len or int(getattr(model.config, "max_position_embeddings", 0) or max(int(need), 2))
        try:
            tok = AutoTokenizer.from_pretrained(p)
        except (OSError, ValueError):
            tok = None
    model.eval_max_context = int(context)
    return model.eval(), tok, int(context)
