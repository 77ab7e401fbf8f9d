"""``POST /execution/try/finish``: the try's outcome (success, failed, skipped, or a
sensor's up_for_reschedule with its date), return value and further XComs, recorded
once; a repeated finish of the same outcome (a lost answer) is recognised."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Float, cast, extract, func, literal, select, update
from sqlalchemy.orm import Session

from ketch.api.execution.claims import ClaimsDep, SessionDep, SettingsDep
from ketch.api.execution.liveness import ended, is_this_try, load_ti, refusal
from ketch.api.execution.serialized import serialized_task
from ketch.api.execution.xcom import BRANCH_KEY, RETURN_VALUE_KEY, put_xcom
from ketch.auth.try_tokens import TryClaims
from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry
from ketch.faults import fault_point
from ketch.scheduler.task_state import end_try_row, record_try_outcome, utcnow
from ketch.states import TaskInstanceState

router = APIRouter(prefix="/execution", tags=["execution"])


class FinishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["success", "failed", "skipped", "up_for_reschedule"]
    error: str | None = None
    return_value: Any = None
    has_return_value: bool = False
    follow_task_ids: list[str] | None = None
    # Further XComs by key besides return_value (a ``multiple_outputs`` task's dict keys).
    xcoms: dict[str, Any] | None = None
    retry: bool = True
    # With up_for_reschedule (a sensor in reschedule mode): when the next poke is due.
    reschedule_date: AwareDatetime | None = None
    # The instance's map_index_template rendered by the try (ketch.authoring.map_index_template).
    rendered_map_index: str | None = Field(default=None, max_length=250)

    @model_validator(mode="after")
    def _reschedule_has_a_date(self) -> FinishBody:
        if (self.state == "up_for_reschedule") != (self.reschedule_date is not None):
            raise ValueError("reschedule_date goes with state up_for_reschedule, and only with it")
        return self


def _check_xcom_size(body: FinishBody, task_id: str, limit: int) -> None:
    values = {f"XCom {key!r}": value for key, value in (body.xcoms or {}).items()}
    if body.has_return_value:
        values["return value"] = body.return_value
    for what, value in values.items():
        size = len(json.dumps(value).encode())
        if size > limit:
            raise HTTPException(
                413,
                f"{what} of task {task_id!r} is {size} bytes of JSON, "
                f"more than max_xcom_size ({limit} bytes)",
            )


def _put_xcoms(
    session: Session, dag_run_id: int, task_id: str, map_index: int, body: FinishBody
) -> None:
    # A failed try keeps no return value of its own; a new try replaces the old one's.
    if body.state != "success":
        return
    for key, value in (body.xcoms or {}).items():
        if key not in (RETURN_VALUE_KEY, BRANCH_KEY):  # those two are written below
            put_xcom(session, dag_run_id, task_id, map_index, key, value)
    if body.has_return_value:
        put_xcom(session, dag_run_id, task_id, map_index, RETURN_VALUE_KEY, body.return_value)
    if body.follow_task_ids is not None:
        put_xcom(session, dag_run_id, task_id, map_index, BRANCH_KEY, list(body.follow_task_ids))


def _already_finished(session: Session, claims: TryClaims, body: FinishBody) -> bool:
    """True when this try already recorded this outcome (a retried finish request whose
    first answer was lost), even if a later try has started since.

    The error must match too: a try row a user closed (cleared: failed, "cleared by a
    user"; marked) or the scheduler closed (the process died) is not this try's report.
    """
    try_row = session.scalars(
        select(TaskInstanceTry).where(
            TaskInstanceTry.task_instance_id == claims.ti_id,
            TaskInstanceTry.try_number == claims.try_number,
        )
    ).first()
    return (
        try_row is not None
        and try_row.end_date is not None
        and try_row.state == body.state
        and try_row.error == body.error
    )


def _seconds_since_start(session: Session, now: datetime) -> Any:
    """SQL for ``now - task_instance.start_date`` in seconds, on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        stamp = literal(now, type_=TaskInstance.__table__.c.start_date.type)
        return cast(extract("epoch", stamp - TaskInstance.start_date), Float)
    naive = now.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    return (func.julianday(naive) - func.julianday(TaskInstance.start_date)) * 86400.0


def _finish_without_retry_decision(session: Session, claims: TryClaims, body: FinishBody) -> bool:
    """The hot path (success, skipped): the TI's end in one conditional UPDATE, the
    history row in another, the XComs as upserts. False when the TI is not running with
    this try (the caller then explains why)."""
    now = utcnow()
    row = session.execute(
        update(TaskInstance)
        .where(*is_this_try(claims, TaskInstanceState.RUNNING))
        .values(
            state=body.state,
            end_date=now,
            duration=_seconds_since_start(session, now),
            error=body.error,
            next_retry_at=None,
            needs_reaction=True,  # see scheduler/reactions.py
            rendered_map_index=body.rendered_map_index,
        )
        .returning(TaskInstance.dag_run_id, TaskInstance.map_index)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return False
    end_try_row(
        session,
        claims.ti_id,
        claims.try_number,
        state=body.state,
        end_date=now,
        error=body.error,
        external_executor_id=_external_id_of_ti(claims.ti_id),
    )
    _put_xcoms(session, row.dag_run_id, claims.task_id, row.map_index, body)
    return True


def _external_id_of_ti(ti_id: int) -> Any:
    return (
        select(TaskInstance.external_executor_id).where(TaskInstance.id == ti_id).scalar_subquery()
    )


@router.post("/try/finish", status_code=204)
def finish_try(
    body: FinishBody, claims: ClaimsDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Record the try's outcome and return value; the scheduler takes it from there.

    Success and skip need no retry decision and take the one-statement path; a failure
    reads the task's retry settings under a row lock.
    """
    _check_xcom_size(body, claims.task_id, settings.core.max_xcom_size)
    if body.state in ("success", "skipped") and _finish_without_retry_decision(
        session, claims, body
    ):
        _commit_finish(session)
        return Response(status_code=204)
    ti = load_ti(session, claims, lock=True)
    if ti is None:
        session.rollback()
        raise ended(None, claims)
    if ti.state != TaskInstanceState.RUNNING.value or ti.try_number != claims.try_number:
        refused = refusal(ti, claims, "cannot finish")
        session.rollback()
        if _already_finished(session, claims, body):
            return Response(status_code=204)
        raise refused
    _put_xcoms(session, ti.dag_run_id, ti.task_id, ti.map_index, body)
    ti.rendered_map_index = body.rendered_map_index
    run = session.get(DagRun, ti.dag_run_id)
    assert run is not None
    record_try_outcome(
        session,
        ti,
        serialized_task(session, run, ti.task_id),
        state=TaskInstanceState(body.state),
        error=body.error,
        allow_retry=body.retry,
        reschedule_date=body.reschedule_date,
    )
    # The try's end and the next poke's date commit together: a crash leaves the try
    # running (its retried finish records it) or up_for_reschedule with its date.
    _commit_finish(session, "api.reschedule" if body.state == "up_for_reschedule" else "api.finish")
    return Response(status_code=204)


def _commit_finish(session: Session, points: str = "api.finish") -> None:
    fault_point(f"{points}.before_commit")
    session.commit()
    fault_point(f"{points}.after_commit")
