"""The execution API on both backends: start/heartbeat/finish rules, XComs, auth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.api.execution import router
from ketch.auth.try_tokens import sign_try_token
from ketch.config import get_settings
from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance, TaskInstanceTry, XCom
from ketch.executors.base import TryKey
from ketch.serialization import SerializedDag, SerializedSchedule, SerializedTask

LOGICAL = datetime(2026, 3, 1, tzinfo=UTC)


def serialized_dag(dag_id: str) -> SerializedDag:
    return SerializedDag(
        dag_id=dag_id,
        fileloc=f"/dags/{dag_id}.py",
        relative_fileloc=f"{dag_id}.py",
        schedule=SerializedSchedule(kind="none"),
        tasks={
            "up": SerializedTask(task_id="up", kind="python", downstream_task_ids=["down"]),
            "down": SerializedTask(
                task_id="down",
                kind="python",
                upstream_task_ids=["up"],
                retries=1,
                retry_delay=60,
                execution_timeout=30,
            ),
        },
    )


@dataclass
class Try:
    ti_id: int
    key: TryKey
    dag_run_id: int

    def headers(self, *, try_number: int | None = None) -> dict[str, str]:
        key = TryKey(
            self.key.dag_id, self.key.run_id, self.key.task_id, try_number or self.key.try_number
        )
        return {"Authorization": f"Bearer {sign_try_token(get_settings(), key, self.ti_id)}"}


def make_try(
    engine: Engine,
    *,
    task_id: str = "down",
    state: str | None = "queued",
    try_number: int = 1,
    max_tries: int = 1,
    dag_id: str = "d",
) -> Try:
    dag = serialized_dag(dag_id)
    now = datetime.now(UTC)
    with Session(engine) as session:
        if session.get(DagModel, dag_id) is None:
            session.add(
                DagModel(
                    dag_id=dag_id,
                    fileloc=dag.fileloc,
                    relative_fileloc=dag.relative_fileloc,
                    serialized=dag.model_dump(mode="json"),
                    serialized_hash="h1",
                )
            )
            session.add(
                DagVersion(
                    dag_hash="h1",
                    dag_id=dag_id,
                    serialized=dag.model_dump(mode="json"),
                    created_at=now,
                )
            )
            session.flush()
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).first()
        if run is None:
            run = DagRun(
                dag_id=dag_id,
                run_id="manual__1",
                run_type="manual",
                state="running",
                logical_date=LOGICAL,
                data_interval_start=LOGICAL,
                data_interval_end=LOGICAL + timedelta(days=1),
                run_after=LOGICAL,
                conf={"x": 1},
                params={"p": "v"},
                dag_hash="h1",
            )
            session.add(run)
            session.flush()
        ti = TaskInstance(
            dag_run_id=run.id,
            dag_id=dag_id,
            run_id=run.run_id,
            task_id=task_id,
            state=state,
            try_number=try_number,
            max_tries=max_tries,
        )
        session.add(ti)
        session.flush()
        session.add(
            TaskInstanceTry(
                task_instance_id=ti.id, try_number=try_number, state=state, queued_at=now
            )
        )
        session.commit()
        return Try(ti.id, TryKey(dag_id, run.run_id, task_id, try_number), run.id)


@pytest.fixture
def client(engine: Engine) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def ti_row(engine: Engine, ti_id: int) -> TaskInstance:
    with Session(engine) as session:
        ti = session.get(TaskInstance, ti_id)
        assert ti is not None
        return ti


def try_row(engine: Engine, ti_id: int, try_number: int) -> TaskInstanceTry:
    with Session(engine) as session:
        row = session.scalars(
            select(TaskInstanceTry).where(
                TaskInstanceTry.task_instance_id == ti_id, TaskInstanceTry.try_number == try_number
            )
        ).one()
        return row


def start(client: TestClient, t: Try, pid: int = 123) -> Any:
    return client.post(
        "/execution/try/start", json={"pid": pid, "hostname": "h"}, headers=t.headers()
    )


def finish(client: TestClient, t: Try, **body: Any) -> Any:
    return client.post("/execution/try/finish", json=body, headers=t.headers())


def test_start_runs_a_queued_try_once_and_returns_its_context(
    engine: Engine, client: TestClient
) -> None:
    t = make_try(engine)
    response = start(client, t)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["dag_id"] == "d" and payload["task_id"] == "down"
    assert payload["run_id"] == "manual__1" and payload["try_number"] == 1
    assert payload["logical_date"] == "2026-03-01T00:00:00+00:00"
    assert payload["data_interval_end"] == "2026-03-02T00:00:00+00:00"
    assert payload["params"] == {"p": "v"} and payload["conf"] == {"x": 1}
    assert payload["fileloc"] == "/dags/d.py" and payload["relative_fileloc"] == "d.py"
    assert payload["execution_timeout"] == 30
    assert payload["heartbeat_interval"] == get_settings().scheduler.task_instance_heartbeat_sec
    assert payload["max_xcom_size"] == get_settings().core.max_xcom_size
    ti = ti_row(engine, t.ti_id)
    assert ti.state == "running" and ti.pid == 123 and ti.hostname == "h"
    assert ti.start_date is not None and ti.last_heartbeat_at is not None
    assert try_row(engine, t.ti_id, 1).state == "running"
    # The same process retrying its request gets the context again; another process: 409.
    assert start(client, t).status_code == 200
    duplicate = start(client, t, pid=456)
    assert duplicate.status_code == 409
    assert "running" in duplicate.json()["detail"]


@pytest.mark.parametrize("state", [None, "scheduled", "success", "up_for_retry", "failed"])
def test_start_of_a_try_that_ended_is_401(
    engine: Engine, client: TestClient, state: str | None
) -> None:
    """The TI has this try number but is no longer queued or running: the try is over
    (cleared, finished, failed) and its token no longer works."""
    t = make_try(engine, state=state)
    response = start(client, t)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"].startswith("try has ended: task instance is ")
    assert ti_row(engine, t.ti_id).state == state


def test_start_of_a_superseded_try_is_401(engine: Engine, client: TestClient) -> None:
    t = make_try(engine, try_number=2)
    response = client.post(
        "/execution/try/start", json={"pid": 1, "hostname": "h"}, headers=t.headers(try_number=1)
    )
    assert response.status_code == 401
    assert "try_number 2, this is try 1" in response.json()["detail"]
    assert ti_row(engine, t.ti_id).state == "queued"


def test_heartbeat_until_the_state_changes_externally(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    start(client, t)
    assert client.post("/execution/try/heartbeat", json={}, headers=t.headers()).status_code == 204
    with Session(engine) as session:
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None
        ti.state = None  # cleared by a user
        session.commit()
    response = client.post("/execution/try/heartbeat", json={}, headers=t.headers())
    assert response.status_code == 401  # the try ended with the clear: so did its token
    assert response.json()["detail"] == (
        "try has ended: task instance is none with try_number 1, this is try 1"
    )


def test_finish_success_stores_return_value_and_branch(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    start(client, t)
    response = finish(
        client,
        t,
        state="success",
        return_value={"rows": [1, 2]},
        has_return_value=True,
        follow_task_ids=["a", "b"],
    )
    assert response.status_code == 204, response.text
    ti = ti_row(engine, t.ti_id)
    assert ti.state == "success" and ti.end_date is not None and ti.duration is not None
    assert try_row(engine, t.ti_id, 1).state == "success"
    with Session(engine) as session:
        values = {x.key: x.value for x in session.scalars(select(XCom))}
    assert values == {"return_value": {"rows": [1, 2]}, "__branch__": ["a", "b"]}


def test_xcom_round_trip_within_the_run(engine: Engine, client: TestClient) -> None:
    up = make_try(engine, task_id="up")
    down = make_try(engine, task_id="down")
    start(client, up)
    finish(client, up, state="success", return_value=[1, "two"], has_return_value=True)
    start(client, down)
    response = client.get("/execution/try/xcom/up", headers=down.headers())
    assert response.status_code == 200 and response.json() == {"value": [1, "two"]}
    missing = client.get("/execution/try/xcom/up?key=other", headers=down.headers())
    assert missing.status_code == 404 and "other" in missing.json()["detail"]
    assert client.get("/execution/try/xcom/nope", headers=down.headers()).status_code == 404


def test_xcom_of_one_instance_of_a_mapped_task_by_map_index(
    engine: Engine, client: TestClient
) -> None:
    """A task of a mapped task group reads another's value of its own map_index."""
    down = make_try(engine, task_id="down")
    with Session(engine) as session:
        now = datetime.now(UTC)
        for i in (0, 2):  # instance 1 stored nothing
            session.add(
                XCom(
                    dag_run_id=down.dag_run_id,
                    task_id="up",
                    key="return_value",
                    value=f"v{i}",
                    map_index=i,
                    timestamp=now,
                )
            )
        session.commit()
    start(client, down)
    whole = client.get("/execution/try/xcom/up", headers=down.headers())
    assert whole.json() == {"value": ["v0", "v2"]}
    one = client.get("/execution/try/xcom/up?map_index=2", headers=down.headers())
    assert one.status_code == 200 and one.json() == {"value": "v2"}
    none = client.get("/execution/try/xcom/up?map_index=1", headers=down.headers())
    assert none.status_code == 404
    assert (
        client.get("/execution/try/xcom/up?map_index=-1", headers=down.headers()).status_code == 422
    )


