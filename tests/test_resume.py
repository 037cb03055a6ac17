"""Exact resume: a real `cogqa train` subprocess SIGKILLed mid-run, then --resume, ends bitwise equal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import batch_args, train_argv

#: set by the developer to run the same test through another launcher (e.g. a stub of cogqa.data)
LAUNCH = os.environ.get("COGQA_TEST_LAUNCH", "").split() or [sys.executable, "-m", "cogqa"]


def train_args(data: Path, out: Path) -> list[str]:
    """120 steps of the tiny model, a checkpoint every 10 (keeping 2), validation every 40."""
    extra = ("--checkpoint-every", "10", "--keep", "2", "--eval-every", "40", "--no-progress")
    return train_argv(data, out, "--lr", "3e-3", *batch_args(120), *extra)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.timeout(300)
def test_sigkill_then_resume_gives_identical_weights(tmp_path, prepared):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    data = prepared(tmp_path, context=32, n_bytes=60_000)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = subprocess.run([*LAUNCH, *train_args(data, ref)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen([*LAUNCH, *train_args(data, killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = killed / "checkpoints" / "step_00000020"
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    assert not (killed / "result.json").exists()
    steps_done = len(losses(killed))
    assert 20 <= steps_done < 120
    print(f"killed after {steps_done} logged steps")

    r = subprocess.run([*LAUNCH, *train_args(data, killed), "--resume"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    res = json.loads((killed / "result.json").read_text())
    assert res["resumed_from_step"] >= 20 and res["steps"] == 120

    final = "checkpoints/step_00000120/model.safetensors"
    a, b = load_file(ref / final), load_file(killed / final)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(ref) == losses(killed)  # the same loss curve, step by step, bit for bit
    assert json.loads((ref / "result.json").read_text())["final_val_loss"] == res["final_val_loss"]
    assert len(list((killed / "checkpoints").iterdir())) == 2  # keep last k


@pytest.mark.timeout(300)
def test_sigterm_checkpoints_stops_and_resumes(tmp_path, prepared):
    """SIGTERM mid-run (no step checkpoints asked for): the trainer finishes its step, saves a resume-only
    checkpoint, exits 128 + 15 with one clear line; --resume ends the run with its last 4 checkpoints."""
    data = prepared(tmp_path, context=32, n_bytes=60_000)
    out = tmp_path / "run"
    args = train_argv(data, out, "--lr", "3e-3", *batch_args(400), "--val-tokens", "320", "--no-progress")
    proc = subprocess.Popen([*LAUNCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped; make it longer"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    ckpts = sorted((out / "checkpoints").iterdir())
    assert len(ckpts) == 1 and (ckpts[0] / "resume_only").is_file()
    stopped_at = int(ckpts[0].name[5:])
    assert 5 <= stopped_at < 400 and len(losses(out)) == stopped_at
    assert not (out / "result.json").exists()

    r = subprocess.run([*LAUNCH, *args, "--resume"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["resumed_from_step"] == stopped_at and res["steps"] == 400
    assert [s for s, _ in losses(out)] == list(range(1, 401))  # no step lost, none repeated
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        f"step_{s:08d}" for s in (340, 360, 380, 400)
    ]  # the resume-only checkpoint is gone; the last 4 evaluation points remain


@pytest.mark.parametrize(
    "lines, kept",
    [
        (['{"step": 1}', '{"step": 2}', '{"step": 3}'], ['{"step": 1}', '{"step": 2}']),
        (['{"step": 1}', '{"step": 2}', '{"ste'], ['{"step": 1}', '{"step": 2}']),  # half-written last line
    ],
)
def test_truncate_metrics_keeps_records_up_to_the_checkpoint(tmp_path, lines, kept):
    from cogqa.trainlog import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    truncate_metrics(path, 2)
    assert path.read_text().splitlines() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left


@pytest.mark.parametrize(
    "blob, where",
    [
        (b'{"step": 1}\n[1, 2]\n{"step": 3}\n', ":2:"),
        (b'{"step": 1}\n{"step": "2"}\n{"step": 3}\n', ":2:"),
        (b'{"step": 1}\nnot json\n{"step": 3}\n', ":2:"),
        (b'{"step": 1}\n\xff\xfe\n', "not UTF-8"),
    ],
)
def test_truncate_metrics_refuses_a_corrupt_history_and_leaves_it(tmp_path, blob, where):
    from cogqa.errors import CogqaError
    from cogqa.trainlog import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(blob)
    with pytest.raises(CogqaError, match=where) as info:
        truncate_metrics(path, 2)
    assert "\n" not in str(info.value) and "metrics.jsonl" in str(info.value)
    assert path.read_bytes() == blob
