"""Mapped branch and short-circuit tasks end to end (real ``ketch standalone``, SQLite and
PostgreSQL): each instance's choice applies to the same map index of a mapped direct
downstream task only; a downstream task that is not mapped is decided by its trigger rule
alone, whatever the instances chose (Airflow 3.3's SkipMixin and NotPreviouslySkippedDep)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance
from ketch.testing.kube_sim import KubeSimulator
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.kube_env import use_kubernetes

DAG_SOURCE = """
from datetime import datetime, timezone

from ketch import dag, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def mapped_branching():
    @task.branch
    def route(i):
        return "handle" if i != 1 else "other"

    @task
    def handle(i):
        return i

    @task
    def other():
        return "other ran"

    @task
    def never_chosen():
        return "ran anyway"

    routes = route.expand(i=[0, 1, 2])
    routes >> [handle.expand(i=[10, 11, 12]), other(), never_chosen()]

    @task.short_circuit
    def gate(i):
        return i != 2

    @task
    def after(i):
        return i

    @task(trigger_rule="none_failed")
    def collect(values):
        return sorted(values)

    @task
    def join():
        return "join ran"

    gates = gate.expand(i=[0, 1, 2])
    later = after.expand(i=[20, 21, 22])
    gates >> later
    gates >> join()
    collect(later)


mapped_branching()
"""


def _states(db_url: str, run_id: str) -> dict[tuple[str, int], str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                    TaskInstance.run_id == run_id
                )
            ).all()
    finally:
        engine.dispose()
    return {(row.task_id, row.map_index): row.state for row in rows}


# Both databases and both executors, in two runs (each standalone run costs CI ~40 s):
# SQLite with the local executor, PostgreSQL with the Kubernetes simulator.
@pytest.mark.parametrize(
    ("executor", "db_url"),
    [("local", "sqlite"), ("kubernetes", "postgresql")],
    indirect=["db_url"],
)
def test_each_instance_decides_for_its_own_map_index(
    ketch_home: Path, db_url: str, tmp_path: Path, executor: str
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "mapped_branching.py").write_text(DAG_SOURCE)
    env = KetchEnv(home=ketch_home, db_url=db_url, dags_folder=dags)
    if executor == "local":
        _check(env, db_url)
        return
    with KubeSimulator() as sim:
        use_kubernetes(env, sim, tmp_path)
        _check(env, db_url)


def _check(env: KetchEnv, db_url: str) -> None:
    with running(env, "standalone"):
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("mapped_branching"), 60, 0.1, "DAG parsed")
        run_id = str(api.trigger("mapped_branching")["dag_run_id"])
        run = api.wait_run_finished("mapped_branching", run_id, 120)
        states = _states(db_url, run_id)
        assert run["state"] == "success", states
        xcom = f"/api/v1/dags/mapped_branching/dagRuns/{run_id}/taskInstances"
        collected = api.http.get(f"{xcom}/collect/xcomEntries/return_value").json()
    # Instance 1 of the branch chose "other": instance 1 of "handle" is skipped, 0 and 2 run.
    assert [states[("handle", i)] for i in range(3)] == ["success", "skipped", "success"]
    # Tasks that are not mapped are not skipped by the instances' choices: "other" (chosen
    # by one instance) and "never_chosen" (by none) both run.
    assert states[("other", -1)] == "success"
    assert states[("never_chosen", -1)] == "success"
    # A falsy short-circuit instance skips the same map index of its mapped downstream...
    assert [states[("after", i)] for i in range(3)] == ["success", "success", "skipped"]
    # ...and neither an unmapped downstream task nor a reduce with a lenient rule.
    assert states[("join", -1)] == "success"
    assert states[("collect", -1)] == "success"
    assert collected["value"] == [20, 21]
    assert all(states[(t, i)] == "success" for t in ("route", "gate") for i in range(3))


RECHOOSE_SOURCE = """
import os
from datetime import datetime, timezone

from ketch import dag, task

CONTROL = os.environ["E2E_CONTROL"]


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def rechoose():
    @task.branch
    def route(i):
        with open(os.path.join(CONTROL, "avoid")) as f:
            return "handle" if i != int(f.read()) else []

    @task
    def handle(i):
        return i

    route.expand(i=[0, 1, 2]) >> handle.expand(i=[0, 1, 2])


rechoose()
"""


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: the test above
def test_a_cleared_mapped_branch_decides_again_per_map_index(
    ketch_home: Path, db_url: str, tmp_path: Path
) -> None:
    dags, control = tmp_path / "dags", tmp_path / "control"
    dags.mkdir()
    control.mkdir()
    (dags / "rechoose.py").write_text(RECHOOSE_SOURCE)
    (control / "avoid").write_text("1")
    env = KetchEnv(
        home=ketch_home, db_url=db_url, dags_folder=dags, extra={"E2E_CONTROL": str(control)}
    )
    with running(env, "standalone"):
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("rechoose"), 60, 0.1, "DAG parsed")
        run_id = str(api.trigger("rechoose")["dag_run_id"])
        assert api.wait_run_finished("rechoose", run_id, 120)["state"] == "success"
        states = _states(db_url, run_id)
        assert [states[("handle", i)] for i in range(3)] == ["success", "skipped", "success"]
        # Instance 2 avoids "handle" this time: after the clear, instance 2 is skipped and
        # instance 1 runs.
        (control / "avoid").write_text("2")
        r = api.http.post(
            "/api/v1/dags/rechoose/clearTaskInstances",
            json={
                "dag_run_id": run_id,
                "task_ids": ["route"],
                "include_downstream": True,
                "dry_run": False,
                "only_failed": False,
            },
        )
        assert r.status_code == 200, r.text
        assert api.wait_run_finished("rechoose", run_id, 120)["state"] == "success"
    states = _states(db_url, run_id)
    assert [states[("handle", i)] for i in range(3)] == ["success", "success", "skipped"]
