"""Tests of ``cogqa search`` and ``cogqa table``: output, JSON, files, no torch, one-line errors."""

import json
import subprocess
import sys

import pytest

from cogqa.cli import main
from cogqa.cli.search import APPROXIMATE_LINE
from cogqa.errors import CogqaError
from cogqa.units import parse_bytes


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_search_prints_ranked_table_with_units(capsys):
    status, out, err = run(["search", "--context", "128k", "--target-loss", "2.615", "--baseline", "llama3"], capsys)
    assert status == 0 and err == ""
    lines = out.splitlines()
    winners = [line for line in lines if line.startswith("* (")]
    assert len(winners) == 1
    assert "GiB" in out and "GFLOPs" in out and "B " in winners[0] or "M " in winners[0]
    assert "best vs baseline: memory" in out
    assert APPROXIMATE_LINE in lines
    assert sum(1 for line in lines if line.startswith("  (") or line.startswith("* (")) == 21


def test_search_json(capsys):
    status, out, _ = run(["search", "--context", "32k", "--target-loss", "2.7", "--json", "--max-heads", "8"], capsys)
    assert status == 0
    d = json.loads(out)
    assert d["approximate"] is True and d["context"] == 32768 and d["target_loss"] == 2.7
    assert len(d["candidates"]) == 10 and d["best"] == d["candidates"][0]
    best_keys = "n_heads n_kv_heads params_non_embedding layers hidden_size inference_flops_per_token z"
    assert set(best_keys.split()) | {"inference_memory_bytes"} <= set(d["best"])


def test_search_heads_filter(capsys):
    status, out, _ = run(
        ["search", "--context", "128k", "--target-loss", "2.615", "--heads", "8,1", "32,8", "--json"], capsys
    )
    d = json.loads(out)
    assert status == 0 and sorted((c["n_heads"], c["n_kv_heads"]) for c in d["candidates"]) == [(8, 1), (32, 8)]


def test_user_laws_not_labelled_approximate_and_extrapolation_warned(tmp_path, capsys):
    from cogqa.laws import LawSet, PowerLawN

    laws = LawSet(laws=(PowerLawN(8, 1, 1e8, 0.3, 2.0), PowerLawN(32, 8, 9e7, 0.3, 2.0)), source="my fit")
    path = laws.save(tmp_path / "laws.json")
    status, out, _ = run(["search", "--context", "8k", "--target-loss", "2.6", "--laws", str(path)], capsys)
    assert status == 0 and APPROXIMATE_LINE not in out and "warning" not in out
    status, out, _ = run(["search", "--context", "8k", "--target-loss", "50", "--laws", str(path)], capsys)
    assert status == 0 and "warning: N* =" in out and "extrapolation" in out


def test_search_budget(capsys):
    status, out, _ = run(["search", "--context", "128k", "--budget-memory", "4GiB", "--json"], capsys)
    assert status == 0
    d = json.loads(out)
    assert d["target_loss"] is None and d["budget"]["memory_bytes"] == 4 * 2**30
    assert d["best"]["inference_memory_bytes"] <= 4 * 2**30 * (1 + 1e-9)
    status, out, _ = run(["search", "--context", "128k", "--budget-z", "40000"], capsys)
    assert status == 0 and "Z <= 40000" in out and APPROXIMATE_LINE in out


def test_table_formats_and_files(tmp_path, capsys):
    status, out, _ = run(["table", "--plot", str(tmp_path / "t.png"), "--out-csv", str(tmp_path / "t.csv")], capsys)
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| L*")]
    assert len(rows) == 8 and all(r.count("(") == 5 for r in rows)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    csv = (tmp_path / "t.csv").read_text().splitlines()
    assert csv[0] == "target_loss,8192,16384,32768,65536,131072" and len(csv) == 9
    assert not list(tmp_path.glob("*.tmp*"))
    status, out, _ = run(["table", "--format", "csv", "--losses", "3.0,1.9", "--contexts", "8k"], capsys)
    assert out.splitlines()[:3] == ["target_loss,8192", '3,"(32, 1)"', "1.9,"]
    status, out, _ = run(["table", "--json"], capsys)
    d = json.loads(out)
    assert d["paper_table4_agreement"]["cells"] == 40 and d["approximate"] is True
    assert d["z_convention"]["name"] == "paper"
    assert len(d["cells"]) == 40


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--context", "128k", "--target-loss", "2.615"],
        ["table", "--losses", "2.6", "--contexts", "8k"],
    ],
)
def test_no_torch_import(argv):
    code = (
        f"import sys; from cogqa.cli import main; s = main({argv!r}); "
        "assert s == 0; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    code = (
        "import sys; from cogqa.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nassert "
        "'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_parse_bytes():
    assert parse_bytes("16GiB", "f") == 16 * 2**30
    assert parse_bytes("24GB", "f") == 24e9
    assert parse_bytes("2e9", "f") == 2e9
    assert parse_bytes("1.5 TiB", "f") == 1.5 * 2**40
    for bad in ("abc", "0", "-1GiB", "5 parsecs"):
        with pytest.raises(CogqaError):
            parse_bytes(bad, "f")


def _laws_files(tmp_path):
    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "nofield.json").write_text(
        json.dumps({"form": "power_law_n", "laws": [{"n_heads": 8, "n_kv_heads": 1, "a": 1e8, "b": 0.3}]})
    )
    (tmp_path / "empty.json").write_text(json.dumps({"form": "power_law_n", "laws": []}))
    return tmp_path


