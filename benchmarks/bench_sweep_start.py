"""How long a sweep run takes to start: forked by a run server (what a local sweep worker does) vs a new interpreter.

Runs short sweep runs (the CPU demo's data: byte tokens, 128-token chunks; 1 layer, d = 32; a few optimiser steps,
so the wall time is mostly process start, imports and the final evaluation) through ``launch_run`` both ways,
alternated, one run at a time, 1 intra-op thread each, and prints the wall time per run of each, their difference
(seconds saved per run) and ratio. The run server (``cogqa.sweep.runserver``) starts with the first forked run;
that one-off cost (once per sweep worker) is printed on its own line and left out of the per-run times. Both ways
must give the same final validation loss for the same seed (asserted).

    .venv/bin/python benchmarks/bench_sweep_start.py [--runs 4] [--steps 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cogqa.data import offline_corpus, prepare
from cogqa.sweep import SweepSpec, launch_run, materialise, run_command
from cogqa.sweep.runserver import RunServer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per way (default 4)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "kjv.txt").write_bytes(Path(offline_corpus("kjv")).read_bytes()[:400_000])
        data = tmp / "data"
        prepare([str(tmp / "kjv.txt")], str(data), tokenizer="bytes", context=128, val_fraction=0.1, progress=False)
        batch = 128 * 8
        spec = dict(
            data=str(data),
            sizes=[{"name": "d32", "layers": 1, "hidden_size": 32, "head_dim": 16}],
            heads="2:1",
            lr=3e-3,
            tokens=batch * args.steps,
            batch_tokens=batch,
            micro_batch=8,
            eval_batches=2,
        )
        forked = materialise(SweepSpec(**spec, seeds=list(range(args.runs + 1))), tmp / "forked", progress=False)
        fresh = materialise(SweepSpec(**spec, seeds=list(range(args.runs))), tmp / "fresh", progress=False)

        server = RunServer()
        try:
            t0 = time.perf_counter()
            assert launch_run(forked[-1], threads=1, server=server) == "done"  # starts the server (once per worker)
            first = time.perf_counter() - t0
            times = {"forked": [], "new interpreter": []}
            for f, n in zip(forked[:-1], fresh):
                for name, run_dir, command, via in (
                    ("forked", f, None, server),
                    ("new interpreter", n, run_command(n), None),
                ):
                    t0 = time.perf_counter()
                    status = launch_run(run_dir, command=command, threads=1, server=via)
                    times[name].append(time.perf_counter() - t0)
                    assert status == "done", f"{run_dir.name}: {status} (see {run_dir / 'log.txt'})"
        finally:
            server.close()
        losses = {
            name: [json.loads((d / "result.json").read_text())["final_val_loss"] for d in dirs]
            for name, dirs in (("forked", forked[:-1]), ("new interpreter", fresh))
        }
        assert losses["forked"] == losses["new interpreter"], f"the two ways trained differently: {losses}"
    fork_s, new_s = (statistics.median(times[k]) for k in ("forked", "new interpreter"))
    out = {
        "runs_per_way": args.runs,
        "steps_per_run": args.steps,
        "first_forked_run_s": first,
        "forked_run_s": fork_s,
        "new_interpreter_run_s": new_s,
        "saved_per_run_s": new_s - fork_s,
        "ratio": new_s / fork_s,
        "same_losses": True,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{args.runs} runs each way, {args.steps} steps each, 1 thread, alternated (median wall time per run)")
    print(f"  first forked run (starts the run server)   {first:6.2f} s")
    print(f"  forked by the run server                   {fork_s:6.2f} s")
    print(f"  new interpreter (python -m cogqa.sweep)    {new_s:6.2f} s")
    print(f"  saved per run {new_s - fork_s:.2f} s ({new_s / fork_s:.2f}x); same final losses: yes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
