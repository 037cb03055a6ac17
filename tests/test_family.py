"""Laws fitted on another model family (head size, vocabulary, reference shapes) are searched in that family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cogqa.costs import inference_flops_per_token, params_non_embedding
from cogqa.errors import CogqaError
from cogqa.family import PAPER_FAMILY, ModelFamily, shape_for_params
from cogqa.laws import law_set_from_dict
from cogqa.search import search

DEMO_FAMILY = {
    "head_dim": 16,
    "vocab_size": 320,
    "reference_shapes": [[2, 48], [2, 64], [2, 96], [2, 128]],
    "hidden_multiple": 16,
}


def laws(family=None):
    data = {
        "form": "power_law_n",
        "source": "test",
        "laws": [
            {"n_heads": 4, "n_kv_heads": 1, "a": 2e4, "b": 1.0, "E": 1.4},
            {"n_heads": 4, "n_kv_heads": 4, "a": 2e4, "b": 1.0, "E": 1.4},
        ],
    }
    if family is not None:
        data["metadata"] = {"family": family}
    return law_set_from_dict(data)


def test_paper_family_is_the_default_and_round_trips():
    assert laws().family == PAPER_FAMILY
    fam = ModelFamily.from_dict(DEMO_FAMILY)
    assert ModelFamily.from_dict(fam.to_dict()) == fam
    assert {(4, 256), (36, 1536), (80, 8192)} <= set(PAPER_FAMILY.reference_shapes) and len(
        PAPER_FAMILY.reference_shapes
    ) == 14


def test_shapes_follow_the_family_and_hit_the_size_exactly():
    fam = ModelFamily.from_dict(DEMO_FAMILY)
    real = shape_for_params(1e5, 4, 1, family=fam)
    assert real.head_dim == 16 and real.vocab_size == 320
    assert float(params_non_embedding(real)) == pytest.approx(1e5, rel=1e-9)
    # the aspect ratio is interpolated between the family's references: d/L between 24 and 64
    assert 24 <= real.hidden_size / real.layers <= 64


def test_search_costs_the_laws_family():
    demo = search(1024, 1.6, laws(DEMO_FAMILY))
    paper = search(1024, 1.6, laws())
    n_star = 2e4 / (1.6 - 1.4)
    for result in (demo, paper):
        assert result.best["params_non_embedding"] == pytest.approx(n_star, rel=1e-9)
    # same N*, different family: the demo family's vocabulary is 320, not 50,304, so the model is far cheaper
    fam = ModelFamily.from_dict(DEMO_FAMILY)
    expected = float(inference_flops_per_token(shape_for_params(n_star, 4, 1, family=fam), 1024))
    assert demo.best["inference_flops_per_token"] == pytest.approx(expected, rel=1e-9)
    assert demo.best["inference_flops_per_token"] < paper.best["inference_flops_per_token"] / 5
    assert demo.best["hidden_size"] % 16 == 0


@pytest.mark.parametrize(
    "family, message",
    [
        ({"head_dim": 0}, "family.head_dim"),
        ({"vocab_size": "big"}, "family.vocab_size"),
        ({"reference_shapes": [[2]]}, "family.reference_shapes"),
        ({"colour": "blue"}, "unknown field"),
        ("paper", "family: expected an object"),
    ],
)
def test_bad_family_is_a_one_line_error_at_load(family, message):
    with pytest.raises(CogqaError, match=message) as info:
        laws(family)
    assert "\n" not in str(info.value)


def test_cli_search_reads_the_family_from_the_laws_file(tmp_path, capsys):
    from cogqa.cli import main

    path = tmp_path / "laws.json"
    path.write_text(json.dumps({**laws(DEMO_FAMILY).to_dict()}))
    assert main(["search", "--context", "1k", "--target-loss", "1.6", "--laws", str(path), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]
    assert best["hidden_size"] < 200 and np.isfinite(best["z"])


def test_fit_records_the_family_and_size_range_of_a_collected_sweep():
    from importlib import resources

    import pandas as pd

    from cogqa.fitting import fit_results

    df = pd.read_csv(resources.files("cogqa") / "data" / "demo_results.csv")
    laws = fit_results(df, form="n").law_set("demo results")
    assert laws.family == ModelFamily.from_dict(DEMO_FAMILY | {"reference_shapes": [[2, d] for d in (48, 64, 96, 128)]})
    lo, hi = laws.metadata["params_non_embedding_range"]
    assert (lo, hi) == (df.params_non_embedding.min(), df.params_non_embedding.max())
    # a table without shape columns: no family, so search uses the paper's
    bare = df[["n_heads", "n_kv_heads", "params_non_embedding", "loss"]]
    assert fit_results(bare, form="n").law_set("bare").family == PAPER_FAMILY
