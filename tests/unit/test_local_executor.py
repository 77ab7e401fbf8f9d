"""The local executor against a real execution API: real tries of a real DAG file."""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import os
import queue
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy.orm import Session

from ketch.config import get_settings
from ketch.db.models import TaskInstance
from ketch.executors import local as local_module
from ketch.executors.base import Executor, RunningTry, TryEnded
from ketch.executors.local import VANISHED, LocalExecutor
from ketch.worker.task_log import log_path
from tests.unit._worker_support import ApiServer, DagSetup, api_server, api_url, dag_setup  # noqa: F401 (fixtures)

Events = queue.Queue[TryEnded]


@pytest.fixture
def events() -> Events:
    return queue.Queue()


@pytest.fixture
def executor(api_url: str, events: Events) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(get_settings())
    ex.start(events.put)
    yield ex
    ex.stop()


def read_log(setup: DagSetup, task_id: str) -> str:
    from ketch.executors.base import TryKey

    key = TryKey("worker_test", "manual__2026-03-01T00:00:00+00:00", task_id, 1)
    return log_path(get_settings().log_folder, key).read_text()


def wait_pid_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_it_is_an_executor(executor: LocalExecutor) -> None:
    assert isinstance(executor, Executor)
    assert executor.name == "local"


def test_python_tries_in_parallel_with_xcom(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    produce = dag_setup.queue_try("produce")
    external_id = executor.launch(produce)
    pid, created = external_id.split(":")
    assert int(pid) > 0 and float(created) > 0
    ended = events.get(timeout=30)
    assert ended == TryEnded(
        produce.key, produce.ti_id, 0, None, hostname=socket.gethostname(), pid=int(pid)
    )
    assert dag_setup.ti(produce.ti_id).state == "success"
    assert dag_setup.xcom("produce") == {"n": 41}
    # consume reads produce's XCom through the API; several tries run at once.
    requests = [dag_setup.queue_try(t) for t in ("consume", "bash", "skip", "modules")]
    for request in requests:
        executor.launch(request)
    ended = {e.key.task_id: e for e in (events.get(timeout=30) for _ in requests)}
    assert {t: e.exit_code for t, e in ended.items()} == {
        "consume": 0,
        "bash": 0,
        "skip": 0,
        "modules": 0,
    }
    states = {r.key.task_id: dag_setup.ti(r.ti_id).state for r in requests}
    assert states == {
        "consume": "success",
        "bash": "success",
        "skip": "skipped",
        "modules": "success",
    }
    assert dag_setup.xcom("consume") == 42
    assert dag_setup.xcom("bash") == "bash"
    # The try never imported the database or web stack.
    assert dag_setup.xcom("modules") == []
    log = read_log(dag_setup, "bash")
    assert "hello from bash" in log and "dag=worker_test task=bash" in log
    assert "producing" in read_log(dag_setup, "produce")
    assert executor.running() == set()


def test_failures_report_their_reason(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    boom = dag_setup.queue_try("boom", max_tries=1)
    hard = dag_setup.queue_try("fail_hard", max_tries=1)
    bad_value = dag_setup.queue_try("give_set")
    for request in (boom, hard, bad_value):
        executor.launch(request)
    ended = {e.key.task_id: e for e in (events.get(timeout=30) for _ in range(3))}
    assert {t: (e.exit_code, e.reason) for t, e in ended.items()} == {
        "boom": (1, "exited with code 1"),
        "fail_hard": (1, "exited with code 1"),
        "give_set": (1, "exited with code 1"),
    }
    assert dag_setup.ti(boom.ti_id).state == "up_for_retry"  # a retry remains
    assert dag_setup.ti(hard.ti_id).state == "failed"  # FailTask: no retry
    bad = dag_setup.ti(bad_value.ti_id)
    assert bad.state == "failed"
    assert bad.error == (
        "return value of task 'give_set' is not JSON-serialisable: "
        "Object of type object is not JSON serializable"
    )
    log = read_log(dag_setup, "boom")
    assert "Traceback" in log and "ValueError: boom" in log


def test_timeout_kills_the_task_and_its_children(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    request = dag_setup.queue_try("slow", execution_timeout=1.0)
    executor.launch(request)
    ended = events.get(timeout=30)
    assert ended.exit_code == 1
    ti = dag_setup.ti(request.ti_id)
    assert ti.state == "failed"
    assert ti.error == "TaskTimeout: execution_timeout of 1s exceeded"
    sleep_pid = int(dag_setup.pidfile.read_text())
    assert wait_pid_gone(sleep_pid), "the bash task's sleep survived the timeout"


def test_executor_backstop_kills_the_process_group(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task has no timeout of its own; the executor's backstop fires after timeout + grace.
    monkeypatch.setattr(local_module, "TIMEOUT_GRACE_SECONDS", 0.5)
    request = dag_setup.queue_try("hang", execution_timeout=2.0)  # time for bash to start its child
    executor.launch(request)
    ended = events.get(timeout=30)
    assert ended.reason == "execution_timeout of 2s exceeded; process group killed"
    assert ended.exit_code is not None and ended.exit_code != 0
    assert dag_setup.ti(request.ti_id).state == "failed"
    assert wait_pid_gone(int(dag_setup.pidfile.read_text()))


def test_cancel_kills_the_process_group(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    request = dag_setup.queue_try("hang")
    executor.launch(request)
    deadline = time.monotonic() + 20
    while not dag_setup.pidfile.exists() or not dag_setup.pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert executor.running() == {request.key}
    executor.cancel(request.key)
    ended = events.get(timeout=30)
    assert ended.reason == "cancelled; process group killed"
    assert wait_pid_gone(int(dag_setup.pidfile.read_text()))


def test_heartbeat_conflict_terminates_the_try(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    request = dag_setup.queue_try("hang")
    executor.launch(request)
    deadline = time.monotonic() + 20
    # Wait for the bash child too: the assertion below is that the child dies with the try.
    while (
        dag_setup.ti(request.ti_id).state != "running"
        or not dag_setup.pidfile.exists()
        or not dag_setup.pidfile.read_text().strip()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with Session(dag_setup.engine) as session:
        ti = session.get(TaskInstance, request.ti_id)
        assert ti is not None
        ti.state = "success"  # marked by a user
        session.commit()
    ended = events.get(timeout=30)
    assert ended.exit_code == -signal.SIGKILL
    last = read_log(dag_setup, "hang").splitlines()[-1]
    assert last.endswith(
        "ketch: try cancelled: the task instance was marked success; its processes were killed"
    )
    assert dag_setup.ti(request.ti_id).state == "success"
    assert wait_pid_gone(int(dag_setup.pidfile.read_text()))


def test_a_new_executor_adopts_running_tries(
    api_url: str,
    executor: LocalExecutor,
    events: Events,
    dag_setup: DagSetup,
) -> None:
    request = dag_setup.queue_try("nap")
    external_id = executor.launch(request)
    executor.stop()  # the scheduler goes away; the try keeps running
    adopted_events: Events = queue.Queue()
    successor = LocalExecutor(get_settings())
    successor.start(adopted_events.put)
    try:
        gone = dag_setup.queue_try("produce")
        adopted = successor.adopt(
            [
                RunningTry(request.key, request.ti_id, external_id),
                RunningTry(gone.key, gone.ti_id, f"{os.getpid()}:12345.0"),  # pid reused by another
                RunningTry(dag_setup.queue_try("consume").key, 0, None),  # never launched
            ]
        )
        assert adopted == [request.key]
        vanished = adopted_events.get(timeout=10)
        assert (vanished.key, vanished.exit_code, vanished.reason) == (gone.key, None, VANISHED)
        ended = adopted_events.get(timeout=30)
        assert (ended.key, ended.exit_code) == (request.key, None)
        assert dag_setup.ti(request.ti_id).state == "success"
        assert dag_setup.xcom("nap") == "rested"
        assert events.empty()  # the stopped executor reported nothing
    finally:
        successor.stop()


def test_forkserver_death_keeps_tries_watched(
    executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    request = dag_setup.queue_try("nap")
    executor.launch(request)
    server_pid = executor._forkserver.pid  # type: ignore[union-attr]
    assert server_pid is not None
    os.kill(server_pid, signal.SIGKILL)
    ended = events.get(timeout=30)
    assert (ended.key, ended.exit_code) == (request.key, None)
    assert dag_setup.ti(request.ti_id).state == "success"
    # The restarted fork server launches new tries.
    again = dag_setup.queue_try("produce")
    executor.launch(again)
    assert events.get(timeout=30).exit_code == 0


def test_log_path_layout(tmp_path: Path) -> None:
    from ketch.executors.base import TryKey

    path = log_path(tmp_path, TryKey("d", "r", "t", 3))
    assert path == tmp_path / "dag_id=d" / "run_id=r" / "task_id=t" / "attempt=3.log"


def test_a_try_survives_a_restart_of_the_api_server(
    api_server: ApiServer, executor: LocalExecutor, events: Events, dag_setup: DagSetup
) -> None:
    request = dag_setup.queue_try("nap")
    executor.launch(request)
    deadline = time.monotonic() + 20
    while dag_setup.ti(request.ti_id).state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    api_server.stop()  # its heartbeats now fail: connection refused, then reset
    time.sleep(0.6)
    api_server.start()
    ended = events.get(timeout=30)
    assert (ended.exit_code, ended.reason) == (0, None), read_log(dag_setup, "nap")
    assert dag_setup.ti(request.ti_id).state == "success"
    assert dag_setup.xcom("nap") == "rested"
