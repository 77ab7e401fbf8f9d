"""Dynamic task mapping end to end: real ``ketch standalone``, real tries, real databases.

One DAG maps in every way that succeeds (a literal cross product, an upstream's value, a
classic operator, a reduce, a failing instance retried on its own); another in every way
that cannot run (nothing to map over, too many items, a value that is not a list). Both
run on SQLite and PostgreSQL with the local executor; the first also on the Kubernetes
simulator. The database is read directly to see every instance with its map_index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from ketch.db.models import TaskInstance, TaskInstanceTry, XCom
from ketch.testing.kube_sim import KubeSimulator
from ketch.worker.serde import decode
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.kube_env import use_kubernetes

MAPPING_DAGS = """
from datetime import datetime, timedelta, timezone

from ketch import BashOperator, dag, get_current_context, task

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_mapped():
    @task
    def numbers():
        return [1, 2, 3]

    @task
    def double(x, factor):
        ctx = get_current_context()
        return {"x": x * factor, "map_index": ctx["map_index"], "ti": ctx["ti"].map_index}

    @task
    def total(values):
        return sum(v["x"] for v in values)

    total(double.partial(factor=2).expand(x=numbers()))

    @task
    def pair(a, b):
        return f"{a}{b}"

    @task
    def joined(values):
        return ",".join(values)

    joined(pair.expand(a=[1, 2], b=["x", "y", "z"]))

    BashOperator.partial(task_id="echo").expand(bash_command=["echo one", "echo two"])

    @task(retries=1, retry_delay=timedelta(seconds=0.1))
    def flaky(i):
        if i == 1 and get_current_context()["try_number"] == 1:
            raise RuntimeError("instance 1 fails its first try")
        return i

    flaky.expand_kwargs([{"i": 0}, {"i": 1}, {"i": 2}])


@dag(schedule=None, start_date=START, is_paused_upon_creation=False)
def e2e_unmappable():
    @task
    def empty():
        return []

    @task
    def echo(x):
        return x

    echo.override(task_id="over_nothing").expand(x=empty())
    echo.override(task_id="over_limit").expand(x=list(range(11)))

    @task
    def text():
        return "abc"

    echo.override(task_id="over_text").expand(x=text())

    @task
    def too_many():
        return list(range(11))

    echo.override(task_id="over_too_many").expand(x=too_many())


e2e_mapped()
e2e_unmappable()
"""

MAX_MAP_LENGTH = 10


@pytest.fixture(scope="session")
def kube_simulator() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


def _env(ketch_home: Path, db_url: str, tmp_path: Path) -> KetchEnv:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "mapping.py").write_text(MAPPING_DAGS)
    return KetchEnv(
        home=ketch_home,
        db_url=db_url,
        dags_folder=folder,
        extra={"KETCH__CORE__MAX_MAP_LENGTH": str(MAX_MAP_LENGTH)},
    )


@pytest.fixture
def api_for(ketch_home: Path, db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``ketch standalone`` with the executor asked for; yields (api, db_url)."""
    stack: list[Any] = []
    envs: list[KetchEnv] = []

    def start(executor: str, sim: KubeSimulator | None = None) -> Api:
        env = _env(ketch_home, db_url, tmp_path)
        if executor == "kubernetes":
            assert sim is not None
            use_kubernetes(env, sim, tmp_path)
        ctx = running(env, "standalone")
        ctx.__enter__()
        stack.append(ctx)
        api = Api(env.base_url)
        wait_for(api.healthy, 60, 0.05, "web server")
        envs.append(env)
        return api

    start.envs = envs  # type: ignore[attr-defined]
    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def _run(api: Api, dag_id: str) -> dict[str, Any]:
    wait_for(lambda: api.dag(dag_id), 60, 0.1, f"{dag_id} parsed")
    run = api.trigger(dag_id)
    return api.wait_run_finished(dag_id, run["dag_run_id"], 120)


