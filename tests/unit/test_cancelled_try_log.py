"""A try stopped from outside ends its log with one line saying why, not a traceback.

Real tries through the local executor against a real execution API: the try is a bash
task sleeping in a child; a user clears it, marks it failed, or cancels its run (the
scheduler then SIGTERMs the try's process group), or its execution_timeout fires.
"""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch import operations
from ketch.config import get_settings
from ketch.executors.base import LaunchRequest, TryEnded
from ketch.executors.local import LocalExecutor
from ketch.worker.runner.stopping import why_ended
from ketch.worker.task_log import log_path
from tests.unit._worker_support import DagSetup, api_server, api_url, dag_setup  # noqa: F401 (fixtures)

Events = queue.Queue[TryEnded]
STAMP = r"\[\S+\] ketch: "


@pytest.fixture
def executor(api_url: str) -> Iterator[tuple[LocalExecutor, Events]]:
    events: Events = queue.Queue()
    ex = LocalExecutor(get_settings())
    ex.start(events.put)
    yield ex, events
    ex.stop()


def in_session(engine: Engine, action: Callable[[Session], object]) -> None:
    with Session(engine) as session:
        action(session)
        session.commit()


def start_sleeping(ex: LocalExecutor, setup: DagSetup, task_id: str = "hang") -> LaunchRequest:
    """Launch the bash task and wait until it runs and its ``sleep`` child exists."""
    request = setup.queue_try(task_id)
    ex.launch(request)
    deadline = time.monotonic() + 20
    while setup.ti(request.ti_id).state != "running" or not (
        setup.pidfile.exists() and setup.pidfile.read_text().strip()
    ):
        assert time.monotonic() < deadline, "the try did not start"
        time.sleep(0.02)
    return request


def log_lines(request: LaunchRequest) -> list[str]:
    text = log_path(get_settings().log_folder, request.key).read_text()
    assert "Traceback" not in text and "TaskTerminated" not in text, text
    return [line for line in text.splitlines() if line.strip()]


def last_words(request: LaunchRequest) -> str:
    """The log's last line, without its timestamp."""
    last = log_lines(request)[-1]
    assert "] ketch: " in last, last
    return last.split("] ketch: ", 1)[1]


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def slow_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tries started from now on heartbeat every 30 s: the scheduler's SIGTERM comes first."""
    monkeypatch.setenv("KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC", "30")
    get_settings.cache_clear()


def test_cleared_try_says_so_at_its_heartbeat(
    executor: tuple[LocalExecutor, Events], dag_setup: DagSetup
) -> None:
    ex, events = executor
    request = start_sleeping(ex, dag_setup)
    key = request.key
    in_session(
        dag_setup.engine,
        lambda s: operations.clear_task_instances(s, key.dag_id, key.run_id, ["hang"]),
    )
    ended = events.get(timeout=30)
    assert ended.exit_code == -signal.SIGKILL
    assert last_words(request) == (
        "try cancelled: the task instance was cleared; its processes were killed"
    )
    assert gone(int(dag_setup.pidfile.read_text()))


def test_marked_failed_try_says_so_at_its_heartbeat(
    executor: tuple[LocalExecutor, Events], dag_setup: DagSetup
) -> None:
    ex, events = executor
    request = start_sleeping(ex, dag_setup)
    key = request.key
    in_session(
        dag_setup.engine,
        lambda s: operations.set_task_instance_state(s, key.dag_id, key.run_id, "hang", "failed"),
    )
    events.get(timeout=30)
    assert last_words(request) == (
        "try cancelled: the task instance was set to failed (marked failed, or its run was "
        "cancelled); its processes were killed"
    )
    assert dag_setup.ti(request.ti_id).state == "failed"


