"""Fault injection, one set per write path (train checkpoint, data prepare, fit --out, sweep collect, export,
report): a SIGKILL in the middle of a write, a full disk (ENOSPC) and a read-only directory.

Each fault must leave the previous output byte-identical, no half-written final file, and (for the errors) one
line on stderr; the SIGKILL case then re-runs the command and checks it completes and cleans up.

SIGKILL: the command runs in a child process whose ``os.replace`` blocks (the child writes a READY file, then
sleeps) at the rename that would publish the new output (``FAULT_PATTERN``, after ``FAULT_SKIP`` such renames):
everything new is written under temporary names by then. The test snapshots, kills the child with SIGKILL and
compares. ENOSPC and read-only use a small tmpfs mounted for the test (root only: otherwise ENOSPC is simulated
by a write that raises ``OSError(ENOSPC)`` and read-only uses ``chmod 0o555`` where that binds the user).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cogqa.cli import main

torch = pytest.importorskip("torch")

from conftest import TINY_ARGS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_RESULTS = REPO / "cogqa" / "data" / "demo_results.csv"

HELPER = """
import fnmatch, os, sys, time
pattern, skip, ready = os.environ["FAULT_PATTERN"], int(os.environ["FAULT_SKIP"]), os.environ["FAULT_READY"]
real, seen = os.replace, [0]

def replace(src, dst, *a, **kw):
    if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern):
        seen[0] += 1
        if seen[0] > skip:
            with open(ready, "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(600)
    return real(src, dst, *a, **kw)

os.replace = replace
from cogqa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _snapshot(root: Path) -> dict:
    if root.is_file():
        return {str(root): root.read_bytes()}
    return {  # temporaries of the killed run aside: checked to be cleaned by the re-run
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir")
        for p in sorted(root.rglob("*"))
        if ".cogqa-tmp-" not in str(p) and ".cogqa-old-" not in str(p)
    }


def _temps(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.rglob("*") if ".cogqa-tmp-" in p.name or ".cogqa-old-" in p.name)


# ----------------------------------------------------------------------------- the six write paths


def _tiny_checkpoint(path: Path) -> None:
    from cogqa.checkpoint import save_model
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape

    m = GQADecoder(
        ModelShape(layers=1, hidden_size=32, ffn_size=48, n_heads=4, n_kv_heads=2, head_dim=8, vocab_size=320)
    )
    m.init_weights(0)
    save_model(m, path)


def _fake_sweep(root: Path) -> Path:
    """A sweep directory with two finished runs (result.json files as `cogqa sweep run` writes them)."""
    sweep = root / "out" / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "spec.json").write_text("{}\n")
    for i, (h, kv, n, loss) in enumerate([(4, 1, 1e5, 3.1), (4, 2, 2e5, 2.9)]):
        run = {
            "id": f"r{i}",
            "size": "tiny",
            "n_heads": h,
            "n_kv_heads": kv,
            "seed": 0,
            "params_non_embedding": n,
            "params_total": n * 2,
            "tokens": 4096,
            "context": 64,
            "steps": 4,
            "layers": 1,
            "hidden_size": 32,
            "ffn_size": 48,
            "head_dim": 8,
        }
        d = sweep / "runs" / f"r{i}"
        d.mkdir()
        shape = {"name": "tiny", "layers": 1, "hidden_size": 32, "ffn_size": 48, "head_dim": 8}
        info = {"id": f"r{i}", "size": shape, "n_heads": h, "n_kv_heads": kv, "seed": 0}
        (d / "run.json").write_text(json.dumps({**info, "train": {"out_dir": ".", "data": "data"}}))
        result = {**run, "status": "done", "final_val_loss": loss, "final_val_loss_se": 0.01}
        (d / "result.json").write_text(json.dumps({**result, "loss_by_position": {"2": loss + 1, "64": loss}}))
    return sweep


def _text(root: Path) -> Path:
    src = root / "text.txt"
    if not src.exists():
        src.write_text("In the beginning was the word, and the word was with the text. " * 300)
    return src


class Path_:
    """One write path: ``setup(root)`` makes its inputs, ``argv(root)`` the command that writes ``output(root)``."""

    def __init__(self, name, setup, argv, output, pattern, skip=0):
        self.name, self.setup, self.argv, self.output, self.pattern, self.skip = (
            name,
            setup,
            argv,
            output,
            pattern,
            skip,
        )


