"""Tests of cogqa.search: the cost-optimal search, its inverse, the Table 4 grid, the default laws."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cogqa.costs import ZWeights, inference_flops_per_token, inference_memory_bytes, params_total, z_cost
from cogqa.errors import CogqaError
from cogqa.family import shape_for_params
from cogqa.laws import LawSet, PowerLawN, load_laws
from cogqa.search import (
    PAPER_TABLE4,
    PAPER_TABLE4_CONTEXTS,
    CostSettings,
    candidate_heads,
    compare_with_paper_table4,
    cost_optimal_table,
    lowest_loss_within_budget,
    parse_cell,
    plot_cost_optimal_table,
    search,
)
from cogqa.shapes import paper_shape

ROOT = Path(__file__).resolve().parents[1]


def uniform_laws(a=2e8, b=0.5, E=2.0, special=None, heads=None):
    """Equal laws for every candidate H, except ``special`` = {H: (a, b, E)}."""
    special = special or {}
    laws = []
    for h, kv in heads or candidate_heads(32):
        aa, bb, ee = special.get((h, kv), (a, b, E))
        laws.append(PowerLawN(n_heads=h, n_kv_heads=kv, a=aa, b=bb, E=ee))
    return LawSet(laws=tuple(laws), source="test")


def values_z(n, h, kv, T, weights=ZWeights()):
    """Z recomputed from cogqa.costs alone, M in values (parameters + 2 T L n_kv d_h)."""
    shape = shape_for_params(n, h, kv)
    memory = params_total(shape) + 2 * T * shape.layers * kv * shape.head_dim
    return float(z_cost(memory, inference_flops_per_token(shape, T), weights))


def test_candidate_heads():
    heads = candidate_heads(32)
    assert len(heads) == 21
    assert all(kv <= h and h & (h - 1) == 0 and kv & (kv - 1) == 0 for h, kv in heads)
    assert candidate_heads(1) == [(1, 1)]
    assert len(candidate_heads(64)) == 28
    for bad in (0, 12, -4, 2.0, True):
        with pytest.raises(CogqaError):
            candidate_heads(bad)


def test_equal_laws_pick_the_cheapest_heads():
    # FLOPs only (lambda = 0): at equal N the fewest query heads win at long context
    r = search(65536, 2.6, uniform_laws(), settings=CostSettings(weights=ZWeights(lam=0.0)))
    assert r.best["n_heads"] == 1
    # memory only (lambda = 1): at equal N one KV head wins; more query heads mean fewer layers,
    # hence a smaller KV cache (Appendix B.1 shapes keep N fixed)
    r = search(65536, 2.6, uniform_laws(), settings=CostSettings(weights=ZWeights(lam=1.0)))
    assert (r.best["n_heads"], r.best["n_kv_heads"]) == (32, 1)
    # all N* equal when the laws are equal
    assert np.allclose(r.candidates["params_non_embedding"], r.candidates["params_non_embedding"].iloc[0])


def test_one_much_better_law_wins():
    laws = uniform_laws(special={(4, 2): (2e6, 0.5, 2.0)})
    r = search(131072, 2.6, laws)
    assert (r.best["n_heads"], r.best["n_kv_heads"]) == (4, 2)
    assert r.candidates["z"].is_monotonic_increasing


def test_n_star_exact_and_z_recomputed():
    laws = uniform_laws(special={(8, 1): (3e8, 0.37, 1.9), (32, 8): (1.1e8, 0.61, 2.1)})
    T, L = 32768, 2.7
    r = search(T, L, laws, settings=CostSettings(convention="eq4-per-token"))
    assert r.to_dict()["z_convention"]["name"] == "eq4-per-token"
    by = laws.by_heads()
    for row in r.candidates.itertuples():
        law = by[(row.n_heads, row.n_kv_heads)]
        expected = law.a / (L - law.E) ** (1 / law.b)
        assert row.params_non_embedding == pytest.approx(expected, rel=1e-9)
        assert row.z == pytest.approx(values_z(expected, row.n_heads, row.n_kv_heads, T), rel=1e-9)
    # bytes convention: Z from inference_memory_bytes
    rb = search(T, L, laws, settings=CostSettings(convention="bytes-per-token", kv_dtype="fp8"))
    row = rb.best
    shape = shape_for_params(row["params_non_embedding"], row["n_heads"], row["n_kv_heads"])
    mem = inference_memory_bytes(shape, T, 1, "bf16", "fp8")["total"]
    assert row["z"] == pytest.approx(float(z_cost(mem, inference_flops_per_token(shape, T))), rel=1e-9)
    assert row["inference_memory_bytes"] == pytest.approx(float(mem), rel=1e-9)
    # the default, paper convention: M = 2 bytes (N + 2TLd_h n_kv), C = T (2N + 4TLd_h n_h), N non-embedding
    rp = search(T, L, laws)
    assert rp.convention.name == "paper" and rp.to_dict()["z_convention"]["memory_unit"] == "bytes"
    for row in rp.candidates.itertuples():
        n = row.params_non_embedding
        shape = shape_for_params(n, row.n_heads, row.n_kv_heads)
        M = 2 * (n + 2 * T * shape.layers * 64 * row.n_kv_heads)
        C = T * (2 * n + 4 * T * shape.layers * 64 * row.n_heads)
        assert row.z == pytest.approx(0.9 * M**0.5 + 0.1 * C ** (1 / 3), rel=1e-9)


def test_savings_against_shape_baseline_recomputed():
    T = 131072
    r = search(T, 2.615, "default", baseline="1.2B:32,8")
    base = paper_shape("1.2B", 32, 8)
    mem = float(inference_memory_bytes(base, T)["total"])
    flops = float(inference_flops_per_token(base, T))
    n = 962704896.0  # paper convention: M = 2 bytes (N + 2TLd_h n_kv), C = T (2N + 4TLd_h n_h), N non-embedding
    z = float(z_cost(2 * (n + 2 * T * 36 * 8 * 64), T * (2 * n + 4 * T * 36 * 64 * 32)))
    assert r.baseline["inference_memory_bytes"] == pytest.approx(mem)
    assert r.savings["memory"] == pytest.approx(1 - r.best["inference_memory_bytes"] / mem, rel=1e-12)
    assert r.savings["flops"] == pytest.approx(1 - r.best["inference_flops_per_token"] / flops, rel=1e-12)
    assert r.savings["z"] == pytest.approx(1 - r.best["z"] / z, rel=1e-9)
    law = load_laws("default").by_heads()[(32, 8)]
    assert r.baseline["params_non_embedding"] == 962704896.0
    assert r.baseline["predicted_loss"] == pytest.approx(float(law.loss(962704896.0)), rel=1e-12)
    assert r.baseline["sized_by"] == "shape"


def test_hf_config_baseline_uses_its_own_shape():
    from cogqa.shapes import shape_from_hf_config

    path = ROOT / "tests" / "data" / "llama-3.2-1b-config.json"
    r = search(131072, 2.615, "default", baseline=str(path))
    shape = shape_from_hf_config(path)
    assert r.baseline["inference_memory_bytes"] == pytest.approx(float(inference_memory_bytes(shape, 131072)["total"]))
    assert (r.baseline["n_heads"], r.baseline["n_kv_heads"]) == (32, 8) and r.baseline["layers"] == 16


def test_llama3_baseline_sized_by_its_law():
    r = search(131072, 2.615, "default", baseline="llama3")
    law = load_laws("default").by_heads()[(32, 8)]
    assert r.baseline["params_non_embedding"] == pytest.approx(float(law.params_for_loss(2.615)), rel=1e-12)
    assert (r.baseline["n_heads"], r.baseline["n_kv_heads"]) == (32, 8)
    assert r.savings["memory"] > 0.3 and r.savings["z"] > 0.2
    # without a (32, 8) law the nearest law is used and named
    laws = uniform_laws(heads=[(16, 8), (8, 1)])
    rr = search(131072, 2.615, laws, baseline="llama3")
    assert rr.baseline["law_heads"] == [16, 8]


def test_unreachable_rows_kept_and_all_unreachable_is_an_error():
    laws = uniform_laws(special={(32, 32): (2e8, 0.5, 2.7), (16, 16): (2e8, 0.5, 2.7)})
    r = search(8192, 2.65, laws)
    unreachable = r.candidates[~r.candidates["reachable"]]
    assert sorted(zip(unreachable.n_heads, unreachable.n_kv_heads)) == [(16, 16), (32, 32)]
    assert r.candidates["reachable"].iloc[:19].all()
    with pytest.raises(CogqaError, match="unreachable"):
        search(8192, 1.5, laws)


def test_filters():
    r = search(8192, 2.6, "default", max_heads=8)
    assert r.candidates["n_heads"].max() == 8 and len(r.candidates) == 10
    r = search(8192, 2.6, "default", heads=[(8, 1), (32, 8)])
    assert len(r.candidates) == 2
    # the default is a joint law: any H can be searched, also ones without runs of their own
    assert search(8192, 2.6, "default", heads=[(64, 8)]).best["n_heads"] == 64
    with pytest.raises(CogqaError, match="no law"):
        search(8192, 2.6, uniform_laws(), heads=[(64, 8)])


def test_context_text_accepted():
    assert search("128k", 2.615).context == 131072


def test_documented_validation_numbers():
    """docs/default-laws.md quotes these; regenerate the docs if this fails."""
    table = cost_optimal_table(list(PAPER_TABLE4), PAPER_TABLE4_CONTEXTS)
    agreement = compare_with_paper_table4(table)
    assert (agreement["exact"], agreement["one_step"]) == (14, 12)
    r = search(131072, 2.615, baseline="llama3")
    assert (r.best["n_heads"], r.best["n_kv_heads"]) == (16, 1)
    forced = search(131072, 2.615, heads=[(8, 1)], baseline="llama3")
    assert forced.savings["z_memory"] == pytest.approx(0.515, abs=5e-4) and forced.savings["z_flops"] == pytest.approx(
        0.583, abs=5e-4
    )


def test_to_dict_json_keys():
    laws = uniform_laws(special={(32, 32): (2e8, 0.5, 2.7)})
    d = search(131072, 2.6, laws, baseline="llama3").to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    for key in ("best", "candidates", "baseline", "savings", "approximate", "laws_source", "context", "target_loss"):
        assert key in back
    for key in (
        "n_heads",
        "n_kv_heads",
        "params_non_embedding",
        "layers",
        "hidden_size",
        "inference_flops_per_token",
        "inference_memory_bytes",
        "kv_cache_bytes",
        "z",
        "reachable",
    ):
        assert key in back["best"]
        assert all(key in c for c in back["candidates"])
    assert back["candidates"][-1]["reachable"] is False and back["candidates"][-1]["z"] is None
    assert isinstance(back["best"]["layers"], int)


def test_default_laws_shipped_and_labelled():
    laws = load_laws("default")
    assert laws.approximate is True and len(laws.laws) == 21
    assert "Table 4 was not used" in laws.source
    r = search(131072, 2.615)
    assert r.approximate is True and r.to_dict()["approximate"] is True


def test_default_laws_reproducible_by_the_script():
    spec = importlib.util.spec_from_file_location("calib", ROOT / "scripts" / "calibrate_default_laws.py")
    calib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calib)
    fresh = calib.law_set(calib.calibrate())
    shipped = load_laws("default").by_heads()
    for law in fresh.laws:
        old = shipped[law.heads]
        assert (law.a, law.b, law.E) == pytest.approx((old.a, old.b, old.E), rel=1e-12)


def test_default_qualitative_behaviour_over_table4_grid():
    table = cost_optimal_table(list(PAPER_TABLE4), PAPER_TABLE4_CONTEXTS)
    product = np.array([[math.prod(parse_cell(c)) for c in row] for row in table.itertuples(index=False)])
    # rows: decreasing L*; columns: increasing T
    assert (np.diff(product, axis=1) <= 0).all(), "n_h*n_kv grew with T at fixed L*"
    assert (np.diff(product, axis=0) >= 0).all(), "n_h*n_kv shrank as L* decreased at fixed T"


def test_budget_consistent_with_forward_search():
    T, L = 65536, 2.6
    forward = search(T, L)
    inverse = lowest_loss_within_budget(T, budget_z=forward.best["z"] * (1 + 1e-9))
    assert inverse.best["predicted_loss"] <= L + 1e-6
    row = inverse.candidates.set_index(["n_heads", "n_kv_heads"]).loc[
        (forward.best["n_heads"], forward.best["n_kv_heads"])
    ]
    assert row["params_non_embedding"] == pytest.approx(forward.best["params_non_embedding"], rel=1e-6)
    # memory and FLOPs budgets hold for every reachable row
    inv = lowest_loss_within_budget(T, budget_memory=4e9, budget_flops=2e10)
    ok = inv.candidates[inv.candidates.reachable]
    assert (ok.inference_memory_bytes <= 4e9 * (1 + 1e-9)).all() and (
        ok.inference_flops_per_token <= 2e10 * (1 + 1e-9)
    ).all()
    assert inv.candidates["predicted_loss"][inv.candidates.reachable].is_monotonic_increasing
    with pytest.raises(CogqaError, match="budget too small"):
        lowest_loss_within_budget(T, budget_memory=1e3)
    with pytest.raises(CogqaError, match="give a budget"):
        lowest_loss_within_budget(T)


def test_table_paper_comparison_and_plot(tmp_path):
    table = cost_optimal_table([3.0, 2.6, 1.0], [8192, 131072])
    assert list(table.columns) == [8192, 131072] and list(table.index) == [3.0, 2.6, 1.0]
    assert table.loc[1.0, 8192] is None and isinstance(table.loc[3.0, 8192], str)
    long = table.attrs["long"]
    assert len(long) == 6 and not long["reachable"].iloc[-1]
    path = plot_cost_optimal_table(table, tmp_path / "t.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    import pandas as pd

    paper = pd.DataFrame(
        {
            T: [f"({h}, {kv})" for h, kv in (row[i] for row in PAPER_TABLE4.values())]
            for i, T in enumerate(PAPER_TABLE4_CONTEXTS)
        },
        index=list(PAPER_TABLE4),
    )
    assert compare_with_paper_table4(paper)["exact"] == 40


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"context": 0, "target_loss": 2.6}, "context"),
        ({"context": float("nan"), "target_loss": 2.6}, "context"),
        ({"context": "abc", "target_loss": 2.6}, "context"),
        ({"context": None, "target_loss": 2.6}, "context"),
        ({"context": 8192, "target_loss": -1.0}, "target_loss"),
        ({"context": 8192, "target_loss": float("nan")}, "target_loss"),
        ({"context": 8192, "target_loss": 2.6, "settings": {"batch": 2}}, "settings must be a"),
        ({"context": 8192, "target_loss": 2.6, "max_heads": 3}, "power of two"),
        ({"context": 8192, "target_loss": 2.6, "baseline": "nonsense"}, "baseline"),
        ({"context": 8192, "target_loss": 2.6, "laws": "/no/such/laws.json"}, "no such file"),
    ],
)
def test_search_bad_input(kwargs, match):
    with pytest.raises(CogqaError, match=match):
        search(**kwargs)
