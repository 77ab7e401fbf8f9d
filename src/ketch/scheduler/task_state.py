"""The transitions of a task instance that more than one writer makes.

The execution API records a try's own outcome; the scheduler records the end of
a try that could not report (crash, timeout, zombie, vanished pod). Both go
through :func:`record_try_outcome` so the rules (retry or fail, the try history
row, durations) live in one place.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry
from ketch.scheduler.retries import retry_delay_seconds
from ketch.serialization import SerializedTask
from ketch.states import TaskInstanceState


def utcnow() -> datetime:
    return datetime.now(UTC)


def record_try_outcome(
    session: Session,
    ti: TaskInstance,
    task: SerializedTask,
    *,
    state: TaskInstanceState,
    error: str | None = None,
    allow_retry: bool = True,
    now: datetime | None = None,
    reschedule_date: datetime | None = None,
) -> TaskInstanceState:
    """Record how the TI's current try ended and return the state the TI is now in.

    ``state`` is SUCCESS, SKIPPED, FAILED or UP_FOR_RESCHEDULE. A FAILED try becomes
    UP_FOR_RETRY while ``try_number <= max_tries`` and ``allow_retry`` (FailTask forbids
    it). An UP_FOR_RESCHEDULE try (a sensor's poke found nothing yet) waits for
    ``reschedule_date`` in ``next_retry_at``; ``max_tries`` grows by one, so a poke does not
    use up a retry (in Airflow pokes share one try number). The caller commits.
    """
    now = now or utcnow()
    final = state
    ti.next_retry_at = None
    if state == TaskInstanceState.UP_FOR_RESCHEDULE:
        if reschedule_date is None:
            raise ValueError("up_for_reschedule needs a reschedule_date")
        ti.next_retry_at = reschedule_date
        ti.max_tries += 1
    elif state == TaskInstanceState.FAILED and allow_retry and ti.try_number <= ti.max_tries:
        final = TaskInstanceState.UP_FOR_RETRY
        run = session.get(DagRun, ti.dag_run_id)
        delay = retry_delay_seconds(
            task,
            dag_id=ti.dag_id,
            logical_date=run.logical_date if run else None,
            try_number=ti.try_number,
        )
        ti.next_retry_at = now + timedelta(seconds=delay)
    ti.state = final.value
    ti.needs_reaction = True  # the scheduler owes this end a decision (see reactions.py)
    ti.end_date = now
    ti.duration = (now - ti.start_date).total_seconds() if ti.start_date else None
    if error is not None or state != TaskInstanceState.FAILED:
        ti.error = error
    end_try_row(
        session,
        ti.id,
        ti.try_number,
        state=state.value,
        end_date=now,
        error=error,
        external_executor_id=ti.external_executor_id,
    )
    return final


def end_try_row(
    session: Session,
    ti_id: int,
    try_number: int,
    *,
    state: str,
    end_date: datetime,
    error: str | None,
    external_executor_id: Any,
) -> None:
    """Close the try's history row: one UPDATE, no SELECT (once per try, hot path).

    ``external_executor_id`` is a value or a SQL expression; it is copied here rather
    than at launch, which saves one write per try.
    """
    session.execute(
        update(TaskInstanceTry)
        .where(
            TaskInstanceTry.task_instance_id == ti_id,
            TaskInstanceTry.try_number == try_number,
        )
        .values(
            state=state,
            end_date=end_date,
            error=error,
            external_executor_id=external_executor_id,
        )
        .execution_options(synchronize_session=False)
    )
