"""Trainer: WSD values, AdamW groups, config round trip, batch plan, data order, a tiny real run, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, TINY_SHAPE, batch_args, tiny_config, train_argv

from cogqa.errors import CogqaError
from cogqa.optim import wsd_lr, wsd_phase_steps
from cogqa.train import OptimConfig, TrainConfig, apply_overrides, plan_steps, sample_indices

ROOT = Path(__file__).resolve().parents[1]


def _data_module():
    data = pytest.importorskip("cogqa.data")
    if not hasattr(data, "prepare"):
        pytest.skip("cogqa.data (the data helper's module) is not there yet")
    return data


# ----------------------------------------------------------------------------- schedule


def test_wsd_hand_computed_values():
    S, lr = 100, 1e-3  # warmup 10 steps, decay over the last 20 (steps 80..99), floor 1e-4
    assert wsd_phase_steps(S) == (10, 20)
    assert wsd_lr(0, S, lr) == 0.0
    assert wsd_lr(5, S, lr) == pytest.approx(0.5e-3)
    assert wsd_lr(10, S, lr) == pytest.approx(1e-3)
    assert wsd_lr(79, S, lr) == pytest.approx(1e-3)
    assert wsd_lr(80, S, lr) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 20)))
    assert wsd_lr(89, S, lr) == pytest.approx(0.55e-3)  # half-way through the cosine
    assert wsd_lr(99, S, lr) == pytest.approx(1e-4)  # last step: exactly 10 % of max
    v = wsd_lr(np.arange(S), S, lr)
    assert v.shape == (S,) and np.all(np.diff(v[:10]) > 0) and np.all(np.diff(v[80:]) < 0)


def test_wsd_rejects_bad_settings():
    with pytest.raises(CogqaError, match="optim.lr"):
        wsd_lr(0, 10, float("nan"))
    with pytest.raises(CogqaError, match="warmup_fraction"):
        wsd_phase_steps(10, 0.9, 0.2)


# ----------------------------------------------------------------------------- param groups


def test_weight_decay_on_exactly_the_linear_weights():
    pytest.importorskip("torch")
    from cogqa.model import GQADecoder
    from cogqa.optim import param_groups
    from cogqa.shapes import ModelShape

    model = GQADecoder(ModelShape(**TINY_SHAPE, vocab_size=320))
    decay, no_decay = param_groups(model, 0.1)
    expected = sorted(
        f"layers.{i}.{m}.weight"
        for i in range(2)
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    )
    names = {n for n, _ in model.named_parameters()}
    # whatever the model calls its projections, the decayed set is all 2-D non-embedding weights
    assert sorted(decay["names"]) == sorted(n for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    if set(expected) <= names:
        assert sorted(decay["names"]) == expected
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embed_tokens.weight" in no_decay["names"]  # tied LM head = embedding: not decayed
    assert all(p.dim() == 1 for p in no_decay["params"][1:])  # the rest are norm gains
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_dotted_overrides():
    c = TrainConfig(data="d", out_dir="o", shape=dict(TINY_SHAPE), optim=OptimConfig(lr=1e-3), tokens=1e6)
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c
    c2 = apply_overrides(c, ["optim.lr=5e-4", "seed=3", "optim.betas=[0.9, 0.99]"])
    assert c2.optim.lr == 5e-4 and c2.seed == 3 and c2.optim.betas == (0.9, 0.99)
    with pytest.raises(CogqaError, match="optim.lr"):
        apply_overrides(c, ["optim.lr=fast"])
    with pytest.raises(CogqaError, match="unknown key 'optim.lrr'"):
        apply_overrides(c, ["optim.lrr=1"])
    with pytest.raises(CogqaError, match="unknown field"):
        TrainConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(CogqaError, match="name the model once"):
        TrainConfig(data="d", out_dir="o")


def test_cli_heads_take_the_one_head_parser():
    from cogqa.cli import build_parser
    from cogqa.cli.train import config_from_args

    parser = build_parser()
    base = ["train", "--data", "d", "--out", "o", "--layers", "2", "--hidden", "64", "--lr", "1e-3"]
    for heads in (["--heads", "8,1"], ["--heads", "H=(8,1)"], ["--heads", "8", "--kv-heads", "1"]):
        cfg = config_from_args(parser.parse_args([*base, *heads]))
        assert (cfg.shape["n_heads"], cfg.shape["n_kv_heads"]) == (8, 1), heads
    cfg = config_from_args(
        parser.parse_args(["train", "--data", "d", "--out", "o", "--size", "470M", "--heads", "32:8"])
    )
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.batch_tokens, cfg.tokens_per_param) == (32, 8, 524_288, 20.0)
    with pytest.raises(CogqaError, match="once"):
        config_from_args(parser.parse_args([*base, "--heads", "8,1", "--kv-heads", "2"]))


def test_plan_steps_hand_computed():
    c = TrainConfig(data="d", out_dir="o", size="470M", micro_batch=4)
    p = plan_steps(c, n_non_embedding=1e6, context=8192, world=2)
    # 524288 / 8192 = 64 sequences per step = 2 ranks x 4 per micro-batch x 8 accumulation steps
    assert p["global_batch"] == 64 and p["accum"] == 8 and p["batch_tokens"] == 524288
    assert p["steps"] == math.ceil(20e6 / 524288) == 39
    c = TrainConfig(data="d", out_dir="o", size="470M", micro_batch=3, tokens=1000, batch_tokens=100)
    p = plan_steps(c, 1.0, context=10, world=2)  # 10 sequences rounded up to a multiple of 6
    assert p["global_batch"] == 12 and p["accum"] == 2 and p["steps"] == 9 and p["tokens"] == 1080


def test_data_order_is_a_permutation_per_epoch_and_pure():
    n, b = 10, 4
    first = np.concatenate([sample_indices(s, b, n, seed=1) for s in range(5)])  # 20 samples = 2 epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert np.array_equal(sample_indices(3, b, n, 1), sample_indices(3, b, n, 1))
    assert not np.array_equal(first[:10], first[10:20])


def test_epoch_permutation_is_kept_read_only_and_the_same():
    from cogqa.batches import epoch_permutation

    epoch_permutation.cache_clear()
    first = epoch_permutation(1, 0, 1000)
    assert epoch_permutation(1, 0, 1000) is first and not first.flags.writeable  # kept, and callers cannot change it
    assert np.array_equal(first, np.random.default_rng([1, 0]).permutation(1000))  # the numbers drawn before caching
    assert np.array_equal(np.sort(first), np.arange(1000))
    # steps across an epoch boundary (batch 8 of 20 chunks: step 2 spans epochs 0 and 1) take from both epochs
    spanning = sample_indices(2, 8, 20, seed=3)
    g = 16 + np.arange(8)
    expect = [np.random.default_rng([3, int(x // 20)]).permutation(20)[x % 20] for x in g]
    assert spanning.tolist() == expect


# ----------------------------------------------------------------------------- real runs


def test_tiny_model_learns_below_unigram_entropy(tmp_path, prepared):
    from cogqa.train import train

    data = prepared(tmp_path, context=64, n_bytes=200_000)
    from cogqa.data import TokenChunks

    tokens = np.concatenate([TokenChunks(data, "train")[i] for i in range(len(TokenChunks(data, "train")))])
    counts = np.bincount(tokens)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())  # nats per token
    result = train(tiny_config(data, tmp_path / "run", lr=1e-2, context=64, steps=100, eval_batches=4))
    print(f"unigram entropy {unigram:.3f} nats/token; validation loss {result.final_val_loss:.3f} nats/token")
    assert result.final_val_loss < unigram - 0.3
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["steps"] == 100 and saved["n_heads"] == 4 and saved["n_kv_heads"] == 2 and saved["context"] == 64
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 101)) and lines[0]["lr"] == 0.0
    env = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert env["world_size"] == 1 and env["torch_version"] and env["cogqa_version"]
    from safetensors import safe_open

    from cogqa.checkpoint import list_checkpoints
    from cogqa.evaluate import CONTEXT_METADATA

    last = list_checkpoints(tmp_path / "run")[-1]
    with safe_open(str(last / "model.safetensors"), "pt") as f:  # the weights themselves record their context
        assert f.metadata()[CONTEXT_METADATA] == "64"


def test_context_extension_loads_weights_with_a_fresh_optimizer(tmp_path, prepared):
    import torch
    from safetensors.torch import load_file

    from cogqa.train import train

    short, long_ = prepared(tmp_path, 32, 40_000, "short"), prepared(tmp_path, 128, 40_000, "long")
    train(tiny_config(short, tmp_path / "base", lr=3e-3, context=32, steps=5))
    ckpt = tmp_path / "base" / "checkpoints" / "step_00000005"
    ext = TrainConfig(
        data=str(long_),
        out_dir=str(tmp_path / "ext"),
        init_from=str(ckpt),
        context=128,
        optim=OptimConfig(lr=1e-5),
        tokens=128 * 2 * 2,
        batch_tokens=256,
        micro_batch=2,
        progress=False,
    )
    r = train(ext)
    assert r.context == 128 and r.steps == 2 and r.lr == 1e-5
    state = torch.load(tmp_path / "ext" / "checkpoints" / "step_00000002" / "trainer.pt", weights_only=True)
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())  # fresh AdamW: 2 steps, not 7
    a = load_file(ckpt / "model.safetensors")
    b = load_file(tmp_path / "ext" / "checkpoints" / "step_00000002" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-3 for k in a)  # tiny LR: tiny change


# ----------------------------------------------------------------------------- bad input via the CLI


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cogqa", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    r = cli(*train_argv(tmp_path / "missing", out, "--lr", "1e-3"))
    _one_line_error(r, "data:", "cogqa data prepare")
    assert not out.exists()
    r = cli(*train_argv(tmp_path, out, "--lr", "fast"))
    _one_line_error(r, "--lr", "'fast'")
    assert not out.exists()
    r = cli(*train_argv(tmp_path, out))
    _one_line_error(r, "lr")


def test_short_or_empty_corpus_and_foreign_resume_dir(tmp_path, prepared):
    data = _data_module()
    out = tmp_path / "out"
    for name, text in (("empty", ""), ("short", "To be, or not to be.")):
        src = tmp_path / f"{name}.txt"
        src.write_text(text)
        try:
            data.prepare([str(src)], str(tmp_path / name), tokenizer="bytes", context=64, val_fraction=0.1)
        except CogqaError as exc:  # the data helper may already refuse it
            assert "\n" not in str(exc)
            continue
        r = cli(*train_argv(tmp_path / name, out, "--lr", "1e-3", "--no-progress"))
        _one_line_error(r, "data:")
        assert not out.exists()
    # a run directory of another shape: refused, files untouched
    good = prepared(tmp_path, 32, 30_000)
    run = ("--lr", "1e-3", *batch_args(2), "--no-progress")
    r = cli(*train_argv(good, out, *run))
    assert r.returncode == 0, r.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = [a if a != "2" or i != 9 else "4" for i, a in enumerate(TINY_ARGS)]  # --kv-heads 4
    r = cli(*train_argv(good, out, *run, "--resume", shape=other))
    _one_line_error(r, "resume:", "n_kv_heads")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    r = cli(*train_argv(good, out, "--lr", "1e-3", "--no-progress"))
    _one_line_error(r, "already holds a run", "--resume")


def test_lr_search_reports_the_best_and_reuses_finished_runs(tmp_path, prepared):
    data = prepared(tmp_path, 32, 30_000)
    out = tmp_path / "grid"
    common = train_argv(data, out, *batch_args(6), "--no-progress")[1:]  # lr-search takes train's options
    r = cli("lr-search", *common, "--lrs", "1e-5,3e-3")
    assert r.returncode == 0, r.stderr
    assert "best max LR 3e-03" in r.stdout and "nats/token" in r.stdout
    table = json.loads((out / "lr_search.json").read_text())
    assert [row["lr"] for row in table["runs"]] == [1e-5, 3e-3] and table["best_lr"] == 3e-3
    stamp = (out / "lr_3e-03" / "result.json").stat().st_mtime_ns
    r = cli("lr-search", *common, "--lrs", "1e-5,3e-3", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["best_lr"] == 3e-3
    assert (out / "lr_3e-03" / "result.json").stat().st_mtime_ns == stamp  # reused, not retrained


def test_score_steps_and_validation_defaults():
    from cogqa.config import (
        ASSUMED_CHUNK_LOSS_STD,
        DEFAULT_VAL_TOKENS,
        TARGET_VAL_LOSS_SE,
        repeat_warning,
        score_steps,
    )
    from cogqa.evaluate import PAPER_LAST_K, chunks_for_standard_error

    assert score_steps(100, 0, 0.2, 4) == [85, 90, 95, 100]  # evenly over the 20-step decay phase
    assert score_steps(100, 40, 0.2, 4) == [40, 80, 100]  # the last evaluation points
    assert score_steps(10, 0, 0.2, 4) == [7, 8, 9, 10] and score_steps(3, 0, 0.2, 4) == [1, 2, 3]
    assert score_steps(100, 0, 0.2, 0) == []
    cfg = TrainConfig(data="d", out_dir="o", size="470M")
    assert cfg.keep_checkpoints >= PAPER_LAST_K and cfg.last_k_checkpoints == PAPER_LAST_K
    assert cfg.checkpoint_interval_minutes == 30 and cfg.val_tokens == DEFAULT_VAL_TOKENS == 16_777_216
    need = chunks_for_standard_error(ASSUMED_CHUNK_LOSS_STD, TARGET_VAL_LOSS_SE)
    assert need * 8192 <= DEFAULT_VAL_TOKENS < 2 * need * 8192
    assert repeat_warning(100, 100) is None
    w = repeat_warning(250, 100)
    assert "2.50 epochs" in w and "\n" not in w
    with pytest.raises(CogqaError, match="checkpoint_interval_minutes"):
        TrainConfig(data="d", out_dir="o", size="470M", checkpoint_interval_minutes=-1)


def test_default_run_keeps_its_last_four_evaluation_points(tmp_path, prepared):
    from cogqa.checkpoint import list_checkpoints
    from cogqa.evaluate import checkpoints_to_score
    from cogqa.train import train

    data = prepared(tmp_path, context=32, n_bytes=40_000)
    result = train(tiny_config(data, tmp_path / "run", lr=3e-3, context=32, steps=20, val_tokens=32 * 10))
    assert [int(c.name[5:]) for c in list_checkpoints(tmp_path / "run")] == [17, 18, 19, 20]
    assert len(checkpoints_to_score(tmp_path / "run")) == 4
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_loss_se"]) for r in lines if "val_loss" in r]
    assert [s for s, _ in evals] == [17, 18, 19, 20] and all(0 < se < 1 for _, se in evals)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["val_sequences"] == 10 and resolved["val_tokens"] == 320
    assert result.final_val_loss_se == evals[-1][1]


def test_repeated_data_and_clamped_validation_warn(tmp_path, prepared):
    data = prepared(tmp_path, 32, 30_000)
    args = ("--lr", "1e-3", "--batch-tokens", "4096", "--micro-batch", "8", "--no-progress")
    r = cli(*train_argv(data, tmp_path / "a", "--tokens", "40000", *args))
    assert r.returncode == 0, r.stderr
    assert "epochs" in r.stderr and "val_tokens 16,777,216" in r.stderr
    r = cli(*train_argv(data, tmp_path / "b", "--resume", *args))
    _one_line_error(r, "resume:", "drop --resume")
    assert not (tmp_path / "b").exists()
