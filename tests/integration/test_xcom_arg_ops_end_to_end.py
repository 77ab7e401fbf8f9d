"""``XComArg.map()``/``.zip()``/``.concat()`` and ``map_index_template`` end to end: real
``ketch standalone``, real tries, SQLite and PostgreSQL, the local executor and the
Kubernetes simulator. The scheduler expands from the stored upstream values, each try
reads its element (the ``map`` callable runs there), and the rendered names reach the
database, the REST API, ``ketch tasks states`` and the web UI."""

from __future__ import annotations

import json
import subprocess
import sys
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

DAGS = """
from datetime import datetime, timezone

from ketch import dag, get_current_context, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_ops():
    @task
    def files():
        return ["a.csv", "b.csv", "c.csv"]

    @task
    def tables():
        return ["t1", "t2"]

    @task
    def extra():
        return ["z.csv"]

    @task(map_index_template="{{ task.op_kwargs['path'] }}")
    def load(path):
        return path.upper()

    @task(map_index_template="{{ label }}")
    def pair(item):
        get_current_context()["label"] = f"{item[0]}->{item[1]}"
        return list(item)

    f = files()
    load.expand(path=f.map(lambda name: f"in/{name}").map(str.strip))
    pair.expand(item=f.zip(tables(), fillvalue="none"))
    load.override(task_id="load_all", map_index_template=None).expand(path=f.concat(extra()))


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_ops_bad():
    @task(map_index_template="{{ no_such_name }}")
    def badly_named(x):
        return x

    @task(map_index_template="{{ no_such_name }}")
    def fails(x):
        raise RuntimeError("the task's own error")

    badly_named.expand(x=[1])
    fails.expand(x=[1])


e2e_ops()
e2e_ops_bad()
"""


@pytest.fixture(scope="session")
def kube_simulator() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture
def start(ketch_home: Path, db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``ketch standalone`` (local executor, or the simulator given); yields (api, env)."""
    stack: list[Any] = []

    def go(sim: KubeSimulator | None = None) -> tuple[Api, KetchEnv]:
        folder = tmp_path / "dags"
        folder.mkdir()
        (folder / "ops.py").write_text(DAGS)
        env = KetchEnv(home=ketch_home, db_url=db_url, dags_folder=folder)
        if sim is not None:
            use_kubernetes(env, sim, tmp_path)
        ctx = running(env, "standalone")
        ctx.__enter__()
        stack.append(ctx)
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        return api, env

    yield go
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def _run(api: Api, dag_id: str) -> dict[str, Any]:
    wait_for(lambda: api.dag(dag_id), 60, 0.1, f"{dag_id} parsed")
    run = api.trigger(dag_id)
    return api.wait_run_finished(dag_id, run["dag_run_id"], 120)


def _rows(db_url: str, run_id: str) -> tuple[dict[str, dict[int, Any]], dict[str, dict[int, Any]]]:
    """Each task's instances and return values by map_index, read from the database."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tis = conn.execute(select(TaskInstance).where(TaskInstance.run_id == run_id)).all()
            ids = {ti.dag_run_id for ti in tis}
            xcoms = conn.execute(
                select(XCom).where(XCom.dag_run_id.in_(ids), XCom.key == "return_value")
            ).all()
    finally:
        engine.dispose()
    instances: dict[str, dict[int, Any]] = {}
    values: dict[str, dict[int, Any]] = {}
    for ti in tis:
        instances.setdefault(ti.task_id, {})[ti.map_index] = ti
    for x in xcoms:
        values.setdefault(x.task_id, {})[x.map_index] = decode(x.value)
    return instances, values


def _check_run(api: Api, db_url: str) -> str:
    run = _run(api, "e2e_ops")
    tis, values = _rows(db_url, run["dag_run_id"])
    assert run["state"] == "success", {
        t: {i: r.state for i, r in m.items()} for t, m in tis.items()
    }
    # map: the source's length; both callables ran in each instance's try.
    assert values["load"] == {0: "IN/A.CSV", 1: "IN/B.CSV", 2: "IN/C.CSV"}
    assert {i: ti.rendered_map_index for i, ti in tis["load"].items()} == {
        0: "in/a.csv",
        1: "in/b.csv",
        2: "in/c.csv",
    }
    # zip with a fillvalue: the longest; a name set in the task's context.
    assert values["pair"] == {0: ["a.csv", "t1"], 1: ["b.csv", "t2"], 2: ["c.csv", "none"]}
    assert [tis["pair"][i].rendered_map_index for i in range(3)] == [
        "a.csv->t1",
        "b.csv->t2",
        "c.csv->none",
    ]
    # concat: the sum, in order; no template, no name.
    assert values["load_all"] == {0: "A.CSV", 1: "B.CSV", 2: "C.CSV", 3: "Z.CSV"}
    assert all(ti.rendered_map_index is None for ti in tis["load_all"].values())
    return str(run["dag_run_id"])


def _check_surfaces(api: Api, env: KetchEnv, run_id: str) -> None:
    base = f"/api/v1/dags/e2e_ops/dagRuns/{run_id}/taskInstances"
    listed = api.http.get(f"{base}/pair/listMapped").json()["task_instances"]
    assert [(t["map_index"], t["rendered_map_index"]) for t in listed] == [
        (0, "a.csv->t1"),
        (1, "b.csv->t2"),
        (2, "c.csv->none"),
    ]
    assert api.http.get(f"{base}/load/1").json()["rendered_map_index"] == "in/b.csv"
    assert api.http.get(f"{base}/files").json()["rendered_map_index"] is None
    done = subprocess.run(
        [sys.executable, "-m", "ketch", "tasks", "states", "e2e_ops", run_id, "-o", "json"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    states = json.loads(done.stdout)
    assert sorted(r["rendered_map_index"] for r in states if r["task_id"] == "load") == [
        "in/a.csv",
        "in/b.csv",
        "in/c.csv",
    ]
    page = api.http.get(f"/dags/e2e_ops/runs/{run_id}/tasks/pair")
    assert page.status_code == 200
    assert '<a href="?map_index=2">c.csv-&gt;none</a>' in page.text
    plain = api.http.get(f"/dags/e2e_ops/runs/{run_id}/tasks/load_all").text
    assert '<a href="?map_index=3">3</a>' in plain


def _check_bad_names(api: Api, db_url: str) -> None:
    run = _run(api, "e2e_ops_bad")
    tis, _ = _rows(db_url, run["dag_run_id"])
    assert run["state"] == "failed"
    # The task succeeded, its name could not be rendered: the try fails, saying why.
    named = tis["badly_named"][0]
    assert named.state == "failed" and named.rendered_map_index is None
    assert named.error is not None
    assert "map_index_template '{{ no_such_name }}' could not be rendered" in named.error
    assert "'no_such_name' is undefined" in named.error
    # The task failed: its own error stays, the rendering error is dropped.
    fails = tis["fails"][0]
    assert fails.state == "failed" and fails.rendered_map_index is None
    assert fails.error is not None and "the task's own error" in fails.error
    assert "map_index_template" not in fails.error


# SQLite with the local executor here, PostgreSQL with the Kubernetes simulator below.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_map_zip_concat_and_named_instances_on_the_local_executor(start: Any, db_url: str) -> None:
    api, env = start()
    run_id = _check_run(api, db_url)
    _check_surfaces(api, env, run_id)
    _check_bad_names(api, db_url)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_map_zip_concat_and_named_instances_on_kubernetes(
    start: Any, db_url: str, kube_simulator: KubeSimulator
) -> None:
    api, _ = start(kube_simulator)
    _check_run(api, db_url)
