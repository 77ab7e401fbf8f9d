"""A cleared mapped task runs again with the length its upstream returns now (Airflow's
``_revise_map_indexes_if_mapped``): real ``ketch standalone``, real tries, SQLite and
PostgreSQL. The upstream reads the length from a file the test writes, so each clear can
make it return a longer or a shorter list; the crash tests kill the scheduler at the
revision's commit boundary (``revision.before_commit`` / ``revision.after_commit``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance, XCom
from ketch.faults import ENV as FAULT_ENV
from ketch.testing.kube_sim import KubeSimulator
from ketch.worker.serde import decode
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, running, wait_for
from tests.support.kube_env import use_kubernetes

DAG_ID = "revise_mapped"
DAG_SOURCE = """
import os
from datetime import datetime, timezone

from ketch import dag, get_current_context, task

CONTROL = os.environ["E2E_CONTROL"]


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def revise_mapped():
    @task
    def items():
        with open(os.path.join(CONTROL, "length")) as f:
            return list(range(int(f.read())))

    @task
    def work(i):
        ctx = get_current_context()
        with open(os.path.join(CONTROL, f"work.{ctx['map_index']}"), "a") as f:
            f.write(f"{i}\\n")
        return i * 10

    @task
    def total(values):
        return sum(values)

    total(work.expand(i=items()))


revise_mapped()
"""


def _env(ketch_home: Path, db_url: str, tmp_path: Path) -> KetchEnv:
    dags, control = tmp_path / "dags", tmp_path / "control"
    dags.mkdir()
    control.mkdir()
    (dags / "revise_mapped.py").write_text(DAG_SOURCE)
    return KetchEnv(
        home=ketch_home, db_url=db_url, dags_folder=dags, extra={"E2E_CONTROL": str(control)}
    )


def _set_length(env: KetchEnv, length: int) -> None:
    (Path(env.extra["E2E_CONTROL"]) / "length").write_text(str(length))


def _runs_of_work(env: KetchEnv) -> dict[int, int]:
    """How many times each map index ran (one line per try)."""
    control = Path(env.extra["E2E_CONTROL"])
    return {
        int(p.name.split(".")[1]): len(p.read_text().splitlines()) for p in control.glob("work.*")
    }


def _read(db_url: str, run_id: str) -> tuple[dict[int, str | None], dict[tuple[str, int], Any]]:
    """The states of ``work``'s rows by map_index, and every return value of the run."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tis = conn.execute(
                select(TaskInstance.map_index, TaskInstance.state).where(
                    TaskInstance.run_id == run_id, TaskInstance.task_id == "work"
                )
            ).all()
            xcoms = conn.execute(
                select(XCom.task_id, XCom.map_index, XCom.value).where(XCom.key == "return_value")
            ).all()
    finally:
        engine.dispose()
    values = {(row.task_id, row.map_index): decode(row.value) for row in xcoms}
    return {row.map_index: row.state for row in tis}, values


def _clear(api: Api, run_id: str, task_id: str) -> None:
    r = api.http.post(
        f"/api/v1/dags/{DAG_ID}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "include_downstream": True,
            "dry_run": False,
            "only_failed": False,
        },
    )
    assert r.status_code == 200, r.text


def _rerun(api: Api, run_id: str, task_id: str) -> None:
    _clear(api, run_id, task_id)
    run = api.wait_run_finished(DAG_ID, run_id, 120)
    assert run["state"] == "success"


def _check_clear_and_rerun(api: Api, env: KetchEnv, db_url: str) -> str:
    _set_length(env, 3)
    wait_for(lambda: api.dag(DAG_ID), 60, 0.1, f"{DAG_ID} parsed")
    run_id = str(api.trigger(DAG_ID)["dag_run_id"])
    assert api.wait_run_finished(DAG_ID, run_id, 120)["state"] == "success"
    states, values = _read(db_url, run_id)
    assert states == dict.fromkeys(range(3), "success")
    assert values[("total", -1)] == 30

    # The upstream returns a longer list: instances 3 and 4 are created and run.
    _set_length(env, 5)
    _rerun(api, run_id, "items")
    states, values = _read(db_url, run_id)
    assert states == dict.fromkeys(range(5), "success")
    assert values[("total", -1)] == 100
    assert _runs_of_work(env) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}

    # A shorter list: instances 2..4 are removed, their values gone; the reduce gets the
    # two live values and the run succeeds.
    _set_length(env, 2)
    _rerun(api, run_id, "items")
    states, values = _read(db_url, run_id)
    assert states == {0: "success", 1: "success", 2: "removed", 3: "removed", 4: "removed"}
    assert values[("total", -1)] == 10
    assert sorted(i for task_id, i in values if task_id == "work") == [0, 1]
    assert _runs_of_work(env) == {0: 3, 1: 3, 2: 2, 3: 1, 4: 1}

    # Clearing the mapped task alone (its upstream unchanged) keeps the count, even though
    # the file now says 7: the upstream did not run again.
    _set_length(env, 7)
    _rerun(api, run_id, "work")
    states, values = _read(db_url, run_id)
    assert states == {0: "success", 1: "success", 2: "removed", 3: "removed", 4: "removed"}
    assert values[("total", -1)] == 10
    assert _runs_of_work(env) == {0: 4, 1: 4, 2: 2, 3: 1, 4: 1}

    # An empty list: every instance is removed, and the reduce is skipped as after a fresh
    # expansion of nothing; the run still succeeds.
    _set_length(env, 0)
    _rerun(api, run_id, "items")
    states, values = _read(db_url, run_id)
    assert states == dict.fromkeys(range(5), "removed")
    tis = api.task_instances(DAG_ID, run_id)
    assert tis["total"]["state"] == "skipped"
    # And back to three: removed instances within the new length run again.
    _set_length(env, 3)
    _rerun(api, run_id, "items")
    states, values = _read(db_url, run_id)
    assert states == {0: "success", 1: "success", 2: "success", 3: "removed", 4: "removed"}
    assert values[("total", -1)] == 30
    assert _runs_of_work(env) == {0: 5, 1: 5, 2: 3, 3: 1, 4: 1}

    # The REST API lists the removed instances with their state.
    listed = api.http.get(
        f"/api/v1/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/work/listMapped"
    ).json()
    assert [(ti["map_index"], ti["state"]) for ti in listed["task_instances"]] == [
        (0, "success"),
        (1, "success"),
        (2, "success"),
        (3, "removed"),
        (4, "removed"),
    ]
    # The web page of the mapped task shows them in Airflow's light grey.
    page = api.http.get(f"/dags/{DAG_ID}/runs/{run_id}/tasks/work")
    assert page.status_code == 200
    assert '<span data-instance-state="3">removed</span>' in page.text
    assert page.text.count("sq state-removed") == 2
    return run_id


