"""``cogqa cost``, ``compare`` and ``plot breakdown`` from the command line."""

import json
import subprocess
import sys

import pytest

from cogqa import costs
from cogqa.cli import main
from cogqa.shapes import paper_shape, shape_from_hf_config

LLAMA_1B = "tests/data/llama-3.2-1b-config.json"


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cost_json_keys_and_values(capsys):
    status, out, _ = run(capsys, "cost", "--size", "470M", "--context", "128k", "--json")
    assert status == 0
    data = json.loads(out)
    shape = paper_shape("470M")
    assert data["params"] == int(costs.params_total(shape))
    assert data["params_non_embedding"] == 471_891_200
    assert data["kv_cache_bytes_per_token"] == 2 * 24 * 20 * 64 * 2
    assert data["inference_flops_per_token"] == int(costs.inference_flops_per_token(shape, 131072))
    assert data["inference_memory_bytes"] == int(costs.params_total(shape) * 2 + 131072 * 2 * 24 * 20 * 64 * 2)
    assert all(isinstance(data[k], int) for k in ("params", "params_non_embedding", "kv_cache_bytes_per_token"))


def test_cost_several_contexts_and_hf_config(capsys):
    status, out, _ = run(
        capsys, "cost", "--hf-config", LLAMA_1B, "--context", "8k,131072", "--json", "--kv-dtype", "fp8"
    )
    rows = json.loads(out)
    assert status == 0 and [r["context"] for r in rows] == [8192, 131072]
    shape = shape_from_hf_config(LLAMA_1B)
    assert rows[0]["params"] == 1_235_814_400  # Llama-3.2-1B, tied embeddings
    assert rows[1]["kv_cache_bytes_per_token"] == 2 * 16 * 8 * 64 * 1
    assert rows[1]["kv_cache_bytes"] == 131072 * 16384
    status, out, _ = run(capsys, "cost", "--hf-config", LLAMA_1B, "--context", "128k")
    assert "attention computation (time-variant)" in out and "GiB" in out and "GFLOPs" in out
    assert shape.n_heads == 32


def test_explicit_shape_and_compare(capsys):
    status, out, _ = run(
        capsys,
        "cost",
        "--layers",
        "2",
        "--hidden",
        "48",
        "--ffn",
        "96",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "16",
        "--vocab",
        "100",
        "--context",
        "1000",
        "--json",
    )
    assert status == 0 and json.loads(out)["params"] == 18432 + 27648 + 240 + 4800
    status, out, _ = run(capsys, "compare", LLAMA_1B, "1.8B:8,1", "--context", "128k", "--json")
    rows = json.loads(out)
    assert status == 0 and rows[0]["inference_memory_bytes_vs_first_pct"] == 0
    second = paper_shape("1.8B", 8, 1)
    mem = float(costs.inference_memory_bytes(second, 131072)["total"])
    assert rows[1]["inference_memory_bytes"] == int(mem)
    assert rows[1]["inference_memory_bytes_vs_first_pct"] == pytest.approx(
        100 * (mem / rows[0]["inference_memory_bytes"] - 1)
    )


def test_context_distribution_and_training_costs(tmp_path, capsys):
    hist = tmp_path / "lengths.csv"
    hist.write_text("length,count\n1024,5\n8192,3\n131072,2\n")
    status, out, _ = run(
        capsys,
        "cost",
        "--size",
        "470M",
        "--context-dist",
        str(hist),
        "--json",
        "--train-tokens",
        "1B",
        "--train-context",
        "8k",
    )
    data = json.loads(out)
    t_mean = (5 * 1024 + 3 * 8192 + 2 * 131072) / 10
    assert status == 0 and data["context"] == t_mean
    shape = paper_shape("470M")
    assert data["inference_flops_per_token"] == pytest.approx(float(costs.inference_flops_per_token(shape, t_mean)))
    assert data["training_flops"] == pytest.approx(3e9 * float(costs.inference_flops_per_token(shape, 4096)))
    status, out2, _ = run(capsys, "cost", "--size", "470M", "--context-dist", "1k:5,8k:3,128k:2", "--json")
    assert json.loads(out2)["context"] == t_mean


def test_plot_breakdown_writes_png(tmp_path, capsys):
    out = tmp_path / "fig.png"
    status, text, _ = run(capsys, "plot", "breakdown", "--size", "1.2B", "--max-context", "128k", "--out", str(out))
    assert status == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


HOSTILE = [
    (["cost", "--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "3"], "n_kv_heads"),
    (["cost", "--layers", "0", "--hidden", "64", "--heads", "4"], "--layers"),
    (["cost", "--layers", "2", "--hidden", "-64", "--heads", "4"], "--hidden"),
    (["cost", "--size", "470M", "--context", "0"], "--context"),
    (["cost", "--size", "470M", "--context", "12q"], "--context"),
    (["cost", "--size", "470M", "--kv-dtype", "fp12"], "dtype"),
    (["cost", "--size", "470M", "--weight-dtype", "double"], "dtype"),
    (["cost", "--size", "470M", "--batch", "0"], "--batch"),
    (["cost", "--size", "471Q"], "471Q"),
    (["cost", "--size", "470M", "--heads", "8", "--kv-heads", "3"], "n_kv_heads"),
    (["cost", "--size", "470M", "--hf-config", LLAMA_1B], "name the model once"),
    (["cost", "--size", "470M", "--lambda", "1.5"], "lambda"),
    (["compare", "470M"], "at least two"),
    (["cost", "--size", "470M", "--context-dist", "1k:-1"], "--context-dist"),
    (["cost", "--size", "470M", "--train-tokens", "lots"], "--train-tokens"),
]


@pytest.mark.parametrize("argv, needle", HOSTILE, ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_hostile_inputs_one_line(argv, needle, capsys):
    status, out, err = run(capsys, *argv)
    assert status != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err


@pytest.mark.parametrize(
    "content, needle",
    [('{"model_type": "gpt2", "n_embd": 768}', "gpt2"), ('{"model_type": "llama", "hidden_', "not valid JSON")],
)
def test_bad_config_files_exit_cleanly_in_a_subprocess(tmp_path, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "cogqa", "cost", "--hf-config", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1 and needle in proc.stderr


def test_cost_does_not_import_torch():
    code = (
        "import sys\n"
        "from cogqa.cli import main\n"
        "assert main(['cost', '--size', '470M', '--context', '128k', '--json']) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'scipy', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_each_command_builds_only_its_group_and_the_groups_cover_the_full_parser(capsys):
    import argparse

    from cogqa.cli import COMMAND_MODULES, _command_of, build_parser

    def commands(parser):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(action.choices)

    everything = commands(build_parser())
    assert everything == {c for group in COMMAND_MODULES.values() for c in group}
    for group in COMMAND_MODULES.values():
        for command in group:
            assert commands(build_parser(command)) == set(group)
    assert commands(build_parser("no-such-command")) == everything  # argparse then names the valid choices
    assert _command_of(["--debug", "search", "--context", "8k"]) == "search"
    assert _command_of([]) is None
    assert main(["--debug", "cost", "--size", "470M", "--context", "8k", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as stop:
        main(["no-such-command"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
