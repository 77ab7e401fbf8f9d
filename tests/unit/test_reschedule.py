"""Sensors in reschedule mode, piece by piece: Airflow's reschedule backoff, the sensor's
RescheduleTask and timeout from the first poke, and the execution API's reschedule outcome
and first-poke date (both backends)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from ketch import DAG
from ketch.authoring.context import build_context
from ketch.authoring.sensors import PythonSensor
from ketch.db.models import DagVersion, TaskInstance, TaskInstanceTry
from ketch.exceptions import RescheduleTask, SensorTimeout, SkipTask
from tests.unit.test_authoring import PAYLOAD
from tests.unit.test_execution_api import client, finish, make_try, start, ti_row, try_row

__all__ = ["client"]  # the fixture, imported for the tests below


def airflow_reschedule_interval(
    poke_interval: float,
    timeout: float,
    max_wait: float | None,
    dag_id: str,
    task_id: str,
    started_at: datetime,
    elapsed: float,
) -> float:
    """Airflow 3.3's ``BaseSensorOperator._get_next_poke_interval`` in reschedule mode with
    exponential_backoff, transcribed as the reference."""
    cumulative, estimated = 0.0, 0
    while cumulative <= elapsed:
        estimated += 1
        min_backoff = max(int(poke_interval * (2 ** (estimated - 2))), 1)
        h = int(
            hashlib.sha1(
                f"{dag_id}#{task_id}#{started_at}#{estimated}".encode(), usedforsecurity=False
            ).hexdigest(),
            16,
        )
        cumulative += min(min_backoff + h % min_backoff, timedelta.max.total_seconds() - 1)
    poke_count = estimated or 1
    min_backoff = max(int(poke_interval * (2 ** (poke_count - 2))), 1)
    h = int(
        hashlib.sha1(
            f"{dag_id}#{task_id}#{started_at}#{poke_count}".encode(), usedforsecurity=False
        ).hexdigest(),
        16,
    )
    delay = min(min_backoff + h % min_backoff, timedelta.max.total_seconds() - 1)
    interval = min(timeout - int(elapsed), delay)
    if max_wait:
        interval = min(max_wait, interval)
    return interval


def sensor(**kwargs: Any) -> Any:
    with DAG("sensing", schedule=None):
        return PythonSensor(task_id="wait", mode="reschedule", **kwargs)


@pytest.mark.parametrize("elapsed", [0.0, 3.0, 17.5, 60.0, 300.0, 3000.0, 86_000.0])
@pytest.mark.parametrize("max_wait", [None, 600.0])
def test_reschedule_backoff_is_airflows(elapsed: float, max_wait: float | None) -> None:
    started = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    s = sensor(
        python_callable=bool,
        poke_interval=5,
        exponential_backoff=True,
        timeout=86_400,
        max_wait=max_wait,
    )
    expected = airflow_reschedule_interval(5, 86_400, max_wait, "sensing", "wait", started, elapsed)
    assert s.next_poke_interval(started, lambda: elapsed, 1) == expected
    if max_wait is not None:
        assert expected <= max_wait


def test_reschedule_backoff_grows_with_the_time_since_the_first_poke() -> None:
    started = datetime(2026, 3, 1, tzinfo=UTC)
    s = sensor(python_callable=bool, poke_interval=10, exponential_backoff=True, timeout=10**6)
    intervals = [s.next_poke_interval(started, lambda e=e: e, 1) for e in (0, 100, 1000, 10_000)]
    assert intervals == sorted(intervals) and intervals[0] < intervals[-1], intervals


def context(first_poke: datetime | None = None) -> Any:
    ctx = build_context(dict(PAYLOAD))
    ctx["ti"] = SimpleNamespace(**{**vars(ctx["ti"]), "first_reschedule_date": first_poke})
    return ctx


def test_a_poke_that_finds_nothing_reschedules_poke_interval_later() -> None:
    s = sensor(python_callable=lambda: False, poke_interval=30)
    before = datetime.now(UTC)
    with pytest.raises(RescheduleTask) as raised:
        s.execute(context(), lambda *_: None)
    after = datetime.now(UTC)
    when = raised.value.reschedule_date
    assert before + timedelta(seconds=30) <= when <= after + timedelta(seconds=30)


def test_the_timeout_counts_from_the_first_poke_of_the_sequence() -> None:
    long_ago = datetime.now(UTC) - timedelta(seconds=100)
    with pytest.raises(SensorTimeout, match=r"exceeds the specified timeout of 60\.0"):
        sensor(python_callable=lambda: False, timeout=60).execute(context(long_ago), print)
    with pytest.raises(SkipTask, match="Sensor has timed out"):
        sensor(python_callable=lambda: False, timeout=60, soft_fail=True).execute(
            context(long_ago), print
        )
    recent = datetime.now(UTC) - timedelta(seconds=10)
    with pytest.raises(RescheduleTask):
        sensor(python_callable=lambda: False, timeout=60).execute(context(recent), print)
    done = sensor(python_callable=lambda: True, timeout=60).execute(context(long_ago), print)
    assert done.return_value is None  # a poke that succeeds after the timeout still succeeds


# -- the execution API ------------------------------------------------------------------------


def make_sensor_try(engine: Engine) -> Any:
    t = make_try(engine, try_number=1, max_tries=1)
    with Session(engine) as session:
        version = session.get(DagVersion, "h1")
        assert version is not None
        serialized = dict(version.serialized)
        serialized["tasks"] = {
            **serialized["tasks"],
            "down": {**serialized["tasks"]["down"], "kind": "sensor"},
        }
        version.serialized = serialized
        session.commit()
    return t


def queue_next_poke(engine: Engine, ti_id: int, try_number: int) -> None:
    """What the scheduler does when the reschedule is due: scheduled, then queued."""
    with Session(engine) as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.id == ti_id)
            .values(state="queued", try_number=try_number)
        )
        session.add(
            TaskInstanceTry(
                task_instance_id=ti_id,
                try_number=try_number,
                state="queued",
                queued_at=datetime.now(UTC),
            )
        )
        session.commit()


def test_a_reschedule_is_recorded_and_the_next_poke_learns_the_first_pokes_start(
    engine: Engine, client: TestClient
) -> None:
    t = make_sensor_try(engine)
    assert start(client, t).json()["first_reschedule_date"] is None
    due = datetime.now(UTC) + timedelta(seconds=45)
    body = {"state": "up_for_reschedule", "reschedule_date": due.isoformat()}
    assert finish(client, t, **body).status_code == 204
    assert finish(client, t, **body).status_code == 204  # a retried finish: same outcome
    ti = ti_row(engine, t.ti_id)
    assert ti.state == "up_for_reschedule" and ti.needs_reaction
    assert ti.next_retry_at == due
    assert ti.max_tries == 2  # the poke used no retry
    first = try_row(engine, t.ti_id, 1)
    assert first.state == "up_for_reschedule" and first.end_date is not None

    queue_next_poke(engine, t.ti_id, 2)
    second = type(t)(t.ti_id, dataclasses.replace(t.key, try_number=2), t.dag_run_id)
    payload = start(client, second).json()
    assert payload["try_number"] == 2
    assert datetime.fromisoformat(payload["first_reschedule_date"]) == first.start_date
    assert finish(client, second, state="success").status_code == 204
    assert ti_row(engine, t.ti_id).state == "success"


def test_a_cleared_sensor_starts_a_new_sequence(engine: Engine, client: TestClient) -> None:
    t = make_sensor_try(engine)
    start(client, t)
    due = datetime.now(UTC) + timedelta(seconds=5)
    finish(client, t, state="up_for_reschedule", reschedule_date=due.isoformat())
    with Session(engine) as session:  # a clear resets next_retry_at (operations.clear)
        session.execute(
            update(TaskInstance).where(TaskInstance.id == t.ti_id).values(next_retry_at=None)
        )
        session.commit()
    queue_next_poke(engine, t.ti_id, 2)
    second = type(t)(t.ti_id, dataclasses.replace(t.key, try_number=2), t.dag_run_id)
    assert start(client, second).json()["first_reschedule_date"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"state": "up_for_reschedule"},
        {"state": "success", "reschedule_date": "2026-03-01T00:00:00+00:00"},
        {"state": "up_for_reschedule", "reschedule_date": "2026-03-01T00:00:00"},
    ],
    ids=["no-date", "date-without-reschedule", "naive-date"],
)
def test_a_reschedule_without_a_date_or_a_date_without_one_is_422(
    engine: Engine, client: TestClient, body: dict[str, Any]
) -> None:
    t = make_sensor_try(engine)
    start(client, t)
    answer = finish(client, t, **body)
    assert answer.status_code == 422, answer.text
    assert ti_row(engine, t.ti_id).state == "running"


def test_the_state_is_unfinished_and_has_airflows_colour() -> None:
    from pathlib import Path

    from ketch.states import FINISHED_TI_STATES, UNFINISHED_TI_STATES, TaskInstanceState
    from ketch.web.format import STATE_COLOURS, state_key

    state = TaskInstanceState.UP_FOR_RESCHEDULE
    assert state in UNFINISHED_TI_STATES and state not in FINISHED_TI_STATES
    assert STATE_COLOURS[state_key("up_for_reschedule")] == "turquoise"
    import ketch.web

    css = (Path(ketch.web.__file__).parent / "static" / "ketch.css").read_text()
    assert ".state-up_for_reschedule { background: turquoise; }" in css
