"""Mapped task groups end to end: real ``ketch standalone``, real tries, SQLite and
PostgreSQL, on the local executor and the Kubernetes simulator. A group mapped over an
upstream's list holds two chained tasks; a reduce after it gets every instance's value.
The values stored per map_index show which element and which upstream value reached
each instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance, XCom
from ketch.testing.kube_sim import KubeSimulator
from ketch.worker.serde import decode
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.kube_env import use_kubernetes

GROUP_DAG = """
from datetime import datetime, timezone

from ketch import dag, get_current_context, task, task_group


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     is_paused_upon_creation=False)
def e2e_group():
    @task
    def files():
        return ["a", "b", "c"]

    @task
    def load(name, suffix):
        return {"name": name + suffix, "loaded_at": get_current_context()["map_index"]}

    @task
    def transform(row):
        return f"{row['name']}@{row['loaded_at']}/{get_current_context()['map_index']}"

    @task
    def report(values):
        return list(values)

    @task_group
    def per_file(name, suffix):
        return transform(load(name, suffix))

    report(per_file.partial(suffix=".csv").expand(name=files()))


e2e_group()
"""


@pytest.fixture(scope="module")
def kube_simulator() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


def _rows(db_url: str, run_id: str) -> tuple[dict[str, dict[int, str]], dict[str, dict[int, Any]]]:
    """(task_id -> map_index -> state, task_id -> map_index -> return value) of the run."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tis = conn.execute(
                select(
                    TaskInstance.id,
                    TaskInstance.task_id,
                    TaskInstance.map_index,
                    TaskInstance.state,
                    TaskInstance.dag_run_id,
                ).where(TaskInstance.run_id == run_id)
            ).all()
            run_ids = {ti.dag_run_id for ti in tis}
            xcoms = conn.execute(
                select(XCom.task_id, XCom.map_index, XCom.value).where(
                    XCom.dag_run_id.in_(run_ids), XCom.key == "return_value"
                )
            ).all()
    finally:
        engine.dispose()
    states: dict[str, dict[int, str]] = {}
    for ti in tis:
        states.setdefault(ti.task_id, {})[ti.map_index] = ti.state
    values: dict[str, dict[int, Any]] = {}
    for x in xcoms:
        values.setdefault(x.task_id, {})[x.map_index] = decode(x.value)
    return states, values


# Both databases and both executors, in two runs (each standalone run costs CI ~40 s):
# SQLite with the local executor, PostgreSQL with the Kubernetes simulator.
@pytest.mark.parametrize(
    ("executor", "db_url"),
    [("local", "sqlite"), ("kubernetes", "postgresql")],
    indirect=["db_url"],
)
def test_a_mapped_group_runs_each_instance_on_its_own_values_and_reduces(
    ketch_home: Path, db_url: str, tmp_path: Path, executor: str, request: pytest.FixtureRequest
) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "groups.py").write_text(GROUP_DAG)
    env = KetchEnv(home=ketch_home, db_url=db_url, dags_folder=folder)
    if executor == "kubernetes":
        use_kubernetes(env, request.getfixturevalue("kube_simulator"), tmp_path)
    with running(env, "standalone"):
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_group"), 60, 0.1, "e2e_group parsed")
        run = api.trigger("e2e_group")
        finished = api.wait_run_finished("e2e_group", run["dag_run_id"], 180)
        states, values = _rows(db_url, str(run["dag_run_id"]))
    assert finished["state"] == "success", states
    assert states["per_file.load"] == dict.fromkeys(range(3), "success")
    assert states["per_file.transform"] == dict.fromkeys(range(3), "success")
    # Each instance got its element (and the partial argument) ...
    assert values["per_file.load"] == {
        i: {"name": f"{n}.csv", "loaded_at": i} for i, n in enumerate("abc")
    }
    # ... and the chained task got its own instance's upstream value, not the list.
    assert values["per_file.transform"] == {i: f"{n}.csv@{i}/{i}" for i, n in enumerate("abc")}
    # The reduce after the group gets every instance's value in map_index order.
    assert values["report"] == {-1: ["a.csv@0/0", "b.csv@1/1", "c.csv@2/2"]}
