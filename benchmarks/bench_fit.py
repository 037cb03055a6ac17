"""The demo's law fit, timed: the joint law across head configurations with its bootstrap intervals, on the
shipped demo results (``cogqa/data/demo_results.csv``, 24 runs), refitted in this process vs in one forked
process per core; and one evaluation of the fit objective, as it is now (one GEMV) vs the einsum form it had
before (kept here as the reference). Contenders alternate; the table prints seconds and ratios side by side.

Usage: python benchmarks/bench_fit.py [--bootstrap K] [--repeats R]   (about 4 minutes at K = 200 on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from pathlib import Path

import numpy as np
import pandas as pd

from cogqa.fitting import fit_results
from cogqa.fitting.bootstrap import bootstrap_workers
from cogqa.fitting.core import huber
from cogqa.fitting.forms import _fit_group_problem

DEMO = Path(__file__).resolve().parent.parent / "cogqa" / "data" / "demo_results.csv"


def einsum_objective(problem, theta):
    """The objective as it was before (Huber by ``np.where``, gradient by ``np.einsum``): the reference."""
    t = problem.X @ theta
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    r = problem.y - (m + np.log(s))
    f = float(huber(r, problem.delta).sum())
    w /= s
    return f, np.einsum("kn,knp->p", w * -np.clip(r, -problem.delta, problem.delta), problem.X)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", type=int, default=200, help="resamples (default 200: the demo's)")
    ap.add_argument("--repeats", type=int, default=1, help="alternations of the two fits (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    df = pd.read_csv(DEMO)

    problem = _fit_group_problem("heads-joint", df)
    theta = (problem.lower + np.minimum(problem.upper, problem.lower + 1.0)) / 2
    f_new, g_new = problem.objective(theta)
    f_old, g_old = einsum_objective(problem, theta)
    assert abs(f_new - f_old) <= 1e-12 * abs(f_old) and np.allclose(g_new, g_old, rtol=1e-10, atol=1e-15)
    per_call = {}
    for _ in range(3):  # alternated
        contenders = (("einsum", lambda: einsum_objective(problem, theta)), ("gemv", lambda: problem.objective(theta)))
        for name, fn in contenders:
            per_call[name] = min(per_call.get(name, 1.0), min(timeit.repeat(fn, number=2000, repeat=3)) / 2000)

    processes = bootstrap_workers(None, args.bootstrap)
    times = {"serial": float("inf"), "forked": float("inf")}
    laws = {}
    for _ in range(args.repeats):
        for name, workers in (("serial", 1), ("forked", None)):
            t0 = time.perf_counter()
            rep = fit_results(df, form="heads-joint", bootstrap=args.bootstrap, seed=0, workers=workers)
            times[name] = min(times[name], time.perf_counter() - t0)
            laws[name] = rep.laws
    assert laws["serial"] == laws["forked"], "the forked fit must give the serial fit's laws and intervals"
    out = {
        "objective_us_einsum": per_call["einsum"] * 1e6,
        "objective_us_gemv": per_call["gemv"] * 1e6,
        "objective_speedup": per_call["einsum"] / per_call["gemv"],
        "bootstrap": args.bootstrap,
        "processes": processes,
        "fit_s_serial": times["serial"],
        "fit_s_forked": times["forked"],
        "fit_speedup": times["serial"] / times["forked"],
        "same_laws": True,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"demo joint law, {len(df)} runs, {args.bootstrap} bootstrap resamples")
    print(
        f"  objective, one call     einsum {out['objective_us_einsum']:7.1f} us   "
        f"gemv {out['objective_us_gemv']:7.1f} us   ({out['objective_speedup']:.2f}x)"
    )
    print(
        f"  fit + bootstrap         1 process {times['serial']:6.1f} s   {processes} forked {times['forked']:6.1f} s"
        f"   ({out['fit_speedup']:.2f}x; same laws and intervals: yes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