def test_failed_try_goes_up_for_retry_while_tries_remain(
    engine: Engine, client: TestClient
) -> None:
    t = make_try(engine, try_number=1, max_tries=1)
    start(client, t)
    assert (
        finish(client, t, state="failed", error="ValueError: boom", retry=True).status_code == 204
    )
    ti = ti_row(engine, t.ti_id)
    assert ti.state == "up_for_retry" and ti.error == "ValueError: boom"
    assert ti.next_retry_at is not None and ti.end_date is not None
    assert ti.next_retry_at - ti.end_date == timedelta(seconds=60)  # the task's retry_delay
    assert try_row(engine, t.ti_id, 1).state == "failed"


def test_fail_task_and_last_try_fail_for_good(engine: Engine, client: TestClient) -> None:
    no_retry = make_try(engine, task_id="down", try_number=1, max_tries=1)
    start(client, no_retry)
    finish(client, no_retry, state="failed", error="FailTask: stop", retry=False)
    assert ti_row(engine, no_retry.ti_id).state == "failed"
    last = make_try(engine, task_id="up", try_number=2, max_tries=1)
    start(client, last)
    finish(client, last, state="failed", error="boom", retry=True)
    assert ti_row(engine, last.ti_id).state == "failed"


def test_skipped_try(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    start(client, t)
    assert finish(client, t, state="skipped").status_code == 204
    assert ti_row(engine, t.ti_id).state == "skipped"


def test_finish_is_idempotent_but_refuses_a_different_outcome(
    engine: Engine, client: TestClient
) -> None:
    t = make_try(engine)
    start(client, t)
    assert finish(client, t, state="success").status_code == 204
    assert finish(client, t, state="success").status_code == 204
    # Any other call about the ended try: its token no longer works.
    assert finish(client, t, state="failed").status_code == 401
    assert client.post("/execution/try/heartbeat", json={}, headers=t.headers()).status_code == 401
    assert ti_row(engine, t.ti_id).state == "success"


def test_finish_refuses_a_try_that_is_not_running(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    assert finish(client, t, state="success").status_code == 409
    assert ti_row(engine, t.ti_id).state == "queued"


def test_return_value_larger_than_max_xcom_size_is_refused(
    engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETCH__CORE__MAX_XCOM_SIZE", "100")
    get_settings.cache_clear()
    t = make_try(engine)
    start(client, t)
    response = finish(client, t, state="success", return_value="x" * 200, has_return_value=True)
    assert response.status_code == 413
    assert "max_xcom_size" in response.json()["detail"]
    assert ti_row(engine, t.ti_id).state == "running"
    with Session(engine) as session:
        assert session.scalars(select(XCom)).first() is None


def test_bad_body_is_422_json(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    start(client, t)
    response = finish(client, t, state="exploded")
    assert response.status_code == 422 and "detail" in response.json()


def test_missing_forged_and_expired_tokens_are_401(
    engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_try(engine)
    body = {"pid": 1, "hostname": "h"}
    assert client.post("/execution/try/start", json=body).status_code == 401
    forged = {"Authorization": "Bearer " + t.headers()["Authorization"].split()[1][:-4] + "AAAA"}
    assert client.post("/execution/try/start", json=body, headers=forged).status_code == 401
    assert (
        client.post("/execution/try/heartbeat", headers={"Authorization": "Basic x"}).status_code
        == 401
    )
    monkeypatch.setenv("KETCH__API_AUTH__JWT_EXPIRATION_TIME", "1")
    get_settings.cache_clear()
    import time as time_module

    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() - 60)
    expired = t.headers()
    monkeypatch.setattr(time_module, "time", real)
    response = client.post("/execution/try/start", json=body, headers=expired)
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    assert ti_row(engine, t.ti_id).state == "queued"


def test_token_of_another_ti_cannot_touch_this_one(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    wrong = TryKey("d", "manual__1", "up", 1)  # names another task but this TI's id
    headers = {"Authorization": f"Bearer {sign_try_token(get_settings(), wrong, t.ti_id)}"}
    response = client.post(
        "/execution/try/start", json={"pid": 1, "hostname": "h"}, headers=headers
    )
    assert response.status_code == 401
    assert "no longer exists" in response.json()["detail"]
    assert ti_row(engine, t.ti_id).state == "queued"


def test_finish_records_duration_external_id_and_the_reaction_owed(
    engine: Engine, client: TestClient
) -> None:
    t = make_try(engine)
    with Session(engine) as session:
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None
        ti.external_executor_id = "123:456.0"
        session.commit()
    start(client, t)
    with Session(engine) as session:  # started 2.5 s ago
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None and ti.start_date is not None
        ti.start_date -= timedelta(seconds=2.5)
        session.commit()
    assert finish(client, t, state="success").status_code == 204
    ti = ti_row(engine, t.ti_id)
    assert ti.duration is not None and 2.5 <= ti.duration < 10
    assert ti.needs_reaction is True  # the scheduler owes this end a decision
    assert try_row(engine, t.ti_id, 1).external_executor_id == "123:456.0"


def test_a_retried_finish_is_accepted_after_the_next_try_started(
    engine: Engine, client: TestClient
) -> None:
    """The first answer was lost (the web died after the commit); by the time the try
    retries, the scheduler has queued try 2. The retry is still this try's own outcome."""
    t = make_try(engine, try_number=1, max_tries=1)
    start(client, t)
    assert finish(client, t, state="failed", error="boom").status_code == 204
    with Session(engine) as session:
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None
        ti.state, ti.try_number = "queued", 2
        session.commit()
    assert finish(client, t, state="failed", error="boom").status_code == 204
    assert finish(client, t, state="success").status_code == 401
    assert finish(client, t, state="failed", error="other").status_code == 401
    assert ti_row(engine, t.ti_id).state == "queued"


def test_finish_stores_multiple_outputs_each_under_its_key(
    engine: Engine, client: TestClient
) -> None:
    up = make_try(engine, task_id="up")
    down = make_try(engine, task_id="down")
    start(client, up)
    whole = {"total": 3, "names": ["a", "b"]}
    response = finish(
        client, up, state="success", return_value=whole, has_return_value=True, xcoms=whole
    )
    assert response.status_code == 204, response.text
    start(client, down)
    got = client.get("/execution/try/xcom/up?key=total", headers=down.headers())
    assert got.status_code == 200 and got.json() == {"value": 3}
    with Session(engine) as session:
        values = {x.key: x.value for x in session.scalars(select(XCom))}
    assert values == {"return_value": whole, "total": 3, "names": ["a", "b"]}


@pytest.mark.parametrize("state", ["success", "failed"])
def test_finish_stores_the_rendered_map_index(
    engine: Engine, client: TestClient, state: str
) -> None:
    """Both ways a finish is recorded (the one-statement success path, the locked failure
    path) store the instance's name; a name above Airflow's 250 characters is refused."""
    t = make_try(engine)
    start(client, t)
    too_long = finish(client, t, state=state, rendered_map_index="x" * 251)
    assert too_long.status_code == 422
    assert finish(client, t, state=state, rendered_map_index="in/a.csv").status_code == 204
    assert ti_row(engine, t.ti_id).rendered_map_index == "in/a.csv"