def _instances(db_url: str, run_id: str) -> dict[str, dict[int, TaskInstance]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(TaskInstance).where(TaskInstance.run_id == run_id)).all()
    finally:
        engine.dispose()
    out: dict[str, dict[int, Any]] = {}
    for row in rows:
        out.setdefault(row.task_id, {})[row.map_index] = row
    return out


def _values(db_url: str, task_id: str) -> dict[int, Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(XCom.map_index, XCom.value).where(
                    XCom.task_id == task_id, XCom.key == "return_value"
                )
            ).all()
    finally:
        engine.dispose()
    return {row.map_index: decode(row.value) for row in rows}


def _tries(db_url: str, ti_id: int) -> list[str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(TaskInstanceTry.state)
                .where(TaskInstanceTry.task_instance_id == ti_id)
                .order_by(TaskInstanceTry.try_number)
            ).all()
    finally:
        engine.dispose()
    return [row.state for row in rows]


def _check_mapped_run(api: Api, db_url: str) -> str:
    run = _run(api, "e2e_mapped")
    tis = _instances(db_url, run["dag_run_id"])
    assert run["state"] == "success", {
        t: {i: ti.state for i, ti in m.items()} for t, m in tis.items()
    }
    # An upstream's value: one instance per element, each with its own map_index.
    assert sorted(tis["double"]) == [0, 1, 2]
    assert _values(db_url, "double") == {
        i: {"x": 2 * (i + 1), "map_index": i, "ti": i} for i in range(3)
    }
    # The reduce gets every instance's value in map_index order.
    assert _values(db_url, "total") == {-1: 12}
    # A literal cross product, the last argument fastest.
    assert sorted(tis["pair"]) == list(range(6))
    assert _values(db_url, "joined") == {-1: "1x,1y,1z,2x,2y,2z"}
    # A classic operator mapped over its constructor argument.
    assert _values(db_url, "echo") == {0: "one", 1: "two"}
    # Retries are per instance: only instance 1 took a second try.
    flaky = tis["flaky"]
    assert {i: ti.try_number for i, ti in flaky.items()} == {0: 1, 1: 2, 2: 1}
    assert _tries(db_url, flaky[1].id) == ["failed", "success"]
    assert all(ti.state == "success" for m in tis.values() for ti in m.values())
    _check_surface(api, run["dag_run_id"])
    return str(run["dag_run_id"])


def _check_surface(api: Api, run_id: str) -> None:
    """The REST API's mapped task instance routes and a mapped instance's log."""
    base = f"/api/v1/dags/e2e_mapped/dagRuns/{run_id}/taskInstances"
    listed = api.http.get(f"{base}/double/listMapped").json()
    assert [(ti["map_index"], ti["state"]) for ti in listed["task_instances"]] == [
        (0, "success"),
        (1, "success"),
        (2, "success"),
    ]
    one = api.http.get(f"{base}/flaky/1").json()
    assert (one["map_index"], one["try_number"], len(one["tries"])) == (1, 2, 2)
    whole = api.http.get(f"{base}/double")
    assert whole.status_code == 404
    assert "is mapped: name one of its instances by map_index" in whole.json()["detail"]
    assert api.http.get(f"{base}/double/7").status_code == 404
    not_mapped = api.http.get(f"{base}/total/listMapped")
    assert not_mapped.status_code == 404 and "is not mapped" in not_mapped.json()["detail"]
    unmapped = api.http.get(f"{base}/total").json()
    assert unmapped["map_index"] == -1
    log = api.http.get(f"{base}/flaky/logs/1", params={"map_index": 1})
    assert log.status_code == 200
    assert "instance 1 fails its first try" in log.text
    assert (
        "instance 1 fails" not in api.http.get(f"{base}/flaky/logs/1", params={"map_index": 0}).text
    )
    # Marking one instance changes that one only.
    marked = api.http.patch(f"{base}/flaky/2", json={"new_state": "failed"}).json()
    assert [(ti["task_id"], ti["map_index"]) for ti in marked["task_instances"]] == [("flaky", 2)]
    assert api.http.get(f"{base}/flaky/2").json()["state"] == "failed"
    assert api.http.get(f"{base}/flaky/0").json()["state"] == "success"


