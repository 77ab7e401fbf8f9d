"""Sensors in ``mode="reschedule"`` end to end (Airflow's semantics): each poke is a try that
ends ``up_for_reschedule`` and frees its slot, the next poke comes ``poke_interval`` later,
``timeout`` counts from the first poke (failed with one message, or skipped with soft_fail),
and a kill at the reschedule's commit boundary loses nothing.

The proof that a waiting sensor holds no slot: the sensor and the task that makes it
succeed share a pool of one slot; the sensor, queued first (higher priority), could never
succeed if it kept the slot between pokes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ketch.faults import ENV as FAULT_ENV
from ketch.testing.kube_sim import KubeSimulator
from tests.integration.test_crash_safety import FAULT_HIT, SENSOR_POINTS
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.kube_env import use_kubernetes

DAG_ID = "e2e_reschedule"

RESCHEDULE_DAG = """
import os
from datetime import datetime
from pathlib import Path

from ketch import dag, task
from ketch.authoring.sensors import FileSensor, PokeReturnValue, PythonSensor

WORK = Path(os.environ["E2E_WORK"])


def note(name, line):
    with open(WORK / name, "a") as f:
        f.write(line + "\\n")


def flag_seen(ti=None, **_):
    note("pokes", str(ti.try_number))
    pokes = len((WORK / "pokes").read_text().splitlines())
    return PokeReturnValue((WORK / "go.flag").exists() and pokes >= 3, xcom_value={{"pokes": pokes}})


@dag(schedule=None, start_date=datetime(2024, 1, 1), is_paused_upon_creation=False)
def {dag_id}():
    PythonSensor(
        task_id="waits", python_callable=flag_seen, mode="reschedule", poke_interval=0.5,
        timeout=120, pool="solo", priority_weight=10, retries=2,
    )

    @task(pool="solo")
    def frees():
        note("frees", "ran")
        (WORK / "go.flag").write_text("go")

    frees()
    FileSensor(
        task_id="file_waits", filepath=str(WORK / "go.flag"), mode="reschedule",
        poke_interval=0.5, timeout=120,
    )
    PythonSensor(
        task_id="times_out", python_callable=lambda: False, mode="reschedule",
        poke_interval=0.5, timeout=2, retries=2,
    )
    PythonSensor(
        task_id="soft", python_callable=lambda: False, mode="reschedule",
        poke_interval=0.5, timeout=2, soft_fail=True,
    )


