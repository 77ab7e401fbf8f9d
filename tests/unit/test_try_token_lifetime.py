"""A try token stops working when its try ends, on both backends.

Finished, failed, up for retry, marked, cleared, cancelled, superseded by the next try,
its run deleted: every execution API call with the token of such a try answers 401
``try has ended: ...`` (a kept failed pod reads no variable). What stays possible: a
repeated finish of the outcome the try recorded (its first answer was lost). And a try
whose token died stops itself at its next heartbeat, saying why.
"""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from ketch import operations
from ketch.api.execution_app import create_execution_app
from ketch.authoring.connection import Connection
from ketch.config import get_settings
from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry
from ketch.executors.base import TryEnded as ExecutorTryEnded
from ketch.executors.base import TryKey
from ketch.executors.local import LocalExecutor
from ketch.variables import store
from tests.unit._worker_support import (  # noqa: F401 (fixtures)
    DagSetup,
    api_server,
    api_url,
    dag_setup,
)
from tests.unit.test_execution_api import Try, make_try, ti_row


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with Session(engine) as session:
        store.set_variable(session, get_settings(), "bucket", "s3://b")
        store.set_connection(
            session,
            get_settings(),
            Connection(conn_id="wh", conn_type="postgres", host="db", password="pw"),
        )
        session.commit()
    with TestClient(create_execution_app(get_settings())) as test_client:
        yield test_client


def start(client: TestClient, t: Try, pid: int = 123) -> Any:
    return client.post(
        "/execution/try/start", json={"pid": pid, "hostname": "h"}, headers=t.headers()
    )


def finish(client: TestClient, t: Try, **body: Any) -> Any:
    return client.post("/execution/try/finish", json=body, headers=t.headers())


def calls(client: TestClient, t: Try) -> dict[str, Any]:
    """Every route of the execution API, called with the try's token."""
    headers = t.headers()
    return {
        "variable": client.get("/execution/variables/bucket", headers=headers),
        "connection": client.get("/execution/connections/wh", headers=headers),
        "xcom": client.get("/execution/try/xcom/up", headers=headers),
        "heartbeat": client.post("/execution/try/heartbeat", json={}, headers=headers),
        "start": start(client, t, pid=999),
        "finish": finish(client, t, state="success"),
    }


