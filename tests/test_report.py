"""Report: figures and Markdown from a synthetic sweep (known laws) and from a laws file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cogqa.cli import main

pytest.importorskip("matplotlib")
TRUE = {(1, 1): (2e5, 0.35, 2.0), (4, 1): (1.5e5, 0.35, 1.95), (4, 4): (1.2e5, 0.35, 1.9)}
SIZES = {"s1": 2e4, "s2": 5e4, "s3": 1e5, "s4": 2e5, "s5": 4e5}


def synthetic_sweep(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for (h, kv), (a, b, E) in TRUE.items():
        for name, n in SIZES.items():
            n_h = n * (1 + 0.05 * (h + kv) / 8)  # attention width adds parameters, as in a real sweep
            rows.append(
                {
                    "id": f"{name}_h{h}kv{kv}_s0",
                    "size": name,
                    "n_heads": h,
                    "n_kv_heads": kv,
                    "seed": 0,
                    "params_non_embedding": n_h,
                    "loss": (a / n_h) ** b + E + rng.normal(0, 1e-4),
                    "tokens": 65536,
                    "context": 128,
                    "wall_time_s": 10.0,
                }
            )
    d = tmp_path / "sweep"
    d.mkdir()
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    return d


def test_report_from_sweep_dir(tmp_path):
    pytest.importorskip("cogqa.fitting")
    pytest.importorskip("cogqa.search")
    from cogqa.report import build_report

    d = synthetic_sweep(tmp_path)
    path = build_report(d, context=131072, fit_grid=16)
    out = d / "report"
    assert path == out / "report.md"
    text = path.read_text()
    for png in ("loss_vs_n.png", "loss_vs_cost.png", "loss_vs_heads.png", "cost_optimal_table.png", "breakdown.png"):
        assert (out / png).stat().st_size > 1000, png
        assert png in text
    assert "nats/token" in text and "T = 131,072 tokens" in text and "R²" in text
    data = json.loads((d / "laws.json").read_text())
    assert data["form"] == "heads_joint" and len(data["laws"]) == 1  # one joint law across the 3 head configurations
    assert data["laws"][0]["r2"] > 0.95 and "Joint law across head configurations" in text
    numbers = json.loads((out / "numbers.json").read_text())
    assert all(numbers["loss_falls_with_n"].values())
    best = numbers["best"]
    assert best["n_heads"] % best["n_kv_heads"] == 0
    assert numbers["target_loss"] > min(E for _, _, E in TRUE.values())
    assert f"H = ({best['n_heads']}, {best['n_kv_heads']})" in text
    assert "less" in text or "more" in text  # savings against the baseline, in percent


def test_report_cli_from_laws_file(tmp_path, capsys):
    pytest.importorskip("cogqa.search")
    laws = {
        "form": "power_law_n",
        "source": "test",
        "laws": [
            {"n_heads": h, "n_kv_heads": kv, "a": a * 1e4, "b": b, "E": E, "r2": 0.99}
            for (h, kv), (a, b, E) in TRUE.items()
        ],
    }
    f = tmp_path / "laws.json"
    f.write_text(json.dumps(laws))
    out = tmp_path / "rep"
    assert main(["report", str(f), "--context", "32k", "--target-loss", "2.2", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "L* = 2.200 nats/token" in text and "T = 32,768 tokens" in text
    assert (out / "loss_vs_n.png").is_file() and not (out / "loss_vs_heads.png").exists()


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "results.csv" in capsys.readouterr().err


def test_report_shows_validation_standard_error(tmp_path):
    from cogqa.report import build_report

    d = synthetic_sweep(tmp_path)
    df = pd.read_csv(d / "results.csv")
    df["loss_se"] = 0.0015
    df.to_csv(d / "results.csv", index=False)
    path = build_report(d, context=131072, fit_grid=16)
    text = path.read_text()
    assert "standard error" in text and "0.0015" in text
    numbers = json.loads((path.parent / "numbers.json").read_text())
    assert numbers["validation_loss_se"] == {"median": 0.0015, "max": 0.0015}


def test_report_top_candidates_show_serving_beside_z(tmp_path, capsys):
    """Issue 16: with an objective and hardware the top-candidates table gives each candidate's predicted
    decode time per token and tokens/s per device beside Z, units in the header; without hardware it does not."""
    pytest.importorskip("cogqa.search")
    out = tmp_path / "lat"
    assert main(["report", "demo", "--out", str(out), "--hardware", "a800-80gb", "--objective", "latency"]) == 0
    text = (out / "report.md").read_text()
    head = "| H | N (non-emb.) | memory | FLOPs/token | Z | decode time (ms/token) | tokens/s per device |"
    assert head in text
    table = text[text.index(head) :].split("\n\n")[0].splitlines()[2:]
    assert len(table) == 8 and all(row.count("|") == 8 for row in table)
    first = [c.strip() for c in table[0].strip("|").split("|")]
    assert float(first[5]) > 0 and float(first[6].replace(",", "")) > 0
    out = tmp_path / "z"
    assert main(["report", "demo", "--out", str(out)]) == 0
    assert "| H | N (non-emb.) | memory | FLOPs/token | Z |\n" in (out / "report.md").read_text()


def test_band_from_given_samples_needs_no_refit():
    """The demo hands its fit's 200 bootstrap samples to the report: the band is their 2.5/97.5% percentiles of
    the joint law's curve, computed without fitting anything (``df`` None would fail any refit)."""
    from pathlib import Path

    from cogqa.laws import load_laws
    from cogqa.report.source import bootstrap_band

    laws = load_laws(Path(__file__).parent.parent / "cogqa" / "data" / "demo_laws.json")
    j = laws.joint
    rng = np.random.default_rng(0)
    base = {"a": j.a, "b": j.b, "E": j.E, "A": j.A, "g": j.g, "B": j.B, "k": j.k}
    samples = [{k: v * float(np.exp(rng.normal(0, 0.05))) for k, v in base.items()} for _ in range(50)]
    grid = np.geomspace(4e4, 3e5, 7)
    band = bootstrap_band(None, laws, grid, samples=samples)
    assert set(band) == {law.heads for law in laws.laws}
    h, kv = 8, 1
    curves = [
        (s["a"] / grid) ** s["b"]
        + s["E"]
        + s["A"] * (h ** -s["g"] - j.n_ref ** -s["g"])
        + s["B"] * (kv ** -s["k"] - j.n_ref ** -s["k"])
        for s in samples
    ]
    lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
    assert np.allclose(band[(8, 1)][0], lo) and np.allclose(band[(8, 1)][1], hi) and (hi > lo).all()
