"""The joint law across head configurations: fit, laws file, search, and the default laws' calibration."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cogqa.costs import Z_CONVENTIONS, z_inputs
from cogqa.errors import CogqaError
from cogqa.fitting import fit_results
from cogqa.laws import HeadsJointLaw, LawSet, law_set_from_dict, load_laws
from cogqa.search import UnreachableTarget, search
from cogqa.shapes import ModelShape

ROOT = Path(__file__).resolve().parents[1]
TRUE = HeadsJointLaw(a=6e7, b=0.2, E=2.0, A=0.12, g=0.55, B=0.03, k=0.9)


def synthetic_table(law=TRUE, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for h, kv in ((1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 4), (8, 8), (32, 8)):
        for n in np.geomspace(3e7, 7e8, 5):
            rows.append(
                {
                    "n_heads": h,
                    "n_kv_heads": kv,
                    "params_non_embedding": n,
                    "loss": float(law.loss(n, h, kv)) + noise * rng.standard_normal(),
                }
            )
    return pd.DataFrame(rows)


def test_joint_fit_recovers_known_coefficients():
    rep = fit_results(synthetic_table(), form="heads-joint")
    got = rep.laws[0]
    for name in ("b", "E", "A", "g", "B", "k"):
        assert got[name] == pytest.approx(getattr(TRUE, name), rel=2e-3), name
    assert got["a"] == pytest.approx(TRUE.a, rel=2e-2)
    assert got["n_ref"] == 32 and "at_bound" not in got
    laws = rep.law_set("synthetic")
    assert laws.form == "heads_joint" and len(laws.laws) == 21
    # any H, also ones without runs: N*(H) inverts the joint law exactly
    law = laws.law_for((16, 2))
    n = float(law.params_for_loss(2.5))
    assert float(laws.joint.loss(n, 16, 2)) == pytest.approx(2.5, rel=1e-9)


def test_joint_laws_file_round_trip_and_old_files(tmp_path):
    data = LawSet(joint=TRUE, source="t").to_dict()
    assert data["form"] == "heads_joint" and len(data["laws"]) == 1
    back = law_set_from_dict(json.loads(json.dumps(data)))
    assert back.joint == TRUE and back.by_heads()[(8, 1)].E == pytest.approx(float(TRUE.floor(8, 1)))
    old = {"form": "power_law_n", "laws": [{"n_heads": 8, "n_kv_heads": 1, "a": 1e8, "b": 0.3, "E": 2.0}]}
    assert law_set_from_dict(old).joint is None
    with pytest.raises(CogqaError, match="exactly one"):
        law_set_from_dict({"form": "heads_joint", "laws": []})
    with pytest.raises(CogqaError, match="'k'"):
        law_set_from_dict({"form": "heads_joint", "laws": [{"a": 1, "b": 1, "E": 1, "A": 0, "g": 1, "B": 0}]})


def test_unreachable_target_has_its_own_exception():
    with pytest.raises(UnreachableTarget):
        search(131072, 1.0, LawSet(joint=TRUE))


def test_paper_convention_matches_figure2_readout():
    """The Z panel of Figure 2 (T = 128K), read from the figure, against the paper convention."""
    points = pd.read_csv(ROOT / "cogqa" / "data" / "paper_fig12_loss_points.csv")
    readout = pd.read_csv(ROOT / "cogqa" / "data" / "paper_fig2_cost_axis_readout.csv")
    assert set(Z_CONVENTIONS) >= {"paper", "eq4-per-token"}
    for h, kv in ((8, 8), (8, 4)):
        pts = points[(points.n_heads == h) & (points.n_kv_heads == kv)].sort_values("layers")
        z_read = readout[(readout.n_heads == h) & (readout.n_kv_heads == kv) & (readout.panel == "Z")].sort_values(
            "x_value"
        )
        for row, x in zip(pts.itertuples(), z_read.x_value):
            shape = ModelShape(
                layers=row.layers, hidden_size=row.hidden_size, ffn_size=row.ffn_size, n_heads=h, n_kv_heads=kv
            )
            M, C = z_inputs(shape, 131072, "paper")
            assert 0.9 * M**0.5 + 0.1 * C ** (1 / 3) == pytest.approx(x, rel=1e-3)


def test_default_laws_recreated_by_the_calibration_script():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "scripts" / "calibrate_default_laws.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.calibrate()
    shipped = load_laws("default")
    assert shipped.approximate and shipped.joint is not None
    made = mod.law_set(c).joint
    for name in ("a", "b", "E", "A", "g", "B", "k"):
        assert getattr(made, name) == pytest.approx(getattr(shipped.joint, name), rel=1e-5), name
    assert c["rms"] <= 0.006 and not c["at_bound"]


def test_search_at_training_budget_known_answers():
    from cogqa.costs import paper_training_flops
    from cogqa.family import shape_for_params
    from cogqa.laws import ChinchillaLaw
    from cogqa.search import search_at_training_budget

    # a vanishing data term: the answer is the plain search's N*(H) = a / (L* - E(H))^(1/b)
    law = HeadsJointLaw(a=6e7, b=0.2, E=2.0, A=0.12, g=0.55, B=0.03, k=0.9, B_D=1e-30, beta_D=0.3)
    r = search_at_training_budget(131072, 2.6, 1e22, law, heads=[(8, 1), (32, 8)])
    plain = search(131072, 2.6, LawSet(joint=TRUE), heads=[(8, 1), (32, 8)])
    assert (r["best"]["n_heads"], r["best"]["n_kv_heads"]) == (plain.best["n_heads"], plain.best["n_kv_heads"])
    assert r["best"]["params_non_embedding"] == pytest.approx(plain.best["params_non_embedding"], rel=1e-6)
    # per-H Chinchilla laws with a data term: the answer reaches L* exactly, spends the budget
    # (Eq. 11), and a slightly smaller model would not reach it
    laws = [
        ChinchillaLaw(E=1.8, A=400.0, B=400.0, alpha=0.34, beta=0.28, n_heads=h, n_kv_heads=kv)
        for h, kv in ((8, 1), (8, 8))
    ]
    C = 1e23
    r = search_at_training_budget(131072, 2.4, C, laws)
    best = r["best"]
    assert best["predicted_loss"] == pytest.approx(2.4, abs=1e-9)
    shape = shape_for_params(best["params_non_embedding"], best["n_heads"], best["n_kv_heads"])
    assert float(paper_training_flops(shape, best["tokens"], 8192)) == pytest.approx(C, rel=1e-9)
    n = 0.99 * best["params_non_embedding"]
    d = C / float(paper_training_flops(shape_for_params(n, best["n_heads"], best["n_kv_heads"]), 1.0, 8192))
    assert float(laws[0].loss(n, d)) > 2.4
    # equal laws: the configuration with one KV head is cheaper at 128K and gets more tokens
    assert (best["n_heads"], best["n_kv_heads"]) == (8, 1)
    with pytest.raises(UnreachableTarget):
        search_at_training_budget(131072, 1.9, 1e15, laws)


def test_cli_search_train_flops(tmp_path, capsys):
    from cogqa.cli import main

    laws = {
        "form": "chinchilla",
        "source": "t",
        "laws": [
            {"E": 1.8, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28, "n_heads": h, "n_kv_heads": kv}
            for h, kv in ((8, 1), (32, 8))
        ],
    }
    path = tmp_path / "laws.json"
    path.write_text(json.dumps(laws))
    assert (
        main(
            [
                "search",
                "--context",
                "128k",
                "--target-loss",
                "2.4",
                "--train-flops",
                "1e23",
                "--laws",
                str(path),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["best"]["n_heads"], out["best"]["n_kv_heads"]) == (8, 1) and out["z_convention"]["name"] == "paper"


def test_cli_fit_heads_joint(tmp_path, capsys):
    from cogqa.cli import main

    path = tmp_path / "results.csv"
    synthetic_table().to_csv(path, index=False)
    out = tmp_path / "laws.json"
    assert main(["fit", str(path), "--form", "heads-joint", "--out", str(out)]) == 0
    assert "E at n_ref (nats/tok)" in capsys.readouterr().out
    laws = load_laws(out)
    assert laws.form == "heads_joint" and laws.joint.b == pytest.approx(TRUE.b, rel=2e-3)
    assert (
        main(["search", "--laws", str(out), "--context", "128k", "--target-loss", "2.6", "--heads", "12,4", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["best"]["n_heads"] == 12