def _cli(env: KetchEnv, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ketch", *args],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_mapped_tasks_run_per_instance_and_reduce(api_for: Any, db_url: str) -> None:
    api = api_for("local")
    run_id = _check_mapped_run(api, db_url)
    env = api_for.envs[0]
    for remote in ([], ["--api-url", env.base_url]):
        log = _cli(
            env,
            *remote,
            "tasks",
            "logs",
            "e2e_mapped",
            run_id,
            "flaky",
            "--try",
            "1",
            "--map-index",
            "1",
        )
        assert "instance 1 fails its first try" in log
        value = _cli(
            env, *remote, "tasks", "xcom", "e2e_mapped", run_id, "double", "--map-index", "2"
        )
        assert json.loads(value) == {"x": 6, "map_index": 2, "ti": 2}
    states = json.loads(_cli(env, "tasks", "states", "e2e_mapped", run_id, "-o", "json"))
    assert sorted(r["map_index"] for r in states if r["task_id"] == "pair") == list(range(6))
    # Marking: one instance with --map-index (database and REST), every one without.
    for remote, index in (([], "0"), (["--api-url", env.base_url], "1")):
        out = _cli(
            env,
            *remote,
            "tasks",
            "mark",
            "e2e_mapped",
            run_id,
            "echo",
            "--state",
            "failed",
            "--map-index",
            index,
        )
        assert "marked 1 task instance(s)" in out
    echo = _instances(db_url, run_id)["echo"]
    assert {i: ti.state for i, ti in echo.items()} == {0: "failed", 1: "failed"}
    base = f"/api/v1/dags/e2e_mapped/dagRuns/{run_id}/taskInstances"
    marked = api.http.patch(f"{base}/pair", json={"new_state": "failed"}).json()
    assert sorted(ti["map_index"] for ti in marked["task_instances"]) == list(range(6))


def test_unmappable_values_skip_or_fail_with_one_message(api_for: Any, db_url: str) -> None:
    api = api_for("local")
    run = _run(api, "e2e_unmappable")
    tis = _instances(db_url, run["dag_run_id"])
    assert run["state"] == "failed"
    # Nothing to map over: the placeholder (map_index -1) is skipped, no instance exists.
    assert list(tis["over_nothing"]) == [-1]
    assert tis["over_nothing"][-1].state == "skipped"
    # A literal above max_map_length: the mapped task fails, saying so.
    limit = tis["over_limit"][-1]
    assert limit.state == "failed"
    assert limit.error == (
        f"task 'over_limit' expanded to 11 items, above max_map_length={MAX_MAP_LENGTH} "
        "([core] max_map_length)"
    )
    # An upstream value that cannot be mapped over fails the task that returned it, as
    # Airflow's task runner does; the mapped task is then upstream_failed.
    text = tis["text"][-1]
    assert text.state == "failed"
    assert text.error is not None
    assert text.error.startswith("UnmappableXComTypePushed: unmappable return type 'str'")
    assert tis["over_text"][-1].state == "upstream_failed"
    too_many = tis["too_many"][-1]
    assert too_many.state == "failed"
    assert too_many.error is not None
    assert too_many.error.startswith(
        f"UnmappableXComLengthPushed: unmappable return value length: 11 > {MAX_MAP_LENGTH}"
    )
    assert tis["over_too_many"][-1].state == "upstream_failed"
    assert tis["empty"][-1].state == "success"


def test_mapped_run_on_kubernetes(api_for: Any, db_url: str, kube_simulator: KubeSimulator) -> None:
    _check_mapped_run(api_for("kubernetes", kube_simulator), db_url)