PATHS = [
    Path_(
        "fit",
        lambda r: shutil.copy(DEMO_RESULTS, r / "results.csv"),
        lambda r: ["fit", str(r / "results.csv"), "--grid", "1", "--out", str(r / "out" / "laws.json"), "--overwrite"],
        lambda r: r / "out" / "laws.json",
        "laws.json",
    ),
    Path_(
        "sweep-collect",
        _fake_sweep,
        lambda r: ["sweep", "collect", str(r / "out" / "sweep")],
        lambda r: r / "out" / "sweep",  # results.csv and results.parquet: the pair is compared as a whole
        "results.*",
    ),
    Path_(
        "export",
        lambda r: _tiny_checkpoint(r / "ck"),
        lambda r: ["export", str(r / "ck"), str(r / "out" / "hf"), "--overwrite"],
        lambda r: r / "out" / "hf",
        ".cogqa-output",
    ),
    Path_(
        "report",
        lambda r: None,
        lambda r: ["report", "default", "--out", str(r / "out" / "rep"), "--overwrite"],
        lambda r: r / "out" / "rep",
        ".cogqa-output",
    ),
    Path_(
        "data-prepare",
        _text,
        lambda r: [
            "data",
            "prepare",
            str(_text(r)),
            "--out",
            str(r / "out" / "d"),
            "--tokenizer",
            "bytes",
            "--context",
            "64",
            "--no-progress",
            "--overwrite",
        ],  # fmt: skip
        lambda r: r / "out" / "d",
        ".cogqa-output",
    ),
]


def _train_argv(root: Path, resume=False, name="run") -> list[str]:
    return [
        "train", "--data", str(root / "d"), "--out", str(root / "out" / name), *TINY_ARGS, "--lr", "1e-3",
        "--tokens", str(64 * 4 * 6), "--batch-tokens", "256", "--micro-batch", "4", "--val-tokens", "256",
        "--checkpoint-every", "2", "--keep", "8", "--no-progress",
    ] + (["--resume"] if resume else [])  # fmt: skip


def _prepared(root: Path) -> None:
    from cogqa.data import prepare

    prepare([str(_text(root))], root / "d", tokenizer="bytes", context=64, val_fraction=0.1, progress=False)


def _run(argv) -> tuple[int, list[str]]:
    """Run cogqa in-process; (status, non-empty stderr lines)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, [line for line in err.getvalue().splitlines() if line.strip()]


def _kill_at(argv, pattern, skip, ready: Path, timeout=240) -> subprocess.Popen:
    """Start cogqa ``argv`` in a child that blocks at the publishing rename; return it once it is blocked there."""
    env = {**os.environ, "FAULT_PATTERN": pattern, "FAULT_SKIP": str(skip), "FAULT_READY": str(ready)}
    env["COGQA_DEBUG"] = ""
    proc = subprocess.Popen(
        [sys.executable, "-c", HELPER, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"finished without reaching a publishing rename: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "the child never reached the rename"
        time.sleep(0.02)
    return proc


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("COGQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COGQA_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- (a) SIGKILL mid-write


@pytest.mark.parametrize("wp", PATHS, ids=[p.name for p in PATHS])
def test_sigkill_mid_write_keeps_the_previous_output(wp, env):
    root = env
    (root / "out").mkdir()
    wp.setup(root)
    status, err = _run(wp.argv(root))
    assert status == 0, err
    out = wp.output(root)
    before = _snapshot(out)
    proc = _kill_at(wp.argv(root), wp.pattern, wp.skip, root / "READY")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(out) == before, "the previous output changed"
    status, err = _run(wp.argv(root))  # re-running completes, and cleans the killed run's temporaries
    assert status == 0, err
    assert wp.output(root).exists() and _temps(root) == []


def test_sigkill_mid_checkpoint_keeps_the_previous_checkpoint_and_resumes(env):
    from cogqa.checkpoint import list_checkpoints

    root = env
    _prepared(root)
    run = root / "out" / "run"
    proc = _kill_at(_train_argv(root), "step_*", 1, root / "READY")  # block at the second checkpoint's rename
    first = list_checkpoints(run)
    assert len(first) == 1
    before = _snapshot(first[0])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert list_checkpoints(run) == first and _snapshot(first[0]) == before
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_") and "." not in p.name] == [
        first[0].name
    ], "a half-written checkpoint carries a final name"
    status, err = _run(_train_argv(root, resume=True))
    assert status == 0, err
    assert len(list_checkpoints(run)) > 1


# ----------------------------------------------------------------------------- small filesystems


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_fs(env):
    """A 16 MiB tmpfs at env/out (None when this machine does not let the test mount one)."""
    mnt = env / "out"
    if os.environ.get("COGQA_TEST_NO_TMPFS") or not _mount_tmpfs(mnt, "16m"):  # the variable: test the fallback
        yield None
        return
    try:
        yield mnt
    finally:
        _umount(mnt)


def _fill(mnt: Path, leave: int = 2048) -> None:
    """Fill the filesystem at ``mnt`` to about ``leave`` free bytes."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
        except OSError:
            pass


