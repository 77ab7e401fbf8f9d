"""Retry delays as Airflow 3.3 computes them, and next_retry_at recorded on failure."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance
from ketch.scheduler.retries import retry_delay_seconds
from ketch.scheduler.task_state import record_try_outcome
from ketch.serialization import SerializedTask
from ketch.states import TaskInstanceState
from tests.support.fake_executor import insert_dag, serialized_dag, trigger

LOGICAL = datetime(2024, 1, 1, tzinfo=UTC)


def task(**fields: object) -> SerializedTask:
    return SerializedTask.model_validate({"task_id": "t", "kind": "python", **fields})


def airflow_delay(delay: float, multiplier: float, try_number: int) -> int:
    """Airflow's formula, written out independently for the test."""
    min_backoff = max(1, math.ceil(delay * multiplier ** (try_number - 1)))
    digest = hashlib.sha1(f"d#t#{LOGICAL}#{try_number}".encode()).hexdigest()
    return min_backoff + int(digest, 16) % min_backoff


def test_fixed_delay_without_backoff() -> None:
    t = task(retry_delay=30)
    assert retry_delay_seconds(t, dag_id="d", logical_date=LOGICAL, try_number=3) == 30


def test_true_means_multiplier_two() -> None:
    assert task(retry_exponential_backoff=True).retry_exponential_backoff == 2.0
    assert task(retry_exponential_backoff=False).retry_exponential_backoff == 0.0


def test_exponential_backoff_matches_airflow_and_grows() -> None:
    t = task(retry_delay=10, retry_exponential_backoff=2.0)
    delays = [
        retry_delay_seconds(t, dag_id="d", logical_date=LOGICAL, try_number=n) for n in (1, 2, 3)
    ]
    assert delays == [airflow_delay(10, 2.0, n) for n in (1, 2, 3)]
    for n, value in enumerate(delays, start=1):
        base = 10 * 2 ** (n - 1)
        assert base <= value < 2 * base


def test_float_multiplier_and_cap() -> None:
    t = task(retry_delay=10, retry_exponential_backoff=3.0, max_retry_delay=50)
    assert retry_delay_seconds(t, dag_id="d", logical_date=LOGICAL, try_number=1) == airflow_delay(
        10, 3.0, 1
    )
    assert retry_delay_seconds(t, dag_id="d", logical_date=LOGICAL, try_number=3) == 50


def test_multiplier_one_is_no_backoff() -> None:
    t = task(retry_delay=7, retry_exponential_backoff=1.0)
    assert retry_delay_seconds(t, dag_id="d", logical_date=LOGICAL, try_number=4) == 7


def test_failure_records_next_retry_at(sqlite_engine: Engine) -> None:
    insert_dag(sqlite_engine, serialized_dag("d", {"t": {"retries": 1, "retry_delay": 60}}))
    trigger(sqlite_engine, "d", logical_date=LOGICAL)
    now = datetime(2024, 2, 1, tzinfo=UTC)
    with Session(sqlite_engine) as session:
        ti = session.scalars(select(TaskInstance)).one()
        ti.try_number, ti.state = 1, "running"
        t = task(retries=1, retry_delay=60)
        state = record_try_outcome(session, ti, t, state=TaskInstanceState.FAILED, now=now)
        assert state == TaskInstanceState.UP_FOR_RETRY
        assert ti.next_retry_at == now + timedelta(seconds=60)
        ti.try_number = 2
        state = record_try_outcome(session, ti, t, state=TaskInstanceState.FAILED, now=now)
        assert state == TaskInstanceState.FAILED and ti.next_retry_at is None
