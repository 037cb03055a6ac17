"""The thread policy of local sweeps: workers x threads never exceeds the cores unless asked."""

import pytest

from cogqa.errors import CogqaError
from cogqa.threads import ThreadPlan, available_cores, env_threads, thread_env, thread_plan


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 64])
def test_tiny_runs_get_one_thread_and_one_worker_per_core(cores):
    plan = thread_plan(cores, env={}, runs=25, tiny=True)
    assert plan == ThreadPlan(workers=min(cores, 25), threads=1, cores=cores)
    assert not plan.oversubscribed


def test_workers_never_exceed_the_runs():
    assert thread_plan(8, env={}, runs=3, tiny=True).workers == 3
    assert thread_plan(8, env={}, runs=0, tiny=True).workers == 8  # nothing to run: the plan is still valid


def test_ordinary_runs_use_every_core_in_one_worker():
    assert thread_plan(8, env={}, runs=25) == ThreadPlan(workers=1, threads=8, cores=8)


@pytest.mark.parametrize("cores, workers, threads", [(2, 1, 2), (2, 2, 1), (8, 3, 2), (8, 8, 1), (2, 5, 1)])
def test_given_workers_share_the_cores(cores, workers, threads):
    plan = thread_plan(cores, env={}, workers=workers)
    assert (plan.workers, plan.threads) == (workers, threads)
    assert plan.oversubscribed == (workers > cores)  # only when the user asks for more workers than cores


def test_an_existing_omp_num_threads_is_respected():
    env = {"OMP_NUM_THREADS": "2"}
    assert thread_plan(8, env=env, runs=25, tiny=True) == ThreadPlan(workers=4, threads=2, cores=8)
    assert thread_plan(8, env=env, runs=25) == ThreadPlan(workers=4, threads=2, cores=8)
    assert thread_plan(8, env=env, workers=2).threads == 2
    assert thread_plan(2, env={"OMP_NUM_THREADS": "4"}, tiny=True) == ThreadPlan(workers=1, threads=4, cores=2)
    for bad in ("", "0", "-1", "two", " 3 "):
        assert env_threads({"OMP_NUM_THREADS": bad}) == (3 if bad == " 3 " else None)
    assert env_threads({}) is None


def test_thread_env_sets_the_child_variables():
    assert thread_env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert thread_env(None) == {}
    with pytest.raises(CogqaError, match="threads"):
        thread_env(0)


def test_bad_input_is_one_line_errors():
    with pytest.raises(CogqaError, match="cores"):
        thread_plan(0)
    with pytest.raises(CogqaError, match="--workers"):
        thread_plan(2, workers=0)
    with pytest.raises(CogqaError, match="workers"):
        ThreadPlan(workers=0, threads=1, cores=1)
    assert available_cores() >= 1


def test_a_child_torch_follows_the_variables(tmp_path):
    """What a sweep child sees: OMP_NUM_THREADS=1 gives torch one intra-op thread."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    env = dict(os.environ, **thread_env(1))
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"
