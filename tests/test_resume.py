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
from conftest import TINY_ARGS

#: set by the developer to run the same test through another launcher (e.g. a stub of cogqa.data)
LAUNCH = os.environ.get("COGQA_TEST_LAUNCH", "").split() or [sys.executable, "-m", "cogqa"]


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY_ARGS,
        "--lr",
        "3e-3",
        "--tokens",
        str(32 * 8 * 120),
        "--batch-tokens",
        "256",
        "--micro-batch",
        "8",
        "--checkpoint-every",
        "10",
        "--keep",
        "2",
        "--eval-every",
        "40",
        "--no-progress",
    ]


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
