"""torchrun --nproc_per_node 2 (gloo, CPU): the same loss trajectory as one process, same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_ARGS

LAUNCH = os.environ.get("COGQA_TEST_LAUNCH", "").split() or [sys.executable, "-m", "cogqa"]


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    cmd = [str(exe) if exe.exists() else "torchrun", "--standalone", "--nproc_per_node", "2"]
    if LAUNCH[1:2] == ["-m"]:
        return [*cmd, "-m", LAUNCH[2]]
    return [*cmd, *LAUNCH[1:]]


def args(data, out, *extra):
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
        str(32 * 8 * 12),
        "--batch-tokens",
        "256",
        "--micro-batch",
        "2",
        "--eval-every",
        "6",
        "--eval-batches",
        "2",
        "--no-progress",
        *extra,
    ]


def read(out: Path):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(tmp_path, fsdp, prepared):
    pytest.importorskip("torch")
    data = prepared(tmp_path, context=32, n_bytes=40_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([*LAUNCH, *args(data, tmp_path / "one")], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    extra = ["--fsdp"] if fsdp else []
    two = subprocess.run(
        [*torchrun(), *args(data, tmp_path / "two", *extra)], capture_output=True, text=True, timeout=500, env=env
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read(tmp_path / "one"), read(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-4)
        assert rb["lr"] == ra["lr"]
        if "val_loss" in ra:
            assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4, abs=1e-4)
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["environment"]["world_size"] == 2 and cfg["resolved"]["accum"] == 2
    assert json.loads((tmp_path / "one" / "config.json").read_text())["resolved"]["accum"] == 4
    assert (tmp_path / "two" / "checkpoints" / "step_00000012" / "model.safetensors").is_file()
