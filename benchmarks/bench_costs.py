"""Benchmark of the cost model: a 10^6-point (shape, T) grid, and the CLI's cold start vs importing torch.

Run: .venv/bin/python benchmarks/bench_costs.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
from timing import best_time, load_line, median_command_time

from cogqa import costs
from cogqa.family import shape_for_params


def time_grid(n_sizes: int = 1000, n_contexts: int = 1000, repeats: int = 5) -> float:
    """Best wall time (seconds) to cost a grid of n_sizes Appendix B.1 shapes x n_contexts context lengths."""
    sizes = np.geomspace(1e7, 1e11, n_sizes)[:, None]
    contexts = np.geomspace(1, 1 << 20, n_contexts)[None, :]
    shapes = shape_for_params(sizes, 8, 1)  # computed once: the grid is (shape, T)

    def grid():
        flops = costs.inference_flops_per_token(shapes, contexts)
        mem = costs.inference_memory_bytes(shapes, contexts)["total"]
        assert costs.z_cost(mem, flops).shape == (n_sizes, n_contexts)

    return best_time(grid, repeats)


def main() -> None:
    """Print the grid time and the cold-start comparison (medians of 5 fresh processes)."""
    t0 = time.perf_counter()
    shape_for_params(np.geomspace(1e7, 1e11, 1000)[:, None], 8, 1)
    t_b1 = time.perf_counter() - t0
    t_grid = time_grid()
    print(load_line())
    print(
        f"cost model on 10^6 (shape, T) points: {t_grid * 1e3:.1f} ms (target < 1000 ms); "
        f"Appendix B.1 shapes for 1000 sizes: {t_b1 * 1e3:.1f} ms"
    )
    cli = median_command_time([sys.executable, "-m", "cogqa", "cost", "--size", "470M", "--context", "128k", "--json"])
    torch_import = median_command_time([sys.executable, "-c", "import torch"])
    print(
        f"cold start (median of 5): `cogqa cost --size 470M --context 128k --json` {cli * 1e3:.0f} ms | "
        f"`python -c 'import torch'` {torch_import * 1e3:.0f} ms | ratio {torch_import / cli:.1f}x faster"
    )


if __name__ == "__main__":
    main()
