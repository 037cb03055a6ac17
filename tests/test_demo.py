"""End to end: a reduced CPU demo through plan -> run -> collect -> fit -> search -> report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import spec_batches, tiny_spec

pytestmark = pytest.mark.slow


def test_reduced_demo_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("cogqa.fitting")
    pytest.importorskip("cogqa.search")
    data = pytest.importorskip("cogqa.data")
    from cogqa.demo import run_demo
    from cogqa.sweep import plan

    src = tmp_path / "slice.txt"
    src.write_text(data.offline_corpus("kjv").read_text()[:150_000])
    sizes = [{"name": f"d{d}", "layers": 1, "hidden_size": d, "head_dim": 16} for d in (16, 32, 48, 64)]
    data_fields = {"inputs": [str(src)], "tokenizer": "bytes", "context": 32, "val_fraction": 0.05}
    spec = tiny_spec(
        data_fields,
        sizes=sizes,
        lr=5e-3,
        eval_batches=4,
        position_eval_chunks=8,
        name="mini-demo",
        **spec_batches(6, micro_batch=16),
    )
    p = plan(spec)
    assert p["totals"]["runs"] == 8 and p["context"] == 32
    out = tmp_path / "demo"
    summary = run_demo(out, spec=spec, progress=False, context=32768)
    assert summary["runs"] == 8
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 8 and df["id"].is_unique and (df["steps"] == 6).all() and (df["tokens"] == 32 * 16 * 6).all()
    laws = json.loads((out / "laws.json").read_text())
    assert laws["form"] == "heads_joint" and laws["laws"][0]["heads"] == [[2, 1], [2, 2]]
    assert "cogqa demo" in laws["source"] and laws["metadata"]["tokenizer"] == "bytes"
    report = (out / "report" / "report.md").read_text()
    for png in ("loss_vs_n.png", "loss_vs_cost.png", "cost_optimal_table.png", "breakdown.png"):
        assert (out / "report" / png).stat().st_size > 1000 and png in report
    numbers = json.loads((out / "report" / "numbers.json").read_text())
    assert numbers["context"] == 32768
    # the recommended size reaches the target loss under the joint law
    from cogqa.laws import load_laws

    joint = load_laws(out / "laws.json").joint
    n = numbers["best"]["params_non_embedding"]
    assert float(joint.loss(n, numbers["best"]["n_heads"], numbers["best"]["n_kv_heads"])) == pytest.approx(
        numbers["target_loss"], rel=1e-6
    )
    # idempotent: a second call trains nothing and gives the same table
    again = run_demo(out, spec=spec, progress=False, context=32768)
    assert again["runs"] == 8 and pd.read_csv(out / "results.csv").equals(df)
