"""The paper's optimiser recipe: the warmup-stable-decay schedule and AdamW parameter groups.

* :func:`wsd_lr` is a pure, vectorised function of the step (numpy): linear warmup from 0 over
  the first 10% of steps, constant max LR, cosine decay over the last 20% of steps down to 10% of
  the max LR (paper-notes "Training recipe").
* :func:`param_groups` splits a model's parameters for AdamW: weight decay 0.1 on the weight
  matrices of ``nn.Linear`` layers only. Norm gains, biases and the token embedding get no decay.
  With tied embeddings the LM head *is* the embedding matrix; it is treated as an embedding (no
  decay) -- the paper decays "linear weights only", and the embedding is a lookup table.

Only :func:`param_groups` touches torch, and imports it lazily.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import require


def wsd_phase_steps(total_steps: int, warmup_fraction: float = 0.1, decay_fraction: float = 0.2) -> tuple[int, int]:
    """(warmup steps, decay steps) of a WSD schedule of ``total_steps`` optimiser steps (units: steps).

    Warmup is ``round(warmup_fraction * S)``, decay ``round(decay_fraction * S)``; both at least 1
    when their fraction is positive, and together at most S.
    """
    require(int(total_steps) >= 1, f"total_steps must be >= 1, got {total_steps}")
    require(0 <= warmup_fraction < 1, f"optim.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    require(0 <= decay_fraction <= 1, f"optim.decay_fraction must be in [0, 1], got {decay_fraction}")
    require(warmup_fraction + decay_fraction <= 1, "optim.warmup_fraction + optim.decay_fraction must be <= 1")
    S = int(total_steps)
    W = max(1, int(round(warmup_fraction * S))) if warmup_fraction > 0 else 0
    D = max(1, int(round(decay_fraction * S))) if decay_fraction > 0 else 0
    D = min(D, S - W)
    return W, D


def wsd_lr(
    step,
    total_steps: int,
    max_lr: float,
    warmup_fraction: float = 0.1,
    decay_fraction: float = 0.2,
    final_lr_fraction: float = 0.1,
):
    """Learning rate used by optimiser step ``step`` (0-based; scalar or array) of a WSD schedule.

    With W warmup and D decay steps (:func:`wsd_phase_steps`) and S total steps:

    * ``step < W``: ``max_lr * step / W`` (linear from exactly 0),
    * ``W <= step < S - D``: ``max_lr``,
    * ``step >= S - D``: ``min + (max - min) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - (S - D) + 1) / D`` and ``min = final_lr_fraction * max_lr``, so the last step
      (``S - 1``) uses exactly ``min``.

    Returns a float for a scalar step, else a numpy array (units: the units of ``max_lr``).
    """
    require(max_lr > 0 and math.isfinite(max_lr), f"optim.lr must be a positive number, got {max_lr}")
    require(0 <= final_lr_fraction <= 1, f"optim.final_lr_fraction must be in [0, 1], got {final_lr_fraction}")
    W, D = wsd_phase_steps(total_steps, warmup_fraction, decay_fraction)
    S = int(total_steps)
    s = np.asarray(step, dtype=float)
    lr = np.full_like(s, float(max_lr))
    if W > 0:
        lr = np.where(s < W, max_lr * s / W, lr)
    if D > 0:
        p = np.clip((s - (S - D) + 1) / D, 0.0, 1.0)
        low = final_lr_fraction * max_lr
        lr = np.where(s >= S - D, low + (max_lr - low) * 0.5 * (1 + np.cos(np.pi * p)), lr)
    return float(lr) if lr.ndim == 0 else lr


def param_groups(model, weight_decay: float = 0.1) -> list[dict]:
    """AdamW parameter groups: ``[{"params", "names", "weight_decay"}, ...]`` (decay group first).

    Decayed: the ``weight`` of every ``torch.nn.Linear`` (by module type, not by name), unless that
    tensor is also an ``nn.Embedding`` weight (tied LM head). Everything else -- norms, biases,
    embeddings -- has weight decay 0. Shared tensors appear once.
    """
    import torch

    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - embed_ids
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():  # named_parameters() already skips shared duplicates
        if not p.requires_grad:
            continue
        if id(p) in linear_ids:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [
        {"params": decay, "names": decay_names, "weight_decay": float(weight_decay)},
        {"params": no_decay, "names": no_decay_names, "weight_decay": 0.0},
    ]
