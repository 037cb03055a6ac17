"""Sweeps: spec validation (one-line errors before anything runs), plan numbers, run/skip/resume,
SIGKILL fault tolerance, failed runs, collect, submitit local executor, sbatch/torchrun text."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_SIZES, tiny_spec

from cogqa.cli import main
from cogqa.errors import CogqaError
from cogqa.sweep import (
    PAPER_HEAD_CONFIGS,
    SlurmOptions,
    SweepSpec,
    collect,
    is_locked,
    launch_run,
    load_spec,
    materialise,
    parse_heads,
    plan,
    run_command,
    run_status,
    run_sweep,
    sweep_status,
)


def fake_data(tmp_path: Path) -> Path:
    """A real, tiny prepared directory (bytes tokenizer, 32-token chunks) for specs that only plan."""
    from cogqa.data import prepare

    d = tmp_path / "fake"
    if not (d / "manifest.json").is_file():
        (tmp_path / "fake.txt").write_text("In the beginning God created the heaven and the earth. " * 20)
        prepare([str(tmp_path / "fake.txt")], d, tokenizer="bytes", context=32, val_fraction=0.1, progress=False)
    return d


def sweep_run_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """``cogqa sweep run`` arguments: size 3M at H = (4, 1) on ``data`` into ``out``, then ``extra``."""
    return ["sweep", "run", "--data", str(data), "--out", str(out), "--sizes", "3M", "--heads", "4:1", *extra]


# -- spec and plan (no torch, no data) ---------------------------------------------------------


def test_paper_candidates_are_21():
    assert len(PAPER_HEAD_CONFIGS) == 21 and (32, 32) in PAPER_HEAD_CONFIGS and (1, 1) in PAPER_HEAD_CONFIGS
    assert all(kv <= h and h % kv == 0 for h, kv in PAPER_HEAD_CONFIGS)
    assert parse_heads("8:1, 16:4") == [(8, 1), (16, 4)] and parse_heads([[4, 2]]) == [(4, 2)]


def test_plan_numbers_match_cost_model(tmp_path):
    from cogqa.costs import params_non_embedding, training_flops
    from cogqa.shapes import paper_shape

    spec = SweepSpec(data=str(fake_data(tmp_path)), sizes=["3M", "19M"], heads="8:1,4:4", context=2048, seeds=[0, 1])
    p = plan(spec, gpu_tflops=100, mfu=0.5)
    assert p["totals"]["runs"] == 8 and len({r["id"] for r in p["runs"]}) == 8
    r = next(r for r in p["runs"] if r["id"] == "19M_h8kv1_s1")
    shape = paper_shape("19M", 8, 1)
    n = float(params_non_embedding(shape))
    steps = math.ceil(20 * n / 524_288)  # the trainer's plan: whole 512K-token batches
    assert r["params_non_embedding"] == int(n) and r["lr"] == 1e-3
    assert r["steps"] == steps and r["tokens"] == steps * 524_288 and r["batch_tokens"] == 524_288
    assert (r["layers"], r["hidden_size"]) == (6, 512)
    flops = float(training_flops(shape.__class__(**{**shape.__dict__, "vocab_size": 320}), steps * 524_288, 2048))
    assert r["training_flops"] == pytest.approx(flops)
    assert r["gpu_hours"] == pytest.approx(flops / (100e12 * 0.5) / 3600)
    assert p["totals"]["gpu_hours"] == pytest.approx(sum(x["gpu_hours"] for x in p["runs"]))


def test_plan_uses_the_trainers_steps_max_steps_and_batch_rounding(tmp_path):
    # 1000 tokens per batch at T = 2048 rounds to one whole sequence; max_steps caps the budget
    spec = SweepSpec(
        data=str(fake_data(tmp_path)), sizes=["3M"], heads="4:1", context=2048, batch_tokens=1000, max_steps=3
    )
    (r,) = plan(spec)["runs"]
    assert (r["batch_tokens"], r["steps"], r["tokens"]) == (2048, 3, 3 * 2048)


def test_spec_defaults_are_the_trainers(tmp_path):
    from cogqa.config import TrainConfig

    spec = SweepSpec(data=str(fake_data(tmp_path)), sizes=["3M"], heads="4:1")
    probe = TrainConfig(data="d", out_dir="o", size="3M")
    assert (spec.tokens_per_param, spec.batch_tokens, spec.micro_batch, spec.eval_batches, spec.max_steps) == (
        probe.tokens_per_param,
        probe.batch_tokens,
        probe.micro_batch,
        probe.eval_batches,
        probe.max_steps,
    )
    with pytest.raises(CogqaError, match="^micro_batch must be a positive"):  # TrainConfig's check, named plainly
        SweepSpec(data=str(fake_data(tmp_path)), sizes=["3M"], heads="4:1", micro_batch=0)


def test_sizes_in_parameters_use_appendix_b1(tmp_path):
    spec = SweepSpec(data=str(fake_data(tmp_path)), sizes=["50M"], heads="8:1", lr=1e-3)
    s = spec.size_specs[0]
    assert s.hidden_size % 64 == 0 and s.layers > 0 and s.lr == 1e-3


def test_spec_file_and_overrides(tmp_path):
    data = fake_data(tmp_path)
    f = tmp_path / "s.yaml"
    f.write_text(f"data: {data}\nsizes: [3M]\nheads: '4:1'\ntokens_per_param: 5\n")
    spec = load_spec(f, heads="8:2")
    assert spec.head_configs == [(8, 2)] and spec.tokens_per_param == 5
    again = load_spec(json.loads(json.dumps(spec.to_dict())))
    assert again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--heads", "8:3"], "must divide"),
        (["--heads", "4:8"], "n_kv_heads > n_heads"),
        (["--heads", "eight"], "unknown head configuration"),
        (["--sizes", "1M"], "below the smallest shape"),
        (["--sizes", "50M"], "no learning rate"),
    ],
)
def test_bad_spec_one_line_errors(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    code = main(sweep_run_argv(fake_data(tmp_path), out, *args))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and needle in err and err.count("\n") == 1
    assert not out.exists()  # nothing ran, nothing written


def test_missing_data_and_unwritable_out(tmp_path, capsys):
    code = main(sweep_run_argv(tmp_path / "nope", tmp_path / "o"))
    err = capsys.readouterr().err
    assert code == 2 and "data:" in err and "no such directory" in err and err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(sweep_run_argv(fake_data(tmp_path), blocker / "sub"))
    err = capsys.readouterr().err
    assert code == 2 and "--out: cannot write" in err and err.count("\n") == 1
    assert not (blocker.parent / "runs").exists()


def test_plan_cli_prints_units(tmp_path, capsys):
    assert main(["sweep", "plan", "--data", str(fake_data(tmp_path)), "--sizes", "3M", "--heads", "8:1,2:2"]) == 0
    out = capsys.readouterr().out
    assert "3M_h8kv1_s0" in out and "params" in out and "FLOPs" in out and "GPU-hours" in out and "total: 2 runs" in out


def test_torchrun_and_sbatch_text(tmp_path):
    assert run_command("/r/x", gpus=1, python="py") == ["py", "-m", "cogqa.sweep", "run-one", "/r/x"]
    cmd = " ".join(run_command("/r/x", gpus=4, python="py"))
    assert cmd == "py -m torch.distributed.run --nproc_per_node=4 --standalone -m cogqa.sweep run-one /r/x"
    multi = " ".join(run_command("/r/x", gpus=8, nodes=2, python="py"))
    assert "--nnodes=2" in multi and "--rdzv_backend=c10d" in multi and "--nproc_per_node=8" in multi
    opts = SlurmOptions(partition="gpu", time=120, gpus_per_run=4, account="proj", array_parallelism=16)
    text = opts.sbatch_preview(" ".join(run_command("/r/x", gpus=4, python="py")), tmp_path)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --account=proj",
        "#SBATCH --nodes=1",
    ):
        assert line in text
    assert "--nproc_per_node=4" in text
    params = opts.executor_parameters()
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 4 and params["timeout_min"] == 120
    with pytest.raises(CogqaError, match="gpus-per-run"):
        SlurmOptions(gpus_per_run=0)


# -- real runs (torch + cogqa.data): each run is a child process importing torch, so these are slow --


def _headers(run_dir: Path) -> int:
    return (run_dir / "log.txt").read_text().count("\n=== ")


@pytest.mark.slow
def test_run_skip_status_collect(tmp_path, prepared):
    data = prepared(tmp_path, 32, 60_000)
    spec = tiny_spec(data)
    out = tmp_path / "sweep"
    status = run_sweep(spec, out, progress=False)
    assert status["counts"]["done"] == 2, status
    again = run_sweep(spec, out, progress=False)  # finished runs are skipped: no new attempt
    assert again["counts"]["done"] == 2
    for d in (out / "runs").iterdir():
        assert _headers(d) == 1
        r = json.loads((d / "result.json").read_text())
        assert r["status"] == "done" and r["steps"] == 4 and r["final_val_loss"] > 0
        assert set(r["loss_by_position"]) == {"2", "4", "8", "16", "32"}
        assert 0 < r["final_val_loss_se"] < 1  # 16 validation sequences: a finite standard error
        assert len(list((d / "checkpoints").iterdir())) == 4  # what the paper's last-4 scoring needs
    df = collect(out)
    assert (df["loss_se"] > 0).all()
    for col in (
        "n_heads",
        "n_kv_heads",
        "params_non_embedding",
        "loss",
        "tokens",
        "context",
        "layers",
        "hidden_size",
        "wall_time_s",
        "final_val_loss",
        "loss_by_position",
        "loss_at_32",
    ):
        assert col in df.columns
    assert len(df) == 2 and (out / "results.csv").is_file() and (out / "results.parquet").is_file()
    import pandas as pd

    assert pd.read_parquet(out / "results.parquet").shape == df.shape
    from cogqa.fitting import read_results

    assert len(read_results(out / "results.csv")) == 2


@pytest.mark.slow
def test_forked_run_is_the_interpreter_run(tmp_path, prepared):
    # the same run forked by a run server and in a new interpreter: same training, same records
    from cogqa.sweep.runserver import RunServer, can_fork_runs

    if not can_fork_runs():
        pytest.skip("runs are not forked on this platform")
    data = prepared(tmp_path, 32, 60_000)
    spec = tiny_spec(data, heads="2:1,2:2")
    forked = materialise(spec, tmp_path / "forked", progress=False)
    fresh = materialise(spec, tmp_path / "fresh", progress=False)
    server = RunServer()
    try:
        assert launch_run(forked[0], threads=1, server=server) == "done"
        first_server = server.proc.pid
        assert launch_run(forked[1], threads=1, server=server) == "done"
        assert server.proc.pid == first_server and server.proc.poll() is None  # one server forked both runs
    finally:
        server.close()
    assert server.proc is None
    for d in fresh:
        assert launch_run(d, command=run_command(d), threads=1) == "done"
    for f, n in zip(forked, fresh):
        results = [json.loads((d / "result.json").read_text()) for d in (f, n)]
        assert results[0]["final_val_loss"] == results[1]["final_val_loss"]
        assert results[0]["loss_by_position"] == results[1]["loss_by_position"]
        envs = [json.loads((d / "config.json").read_text())["environment"] for d in (f, n)]
        assert envs[0]["threads"] == envs[1]["threads"] == 1  # the run's threads, not the server's
        assert envs[0]["argv"][1:] == ["run-one", str(f)] and envs[1]["argv"][1:] == ["run-one", str(n)]
        log = (f / "log.txt").read_text()
        assert "forked by the run server" in log and f"run {f.name}: done" in log  # the run's output lands there


@pytest.mark.slow
def test_unguarded_script_is_not_run_again_by_forked_runs(tmp_path, prepared):
    # multiprocessing's fork server would import the caller's main script in every run: the run server must not
    from cogqa.sweep.runserver import can_fork_runs

    if not can_fork_runs():
        pytest.skip("runs are not forked on this platform")
    spec = tiny_spec(prepared(tmp_path, 32, 60_000), heads="2:1")
    run_dir = materialise(spec, tmp_path / "sweep", progress=False)[0]
    marker = tmp_path / "script-ran"
    script = tmp_path / "script.py"
    script.write_text(
        "import pathlib, sys\n"
        f"with open({str(marker)!r}, 'a') as f: f.write('x')\n"  # top-level code, no __main__ guard
        "from cogqa.sweep import launch_run\n"
        "from cogqa.sweep.runserver import RunServer\n"
        "server = RunServer()\n"
        f"print(launch_run({str(run_dir)!r}, threads=1, server=server))\n"
        "server.close()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done" and marker.read_text() == "x"  # the script ran once, in its own process


@pytest.mark.slow
def test_failed_run_reported_then_retried(tmp_path, prepared):
    data = prepared(tmp_path, 32, 60_000)
    spec = tiny_spec(data, heads="2:1")
    out = tmp_path / "sweep"
    run_dir = materialise(spec, out, progress=False)[0]
    info = json.loads((run_dir / "run.json").read_text())
    good = json.dumps(info)
    info["train"]["data"] = str(tmp_path / "gone")
    (run_dir / "run.json").write_text(json.dumps(info))
    assert launch_run(run_dir) == "failed"
    failed = json.loads((run_dir / "failed.json").read_text())
    assert "data:" in failed["error"] and "\n" not in failed["error"]
    st = sweep_status(out)
    assert st["counts"]["failed"] == 1 and "data:" in st["failed"][run_dir.name]
    (run_dir / "run.json").write_text(good)
    # without --retry-failed the failed run is reported, not re-run
    assert run_sweep(spec, out, progress=False)["counts"]["failed"] == 1
    assert run_sweep(spec, out, progress=False, retry_failed=True)["counts"]["done"] == 1
    assert not (run_dir / "failed.json").exists()


@pytest.mark.slow
def test_sigkill_mid_run_resumes(tmp_path, prepared):
    data = prepared(tmp_path, 32, 60_000)
    spec_file = tmp_path / "spec.json"
    spec = tiny_spec(data, tokens=32 * 8 * 40, checkpoint_every=3)
    spec_file.write_text(json.dumps(spec.to_dict()))
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogqa", "sweep", "run", str(spec_file), "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "runs" / "a_h2kv1_s0"
    deadline = time.time() + 240
    while time.time() < deadline:
        ckpts = (
            [p for p in (first / "checkpoints").glob("step_*") if not p.name.endswith(".tmp")]
            if (first / "checkpoints").is_dir()
            else []
        )
        if ckpts:
            break
        assert proc.poll() is None, "the sweep ended before a checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(200):  # the child dies with its parent and releases the run's lock
        if not is_locked(first):
            break
        time.sleep(0.05)
    assert run_status(first) == "pending"
    status = run_sweep(load_spec(spec_file), out, progress=False)
    assert status["counts"]["done"] == 2
    r = json.loads((first / "result.json").read_text())
    assert r["resumed_from_step"] > 0 and r["steps"] == 40
    steps = [json.loads(x)["step"] for x in (first / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert steps.count(1) == 1  # never restarted from zero
    df = collect(out)
    assert sorted(df["id"]) == ["a_h2kv1_s0", "a_h2kv2_s0"]


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, prepared):
    pytest.importorskip("submitit")
    data = prepared(tmp_path, 32, 60_000)
    spec = tiny_spec(data, heads="2:1")
    out = tmp_path / "sweep"
    status = run_sweep(spec, out, executor="slurm", slurm=SlurmOptions(cluster="local", time=10), progress=False)
    assert status["counts"]["done"] == 1
    run_dir = out / "runs" / "a_h2kv1_s0"
    assert json.loads((run_dir / "submitted.json").read_text())["job_id"]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_sigint_leaves_run_pending_not_failed(tmp_path, prepared):
    data = prepared(tmp_path, 32, 60_000)
    spec = tiny_spec(data, heads="2:1", tokens=32 * 8 * 400, checkpoint_every=5)
    run_dir = materialise(spec, tmp_path / "sweep", progress=False)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogqa.sweep", "run-one", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    ckpts = lambda: list((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []  # noqa: E731
    while time.time() < deadline and not ckpts():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait() in (130, -signal.SIGINT)
    assert not (run_dir / "failed.json").exists() and run_status(run_dir) == "pending"


def _session_members(sid: int) -> list[int]:
    """Process ids in session ``sid`` (Linux /proc; field 6 of /proc/PID/stat, after the command in parentheses)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_stops_its_forked_run_cleanly(tmp_path, prepared):
    # Ctrl-C reaches the whole process group: the sweep, its fork server and the run forked from it
    data = prepared(tmp_path, 32, 60_000)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec(data, heads="2:1", tokens=32 * 8 * 400, checkpoint_every=5).to_dict()))
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogqa", "sweep", "run", str(spec_file), "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    run_dir = out / "runs" / "a_h2kv1_s0"
    deadline = time.time() + 120
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step_*")):
        time.sleep(0.05) if proc.poll() is None else pytest.fail("the sweep ended before it could be interrupted")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert not (run_dir / "failed.json").exists() and run_status(run_dir) == "pending"
    for _ in range(200):  # the fork server exits once no run holds it
        if not _session_members(proc.pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the interrupted sweep are still running")


def test_print_sbatch_cli(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(
        [
            "sweep",
            "run",
            "--data",
            str(fake_data(tmp_path)),
            "--sizes",
            "470M",
            "--heads",
            "32:8",
            "--executor",
            "slurm",
            "--partition",
            "gpu",
            "--gpus-per-run",
            "8",
            "--time",
            "720",
            "--print-sbatch",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "#SBATCH --partition=gpu" in text and "#SBATCH --gpus-per-node=8" in text
    assert "--nproc_per_node=8" in text and "470M_h32kv8_s0" in text and not out.exists()


def test_a_run_the_server_cannot_take_starts_an_interpreter(tmp_path, monkeypatch):
    import cogqa.sweep.executors as executors
    from cogqa.sweep.runserver import RunServer

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(executors.subprocess, "run", fake_run)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    server = RunServer(python=str(tmp_path / "no-such-python"))  # cannot start
    launch_run(run_dir, server=server)
    assert calls == [run_command(run_dir)] and server.broken and server.proc is None
    log = (run_dir / "log.txt").read_text()
    assert "the run server could not start the run; starting a new interpreter" in log
    assert "-m cogqa.sweep run-one" in log
    launch_run(run_dir, server=server)  # a broken server is not tried again
    assert len(calls) == 2


def test_die_with_parent_hook_resolves_libc_in_the_parent():
    # a child between fork and exec must not load libraries (another thread may hold the loader's lock)
    from cogqa.sweep import runserver

    runserver._libc_prctl.cache_clear()
    hook = runserver.die_with_parent_hook()
    assert hook is runserver.pdeathsig and runserver._libc_prctl.cache_info().currsize == 1
    if sys.platform.startswith("linux"):
        assert runserver._libc_prctl() is not None


def test_runs_are_forked_only_where_they_can_die_with_the_sweep(monkeypatch):
    import cogqa.sweep.runserver as runserver

    monkeypatch.setattr(runserver.sys, "platform", "darwin")
    assert not runserver.can_fork_runs()


def testis_locked_run_is_not_run_twice(tmp_path):
    import fcntl

    spec = SweepSpec(data=str(fake_data(tmp_path)), sizes=TINY_SIZES, heads="2:1", lr=1e-3, tokens=1000)
    run_dir = materialise(spec, tmp_path / "sweep", progress=False)[0]
    with open(run_dir / ".lock", "a") as held:  # another worker holds the claim
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_status(run_dir) == "running"
        assert launch_run(run_dir) == "running"
        assert "busy" in (run_dir / "log.txt").read_text() and not (run_dir / "failed.json").exists()
        assert not (run_dir / "config.json").exists()  # the trainer never started
    assert run_status(run_dir) == "pending"


def test_sweep_dir_can_grow_but_not_change_settings(tmp_path, capsys):
    data = fake_data(tmp_path)
    out = tmp_path / "sweep"
    materialise(SweepSpec(data=str(data), sizes=TINY_SIZES, heads="2:1", lr=1e-3, tokens=1000), out, progress=False)
    dirs = materialise(
        SweepSpec(data=str(data), sizes=TINY_SIZES, heads="2:1,2:2", lr=1e-3, tokens=1000), out, progress=False
    )
    assert [d.name for d in dirs] == ["a_h2kv1_s0", "a_h2kv2_s0"]
    with pytest.raises(CogqaError, match="tokens differ"):
        materialise(SweepSpec(data=str(data), sizes=TINY_SIZES, heads="2:1", lr=1e-3, tokens=2000), out, progress=False)
    (dirs[0] / "config.json").write_text("{}")  # the run has started
    bigger = [{**TINY_SIZES[0], "hidden_size": 64}]
    with pytest.raises(CogqaError, match="a_h2kv1_s0 has started"):
        materialise(SweepSpec(data=str(data), sizes=bigger, heads="2:1", lr=1e-3, tokens=1000), out, progress=False)


def test_submitit_job_requeues_itself_when_preempted():
    pytest.importorskip("submitit")
    from cogqa.sweep.executors import _SubmititRun

    job = _SubmititRun("/r/x", gpus=1, nodes=1)
    again = job.checkpoint()  # what submitit calls on preemption or timeout before requeueing
    assert again.function is job and again.args == () and again.kwargs == {}


# -- issue 13: plans and results that cannot be true --------------------------------------------


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(seeds=[0, 0]), "seed 0 and size 'a' H=(2,1) seed 0"),
        (
            dict(sizes=[{**TINY_SIZES[0], "name": "x y"}, {**TINY_SIZES[0], "name": "x-y", "hidden_size": 64}]),
            "runs/x-y_h2kv1_s0",
        ),
        (dict(sizes=[{**TINY_SIZES[0], "name": "big"}, {**TINY_SIZES[0], "name": "BIG", "hidden_size": 64}]), "'big'"),
    ],
)
def test_two_runs_one_directory_refused_at_plan_time(tmp_path, kw, needle):
    data = fake_data(tmp_path)
    with pytest.raises(CogqaError, match="map to one run directory") as info:
        tiny_spec(data, **{"heads": "2:1", **kw})
    assert needle in str(info.value) and "\n" not in str(info.value)


def _finished_sweep(tmp_path: Path, **result) -> Path:
    """A sweep directory with one planned run and a hand-written result.json (no training)."""
    data = fake_data(tmp_path)
    out = tmp_path / "sweep"
    (run_dir,) = materialise(tiny_spec(data, heads="2:1"), out, progress=False)
    good = {
        "status": "done",
        "id": run_dir.name,
        "size": "a",
        "seed": 0,
        "n_heads": 2,
        "n_kv_heads": 1,
        "final_val_loss": 2.5,
        "tokens": 1024,
        "params_non_embedding": 5000,
        "context": 32,
        "loss_by_position": {"2": 3.0, "32": 2.5},
    }
    (run_dir / "result.json").write_text(json.dumps({**good, **result}))
    return out


@pytest.mark.parametrize(
    "result, needle",
    [
        ({}, None),
        ({"final_val_loss": -0.5}, "final_val_loss"),
        ({"final_val_loss": float("nan")}, "NaN where a number belongs"),
        ({"final_val_loss": "2.5"}, "final_val_loss"),
        ({"final_val_loss": None}, "final_val_loss"),
        ({"tokens": 0}, "tokens"),
        ({"tokens": -5}, "tokens"),
        ({"params_non_embedding": [1]}, "params_non_embedding"),
        ({"n_heads": 8}, "n_heads is 8 but the plan"),
        ({"n_kv_heads": 2}, "n_kv_heads"),
        ({"size": "b"}, "size is 'b'"),
        ({"loss_by_position": {"2": -1.0}}, "loss_by_position"),
        ({"loss_by_position": [1, 2]}, "loss_by_position"),
        ({"final_val_loss": 10**400}, "integer of 401 digits"),
    ],
)
def test_collect_refuses_results_that_cannot_be_true(tmp_path, result, needle):
    out = _finished_sweep(tmp_path, **result)
    if needle is None:
        assert collect(out, write=False)["loss"].tolist() == [2.5]
        return
    with pytest.raises(CogqaError, match=needle) as info:
        collect(out, write=False)
    assert "run a_h2kv1_s0" in str(info.value) and "\n" not in str(info.value)


def test_copied_sweep_dir_is_not_refused(tmp_path):
    import shutil

    data = fake_data(tmp_path)
    spec = tiny_spec(data, heads="2:1")
    out = tmp_path / "sweep"
    (run_dir,) = materialise(spec, out, progress=False)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["train"]["out_dir"] == "runs/a_h2kv1_s0"  # relative to the sweep directory
    (run_dir / "config.json").write_text("{}")  # the run has started
    copy = tmp_path / "elsewhere" / "sweep"
    shutil.copytree(out, copy)
    assert [d.name for d in materialise(spec, copy, progress=False)] == ["a_h2kv1_s0"]
    # an old run.json with the absolute path of the original location is still read
    info["train"]["out_dir"] = str(run_dir.resolve())
    (copy / "runs" / "a_h2kv1_s0" / "run.json").write_text(json.dumps(info))
    assert [d.name for d in materialise(spec, copy, progress=False)] == ["a_h2kv1_s0"]
    from cogqa.sweep.rundir import read_run_info, resolve_run_paths

    moved = copy / "runs" / "a_h2kv1_s0"
    assert resolve_run_paths(read_run_info(moved), moved)["out_dir"] == str(moved)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n", "aliases"),
        ("sizes: " + "[" * 70 + "1" + "]" * 70 + "\n", "nested"),
        ("tokens: 1" + "0" * 30 + "\n", "digits"),
        ("tokens: [1, 2\n", "not valid YAML"),
    ],
)
def test_hostile_yaml_spec_one_short_line(tmp_path, text, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(CogqaError, match=needle) as info:
        load_spec(path)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def _run_json(run_dir: Path, shape: dict | None, tokens=1e6, context=128) -> Path:
    run_dir.mkdir(parents=True)
    train = {"out_dir": str(run_dir), "data": "data", "shape": shape, "tokens": tokens, "context": context}
    info = {"id": run_dir.name, "size": {"name": "s"}, "n_heads": 1, "n_kv_heads": 1, "seed": 0, "train": train}
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def test_local_workers_start_the_longest_runs_first(tmp_path):
    from cogqa.costs import training_flops
    from cogqa.shapes import ModelShape
    from cogqa.sweep.executors import expected_flops, longest_first

    def shape(d, h):
        return {"layers": 2, "hidden_size": d, "ffn_size": 2 * d, "n_heads": h, "n_kv_heads": 1, "head_dim": 16}

    small = _run_json(tmp_path / "small", shape(48, 1))
    big = _run_json(tmp_path / "big", shape(128, 8))
    mid = _run_json(tmp_path / "mid", shape(96, 2), tokens=2e6)
    unknown = _run_json(tmp_path / "unknown", None)  # shape resolved at training time: cost 0, kept in order
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    expected = float(training_flops(ModelShape(**shape(96, 2), vocab_size=1), 2e6, 128))
    assert expected_flops(mid) == pytest.approx(expected) and expected_flops(unknown) == 0 == expected_flops(broken)
    assert expected_flops(big) > expected_flops(mid) > expected_flops(small) > 0
    assert longest_first([unknown, small, broken, big, mid]) == [big, mid, small, unknown, broken]
