"""Search objectives on real hardware (issue 16 item 3): CostSettings, ranking by the roofline, infeasible batches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cogqa.errors import CogqaError
from cogqa.hardware import Hardware, get_hardware
from cogqa.search import CostSettings, cost_optimal_table, search

HEADS = [(32, 32), (32, 8), (32, 1), (8, 1)]


def test_cost_settings_validates_once():
    s = CostSettings(objective="throughput", hardware="h100-sxm", batch="auto")
    assert isinstance(s.hardware, Hardware) and s.z_batch == 1 and s.ranks_by == "objective_value"
    assert CostSettings().ranks_by == "z" and CostSettings().convention.name == "paper"
    for kwargs, field in [
        ({"objective": "x"}, "--objective"),
        ({"objective": "latency"}, "--hardware"),
        ({"batch": 0}, "--batch"),
        ({"batch": "auto"}, "--hardware"),
        ({"hardware": "nope"}, "nope"),
        ({"kv_dtype": "fp7"}, "fp7"),
    ]:
        with pytest.raises(CogqaError, match=field):
            CostSettings(**kwargs)


def test_default_objective_unchanged():
    plain = search(131072, 2.6, heads=HEADS)
    same = search(131072, 2.6, heads=HEADS, settings=CostSettings())
    assert plain.candidates.equals(same.candidates)
    assert "tokens_per_second" not in plain.candidates
    assert same.to_dict()["objective"] == "z" and same.to_dict()["hardware"] is None


def test_huge_context_throughput_picks_the_fewest_kv_heads():
    r = search(
        1_000_000, 2.6, heads=HEADS, settings=CostSettings(objective="throughput", hardware="h100-sxm", batch="auto")
    )
    assert r.best["n_kv_heads"] == 1 and bool(r.best["fits"])
    tps = r.candidates["tokens_per_second"].to_numpy()
    assert np.all(np.diff(tps) <= 0)  # ranked by tokens/s per device, highest first
    d = r.to_dict()
    assert d["objective"] == "throughput" and d["hardware"] == "h100-sxm"
    assert d["best"]["tokens_per_second"] > 0 and d["best"]["seconds_per_token"] > 0


def test_latency_is_seconds_per_token_and_ranked_ascending():
    r = search(8192, 2.6, heads=HEADS, settings=CostSettings(objective="latency", hardware="h100-sxm", batch=4))
    s = r.candidates["seconds_per_token"].to_numpy()
    assert np.all(np.diff(s) >= 0) and (r.candidates["serving_batch"] == 4).all()


def _compute_bound_small_memory() -> Hardware:
    # huge bandwidth: the roofline is compute bound, so the MHA model (fewest FLOPs/token at 128K) has the lowest
    # latency; 8 GB of memory: its 15+ GiB KV cache does not fit, while (32, 1) does.
    return Hardware(name="toy", peak_flops=1e15, memory_bandwidth=1e18, memory_bytes=8e9, memory_usable_fraction=1.0)


def test_infeasible_batch_is_never_chosen():
    hw = _compute_bound_small_memory()
    r = search(131072, 2.6, heads=[(32, 32), (32, 1)], settings=CostSettings(objective="latency", hardware=hw))
    c = r.candidates.set_index(["n_heads", "n_kv_heads"])
    assert c.loc[(32, 32), "seconds_per_token"] < c.loc[(32, 1), "seconds_per_token"]  # would win ...
    assert not bool(c.loc[(32, 32), "fits"])  # ... but does not fit
    assert (r.best["n_heads"], r.best["n_kv_heads"]) == (32, 1)


def test_no_candidate_fits_is_one_clear_error():
    hw = Hardware(name="tiny", peak_flops=1e12, memory_bandwidth=1e11, memory_bytes=1e9)
    with pytest.raises(CogqaError, match="no candidate fits"):
        search(131072, 2.6, heads=HEADS, settings=CostSettings(objective="throughput", hardware=hw))


def test_table_with_throughput_objective():
    s = CostSettings(objective="throughput", hardware=get_hardware("h100-sxm"), batch="auto")
    t = cost_optimal_table([2.6, 3.0], [8192, 131072], settings=s)
    long = t.attrs["long"]
    assert {"tokens_per_second", "seconds_per_token", "fits"} <= set(long.columns)
    assert (long["tokens_per_second"] > 0).all()
    assert all(str(c).startswith("(") for c in t.to_numpy().ravel())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cogqa", *args], capture_output=True, text=True)


def test_cli_search_throughput_prints_objective_and_units():
    search_128k = ["search", "--context", "128k", "--target-loss", "2.6", "--hardware", "h100-sxm"]
    p = _cli(*search_128k, "--objective", "throughput", "--batch", "auto", "--heads", "32,8", "8,1")
    assert p.returncode == 0, p.stderr
    assert "objective: maximise decode throughput" in p.stdout and "h100-sxm" in p.stdout
    assert "tokens/s per device" in p.stdout and " ms per output token" in p.stdout
    d = json.loads(_cli(*search_128k, "--objective", "latency", "--json").stdout)
    assert d["objective"] == "latency" and d["best"]["seconds_per_token"] > 0


def test_cli_table_throughput():
    p = _cli("table", "--objective", "throughput", "--hardware", "h100-sxm", "--losses", "2.6", "--contexts", "8k,128k")
    assert p.returncode == 0, p.stderr
    assert "tok/s/dev" in p.stdout and "h100-sxm" in p.stdout


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--hardware", "nope"], "--hardware"),
        (["--objective", "x"], "--objective"),
        (["--batch", "0"], "--batch"),
        (["--objective", "latency"], "--hardware"),
    ],
)
def test_cli_hostile_flags_one_line(flags, field):
    p = _cli("search", "--context", "128k", "--target-loss", "2.6", *flags)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0]


def test_search_path_does_not_import_torch_pandas_matplotlib_scipy():
    code = (
        "import sys; from cogqa.search import search, CostSettings; "
        "r = search(131072, 2.6, settings=CostSettings(objective='throughput', hardware='h100-sxm', batch='auto')); "
        "r.to_dict(); print([m for m in ('torch', 'pandas', 'matplotlib', 'scipy') if m in sys.modules])"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_cli_compare_marks_best_and_infeasible():
    p = _cli(
        "compare",
        "1.2B:32,8",
        "1.8B:8,1",
        "--context",
        "128k",
        "--objective",
        "throughput",
        "--hardware",
        "a800-80gb",
        "--batch",
        "16",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    rows = {r["config"]: r for r in json.loads(p.stdout)}
    assert not rows["1.2B:32,8"]["fits"] and rows["1.2B:32,8"]["objective_value"] is None
    assert rows["1.8B:8,1"]["best"] and rows["1.8B:8,1"]["tokens_per_second"] > 0
    bad = _cli("compare", "1.2B:32,8", "1.8B:8,1", "--objective", "latency")
    assert bad.returncode != 0 and "--hardware" in bad.stderr and "Traceback" not in bad.stderr


def test_pareto_candidates_marks_a_nondominated_set():
    from cogqa.report import pareto_candidates
    from cogqa.search import resolve_laws

    df = pareto_candidates(resolve_laws("default"), 131072, [2.7, 2.9])
    assert df["pareto"].any() and not df["pareto"].all()
    cols = ["predicted_loss", "inference_memory_bytes", "inference_flops_per_token"]
    front, rest = df[df["pareto"]][cols].to_numpy(), df[~df["pareto"]][cols].to_numpy()
    for p in front:  # no other point dominates a front point
        others = df[cols].to_numpy()
        assert not (((others <= p).all(axis=1)) & ((others < p).any(axis=1))).any()
    for q in rest:  # every other point is dominated by some point
        assert (((df[cols].to_numpy() <= q).all(axis=1)) & ((df[cols].to_numpy() < q).any(axis=1))).any()


def test_cli_report_with_objective_writes_pareto(tmp_path):
    p = _cli(
        "report",
        "default",
        "--out",
        str(tmp_path),
        "--objective",
        "throughput",
        "--hardware",
        "h100-sxm",
        "--batch",
        "auto",
    )
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "pareto.png").is_file() and "## 7. Pareto view" in md
    assert "tokens/s per device" in md and "h100-sxm" in md
    bad = _cli("report", "default", "--out", str(tmp_path / "x"), "--objective", "latency")
    assert bad.returncode != 0 and "--hardware" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_compare_batch_auto_prints_the_chosen_batch():
    args = ["compare", "1.2B:32,8", "1.8B:8,1", "--context", "128k", "--objective", "throughput"]
    p = _cli(*args, "--hardware", "h100-sxm", "--batch", "auto", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["config"]: r for r in json.loads(p.stdout)}
    for r in rows.values():  # the largest batch that fits: every row fits, at its own batch
        assert r["fits"] and r["serving_batch"] == r["max_batch"] >= 1
    assert rows["1.8B:8,1"]["serving_batch"] > rows["1.2B:32,8"]["serving_batch"]
    text = _cli(*args, "--hardware", "h100-sxm", "--batch", "auto")
    assert text.returncode == 0 and "batch auto" in text.stdout
    assert f"{rows['1.8B:8,1']['serving_batch']} seq" in text.stdout
    for bad, field in ((["--batch", "auto"], "--hardware"), (["--batch", "x"], "--batch")):
        q = _cli("compare", "1.2B:32,8", "1.8B:8,1", *bad)
        assert q.returncode != 0 and field in q.stderr and "Traceback" not in q.stderr
    q = _cli("cost", "--size", "470M", "--batch", "auto")
    assert q.returncode != 0 and "--batch auto" in q.stderr and len(q.stderr.strip().splitlines()) == 1