def assert_all_401(client: TestClient, t: Try, detail: str) -> None:
    for route, response in calls(client, t).items():
        assert response.status_code == 401, (route, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer", route
        assert response.json()["detail"] == f"try has ended: {detail}", route


def a_running_try(engine: Engine, client: TestClient, **kwargs: Any) -> Try:
    """Task `down` running its try, with `up`'s return value in the run; the token works."""
    up = make_try(engine, task_id="up")
    assert start(client, up).status_code == 200
    done = finish(client, up, state="success", return_value=7, has_return_value=True)
    assert done.status_code == 204
    t = make_try(engine, task_id="down", **kwargs)
    assert start(client, t).status_code == 200
    headers = t.headers()
    assert client.get("/execution/variables/bucket", headers=headers).json()["value"] == "s3://b"
    assert client.get("/execution/connections/wh", headers=headers).json()["password"] == "pw"
    assert client.get("/execution/try/xcom/up", headers=headers).json() == {"value": 7}
    assert client.post("/execution/try/heartbeat", json={}, headers=headers).status_code == 204
    return t


def in_session(engine: Engine, action: Callable[[Session], object]) -> None:
    with Session(engine) as session:
        action(session)
        session.commit()


def test_a_queued_try_may_read_before_it_starts(engine: Engine, client: TestClient) -> None:
    t = make_try(engine)
    response = client.get("/execution/variables/bucket", headers=t.headers())
    assert response.status_code == 200, response.text


def test_a_failed_try_can_read_nothing_but_may_repeat_its_finish(
    engine: Engine, client: TestClient
) -> None:
    t = a_running_try(engine, client)
    assert finish(client, t, state="failed", error="FailTask: no", retry=False).status_code == 204
    assert ti_row(engine, t.ti_id).state == "failed"
    # Its first answer lost: the same report again is recognised as its own outcome.
    assert finish(client, t, state="failed", error="FailTask: no", retry=False).status_code == 204
    assert_all_401(client, t, "task instance is failed with try_number 1, this is try 1")
    assert finish(client, t, state="failed", error="another").status_code == 401


def test_a_try_up_for_retry_then_superseded_by_the_next(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client, max_tries=1)
    assert finish(client, t, state="failed", error="boom").status_code == 204
    assert ti_row(engine, t.ti_id).state == "up_for_retry"
    assert_all_401(client, t, "task instance is up_for_retry with try_number 1, this is try 1")

    def queue_try_2(session: Session) -> None:  # what the scheduler does when the retry is due
        ti = session.get(TaskInstance, t.ti_id)
        assert ti is not None
        ti.state, ti.try_number = "queued", 2
        session.add(TaskInstanceTry(task_instance_id=ti.id, try_number=2))

    in_session(engine, queue_try_2)
    assert_all_401(client, t, "task instance is queued with try_number 2, this is try 1")
    assert finish(client, t, state="failed", error="boom").status_code == 204  # still its own
    # The next try's token works.
    t2 = Try(t.ti_id, TryKey(t.key.dag_id, t.key.run_id, t.key.task_id, 2), t.dag_run_id)
    assert start(client, t2).status_code == 200
    assert client.get("/execution/variables/bucket", headers=t2.headers()).status_code == 200
    assert_all_401(client, t, "task instance is running with try_number 2, this is try 1")


def test_a_succeeded_try_can_read_nothing(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client)
    assert finish(client, t, state="success").status_code == 204
    responses = calls(client, t)
    assert responses.pop("finish").status_code == 204  # the same outcome again
    for route, response in responses.items():
        assert response.status_code == 401, route
    assert finish(client, t, state="skipped").status_code == 401


def test_a_cleared_try_can_read_nothing(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client)
    in_session(
        engine,
        lambda s: operations.clear_task_instances(s, t.key.dag_id, t.key.run_id, ["down"]),
    )
    assert ti_row(engine, t.ti_id).state is None
    assert_all_401(client, t, "task instance is none with try_number 1, this is try 1")
    # The try's own failure report is not the clear's: refused too (the clear closed the
    # try's history row as failed, "cleared by a user").
    assert finish(client, t, state="failed", error="TaskTerminated: SIGTERM").status_code == 401


def test_a_try_of_a_cancelled_run_can_read_nothing(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client)
    in_session(engine, lambda s: operations.cancel_dag_run(s, t.key.dag_id, t.key.run_id))
    assert ti_row(engine, t.ti_id).state == "failed"
    assert_all_401(client, t, "task instance is failed with try_number 1, this is try 1")
    assert finish(client, t, state="failed", error="TaskTerminated: SIGTERM").status_code == 401


def test_a_try_marked_success_can_read_nothing(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client)
    in_session(
        engine,
        lambda s: operations.set_task_instance_state(
            s, t.key.dag_id, t.key.run_id, "down", "success"
        ),
    )
    # Its own success report afterwards is not what the user recorded: refused.
    assert_all_401(client, t, "task instance is success with try_number 1, this is try 1")


def test_a_try_whose_run_was_deleted_can_read_nothing(engine: Engine, client: TestClient) -> None:
    t = a_running_try(engine, client)
    in_session(engine, lambda s: s.execute(delete(DagRun).where(DagRun.id == t.dag_run_id)))
    assert_all_401(client, t, f"task instance {t.ti_id} no longer exists")


def test_a_live_try_still_gets_409_for_a_call_out_of_order(
    engine: Engine, client: TestClient
) -> None:
    """409 remains for a try that lives but is not in the state the call needs: another
    process owns it, or it finishes before it started."""
    t = make_try(engine)
    assert finish(client, t, state="success").status_code == 409
    assert client.post("/execution/try/heartbeat", json={}, headers=t.headers()).status_code == 409
    assert start(client, t).status_code == 200
    assert start(client, t, pid=456).status_code == 409


# -- the try itself: a token that died stops it -------------------------------------------


@pytest.fixture
def executor(api_url: str) -> Iterator[tuple[LocalExecutor, queue.Queue[ExecutorTryEnded]]]:
    events: queue.Queue[ExecutorTryEnded] = queue.Queue()
    ex = LocalExecutor(get_settings())
    ex.start(events.put)
    yield ex, events
    ex.stop()


def test_a_cleared_try_stops_at_its_next_heartbeat_saying_why(
    executor: tuple[LocalExecutor, queue.Queue[ExecutorTryEnded]], dag_setup: DagSetup
) -> None:
    from ketch.worker.task_log import log_path

    ex, events = executor
    request = dag_setup.queue_try("hang")
    ex.launch(request)
    deadline = time.monotonic() + 20
    while dag_setup.ti(request.ti_id).state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    in_session(
        dag_setup.engine,
        lambda s: operations.clear_task_instances(
            s, request.key.dag_id, request.key.run_id, ["hang"]
        ),
    )
    ended = events.get(timeout=30)
    assert ended.exit_code == -signal.SIGKILL  # the whole process group, at once
    log = log_path(get_settings().log_folder, request.key).read_text()
    assert log.splitlines()[-1].endswith(
        "ketch: try cancelled: the task instance was cleared; its processes were killed"
    ), log
    assert dag_setup.ti(request.ti_id).state is None