S = ["search", "--context", "128k"]
HOSTILE = [
    (["search", "--context", "0", "--target-loss", "2.6"], "--context"),
    (["search", "--context=-5", "--target-loss", "2.6"], "--context"),
    (["search", "--context", "abc", "--target-loss", "2.6"], "--context"),
    (["search", "--target-loss", "2.6"], "--context"),
    (S, "--target-loss"),
    (S + ["--target-loss", "1.0"], "unreachable"),
    (S + ["--target-loss=-1"], "--target-loss"),
    (S + ["--target-loss", "nan"], "--target-loss"),
    (S + ["--target-loss", "abc"], "--target-loss"),
    (S + ["--target-loss", "2.6", "--laws", "{d}/missing.json"], "no such file"),
    (S + ["--target-loss", "2.6", "--laws", "{d}/notjson.json"], "not valid JSON"),
    (S + ["--target-loss", "2.6", "--laws", "{d}/nofield.json"], "'E'"),
    (S + ["--target-loss", "2.6", "--laws", "{d}/empty.json"], "empty"),
    (S + ["--target-loss", "2.6", "--kv-dtype", "fp7"], "--kv-dtype"),
    (S + ["--target-loss", "2.6", "--weight-dtype", "int3"], "--weight-dtype"),
    (S + ["--target-loss", "2.6", "--lambda", "1.5"], "--lambda"),
    (S + ["--target-loss", "2.6", "--lambda", "-0.1"], "--lambda"),
    (S + ["--target-loss", "2.6", "--alpha", "0"], "--alpha"),
    (S + ["--target-loss", "2.6", "--max-heads", "0"], "--max-heads"),
    (S + ["--target-loss", "2.6", "--max-heads", "12"], "--max-heads"),
    (S + ["--target-loss", "2.6", "--max-heads", "x"], "--max-heads"),
    (S + ["--target-loss", "2.6", "--baseline", "gpt5"], "--baseline"),
    (S + ["--target-loss", "2.6", "--baseline", "{d}/missing/config.json"], "--baseline"),
    (S + ["--target-loss", "2.6", "--batch", "0"], "--batch"),
    (S + ["--target-loss", "2.6", "--heads", "8"], "--heads"),
    (S + ["--target-loss", "2.6", "--heads", "64,3"], "divide"),
    (S + ["--target-loss", "2.6", "--memory-unit", "GB"], "--memory-unit"),
    (S + ["--budget-z", "0"], "--budget-z"),
    (S + ["--budget-memory=-1GiB"], "--budget-memory"),
    (S + ["--budget-flops", "0"], "--budget-flops"),
    (S + ["--budget-memory", "1KiB"], "budget too small"),
    (S + ["--target-loss", "2.6", "--budget-z", "1e4"], "not both"),
    (["table", "--losses", ""], "--losses"),
    (["table", "--losses", "3.0,abc"], "--losses"),
    (["table", "--losses", "3.0,-2"], "--losses"),
    (["table", "--losses", "3.0,3.0"], "twice"),
    (["table", "--contexts", "0"], "--contexts"),
    (["table", "--contexts", ""], "--contexts"),
    (["table", "--format", "xml"], "--format"),
    (["table", "--max-heads", "3"], "--max-heads"),
    (["table", "--laws", "{d}/notjson.json"], "not valid JSON"),
    (["table", "--out-csv", "{d}/no/dir/t.csv"], "--out-csv"),
]


@pytest.mark.parametrize("argv, needle", HOSTILE, ids=[" ".join(a[1:]) for a, _ in HOSTILE])
def test_hostile_inputs_one_line_error(argv, needle, tmp_path, capsys):
    d = _laws_files(tmp_path)
    status, out, err = run([a.replace("{d}", str(d)) for a in argv], capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert "Traceback" not in err and "nan" not in out.lower()
