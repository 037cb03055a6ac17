"""Section 5.6: the cost-optimal search at a training-compute budget, with laws in N and D.

Every head configuration gets the same training FLOPs; a cheaper configuration trains on more tokens
D. Units: FLOPs, tokens, non-embedding parameters, nats per token; Z has none."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .costs import z_cost, z_inputs
from .errors import require
from .family import PAPER_FAMILY, ModelFamily, shape_for_params
from .search_inputs import CostSettings, UnreachableTarget, _check_context, _check_loss, as_settings, candidate_heads

_GRID = (1e5, 1e13, 801)  # log-spaced sizes (non-embedding parameters) scanned for the first N reaching L*


def _data_laws(laws, heads) -> list[tuple[tuple[int, int], Any]]:
    """(H, loss(N, D) function) pairs from a joint law with a data term or per-H ChinchillaLaw objects."""
    from .laws import ChinchillaLaw, HeadsJointLaw

    if isinstance(laws, HeadsJointLaw):
        require(
            laws.B_D is not None, "training budget: the joint law has no data term (B_D, beta_D); fit loss in N and D"
        )
        wanted = list(heads) if heads is not None else candidate_heads(laws.max_heads)
        return [((int(h), int(kv)), lambda n, d, h=h, kv=kv: laws.loss(n, h, kv, d)) for h, kv in wanted]
    items = list(laws)
    require(
        items and all(isinstance(x, ChinchillaLaw) and x.n_heads is not None for x in items),
        "training budget: give a joint law with a data term or Chinchilla laws (loss in N and D) with "
        "n_heads/n_kv_heads",
    )
    out = [((x.n_heads, x.n_kv_heads), x.loss) for x in items]
    if heads is not None:
        out = [o for o in out if o[0] in {tuple(h) for h in heads}]
    require(out, "training budget: no head configuration left to search")
    return out


def _smallest_size(loss_fn, tokens, L: float) -> float | None:
    """The smallest N (parameters) with loss(N, D(N)) <= L: a scan of :data:`_GRID`, then bisection on
    log N for the left root; None when no scanned size reaches it."""
    grid = np.geomspace(*_GRID)
    ok = np.flatnonzero(loss_fn(grid, tokens(grid)) <= L)
    if not ok.size:
        return None
    i = int(ok[0])
    lo, hi = (grid[i - 1], grid[i]) if i > 0 else (grid[0], grid[0])
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if loss_fn(mid, tokens(mid)) <= L:
            hi = mid
        else:
            lo = mid
    return float(hi)


def _row(h: int, kv: int, loss_fn, L: float, T, train_flops, train_context, family, st: CostSettings) -> dict:
    """One head configuration: its smallest N reaching L* at the budget, D, predicted loss and Z at T."""
    from .costs import paper_training_flops

    def tokens(n):
        shape = shape_for_params(n, h, kv, family=family)
        return train_flops / paper_training_flops(shape, 1.0, train_context)

    n = _smallest_size(loss_fn, tokens, L)
    row = {"n_heads": h, "n_kv_heads": kv, "reachable": n is not None}
    if n is None:
        return row
    m, c = z_inputs(
        shape_for_params(n, h, kv, family=family), T, st.convention, st.z_batch, st.weight_dtype, st.kv_dtype
    )
    return row | {
        "params_non_embedding": n,
        "tokens": float(tokens(n)),
        "predicted_loss": float(loss_fn(n, tokens(n))),
        "z_memory": float(m),
        "z_flops": float(c),
        "z": float(z_cost(m, c, st.weights)),
    }


def search_at_training_budget(
    context,
    target_loss,
    train_flops,
    laws,
    train_context: int = 8192,
    family: ModelFamily = PAPER_FAMILY,
    heads=None,
    settings: CostSettings | None = None,
) -> dict[str, Any]:
    """Section 5.6: every H gets the same training compute ``train_flops`` (FLOPs, Eq. 11 with its
    attention term: C = 6 D (N + 2 L T_bar d_h n_h), T_bar = ``train_context`` / 2), so a cheaper
    configuration trains on more tokens D. For each H the smallest N (non-embedding parameters)
    whose loss(N, D(N)) reaches ``target_loss`` (nats/token); ranked by Z at ``context`` (tokens)
    under ``settings`` (:class:`CostSettings`, default paper settings).

    ``laws``: a :class:`cogqa.laws.HeadsJointLaw` with a data term, or per-H
    :class:`cogqa.laws.ChinchillaLaw` objects. Returns {"best", "candidates" (list of dicts with
    n_heads, n_kv_heads, reachable, params_non_embedding, tokens, predicted_loss, z_memory,
    z_flops, z), "z_convention"}. Raises :class:`UnreachableTarget` when no H reaches the loss.
    """
    T, L, st = _check_context(context), _check_loss(target_loss), as_settings(settings)
    require(
        isinstance(train_flops, (int, float, np.floating)) and math.isfinite(train_flops) and train_flops > 0,
        f"train_flops must be a positive number of FLOPs, got {train_flops!r}",
    )
    rows = [
        _row(h, kv, loss_fn, L, T, train_flops, train_context, family, st)
        for (h, kv), loss_fn in _data_laws(laws, heads)
    ]
    reach = [r for r in rows if r["reachable"]]
    if not reach:
        raise UnreachableTarget(
            f"--target-loss {L}: no head configuration reaches it within {train_flops:.3g} training FLOPs"
        )
    ranked = sorted(reach, key=lambda r: r["z"]) + [r for r in rows if not r["reachable"]]
    return {
        "best": ranked[0],
        "candidates": ranked,
        "z_convention": st.convention.to_dict(),
        "context": T,
        "target_loss": L,
        "train_flops": float(train_flops),
        "train_context": int(train_context),
    }