ALL = PATHS + [Path_("train-checkpoint", _prepared, _train_argv, lambda r: r / "out" / "run" / "checkpoints", "step_*")]


def _fresh_output(wp, root):
    (root / "out").mkdir(exist_ok=True)
    wp.setup(root)
    status, err = _run(wp.argv(root))
    assert status == 0, err
    return wp.output(root)


def _fault_argv(wp, root):
    """The command to run under the fault: for train a new run beside the finished one (which must stay as is)."""
    return _train_argv(root, name="run2") if wp.name == "train-checkpoint" else wp.argv(root)


def _one_error(err: list[str]) -> list[str]:
    """stderr lines other than warnings: exactly one ``error:`` line, no traceback."""
    lines = [line for line in err if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in lines[0], err
    return lines


# ----------------------------------------------------------------------------- (b) ENOSPC


@pytest.mark.parametrize("wp", ALL, ids=[p.name for p in ALL])
def test_full_disk_is_one_line_and_keeps_the_previous_output(wp, small_fs, env, monkeypatch):
    root = env
    out = _fresh_output(wp, root)
    before = _snapshot(out)
    if small_fs is not None:
        _fill(small_fs)
    else:  # no tmpfs here: every write of more than a few bytes fails as on a full disk
        import builtins

        real_open = builtins.open

        def full_open(file, mode="r", *a, **kw):
            fh = real_open(file, mode, *a, **kw)
            if any(c in mode for c in "wax") and str(root / "out") in os.path.abspath(os.fspath(file)):
                fh.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
            return fh

        monkeypatch.setattr(builtins, "open", full_open)
    status, err = _run(_fault_argv(wp, root))
    err = _one_error(err)
    assert status != 0 and "space" in err[0].lower(), err
    assert _snapshot(out) == before
    assert _temps(root) == [] and not list(root.rglob("step_*.tmp")), "temporary files left behind"


# ----------------------------------------------------------------------------- (c) read-only directory


@pytest.mark.parametrize("wp", ALL, ids=[p.name for p in ALL])
def test_read_only_directory_is_one_line(wp, small_fs, env):
    root = env
    out = _fresh_output(wp, root)
    before = _snapshot(out)
    if small_fs is not None:
        r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
        assert r.returncode == 0, r.stderr
        restore = lambda: subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], capture_output=True)  # noqa: E731
    else:
        dirs = [root / "out"] + [p for p in (root / "out").rglob("*") if p.is_dir()]
        for d in dirs:
            d.chmod(0o555)
        if os.access(root / "out", os.W_OK):
            for d in dirs:
                d.chmod(0o755)
            pytest.skip("read-only directories are writable for this user (root) and no tmpfs could be mounted")
        restore = lambda: [d.chmod(0o755) for d in dirs]  # noqa: E731
    try:
        status, err = _run(_fault_argv(wp, root))
    finally:
        restore()
    err = _one_error(err)
    assert status != 0
    assert "read-only" in err[0].lower() or "permission" in err[0].lower(), err
    assert _snapshot(out) == before


def test_collect_pair_killed_between_its_two_renames_is_refused_not_mixed(tmp_path, monkeypatch):
    import os

    import pandas as pd

    from cogqa import files
    from cogqa.errors import CogqaError
    from cogqa.fitting.table import read_results
    from cogqa.sweep.collect import write_results_pair

    rows = {"n_heads": [8, 8, 8, 8], "n_kv_heads": [1, 1, 1, 1], "params_non_embedding": [1e6, 2e6, 4e6, 8e6]}
    old = pd.DataFrame({**rows, "loss": [4.0, 3.8, 3.6, 3.5]})
    write_results_pair(old, tmp_path)
    assert len(read_results(tmp_path / "results.parquet")) == 4  # a fresh pair matches

    renames = []

    def replace_then_die(src, dst):  # the process is killed right after the first rename (the Parquet)
        if renames:
            raise KeyboardInterrupt
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(files.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_results_pair(pd.DataFrame({**rows, "loss": [5.0, 4.8, 4.6, 4.5]}), tmp_path)
    monkeypatch.undo()
    assert [p.name for p in renames] == ["results.parquet"]
    assert pd.read_csv(tmp_path / "results.csv")["loss"].tolist() == [4.0, 3.8, 3.6, 3.5]  # the old CSV
    with pytest.raises(CogqaError, match="does not match results.csv") as e:
        read_results(tmp_path / "results.parquet")
    assert "\n" not in str(e.value) and "sweep collect" in str(e.value)
    assert list(tmp_path.glob("*cogqa-tmp*")) == []  # no temporaries left
    (tmp_path / "results.csv").unlink()  # a Parquet alone (copied elsewhere) is read as it is
    assert read_results(tmp_path / "results.parquet")["loss"].tolist()[0] == 5.0
