"""Sensors in reschedule mode: where a poke sequence began, from the try history alone.

Each poke of a reschedule-mode sensor is its own try: a ``task_instance_try`` row that
ends ``up_for_reschedule`` (Airflow records a ``task_reschedule`` row instead and keeps the
try number; ketch needs a new one because every try has its own process or pod, log and
token). The sensor's ``timeout`` counts from the first poke of the sequence, which is the
start of the earliest of the unbroken run of ``up_for_reschedule`` rows just before the
current try. A retry, a clear or a mark starts a new sequence, as Airflow deletes a try's
``task_reschedule`` rows when the next try begins.

No column records "this try resumes a sequence": ``task_instance.next_retry_at`` does. It
means "the next attempt is due at" for both ``up_for_retry`` and ``up_for_reschedule``, is
kept while the due try is scheduled, queued and started, and is cleared by a clear or a
mark (which start afresh).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstanceTry
from ketch.states import TaskInstanceState

RESCHEDULED = TaskInstanceState.UP_FOR_RESCHEDULE.value


def first_poke_date(
    session: Session, ti_id: int, try_number: int, next_retry_at: datetime | None
) -> datetime | None:
    """When the first poke of the sequence the try ``try_number`` continues started; None
    when this try begins a sequence. Two indexed lookups on (task_instance_id, try_number),
    made only for sensors."""
    if next_retry_at is None or try_number <= 1:
        return None  # not resumed from a reschedule (a first try, a clear, a mark)
    tries = TaskInstanceTry
    earlier = (tries.task_instance_id == ti_id, tries.try_number < try_number)
    last_other = session.scalar(
        select(func.max(tries.try_number)).where(
            *earlier, (tries.state != RESCHEDULED) | tries.state.is_(None)
        )
    )
    return session.scalar(
        select(func.min(tries.start_date)).where(
            *earlier, tries.try_number > (last_other or 0), tries.state == RESCHEDULED
        )
    )
