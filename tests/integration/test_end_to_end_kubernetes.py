"""End-to-end on the Kubernetes executor: real `ketch standalone` with
``KETCH__CORE__EXECUTOR=kubernetes`` against the Kubernetes API simulator, whose fake
kubelet runs every try's pod command (the venv's ``ketch``) as a real process.

SQLite only: the executor is what is under test here; the database paths are covered on
both backends by test_end_to_end.py.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ketch.testing.kube_sim import Faults, KubeSimulator
from tests.integration.test_end_to_end import SCENARIO_DAGS, make_env, trigger_and_wait
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, running, wait_for

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

_NAMESPACES = itertools.count()


@pytest.fixture(scope="module")
def sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture
def namespace(sim: KubeSimulator) -> Iterator[str]:
    sim.faults = Faults()
    yield f"e2e-{next(_NAMESPACES)}"
    sim.faults = Faults()


@pytest.fixture
def env(sim: KubeSimulator, namespace: str, ketch_home: Path, tmp_path: Path) -> KetchEnv:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "e2e_dags.py").write_text(SCENARIO_DAGS)
    (dags / "k8s_faults.py").write_text(FAULT_DAGS)
    env = make_env(ketch_home, f"sqlite:///{ketch_home / 'ketch.db'}", dags, tmp_path)
    template = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/component": "worker"}},
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "image": "ketch:test",
                    "command": [sys.executable, "-m", "ketch"],
                    "env": [{"name": "E2E_MARKS", "value": env.extra["E2E_MARKS"]}],
                }
            ]
        },
    }
    template_file = tmp_path / "pod_template.yaml"
    template_file.write_text(yaml.safe_dump(template))
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
    env.extra.update(
        {
            "KETCH__CORE__EXECUTOR": "kubernetes",
            "KETCH__KUBERNETES__NAMESPACE": namespace,
            "KETCH__KUBERNETES__CONFIG_FILE": str(kubeconfig),
            "KETCH__KUBERNETES__POD_TEMPLATE_FILE": str(template_file),
            "KETCH__KUBERNETES__WORKER_PODS_PENDING_TIMEOUT": "1.5",
            # a try that failed before it started is retried (not counted) after this delay
            "KETCH__CORE__DEFAULT_TASK_RETRY_DELAY": "0.2",
        }
    )
    return env


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


def test_kill_9_scheduler_mid_run_adopts_pods_and_runs_nothing_twice(
    sim: KubeSimulator, namespace: str, env: KetchEnv
) -> None:
    api = Api(env.base_url)
    marks = Path(env.extra["E2E_MARKS"])
    first = KetchProcess(env, "standalone").start()
    try:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_slow_parallel"), 30, 0.05, "DAG parsed")
        run_id = api.trigger("e2e_slow_parallel")["dag_run_id"]
        wait_for(
            lambda: (
                sum(
                    ti["state"] == "running"
                    for ti in api.task_instances("e2e_slow_parallel", run_id).values()
                )
                == 4
            ),
            30,
            0.05,
            "four tries running",
        )
        first.kill9()
    except BaseException:
        sys.stderr.write(first.output()[-10000:])
        first.stop()
        raise
    time.sleep(0.5)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server after restart")
        run = api.wait_run_finished("e2e_slow_parallel", run_id, 60)
        tis = api.task_instances("e2e_slow_parallel", run_id)
    assert run["state"] == "success", tis
    for i in range(4):
        assert tis[f"slow_{i}"]["try_number"] == 1, tis[f"slow_{i}"]
        assert len((marks / f"slow_{i}").read_text().split()) == 1, f"slow_{i} ran twice"
    assert len((marks / "total").read_text().split()) == 1
    wait_for(lambda: not sim.pods(namespace), 20, 0.05, "every pod deleted")


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