{dag_id}()
"""


@pytest.fixture(scope="module")
def kube_sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


def make_env(ketch_home: Path, db_url: str, tmp_path: Path) -> KetchEnv:
    dags, work = tmp_path / "dags", tmp_path / "work"
    dags.mkdir()
    work.mkdir()
    (dags / "reschedule.py").write_text(RESCHEDULE_DAG.format(dag_id=DAG_ID))
    return KetchEnv(home=ketch_home, db_url=db_url, dags_folder=dags, extra={"E2E_WORK": str(work)})


def set_pool(env: KetchEnv, name: str, slots: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ketch", "pools", "set", name, str(slots)],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def tries_of(api: Api, run_id: str, task_id: str) -> list[dict[str, Any]]:
    r = api.http.get(f"/api/v1/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
    assert r.status_code == 200, r.text
    return list(r.json()["tries"])


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def run_the_dag(env: KetchEnv) -> tuple[Api, str, dict[str, dict[str, Any]], set[str]]:
    """Trigger the DAG, note the states seen while it runs; return the finished TIs."""
    api = Api(env.base_url)
    wait_for(api.healthy, 60, 0.05, "web server")
    set_pool(env, "solo", 1)
    wait_for(lambda: api.dag(DAG_ID), 60, 0.1, f"{DAG_ID} parsed")
    run_id = api.trigger(DAG_ID)["dag_run_id"]
    seen: set[str] = set()

    def finished() -> bool:
        seen.update(str(ti["state"]) for ti in api.task_instances(DAG_ID, run_id).values())
        return api.run(DAG_ID, run_id)["state"] in ("success", "failed")

    wait_for(finished, 180, 0.1, f"run {run_id} to finish")
    return api, run_id, api.task_instances(DAG_ID, run_id), seen


def check_the_run(api: Api, run_id: str, tis: dict[str, dict[str, Any]]) -> None:
    states = {t: ti["state"] for t, ti in tis.items()}
    assert states == {
        "waits": "success",
        "frees": "success",
        "file_waits": "success",
        "times_out": "failed",
        "soft": "skipped",
    }, {t: (ti["state"], ti["try_number"], ti["error"]) for t, ti in tis.items()}

    waits = tries_of(api, run_id, "waits")
    assert [t["state"] for t in waits] == ["up_for_reschedule"] * (len(waits) - 1) + ["success"]
    assert len(waits) >= 3, waits
    # Pokes use no retry: max_tries grew by one per reschedule.
    assert tis["waits"]["max_tries"] == 2 + len(waits) - 1
    value = api.http.get(
        f"/api/v1/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/waits/xcomEntries/return_value"
    )
    assert value.json()["value"] == {"pokes": len(waits)}
    # The pool has one slot: "frees" ran between two pokes of the sensor, never beside one.
    frees = tries_of(api, run_id, "frees")[0]
    before = [t for t in waits if when(t["end_date"]) <= when(frees["start_date"])]
    after = [t for t in waits if when(t["start_date"]) >= when(frees["end_date"])]
    assert before and after and len(before) + len(after) == len(waits), (waits, frees)

    timed_out = tries_of(api, run_id, "times_out")
    assert [t["state"] for t in timed_out][:-1] == ["up_for_reschedule"] * (len(timed_out) - 1)
    assert timed_out[-1]["state"] == "failed"
    error = timed_out[-1]["error"]
    assert error.startswith("SensorTimeout: Sensor has timed out; run duration of "), error
    assert error.endswith("exceeds the specified timeout of 2.0."), error
    # Counted from the first poke: the last poke came more than 2 s after the first.
    assert (
        when(timed_out[-1]["start_date"]) - when(timed_out[0]["start_date"])
    ).total_seconds() > 2
    assert tis["times_out"]["error"] == error  # one message, no retry
    soft = tries_of(api, run_id, "soft")
    assert soft[-1]["state"] == "skipped" and len(soft) >= 2, soft
    assert tries_of(api, run_id, "file_waits")[-1]["state"] == "success"


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_reschedule_sensors_on_the_local_executor(
    ketch_home: Path, db_url: str, tmp_path: Path
) -> None:
    env = make_env(ketch_home, db_url, tmp_path)
    with running(env, "standalone"):
        api, run_id, tis, seen = run_the_dag(env)
        check_the_run(api, run_id, tis)
    assert "up_for_reschedule" in seen  # the API shows the state while a sensor waits


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reschedule_sensors_on_kubernetes(
    ketch_home: Path, db_url: str, tmp_path: Path, kube_sim: KubeSimulator
) -> None:
    env = make_env(ketch_home, db_url, tmp_path)
    namespace = use_kubernetes(env, kube_sim, tmp_path)
    with running(env, "standalone"):
        api, run_id, tis, seen = run_the_dag(env)
        check_the_run(api, run_id, tis)
        # Each poke ran in a pod of its own, deleted once its try ended (failed pods are
        # kept for inspection: delete_worker_pods_on_failure is off).
        hostnames = [t["hostname"] for t in tries_of(api, run_id, "waits")]
        assert len(set(hostnames)) == len(hostnames) >= 3, hostnames
        assert all(h.startswith("e2e-reschedule-waits-") for h in hostnames), hostnames

        def sensor_pods() -> list[str]:
            pods = kube_sim.pods(namespace)
            return [p["metadata"]["name"] for p in pods if p["metadata"]["name"] in hostnames]

        wait_for(lambda: not sensor_pods(), 60, 0.1, "the sensor's pods deleted")
    assert "up_for_reschedule" in seen


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("point", sorted(SENSOR_POINTS))
def test_kill_at_the_reschedule_commit_loses_nothing(
    ketch_home: Path, db_url: str, tmp_path: Path, point: str
) -> None:
    """The process that records a reschedule dies before or after its commit; restarted,
    the sensor goes on poking (the try's retried finish is recorded, or recognised as
    recorded) and the run ends as without the kill."""
    env = make_env(ketch_home, db_url, tmp_path)
    armed = KetchEnv(
        **{**env.__dict__, "extra": {**env.extra, FAULT_ENV: f"{point}@{FAULT_HIT[point]}"}}
    )
    with running(armed, "standalone") as process:
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        set_pool(env, "solo", 1)
        wait_for(lambda: api.dag(DAG_ID), 60, 0.1, f"{DAG_ID} parsed")
        run_id = api.trigger(DAG_ID)["dag_run_id"]
        wait_for(lambda: not process.alive(), 90, 0.05, f"fault point {point}")
        assert f"fault point {point} reached" in process.output()
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(
            lambda: api.run(DAG_ID, run_id)["state"] in ("success", "failed"),
            180,
            0.1,
            f"run {run_id} to finish",
        )
        check_the_run(api, run_id, api.task_instances(DAG_ID, run_id))
