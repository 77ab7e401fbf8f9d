"""Failures around tries and the database: zombies, queued timeout, run timeout, external
cancel, adoption after a restart (both backends), and a database outage with no event lost."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from ketch.config import get_settings
from ketch.db.engine import make_engine
from ketch.db.models import DagRun, TaskInstance
from ketch.executors.base import TryEnded, TryKey
from ketch.scheduler.loop import Scheduler
from ketch.states import TaskInstanceState
from tests.support.fake_executor import (
    FakeExecutor,
    Outcome,
    drive,
    insert_dag,
    run_state,
    serialized_dag,
    ti_states,
    trigger,
)


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def scheduler_for(engine: Engine, executor: FakeExecutor, clock: Clock | None = None) -> Scheduler:
    scheduler = Scheduler(
        get_settings(),
        engine,
        executor,
        clock=clock or Clock(),
        token_signer=lambda k, i: "token",
    )
    scheduler.start_executor()
    return scheduler


def ti_of(engine: Engine, task_id: str) -> TaskInstance:
    with Session(engine) as session:
        return session.scalars(select(TaskInstance).where(TaskInstance.task_id == task_id)).one()


def test_zombie_is_failed_and_retried(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {"retries": 1, "retry_delay": 0}}))
    trigger(sqlite_engine, "d")
    clock = Clock()
    executor = FakeExecutor(sqlite_engine, {"a": [Outcome.hang(), Outcome.success()]})
    scheduler = scheduler_for(sqlite_engine, executor, clock)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "running")
    clock.offset = timedelta(seconds=get_settings().scheduler.task_instance_heartbeat_timeout + 5)
    scheduler.detect_failures()
    ti = ti_of(sqlite_engine, "a")
    assert ti.state == "up_for_retry"
    assert ti.error is not None and ti.error.startswith("zombie: no heartbeat for 30")
    assert TryKey("d", ti.run_id, "a", 1) in executor.cancelled
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "success")
    assert ti_of(sqlite_engine, "a").try_number == 2


def test_queued_timeout_fails_the_try(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {}}))
    run_id = trigger(sqlite_engine, "d")
    clock = Clock()
    executor = FakeExecutor(sqlite_engine, {"a": Outcome.never_start()})
    scheduler = scheduler_for(sqlite_engine, executor, clock)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "queued")
    clock.offset = timedelta(seconds=get_settings().scheduler.task_queued_timeout + 1)
    scheduler.detect_failures()
    drive(scheduler, lambda: run_state(sqlite_engine, run_id) == "failed")
    assert ti_of(sqlite_engine, "a").error == (
        "queued for more than 600s without starting (task_queued_timeout)"
    )


def test_dagrun_timeout_fails_run_and_cancels(sqlite_engine: Engine) -> None:
    insert_dag(
        sqlite_engine,
        serialized_dag("d", {"a": {}, "b": {"upstream": ["a"]}}, dagrun_timeout=60.0),
    )
    run_id = trigger(sqlite_engine, "d")
    clock = Clock()
    executor = FakeExecutor(sqlite_engine, {"a": Outcome.hang()})
    scheduler = scheduler_for(sqlite_engine, executor, clock)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "running")
    clock.offset = timedelta(seconds=61)
    scheduler.detect_failures()
    assert run_state(sqlite_engine, run_id) == "failed"
    assert ti_states(sqlite_engine, run_id) == {"a": "skipped", "b": "skipped"}
    assert [k.task_id for k in executor.cancelled] == ["a"]


def test_externally_failed_run_cancels_its_tries(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {}}))
    run_id = trigger(sqlite_engine, "d")
    executor = FakeExecutor(sqlite_engine, {"a": Outcome.hang()})
    scheduler = scheduler_for(sqlite_engine, executor)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "running")
    with Session(sqlite_engine) as session:  # what operations.set_dag_run_state does
        run = session.get(DagRun, run_id)
        assert run is not None
        run.state, run.needs_evaluation = "failed", True
        session.commit()
    scheduler.wake()
    scheduler.run_once()
    assert [k.task_id for k in executor.cancelled] == ["a"]


def _prepare_restart(engine: Engine) -> dict[str, TaskInstance]:
    """A run as a killed scheduler left it: a running (alive), b queued (never launched),
    d running (gone), c waiting on a and b."""
    tasks = {"a": {}, "b": {}, "d": {}, "c": {"upstream": ["a", "b"]}}
    insert_dag(engine, serialized_dag("d", tasks))
    run_id = trigger(engine, "d", "r")
    now = datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as session:
        run = session.get(DagRun, run_id)
        assert run is not None
        run.state, run.start_date, run.needs_evaluation = "running", now, False
        tis = {ti.task_id: ti for ti in session.scalars(select(TaskInstance))}
        for task_id, state in (("a", "running"), ("b", "queued"), ("d", "running")):
            ti = tis[task_id]
            ti.state, ti.try_number, ti.queued_at = state, 1, now
            if state == "running":
                ti.start_date, ti.last_heartbeat_at = now, now
                ti.external_executor_id = f"old:{task_id}"
        session.commit()
        return tis


def test_restart_adopts_relaunches_and_loses_nothing(engine: Engine) -> None:
    tis = _prepare_restart(engine)
    key_a = TryKey("d", "r", "a", 1)
    executor = FakeExecutor(engine, alive_on_adopt={key_a})
    scheduler = scheduler_for(engine, executor)
    scheduler.adopt()
    assert {o.key.task_id for o in executor.adopt_offers} == {"a", "b", "d"}
    assert executor.launched == [TryKey("d", "r", "b", 1)]  # same try_number, only b
    executor.finish_adopted(key_a, tis["a"].id, TaskInstanceState.SUCCESS)
    drive(scheduler, lambda: run_state(engine, tis["a"].dag_run_id) in ("success", "failed"))
    states = ti_states(engine, tis["a"].dag_run_id)
    assert states == {"a": "success", "b": "success", "c": "success", "d": "failed"}
    assert run_state(engine, tis["a"].dag_run_id) == "failed"  # leaf d was lost
    assert [k.task_id for k in executor.launched].count("a") == 0
    assert ti_of(engine, "b").try_number == 1


def test_database_outage_keeps_events(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {}, "b": {"upstream": ["a"]}}))
    run_id = trigger(sqlite_engine, "d")
    # The fake "execution API" keeps its own connection; only the scheduler's engine breaks.
    api_engine = make_engine(str(sqlite_engine.url))
    executor = FakeExecutor(api_engine, {"a": Outcome.success(delay=0.3)})
    broken = threading.Event()

    def fail_when_broken(*_: Any) -> None:
        if broken.is_set():
            raise sqlite3.OperationalError("disk I/O error (simulated outage)")

    event.listen(sqlite_engine, "before_cursor_execute", fail_when_broken)
    scheduler = scheduler_for(sqlite_engine, executor)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    caplog.set_level(logging.WARNING, logger="ketch.scheduler")
    thread.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not executor.launched and datetime.now(UTC) < deadline:
            stop.wait(0.01)
        broken.set()  # the try ends while the database is unreachable
        stop.wait(1.5)
        broken.clear()
        while run_state(sqlite_engine, run_id) != "success" and datetime.now(UTC) < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        scheduler.wake()
        thread.join(10)
        event.remove(sqlite_engine, "before_cursor_execute", fail_when_broken)
    assert ti_states(sqlite_engine, run_id) == {"a": "success", "b": "success"}
    assert any("database unavailable: disk I/O error" in r.message for r in caplog.records)


def _a_then_b(engine: Engine) -> int:
    """A running run of a >> b, as a crashed scheduler left it (b undecided)."""
    insert_dag(engine, serialized_dag("d", {"a": {}, "b": {"upstream": ["a"]}}))
    run_id = trigger(engine, "d", "r")
    now = datetime.now(UTC)
    with Session(engine) as session:
        run = session.get(DagRun, run_id)
        assert run is not None
        run.state, run.start_date, run.needs_evaluation = "running", now, False
        session.commit()
    return run_id


def _set_ti(engine: Engine, task_id: str, **values: Any) -> None:
    with Session(engine) as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.task_id == task_id)).one()
        for name, value in values.items():
            setattr(ti, name, value)
        session.commit()


def test_an_end_recorded_without_any_event_is_decided_by_the_safety_pass(engine: Engine) -> None:
    """A try finished through the API while no event reached this scheduler (it was down,
    or the web runs apart): the flag in the database alone gets its downstream decided."""
    run_id = _a_then_b(engine)
    now = datetime.now(UTC)
    _set_ti(engine, "a", state="success", try_number=1, end_date=now, needs_reaction=True)
    executor = FakeExecutor(engine)
    scheduler = scheduler_for(engine, executor)  # no adoption: only the loop's own passes
    drive(scheduler, lambda: run_state(engine, run_id) == "success")
    assert ti_states(engine, run_id) == {"a": "success", "b": "success"}
    assert [k.task_id for k in executor.launched] == ["b"]
    assert not ti_of(engine, "a").needs_reaction


def test_restart_evaluates_every_running_run_from_the_database(engine: Engine) -> None:
    """The reaction to a's end was never committed and no flag is left (an older crash
    window): the full evaluation of running runs at start decides b anyway."""
    run_id = _a_then_b(engine)
    _set_ti(engine, "a", state="success", try_number=1, end_date=datetime.now(UTC))
    executor = FakeExecutor(engine)
    scheduler = scheduler_for(engine, executor)
    scheduler.adopt()
    drive(scheduler, lambda: run_state(engine, run_id) == "success")
    assert ti_states(engine, run_id) == {"a": "success", "b": "success"}


def test_the_exit_of_a_duplicate_process_does_not_fail_the_running_try(engine: Engine) -> None:
    """Relaunched after a crash, a second process of the same try was refused at start and
    exited 0; its exit must not fail the try the first process runs, which is adopted."""
    run_id = _a_then_b(engine)
    now = datetime.now(UTC)
    _set_ti(
        engine,
        "a",
        state="running",
        try_number=1,
        start_date=now,
        last_heartbeat_at=now,
        pid=1111,
        hostname="host-1",
    )
    executor = FakeExecutor(engine)
    scheduler = scheduler_for(engine, executor)
    ti = ti_of(engine, "a")
    key = TryKey("d", "r", "a", 1)
    scheduler.on_try_ended(TryEnded(key, ti.id, 0, None, hostname="host-1", pid=2222))
    scheduler.run_once()
    assert ti_of(engine, "a").state == "running"
    assert [(o.key, o.pid, o.hostname) for o in executor.adopt_offers] == [(key, 1111, "host-1")]
    # The real process's end (same pid) is taken: a failed without a report.
    scheduler.on_try_ended(TryEnded(key, ti.id, 1, None, hostname="host-1", pid=1111))
    scheduler.run_once()
    assert ti_of(engine, "a").state == "failed"
    assert ti_states(engine, run_id)["b"] == "upstream_failed"


def test_adoption_offers_what_a_started_try_recorded_and_always_asks_the_executor(
    engine: Engine,
) -> None:
    executor = FakeExecutor(engine)
    scheduler = scheduler_for(engine, executor)
    scheduler.adopt()  # nothing queued or running: the executor still gets its one call
    assert executor.adopt_offers == []
    assert executor.adopt_calls == 1
    _a_then_b(engine)
    now = datetime.now(UTC)
    _set_ti(engine, "a", state="running", try_number=1, start_date=now, pid=42, hostname="h")
    key = TryKey("d", "r", "a", 1)
    executor = FakeExecutor(engine, alive_on_adopt={key})
    scheduler = scheduler_for(engine, executor)
    scheduler.adopt()
    (offer,) = executor.adopt_offers
    assert (offer.key, offer.external_executor_id, offer.pid, offer.hostname) == (
        key,
        None,
        42,
        "h",
    )
    assert ti_of(engine, "a").state == "running"  # adopted, not lost


class StartsDuringAdoption(FakeExecutor):
    """The try launched before the restart calls try/start while adoption is running
    (after the queued rows were read, before the relaunch): the window of the
    queueing.after_launch crash."""

    def adopt(self, tries: Any) -> list[TryKey]:
        adopted = super().adopt(tries)
        now = datetime.now(UTC)
        _set_ti(self.engine, "a", state="running", start_date=now, pid=4242, hostname="h")
        return adopted


def test_a_try_started_during_adoption_is_not_relaunched_nor_reset(engine: Engine) -> None:
    _a_then_b(engine)
    _set_ti(engine, "a", state="queued", try_number=1, external_executor_id=None)
    executor = StartsDuringAdoption(engine)
    scheduler = scheduler_for(engine, executor)
    scheduler.adopt()
    a = ti_of(engine, "a")
    assert (a.state, a.pid, a.try_number) == ("running", 4242, 1)  # not written back to queued
    assert TryKey("d", "r", "a", 1) not in executor.launched  # no second process for it


def _pull_errors_then_success(engine: Engine, errors: int) -> tuple[FakeExecutor, Scheduler]:
    insert_dag(engine, serialized_dag("d", {"a": {"retries": 0, "retry_delay": 0}}))
    trigger(engine, "d")
    script = [Outcome.image_pull_error()] * errors + [Outcome.success()]
    executor = FakeExecutor(engine, {"a": script})
    return executor, scheduler_for(engine, executor)


def test_tries_that_never_start_are_free_up_to_the_limit(sqlite_engine: Engine) -> None:
    """[kubernetes] max_failed_before_start_retries (3) such tries cost no retry; the next
    one is an ordinary failure."""
    _, scheduler = _pull_errors_then_success(sqlite_engine, 3)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "success")
    assert ti_of(sqlite_engine, "a").try_number == 4


def test_a_fourth_try_that_never_starts_fails_the_task(sqlite_engine: Engine) -> None:
    _, scheduler = _pull_errors_then_success(sqlite_engine, 4)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "failed")
    ti = ti_of(sqlite_engine, "a")
    assert ti.try_number == 4 and ti.error is not None and "ErrImagePull" in ti.error


def test_the_free_tries_follow_the_setting(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETCH__KUBERNETES__MAX_FAILED_BEFORE_START_RETRIES", "1")
    get_settings.cache_clear()
    _, scheduler = _pull_errors_then_success(sqlite_engine, 2)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "failed")
    assert ti_of(sqlite_engine, "a").try_number == 2


def test_a_raised_max_tries_does_not_use_up_the_free_tries(sqlite_engine: Engine) -> None:
    """max_tries also grows with each reschedule poke and is reset by a clear; the free tries
    are counted from the try history, not from max_tries - retries."""
    insert_dag(sqlite_engine, serialized_dag("d", {"a": {"retries": 0, "retry_delay": 0}}))
    trigger(sqlite_engine, "d")
    _set_ti(sqlite_engine, "a", max_tries=5)  # as after five pokes of a reschedule sensor
    executor = FakeExecutor(sqlite_engine, {"a": [Outcome.image_pull_error(), Outcome.success()]})
    scheduler = scheduler_for(sqlite_engine, executor)
    drive(scheduler, lambda: ti_of(sqlite_engine, "a").state == "success")
    assert ti_of(sqlite_engine, "a").max_tries == 6
