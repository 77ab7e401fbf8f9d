"""End-to-end on the Kubernetes executor: real `ketch standalone` with
``KETCH__CORE__EXECUTOR=kubernetes`` against the Kubernetes API simulator, whose fake
kubelet runs every try's pod command (the venv's ``ketch``) as a real process.

The scenarios every executor shares (retries, timeouts, zombies, kill -9 adoption...) run
on Kubernetes in test_end_to_end.py; this file holds what only pods have: kept and deleted
pods, OOM / image pull / unschedulable reasons, API faults. SQLite only: the executor is
what is under test here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.testing.kube_sim import Faults, KubeSimulator
from tests.integration.test_end_to_end import SCENARIO_DAGS, make_env, trigger_and_wait
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.kube_env import use_kubernetes

FAULT_DAGS = '''
"""Tasks whose pods the simulator breaks."""
from datetime import datetime, timezone

from ketch import dag, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def k8s_faults():
    @task(retries=0, executor_config={"resources": {"limits": {"memory": "64Mi"}}})
    def oom_task() -> None:
        import time
        time.sleep(30)

    @task(retries=0, executor_config={"image": "registry.example.com/missing:1"})
    def pull_task() -> None:
        pass

    @task(retries=0)
    def stuck_task() -> None:
        pass

    @task(retries=0, executor_config={"kubernetes": {"annotations": {"team": "data"}}})
    def fine_task() -> str:
        return "ok"

    oom_task()
    pull_task()
    stuck_task()
    fine_task()


k8s_faults()
'''


@pytest.fixture(scope="module")
def sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture
def env(sim: KubeSimulator, ketch_home: Path, tmp_path: Path) -> Iterator[KetchEnv]:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "e2e_dags.py").write_text(SCENARIO_DAGS)
    (dags / "k8s_faults.py").write_text(FAULT_DAGS)
    env = make_env(ketch_home, f"sqlite:///{ketch_home / 'ketch.db'}", dags, tmp_path)
    use_kubernetes(env, sim, tmp_path)
    env.extra.update(
        {
            "KETCH__KUBERNETES__WORKER_PODS_PENDING_TIMEOUT": "1.5",
            # a try that failed before it started is retried (not counted) after this delay
            "KETCH__CORE__DEFAULT_TASK_RETRY_DELAY": "0.2",
        }
    )
    sim.faults = Faults()
    yield env
    sim.faults = Faults()


@pytest.fixture
def namespace(env: KetchEnv) -> str:
    return env.extra["KETCH__KUBERNETES__NAMESPACE"]


def test_dags_run_as_pods_with_retries(sim: KubeSimulator, namespace: str, env: KetchEnv) -> None:
    api = Api(env.base_url)
    marks = Path(env.extra["E2E_MARKS"])
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        run, tis = trigger_and_wait(api, "e2e_slow_parallel")
        assert run["state"] == "success", tis
        assert all(ti["try_number"] == 1 for ti in tis.values())
        run, tis = trigger_and_wait(api, "e2e_retry")
    assert run["state"] == "failed"
    assert tis["flaky"]["state"] == "success" and tis["flaky"]["try_number"] == 2
    assert len((marks / "flaky").read_text().split()) == 2
    assert tis["always_fails"]["state"] == "failed" and tis["always_fails"]["try_number"] == 2
    # succeeded pods are deleted; failed ones are kept for inspection
    kept = {p["metadata"]["labels"]["ketch.io/task-id"] for p in sim.pods(namespace)}
    assert kept <= {"flaky", "always_fails"}
    assert "always_fails" in kept


def test_oom_image_pull_and_unschedulable_give_their_reasons(
    sim: KubeSimulator, namespace: str, env: KetchEnv
) -> None:
    sim.update_faults(
        oom_kill_selector="ketch.io/task-id=oom_task",
        oom_after_seconds=0.5,
        image_pull_failures=["registry.example.com/missing:1"],
        unschedulable_selector="ketch.io/task-id=stuck_task",
    )
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        run, tis = trigger_and_wait(api, "k8s_faults", timeout=90)
    assert run["state"] == "failed"
    assert tis["fine_task"]["state"] == "success"
    assert tis["oom_task"]["state"] == "failed"
    assert "OOMKilled (memory limit 64Mi)" in tis["oom_task"]["error"]
    assert tis["pull_task"]["state"] == "failed"
    assert (
        "ErrImagePull" in tis["pull_task"]["error"]
        or "ImagePullBackOff" in tis["pull_task"]["error"]
    )
    assert tis["stuck_task"]["state"] == "failed"
    assert "Unschedulable" in tis["stuck_task"]["error"]
    assert "FailedScheduling" in tis["stuck_task"]["error"]


def test_api_faults_at_ten_percent_leak_no_pod_and_run_nothing_twice(
    sim: KubeSimulator, namespace: str, env: KetchEnv
) -> None:
    sim.update_faults(
        api_error_rate=0.1,
        api_timeout_rate=0.02,
        api_timeout_seconds=0.3,
        api_timeout_after_commit=True,
        watch_drop_after_seconds=2.0,
        seed=3,
    )
    api = Api(env.base_url)
    marks = Path(env.extra["E2E_MARKS"])
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        run, tis = trigger_and_wait(api, "e2e_slow_parallel", timeout=90)
        assert run["state"] == "success", tis
        for i in range(4):
            assert len((marks / f"slow_{i}").read_text().split()) == 1, f"slow_{i} ran twice"
        assert len((marks / "total").read_text().split()) == 1
        # no pod leaked: every succeeded pod was deleted despite the faults (deletes retry)
        wait_for(lambda: not sim.pods(namespace), 30, 0.05, "every pod deleted")
    assert all(ti["try_number"] == 1 for ti in tis.values()), tis
