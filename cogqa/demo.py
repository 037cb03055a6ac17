"""The CPU demo: the whole recipe (prepare the offline corpus -> train a tiny sweep -> collect ->
fit -> search -> report) in minutes on two CPU cores. ``cogqa demo`` runs :func:`run_demo`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import require
from .files import write_json_atomic
from .sweep import SweepSpec, collect, run_sweep
from .sweep import vocab_size as _vocab_size
from .threads import available_cores, thread_plan

DEMO_COMMAND = "cogqa demo --out runs/demo"
#: Tiny MHA-family shapes (head size 16) for the CPU demo: name -> (layers, hidden size).
DEMO_SIZES = {"d48": (2, 48), "d64": (2, 64), "d96": (2, 96), "d128": (2, 128)}
#: n_kv = 1, 2, 4 at n_h = 4 pins the joint law's KV-head exponent k; n_h = 1..8 at n_kv = 1 pins g.
DEMO_HEADS = "1:1,2:1,4:1,8:1,4:2,4:4"


def demo_spec() -> SweepSpec:
    """The CPU demo sweep: 6 head configurations x 4 tiny sizes (2 layers, d = 48 to 128, head
    size 16: about 40k to 330k non-embedding parameters) on the offline King James Bible, bytes
    tokenizer, T = 128 tokens, a fixed budget of 1,048,576 training tokens per run (not 20 per
    parameter: the whole recipe must finish within 15 minutes on 2 CPU cores), batches of 1,024
    tokens (1,024 steps), max LR 3e-3 (5e-3 with half the tokens left the runs so under-trained
    that the seed moved the final loss by 0.1-0.2 nats/token)."""
    sizes = [{"name": n, "layers": L, "hidden_size": d, "head_dim": 16} for n, (L, d) in DEMO_SIZES.items()]
    return SweepSpec(
        data={"inputs": ["kjv"], "tokenizer": "bytes", "context": 128, "val_fraction": 0.01},
        sizes=sizes,
        heads=DEMO_HEADS,
        tokens=1048576,
        lr=3e-3,
        batch_tokens=1024,
        micro_batch=8,
        eval_batches=8,
        position_eval_chunks=32,
        name="cpu-demo",
    )


def _demo_family(spec: SweepSpec) -> dict[str, Any]:
    """``metadata.family`` of the demo laws (:class:`cogqa.family.ModelFamily`): the demo's head
    size, the bytes vocabulary (320) and its sizes as the Appendix B.1 reference shapes."""
    head_dims = {s.head_dim for s in spec.size_specs}
    require(len(head_dims) == 1, "demo: all sizes must share one head size")
    head_dim = head_dims.pop()
    return {
        "head_dim": head_dim,
        "vocab_size": _vocab_size(spec),
        "reference_shapes": [[s.layers, s.hidden_size] for s in spec.size_specs],
        "hidden_multiple": head_dim,
    }


def demo_laws(df, spec: SweepSpec | None = None):
    """The demo's laws from its results table: the joint law across head configurations
    (``heads-joint``, with 200 bootstrap resamples for its intervals), marked approximate, with the
    demo's model family and measured size range in ``metadata``; a :class:`cogqa.laws.LawSet`."""
    return demo_fit(df, spec)[0]


def demo_fit(df, spec: SweepSpec | None = None):
    """(:func:`demo_laws`, the fit's 200 bootstrap coefficient samples): the samples draw the report's band."""
    from dataclasses import replace

    from .fitting import fit_results

    spec = spec or demo_spec()
    rep = fit_results(df, form="heads-joint", bootstrap=200, seed=0)
    laws = rep.law_set(
        f"{DEMO_COMMAND}: CPU demo, {len(df)} tiny runs ({len(set(zip(df.n_heads, df.n_kv_heads)))} head "
        f"configurations x {df['size'].nunique()} sizes), KJV bytes tokenizer, T=128, "
        f"{int(df.tokens.iloc[0]):,} tokens per run; joint law across head configurations"
    )
    laws = replace(
        laws,
        approximate=True,
        metadata={
            **(laws.metadata or {}),
            "family": _demo_family(spec),
            "context": 128,
            "tokenizer": "bytes",
            "corpus": "kjv",
            "command": DEMO_COMMAND,
            "params_non_embedding_range": [int(df.params_non_embedding.min()), int(df.params_non_embedding.max())],
        },
    )
    return laws, rep.samples


def run_demo(
    out: str | Path = "runs/demo",
    workers: int | None = None,
    progress: bool = True,
    spec: SweepSpec | None = None,
    context: int = 131072,
) -> dict[str, Any]:
    """The whole recipe on a CPU: prepare the offline corpus, train the demo sweep, collect, fit
    the per-H laws (``OUT/laws.json``), search and write the report (``OUT/report/report.md``).

    ``workers`` None: one run per core, one thread each (:func:`cogqa.threads.thread_plan`).
    Idempotent: finished runs are skipped, interrupted ones resumed. Returns a summary with the
    wall time of this invocation (s), the files written and the recommended configuration at
    ``context`` tokens; also written to ``OUT/demo_summary.json``.
    """
    from .report import build_report

    t0 = time.time()
    spec = spec or demo_spec()
    out = Path(out)
    workers = thread_plan(available_cores(), os.environ, runs=len(spec.runs()), workers=workers, tiny=True).workers
    status = run_sweep(spec, out, workers=workers, progress=progress)
    require(
        status["counts"]["failed"] == 0,
        f"demo: {status['counts']['failed']} run(s) failed: "
        + "; ".join(f"{k}: {v}" for k, v in status["failed"].items())
        + f" (logs in {out}/runs/*/log.txt; re-run to retry)",
    )
    df = collect(out)
    if progress:
        print(
            f"collected {len(df)} runs into {out / 'results.csv'}; fitting the joint law across head configurations "
            "...",
            file=sys.stderr,
        )
    laws, samples = demo_fit(df, spec)
    laws.save(out / "laws.json")
    if progress:
        print(f"laws in {out / 'laws.json'}; searching and writing the report ...", file=sys.stderr)
    report = build_report(out, laws=laws, context=context, band_samples=samples)
    numbers = json.loads((report.parent / "numbers.json").read_text())
    summary = {
        "wall_time_s": time.time() - t0,
        "runs": len(df),
        "results": str(out / "results.csv"),
        "laws": str(out / "laws.json"),
        "report": str(report),
        "best": numbers.get("best"),
        "loss_falls_with_n": numbers.get("loss_falls_with_n"),
    }
    write_json_atomic(out / "demo_summary.json", summary)
    return summary
