"""``POST /execution/try/start``: a queued try becomes running, exactly once, and gets
its task's context (dates, params, conf, its DAG file, its limits)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.orm import Session

from ketch.api.execution.claims import ClaimsDep, SessionDep, SettingsDep
from ketch.api.execution.liveness import is_this_try, load_ti, refusal
from ketch.api.execution.serialized import serialized_dag
from ketch.config import Settings
from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry
from ketch.faults import fault_point
from ketch.scheduler.reschedule import first_poke_date
from ketch.scheduler.task_state import utcnow
from ketch.serialization import SerializedTask
from ketch.states import TaskInstanceState

router = APIRouter(prefix="/execution", tags=["execution"])


class StartBody(BaseModel):
    pid: int
    hostname: str


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_PAYLOAD_COLUMNS = (
    TaskInstance.dag_id,
    TaskInstance.task_id,
    TaskInstance.run_id,
    TaskInstance.try_number,
    TaskInstance.max_tries,
    TaskInstance.dag_run_id,
    TaskInstance.map_index,
    TaskInstance.id,
    TaskInstance.next_retry_at,
)


def _start_payload(session: Session, ti: Any, settings: Settings) -> dict[str, Any]:
    """The context a starting try gets; ``ti`` is a TaskInstance or a row of _PAYLOAD_COLUMNS."""
    run = session.get(DagRun, ti.dag_run_id)
    assert run is not None  # the FK guarantees it
    dag = serialized_dag(session, run)
    task = dag.tasks.get(ti.task_id)
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": ti.try_number,
        "max_tries": ti.max_tries,
        "map_index": ti.map_index,
        "logical_date": _iso(run.logical_date),
        "data_interval_start": _iso(run.data_interval_start),
        "data_interval_end": _iso(run.data_interval_end),
        "run_after": _iso(run.run_after),
        "run_type": run.run_type,
        "params": run.params or {},
        "conf": run.conf or {},
        "fileloc": dag.fileloc,
        "relative_fileloc": dag.relative_fileloc,
        "execution_timeout": task.execution_timeout if task else None,
        "heartbeat_interval": settings.scheduler.task_instance_heartbeat_sec,
        "max_xcom_size": settings.core.max_xcom_size,
        "max_map_length": settings.core.max_map_length,
        "first_reschedule_date": _iso(_first_poke(session, ti, task)),
    }


def _first_poke(session: Session, ti: Any, task: SerializedTask | None) -> datetime | None:
    """A sensor's first poke of its reschedule sequence (None for other tasks: no query)."""
    if task is None or task.kind != "sensor":
        return None
    return first_poke_date(session, ti.id, ti.try_number, ti.next_retry_at)


@router.post("/try/start")
def start_try(
    body: StartBody, claims: ClaimsDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Move the TI from queued to running for this try, once; return the task's context.

    The conditional UPDATE is the guard: of two processes starting the same try,
    exactly one sees a changed row. A repeat of the same start (same pid and host,
    a retried request after a lost answer) gets the payload again.
    """
    now = utcnow()
    started = session.execute(
        update(TaskInstance)
        .where(*is_this_try(claims, TaskInstanceState.QUEUED))
        .values(
            state=TaskInstanceState.RUNNING.value,
            start_date=now,
            end_date=None,
            duration=None,
            pid=body.pid,
            hostname=body.hostname,
            last_heartbeat_at=now,
        )
        # RETURNING: the payload's fields without reading the row again (hot path).
        .returning(*_PAYLOAD_COLUMNS)
        .execution_options(synchronize_session=False)
    ).first()
    ti: Any = started
    if started is None:
        ti = load_ti(session, claims)
        same_process = (
            ti is not None
            and ti.state == TaskInstanceState.RUNNING.value
            and ti.try_number == claims.try_number
            and (ti.pid, ti.hostname) == (body.pid, body.hostname)
        )
        if not same_process:
            # Built before the rollback, which expires the loaded row.
            refused = refusal(ti, claims, "cannot start")
            session.rollback()
            raise refused
    else:
        session.execute(
            update(TaskInstanceTry)
            .where(
                TaskInstanceTry.task_instance_id == claims.ti_id,
                TaskInstanceTry.try_number == claims.try_number,
            )
            .values(
                state=TaskInstanceState.RUNNING.value,
                start_date=now,
                pid=body.pid,
                hostname=body.hostname,
            )
            .execution_options(synchronize_session=False)
        )
    payload = _start_payload(session, ti, settings)
    fault_point("api.start.before_commit")
    session.commit()
    fault_point("api.start.after_commit")
    return payload
