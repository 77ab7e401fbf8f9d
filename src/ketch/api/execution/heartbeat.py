"""``POST /execution/try/heartbeat``: the running try is alive. One conditional UPDATE;
a try whose task instance changed (cleared, marked, cancelled, superseded) learns here
that it has ended and stops itself."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import update

from ketch.api.execution.claims import ClaimsDep, SessionDep
from ketch.api.execution.liveness import load_ti, refusal
from ketch.db.models import TaskInstance
from ketch.scheduler.task_state import utcnow
from ketch.states import TaskInstanceState

router = APIRouter(prefix="/execution", tags=["execution"])


@router.post("/try/heartbeat", status_code=204)
def heartbeat(claims: ClaimsDep, session: SessionDep) -> Response:
    """One conditional UPDATE: cheap. A try that was cleared, marked, cancelled or
    superseded gets 401 (its token died with it) and stops itself."""
    result = session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.id == claims.ti_id,
            TaskInstance.task_id == claims.task_id,
            TaskInstance.state == TaskInstanceState.RUNNING.value,
            TaskInstance.try_number == claims.try_number,
        )
        .values(last_heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise refusal(load_ti(session, claims), claims, "heartbeat refused")
    session.commit()
    return Response(status_code=204)
