"""Loss by token position and by evaluation context length; relative loss difference ΔL(T) (Section 5.7).

Convention (Hugging Face): the logits at position t predict token t+1, so a chunk of T tokens
gives T-1 losses, indexed by the predicted token's position 1..T-1 (position p has p tokens of context).
"""

from __future__ import annotations

import numpy as np

from .errors import require


def token_losses(logits, input_ids):
    """Per-token next-token losses (nats), a float64 numpy array [B, T-1] from logits [B, T, V] and ids [B, T]."""
    import torch
    logits = torch.as_tensor(logits).float()
    ids = torch.as_tensor(input_ids).long()
    require(logits.dim() == 3 and ids.dim() == 2 and logits.shape[:2] == ids.shape,
            f"logits {tuple(logits.shape)} and input_ids {tuple(ids.shape)} do not line up")
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll.double().cpu().numpy()


def loss_by_position(losses: np.ndarray) -> np.ndarray:
    """Mean loss (nats/token) per predicted position, averaged over the batch: [T-1] from [B, T-1]."""
    losses = np.asarray(losses, dtype=np.float64)
    require(losses.ndim == 2 and losses.shape[0] >= 1, "losses must be [chunks, positions]")
    return losses.mean(axis=0)


def loss_at_contexts(position_loss: np.ndarray, contexts) -> dict:
    """Mean loss (nats/token) over the first T-1 predicted positions for each evaluation context T (tokens)."""
    position_loss = np.asarray(position_loss, dtype=np.float64)
    out = {}
    for T in contexts:
        require(2 <= T <= position_loss.shape[0] + 1,
                f"evaluation context {T} tokens needs chunks of at least {T} tokens; the data has {position_loss.shape[0] + 1}")
        out[int(T)] = float(position_loss[: T - 1].mean())
    return out


def relative_delta(loss, base):
    """ΔL(T) = (L(T) - L_base(T)) / L_base(T), a dimensionless fraction (vectorised)."""
    loss = np.asarray(loss, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    require(bool(np.all(base > 0)), "baseline loss must be positive")
    return (loss - base) / base


def model_max_context(model) -> int:
    """The longest sequence (tokens) ``model`` supports: cogqa ``max_seq_len`` or HF ``max_position_embeddings``."""
    if hasattr(model, "max_seq_len"):
        return int(model.max_seq_len)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_position_embeddings", 1 << 30))


def evaluate_positions(model, chunks, max_chunks: int = 64, batch: int = 4, device: str = "cpu") -> np.ndarray:
    """Mean loss per predicted position (nats/token) of ``model`` over up to ``max_chunks`` token chunks."""
    import torch
    n = min(len(chunks), max_chunks)
    require(n >= 1, "no evaluation chunks: prepare more validation data")
    T = len(chunks[0])
    require(T <= model_max_context(model),
            f"chunks of {T} tokens are longer than the model supports ({model_max_context(model)} tokens); "
            "prepare the data with a shorter --context or use a model with a longer max_seq_len")
    total = np.zeros(T - 1)
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            ids = torch.as_tensor(np.stack([np.asarray(chunks[j]) for j in range(i, min(n, i + batch))]),
                                  dtype=torch.long, device=device)
            total += token_losses(model(ids).logits, ids).sum(axis=0)
    return total / n
