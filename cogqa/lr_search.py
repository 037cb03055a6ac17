"""The paper's learning-rate search (Appendix F): short trainings over a grid of max LRs.

``lr_search(config) -> table``; each LR trains in ``out_dir/lr_<lr>`` with :func:`cogqa.train.train`,
so an interrupted search resumes and finished runs are reused.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .distributed import is_main_process
from .errors import require
from .files import write_json_atomic
from .train import TrainingDiverged, train

PAPER_LR_GRID = tuple(m * 10.0**e for e in (-3, -4, -5) for m in (1, 2, 5))


def lr_search(config: TrainConfig, lrs=PAPER_LR_GRID) -> dict[str, Any]:
    """Short trainings of ``config`` at each max LR, each in ``out_dir/lr_<lr>``; returns the table.

    Finished runs (with ``result.json``) are reused, so an interrupted search resumes. Returns
    ``{"runs": [{"lr", "final_val_loss", "out_dir"}...], "best_lr", "best_val_loss"}`` (losses in
    nats per token) and writes it to ``out_dir/lr_search.json``.
    """
    lrs = [float(x) for x in lrs]
    require(len(lrs) > 0, "lrs: give at least one learning rate")
    for x in lrs:
        require(math.isfinite(x) and 0 < x < 1, f"lrs: {x!r} is not a learning rate in (0, 1)")
    root = Path(config.out_dir)
    rows = []
    for x in lrs:
        sub = root / f"lr_{x:.0e}"
        done = sub / "result.json"
        if done.is_file():
            res = json.loads(done.read_text())
        else:
            cfg = replace(config, out_dir=str(sub), optim=replace(config.optim, lr=x), resume=True)
            try:
                res = train(cfg).to_dict()
            except TrainingDiverged:
                res = {"final_val_loss": None}
        loss = res.get("final_val_loss")
        rows.append(
            {"lr": x, "final_val_loss": loss if loss is not None and math.isfinite(loss) else None, "out_dir": str(sub)}
        )
    ok = [r for r in rows if r["final_val_loss"] is not None]
    require(bool(ok), "lr-search: every run diverged; try smaller learning rates (--lrs)")
    best = min(ok, key=lambda r: r["final_val_loss"])
    table = {"runs": rows, "best_lr": best["lr"], "best_val_loss": best["final_val_loss"]}
    if is_main_process():
        write_json_atomic(root / "lr_search.json", table)
    return table