# SQLite with the local executor here, PostgreSQL with the Kubernetes simulator below.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_cleared_mapped_task_follows_the_new_length(
    ketch_home: Path, db_url: str, tmp_path: Path
) -> None:
    env = _env(ketch_home, db_url, tmp_path)
    with running(env, "standalone"):
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        run_id = _check_clear_and_rerun(api, env, db_url)
    # The CLI shows the removed instances too.
    done = subprocess.run(
        [sys.executable, "-m", "ketch", "tasks", "states", DAG_ID, run_id, "-o", "json"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted((r["map_index"], r["state"]) for r in rows if r["task_id"] == "work") == [
        (0, "success"),
        (1, "success"),
        (2, "success"),
        (3, "removed"),
        (4, "removed"),
    ]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_cleared_mapped_task_follows_the_new_length_on_kubernetes(
    ketch_home: Path, db_url: str, tmp_path: Path
) -> None:
    env = _env(ketch_home, db_url, tmp_path)
    with KubeSimulator() as sim:
        use_kubernetes(env, sim, tmp_path)
        with running(env, "standalone"):
            api = Api(env.base_url)
            wait_for(api.healthy, 60, 0.05, "web server")
            _check_clear_and_rerun(api, env, db_url)


# before_commit on both databases, after_commit on PostgreSQL (a kill-and-restart run costs
# CI about a minute).
@pytest.mark.parametrize(
    ("point", "db_url"),
    [
        ("revision.before_commit", "sqlite"),
        ("revision.before_commit", "postgresql"),
        ("revision.after_commit", "postgresql"),
    ],
    indirect=["db_url"],
)
def test_killed_at_revision_the_rerun_completes_with_the_new_instances(
    ketch_home: Path, db_url: str, tmp_path: Path, point: str
) -> None:
    env = _env(ketch_home, db_url, tmp_path)
    api = Api(env.base_url)
    _set_length(env, 3)
    doomed = KetchProcess(
        replace(env, extra={**env.extra, FAULT_ENV: point}), "standalone", name="doomed"
    )
    doomed.start()
    survivor: KetchProcess | None = None
    try:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag(DAG_ID), 60, 0.1, f"{DAG_ID} parsed")
        run_id = str(api.trigger(DAG_ID)["dag_run_id"])
        # The first expansion is no revision: the fault point stays quiet.
        assert api.wait_run_finished(DAG_ID, run_id, 120)["state"] == "success"
        _set_length(env, 5)
        _clear(api, run_id, "items")
        deadline = time.monotonic() + 90
        while doomed.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert doomed.proc is not None and doomed.proc.returncode == -signal.SIGKILL
        assert f"fault point {point} reached" in doomed.output()
        states, _ = _read(db_url, run_id)
        if point == "revision.before_commit":
            # Lost with its transaction: the cleared instances, no new ones.
            assert states == dict.fromkeys(range(3), None)
        else:
            assert states == dict.fromkeys(range(5), "scheduled")
        survivor = KetchProcess(env, "standalone", name="survivor").start()
        wait_for(api.healthy, 60, 0.05, "web server after the restart")
        assert api.wait_run_finished(DAG_ID, run_id, 120)["state"] == "success"
        states, values = _read(db_url, run_id)
        assert states == dict.fromkeys(range(5), "success")
        assert values[("total", -1)] == 100
        # Each instance ran once per run of the mapped task: 0..2 twice, 3 and 4 once.
        assert _runs_of_work(env) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
