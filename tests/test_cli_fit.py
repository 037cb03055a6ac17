"""``cogqa fit``: output with units, laws file, and one-line errors for hostile input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cogqa.cli import main
from cogqa.laws import load_laws

DATA = Path(__file__).parent / "data"


def _table(n_per_h: int = 8) -> pd.DataFrame:
    sizes = np.geomspace(3e6, 1.2e9, n_per_h)
    rows = []
    for nh, nkv, a, b, E in ((8, 1, 5.0e7, 0.30, 1.90), (32, 8, 8.0e7, 0.28, 1.85)):
        for n in sizes:
            rows.append(
                {"n_heads": nh, "n_kv_heads": nkv, "params_non_embedding": n, "loss": (a / n) ** b + E, "context": 1024}
            )
    return pd.DataFrame(rows)


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "results.csv"
    _table().to_csv(path, index=False)
    return path


def test_table_output_has_units(results, capsys):
    assert main(["fit", str(results), "--bootstrap", "4"]) == 0
    out = capsys.readouterr().out
    assert "H=(8,1)" in out and "H=(32,8)" in out
    assert "a (params)" in out and "E (nats/tok)" in out and "R2 (loss)" in out
    assert "95% bootstrap intervals (4 resamples)" in out
    assert "nan" not in out.lower()


def test_json_is_the_laws_file_and_out_is_atomic(results, tmp_path, capsys):
    out_path = tmp_path / "laws.json"
    assert main(["fit", str(results), "--json", "--out", str(out_path), "--source", "unit test"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["form"] == "power_law_n" and printed["source"] == "unit test"
    assert {(e["n_heads"], e["n_kv_heads"]) for e in printed["laws"]} == {(8, 1), (32, 8)}
    for e in printed["laws"]:
        assert e["context"] == 1024 and e["r2"] > 0.9999
    assert json.loads(out_path.read_text()) == printed
    assert not (tmp_path / "laws.json.tmp").exists()
    law = load_laws(out_path).by_heads()[(8, 1)]
    assert law.a == pytest.approx(5.0e7, rel=1e-2) and law.E == pytest.approx(1.90, abs=1e-3)
    assert "wrote" in captured.err


def test_chinchilla_reference_through_the_cli(capsys):
    assert (
        main(
            [
                "fit",
                str(DATA / "chinchilla_fig4_epoch.csv"),
                "--form",
                "chinchilla",
                "--n-column",
                "Model Size",
                "--compute-column",
                "Training FLOP",
                "--drop-highest-loss",
                "5",
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "left out the 5 highest-loss rows" in captured.err
    law = json.loads(captured.out)["laws"][0]
    assert law["n_points"] == 240
    assert law["E"] == pytest.approx(1.817, abs=0.01)
    assert law["alpha"] == pytest.approx(0.347, abs=0.01)
    assert law["beta"] == pytest.approx(0.367, abs=0.01)


def test_heads_form_and_shared_E(tmp_path, capsys):
    n_h = 2 ** np.arange(8)
    df = pd.DataFrame({"n_heads": n_h, "n_kv_heads": 1, "size": 470, "loss": 0.579 * n_h**-0.124 + 2.473})
    path = tmp_path / "heads.jsonl"
    df.to_json(path, orient="records", lines=True)
    assert main(["fit", str(path), "--form", "heads", "--json"]) == 0
    law = json.loads(capsys.readouterr().out)["laws"][0]
    assert (
        law["size"] == 470
        and law["b"] == pytest.approx(-0.124, abs=1e-3)
        and law["c"] == pytest.approx(2.473, abs=1e-3)
    )
    res = tmp_path / "r.parquet"
    _table().to_parquet(res)
    assert main(["fit", str(res), "--shared-E"]) == 0
    assert "(shared E)" in capsys.readouterr().out


def test_duplicate_rows_warn_but_fit(tmp_path, capsys):
    df = _table()
    path = tmp_path / "dup.csv"
    pd.concat([df, df.iloc[[3]]]).to_csv(path, index=False)
    assert main(["fit", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "rows 17 repeat" in err
    assert err.count("warning:") == 1


def test_at_bound_is_reported(capsys):
    assert (
        main(
            [
                "fit",
                str(DATA / "openlm_misfitting_last_ckpt.csv"),
                "--form",
                "chinchilla",
                "--n-column",
                "N_no_emb",
                "--tokens-column",
                "D",
                "--grid",
                "4",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "[E at bound]" in captured.out
    assert "E ended on its bound" in captured.err


def _write(tmp_path: Path, name: str, df: pd.DataFrame | None = None, text: str | None = None) -> str:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    else:
        df.to_csv(path, index=False)
    return str(path)


def _mod(col, row, value):
    def f(df):
        df = df.copy()
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df

    return f


def _flags(*flags):
    """A hostile case: the good table as ``r.csv``, then ``flags``."""
    return lambda p: [_write(p, "r.csv", _table()), *flags]


def _edited(name, edit):
    """A hostile case: the good table changed by ``edit`` (DataFrame -> DataFrame), written as ``name``."""
    return lambda p: [_write(p, name, edit(_table()))]


HOSTILE = [
    ("missing file", lambda p: [p / "nope.csv"], "no such file"),
    ("directory", lambda p: [p], "is not a file"),
    ("wrong extension", lambda p: [_write(p, "r.txt", _table())], "unknown extension '.txt'"),
    ("empty file", lambda p: [_write(p, "e.csv", text="")], "the file is empty"),
    ("header only", lambda p: [_write(p, "h.csv", text="n_heads,n_kv_heads,params_non_embedding,loss\n")], "no rows"),
    (
        "missing column",
        lambda p: [_write(p, "m.csv", _table().drop(columns=["n_kv_heads"]))],
        "missing column 'n_kv_heads'",
    ),
    ("non-numeric", _edited("x.csv", _mod("loss", 2, "high")), "'loss' is not numeric in rows 3"),
    ("NaN", _edited("n.csv", _mod("loss", 4, float("nan"))), "non-finite values (NaN/inf) in rows 5"),
    (
        "negative N",
        _edited("neg.csv", _mod("params_non_embedding", 0, -3e6)),
        "'params_non_embedding' must be > 0; rows 1",
    ),
    ("zero loss", _edited("z.csv", _mod("loss", 9, 0.0)), "'loss' must be > 0; rows 10"),
    ("n_kv > n_h", _edited("kv.csv", _mod("n_kv_heads", 1, 16)), "n_kv_heads > n_heads in rows 2"),
    ("n_kv not dividing", _edited("kv3.csv", _mod("n_kv_heads", 1, 3)), "must divide n_heads; rows 2"),
    ("fractional heads", _edited("fh.csv", _mod("n_heads", 0, 8.5)), "whole numbers; rows 1"),
    ("too few points", lambda p: [_write(p, "few.csv", _table(3))], "H=(8,1): 3 points for 3 coefficients"),
    (
        "one size only",
        lambda p: [_write(p, "one.csv", _table().assign(params_non_embedding=1e8))],
        "need at least 2 model sizes",
    ),
    ("unknown form", _flags("--form", "kaplan"), "unknown form 'kaplan'"),
    ("bootstrap text", _flags("--bootstrap", "many"), "--bootstrap: expected a whole number"),
    ("bootstrap negative", _flags("--bootstrap", "-3"), "--bootstrap: expected a whole number in 0..100000"),
    ("bad seed", _flags("--seed", "1.5"), "--seed: expected a whole number"),
    ("bad grid", _flags("--grid", "0"), "--grid: expected a whole number in 1..100000"),
    ("zero workers", _flags("--bootstrap", "4", "--workers", "0"), "--workers: expected a whole number in 1..4096"),
    ("text workers", _flags("--workers", "two"), "--workers: expected a whole number"),
    (
        "shared E with chinchilla",
        lambda p: [_write(p, "r.csv", _table().assign(tokens=1e9)), "--form", "chinchilla", "--shared-E"],
        "--shared-E applies to --form n only",
    ),
    ("chinchilla without tokens", _flags("--form", "chinchilla"), "missing column 'tokens'"),
    ("drop too many", _flags("--drop-highest-loss", "16"), "--drop-highest-loss: expected a whole number in 0..15"),
    (
        "shared E, one H, 3 rows",
        lambda p: [_write(p, "s.csv", _table(3).iloc[:3]), "--shared-E"],
        "H=(8,1): 3 points for 3 coefficients; need at least 4",
    ),
    ("mapped column absent", _flags("--n-column", "Model Size"), "no column 'Model Size'"),
    ("bad context", _flags("--context", "lots"), "--context: 'lots' is not a context length"),
    ("context absent", _flags("--context", "8k"), "no rows trained at context 8192"),
    ("out not json", lambda p: [_write(p, "r.csv", _table()), "--out", str(p / "laws.txt")], "must end in .json"),
    (
        "out dir missing",
        lambda p: [_write(p, "r.csv", _table()), "--out", str(p / "no" / "laws.json")],
        "does not exist",
    ),
    ("corrupt parquet", lambda p: [_write(p, "c.parquet", text="not parquet at all")], "cannot be read as parquet"),
    ("broken jsonl", lambda p: [_write(p, "b.jsonl", text='{"n_heads": 8,\n')], "cannot be read as jsonl"),
]


@pytest.mark.parametrize("name,argv,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_inputs_give_one_line_errors(tmp_path, capsys, name, argv, message):
    args = [str(a) for a in argv(tmp_path)]
    status = main(["fit", *args])
    captured = capsys.readouterr()
    assert status == 2, (name, captured)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_subprocess_error_and_no_torch(tmp_path, results):
    bad = _write(tmp_path, "bad.csv", _mod("loss", 0, "oops")(_table()))
    proc = subprocess.run([sys.executable, "-m", "cogqa", "fit", bad], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    code = (
        "import sys; from cogqa.cli import main; "
        f"s = main(['fit', {str(results)!r}, '--json']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(s)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["form"] == "power_law_n"