def test_a_cancelled_run_stops_its_try_with_one_line(
    executor: tuple[LocalExecutor, Events],
    dag_setup: DagSetup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler's SIGTERM (reactions.cancel_run_tries) arrives before any heartbeat:
    the try stops its task, its finish call is refused 401, and its log says why."""
    slow_heartbeats(monkeypatch)
    ex, events = executor
    request = start_sleeping(ex, dag_setup)
    key = request.key
    in_session(dag_setup.engine, lambda s: operations.cancel_dag_run(s, key.dag_id, key.run_id))
    ex.cancel(key)  # what the scheduler does for the tries of a run that was cancelled
    ended = events.get(timeout=30)
    assert ended.exit_code == 1  # it stopped by itself, well before the SIGKILL
    assert last_words(request) == (
        "try cancelled: the task instance was set to failed (marked failed, or its run was "
        "cancelled); stopped by the scheduler"
    )
    assert "process lived" in log_lines(request)[-2]
    assert gone(int(dag_setup.pidfile.read_text()))
    assert dag_setup.ti(request.ti_id).state == "failed"


def test_a_sigterm_from_elsewhere_is_recorded_and_said(
    executor: tuple[LocalExecutor, Events],
    dag_setup: DagSetup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_heartbeats(monkeypatch)
    ex, events = executor
    request = start_sleeping(ex, dag_setup)
    ex.cancel(request.key)  # the task instance is still running: nobody changed it
    events.get(timeout=30)
    assert last_words(request) == "try stopped: received SIGTERM; recorded as failed"
    ti = dag_setup.ti(request.ti_id)
    assert (ti.state, ti.error) == ("failed", "TaskTerminated: task received SIGTERM")


def test_a_timed_out_try_ends_with_one_line(
    executor: tuple[LocalExecutor, Events], dag_setup: DagSetup
) -> None:
    ex, events = executor
    request = dag_setup.queue_try("slow", execution_timeout=1.0)
    ex.launch(request)
    assert events.get(timeout=30).exit_code == 1
    assert last_words(request) == (
        "try stopped: execution_timeout of 1s exceeded; recorded as failed"
    )
    assert dag_setup.ti(request.ti_id).error == "TaskTimeout: execution_timeout of 1s exceeded"


@pytest.mark.parametrize(
    ("detail", "said"),
    [
        (
            "try has ended: task instance is none with try_number 1, this is try 1",
            "the task instance was cleared",
        ),
        (
            "try has ended: task instance is queued with try_number 2, this is try 1",
            "the task instance was cleared and try 2 has replaced this one",
        ),
        (
            "try has ended: task instance is success with try_number 1, this is try 1",
            "the task instance was marked success",
        ),
        (
            "try has ended: task instance is skipped with try_number 3, this is try 3",
            "the task instance was set to skipped (marked skipped, or its run timed out)",
        ),
        (
            "try has ended: task instance is up_for_retry with try_number 1, this is try 1",
            "the task instance was set to up_for_retry from outside",
        ),
        (
            "try has ended: task instance is failed with try_number 1, this is try 1 "
            "(marked failed by alice@example.com)",
            "the task instance was set to failed: marked failed by alice@example.com",
        ),
        (
            "try has ended: task instance 12 no longer exists",
            "the task instance no longer exists (its run or DAG was deleted)",
        ),
        ("something else entirely", "something else entirely"),
    ],
)
def test_why_ended_in_words(detail: str, said: str) -> None:
    assert why_ended(detail) == said


def test_a_timeout_shows_where_the_tasks_own_code_was(capsys: pytest.CaptureFixture[str]) -> None:
    from ketch.exceptions import TaskTimeout
    from ketch.worker.runner.timeout import execution_timeout

    def stuck_in_user_code() -> None:
        time.sleep(5)

    outcome = None
    try:
        with execution_timeout(0.05):
            stuck_in_user_code()
    except TaskTimeout as exc:
        from ketch.worker.runner.task import _stopped

        outcome = _stopped(exc, {"execution_timeout": 0.05}, time.monotonic())
    assert outcome is not None
    assert outcome.stopped == "execution_timeout of 0.05s exceeded"
    out = capsys.readouterr().out
    assert "the task was here when it was stopped:" in out
    assert "in stuck_in_user_code" in out and "time.sleep(5)" in out
    assert "ketch/worker/runner" not in out and "Traceback" not in out
