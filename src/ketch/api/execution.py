"""The execution API: the only door a running task try has into ketch.

A try carries a token naming exactly one try; every call here is about that try
(the paths carry no ids). The API records only the try's own life: it started,
it is alive, it ended with this outcome and return value. Scheduling decisions
stay with the scheduler. State changes are conditional UPDATEs or row-locked
reads, so a duplicate process (a relaunched try, a retried request) can never
run the task twice or overwrite a newer try's outcome.

A token works only while its try lives: the task instance it names is ``queued`` or
``running`` with the token's try number. Once the try ended (finished, failed, skipped,
marked, cancelled, cleared, superseded by a newer try, its run deleted) every call
answers 401 ``try has ended: ...``, so a kept pod or a leaked token reads nothing.
Two answers stay possible after the end, for requests whose first answer was lost: a
repeated start by the same process while the try runs, and a repeated finish that
names the outcome this try recorded. The check costs nothing on the hot paths: it is
the guard of the conditional UPDATEs (start, heartbeat, finish), looked into only when
the UPDATE changed no row; reads (XCom, variables, connections) do one primary-key
lookup of the task instance.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Float, and_, cast, extract, func, literal, select, true, update
from sqlalchemy.orm import Session

from ketch.api.deps import get_session, settings_dep
from ketch.auth.try_tokens import InvalidTryToken, TryClaims, verify_try_token
from ketch.config import Settings
from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry, XCom
from ketch.faults import fault_point
from ketch.scheduler.dag_cache import DagCache
from ketch.scheduler.reschedule import first_poke_date
from ketch.scheduler.task_state import end_try_row, record_try_outcome, utcnow
from ketch.serialization import SerializedDag, SerializedTask
from ketch.states import TaskInstanceState
from ketch.worker.client import TRY_ENDED

router = APIRouter(prefix="/execution", tags=["execution"])

RETURN_VALUE_KEY = "return_value"
BRANCH_KEY = "__branch__"

_bearer = HTTPBearer(auto_error=False)
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]


def try_claims(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TryClaims:
    """The verified claims of the bearer token; 401 for anything else."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return verify_try_token(settings, credentials.credentials)
    except InvalidTryToken as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


ClaimsDep = Annotated[TryClaims, Depends(try_claims)]


class StartBody(BaseModel):
    pid: int
    hostname: str


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


def _conflict(ti: TaskInstance, claims: TryClaims, what: str) -> HTTPException:
    """409 saying what the TI is now, so the try can log why it stops."""
    return HTTPException(
        409,
        f"{what}: task instance is {ti.state or 'none'} with try_number {ti.try_number}, "
        f"this is try {claims.try_number}",
    )


# -- is the token's try still alive? -----------------------------------------------

_LIVE_STATES = frozenset({TaskInstanceState.QUEUED.value, TaskInstanceState.RUNNING.value})


def _names_this_ti(ti: Any, claims: TryClaims) -> bool:
    return ti is not None and (ti.dag_id, ti.run_id, ti.task_id) == (
        claims.dag_id,
        claims.run_id,
        claims.task_id,
    )


def _is_live(ti: Any, claims: TryClaims) -> bool:
    """The try the token names has not ended: its TI (a TaskInstance or a row with the
    same fields) is queued or running with this try number."""
    return (
        _names_this_ti(ti, claims)
        and ti.try_number == claims.try_number
        and ti.state in _LIVE_STATES
    )


def _ended(ti: Any, claims: TryClaims) -> HTTPException:
    """401: the token's try is over, so the token no longer works (the try must stop)."""
    if _names_this_ti(ti, claims):
        why = (
            f"task instance is {ti.state or 'none'} with try_number {ti.try_number}, "
            f"this is try {claims.try_number}"
        )
    else:
        why = f"task instance {claims.ti_id} no longer exists"
    return HTTPException(401, f"{TRY_ENDED}: {why}", headers={"WWW-Authenticate": "Bearer"})


def _refusal(ti: TaskInstance | None, claims: TryClaims, what: str) -> HTTPException:
    """Why a call about this try cannot proceed: 401 when the try has ended, else 409
    (the try lives but is not in the state the call needs)."""
    if ti is None or not _is_live(ti, claims):
        return _ended(ti, claims)
    return _conflict(ti, claims, what)


def _liveness_row(session: Session, claims: TryClaims) -> Any:
    """One primary-key lookup: the fields :func:`_is_live` compares."""
    return session.execute(
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.state,
            TaskInstance.try_number,
        ).where(TaskInstance.id == claims.ti_id)
    ).first()


def live_try_claims(claims: ClaimsDep, session: SessionDep) -> TryClaims:
    """The verified claims of a try that has not ended; 401 once it has."""
    ti = _liveness_row(session, claims)
    if not _is_live(ti, claims):
        raise _ended(ti, claims)
    return claims


LiveClaimsDep = Annotated[TryClaims, Depends(live_try_claims)]


def _is_this_try(claims: TryClaims, state: TaskInstanceState) -> tuple[Any, ...]:
    """WHERE conditions: the TI the token names, in ``state`` with this try number (the
    guard of every conditional UPDATE here: a duplicate or stale try changes no row)."""
    return (
        TaskInstance.id == claims.ti_id,
        TaskInstance.dag_id == claims.dag_id,
        TaskInstance.run_id == claims.run_id,
        TaskInstance.task_id == claims.task_id,
        TaskInstance.state == state.value,
        TaskInstance.try_number == claims.try_number,
    )


def _load_ti(session: Session, claims: TryClaims, *, lock: bool = False) -> TaskInstance | None:
    """The claimed TI, or None when it is gone or the claims do not name it."""
    stmt = select(TaskInstance).where(TaskInstance.id == claims.ti_id)
    if lock:
        stmt = stmt.with_for_update()
    ti = session.scalars(stmt).first()
    if ti is None or (ti.dag_id, ti.run_id, ti.task_id) != (
        claims.dag_id,
        claims.run_id,
        claims.task_id,
    ):
        return None
    return ti


def _try_row(session: Session, ti: TaskInstance) -> TaskInstanceTry | None:
    return session.scalars(
        select(TaskInstanceTry).where(
            TaskInstanceTry.task_instance_id == ti.id,
            TaskInstanceTry.try_number == ti.try_number,
        )
    ).first()


# Runs are pinned to a content hash, so a parsed DAG never goes stale: parse each once
# per process (a big DAG's JSON costs milliseconds per try otherwise).
# One cache per database (tests run many databases in one process).
_dag_caches: dict[str, DagCache] = {}


def _serialized_dag(session: Session, run: DagRun) -> SerializedDag:
    url = str(session.get_bind().engine.url)
    cache = _dag_caches.get(url) or _dag_caches.setdefault(url, DagCache(max_entries=64))
    info = cache.get(session, run.dag_hash)
    if info is None:
        raise HTTPException(500, f"DAG version {run.dag_hash} of run {run.run_id} is missing")
    return info.dag


def _serialized_task(session: Session, run: DagRun, task_id: str) -> SerializedTask:
    dag = _serialized_dag(session, run)
    if task_id in dag.tasks:
        return dag.task(task_id)
    # The run's version always has the task; a bare default keeps the outcome recordable.
    return SerializedTask(task_id=task_id, kind="python")


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
    dag = _serialized_dag(session, run)
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
        .where(*_is_this_try(claims, TaskInstanceState.QUEUED))
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
        ti = _load_ti(session, claims)
        same_process = (
            ti is not None
            and ti.state == TaskInstanceState.RUNNING.value
            and ti.try_number == claims.try_number
            and (ti.pid, ti.hostname) == (body.pid, body.hostname)
        )
        if not same_process:
            # Built before the rollback, which expires the loaded row.
            refusal = _refusal(ti, claims, "cannot start")
            session.rollback()
            raise refusal
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
        raise _refusal(_load_ti(session, claims), claims, "heartbeat refused")
    session.commit()
    return Response(status_code=204)


class RenderedFieldsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rendered_fields: dict[str, Any]


# A try's rendered fields are each truncated by the try (ketch.authoring.templating);
# this bounds what one request may store.
MAX_RENDERED_FIELDS_BYTES = 1024 * 1024


@router.put("/try/rendered-fields", status_code=204)
def put_rendered_fields(
    body: RenderedFieldsBody, claims: ClaimsDep, session: SessionDep
) -> Response:
    """Store the try's rendered template fields (masked by the try) on its history row,
    while the try runs (Airflow's SetRenderedFields); a later call replaces them.

    One conditional UPDATE: the row of this try, only while its TI is running with it.
    """
    size = len(json.dumps(body.rendered_fields).encode())
    if size > MAX_RENDERED_FIELDS_BYTES:
        raise HTTPException(
            413, f"rendered fields are {size} bytes of JSON, more than {MAX_RENDERED_FIELDS_BYTES}"
        )
    running = (
        select(TaskInstance.id).where(*_is_this_try(claims, TaskInstanceState.RUNNING)).exists()
    )
    result = session.execute(
        update(TaskInstanceTry)
        .where(
            TaskInstanceTry.task_instance_id == claims.ti_id,
            TaskInstanceTry.try_number == claims.try_number,
            running,
        )
        .values(rendered_fields=body.rendered_fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise _refusal(_load_ti(session, claims), claims, "rendered fields refused")
    session.commit()
    return Response(status_code=204)


@router.get("/try/xcom/{task_id}")
def get_xcom(
    task_id: str,
    claims: ClaimsDep,
    session: SessionDep,
    key: Annotated[str, Query()] = RETURN_VALUE_KEY,
    map_index: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """A value another task of the same run stored (its return value by default); of a
    mapped task, the list of its instances' values in map_index order (Airflow's reduce),
    or with ``map_index`` the value of that instance (a task of the same mapped group).

    One query: the try's TI by primary key (is the try still live?) joined to the XComs.
    """
    rows = session.execute(
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.state,
            TaskInstance.try_number,
            XCom.id.label("xcom_id"),
            XCom.value,
            XCom.map_index,
        )
        .select_from(TaskInstance)
        .outerjoin(
            XCom,
            and_(
                XCom.dag_run_id == TaskInstance.dag_run_id,
                XCom.task_id == task_id,
                XCom.key == key,
                true() if map_index is None else XCom.map_index == map_index,
            ),
        )
        .where(TaskInstance.id == claims.ti_id)
        .order_by(XCom.map_index)
    ).all()
    if not rows or not _is_live(rows[0], claims):
        raise _ended(rows[0] if rows else None, claims)
    found = [row for row in rows if row.xcom_id is not None]
    if not found:
        raise HTTPException(404, f"no XCom {key!r} of task {task_id!r} in run {claims.run_id!r}")
    if found[0].map_index < 0 or map_index is not None:
        return {"value": found[0].value}
    return {"value": [row.value for row in found]}


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


def _put_xcom(
    session: Session, dag_run_id: int, task_id: str, map_index: int, key: str, value: Any
) -> None:
    """Insert or replace one XCom row in one statement (a retried try overwrites its
    predecessor's): an upsert on the (dag_run_id, task_id, key, map_index) unique constraint."""
    insert: Any
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(XCom).values(
        dag_run_id=dag_run_id,
        task_id=task_id,
        map_index=map_index,
        key=key,
        value=value,
        timestamp=utcnow(),
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[XCom.dag_run_id, XCom.task_id, XCom.key, XCom.map_index],
            set_={"value": stmt.excluded.value, "timestamp": stmt.excluded.timestamp},
        )
    )


def _put_xcoms(
    session: Session, dag_run_id: int, task_id: str, map_index: int, body: FinishBody
) -> None:
    # A failed try keeps no return value of its own; a new try replaces the old one's.
    if body.state != "success":
        return
    for key, value in (body.xcoms or {}).items():
        if key not in (RETURN_VALUE_KEY, BRANCH_KEY):  # those two are written below
            _put_xcom(session, dag_run_id, task_id, map_index, key, value)
    if body.has_return_value:
        _put_xcom(session, dag_run_id, task_id, map_index, RETURN_VALUE_KEY, body.return_value)
    if body.follow_task_ids is not None:
        _put_xcom(session, dag_run_id, task_id, map_index, BRANCH_KEY, list(body.follow_task_ids))


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
        .where(*_is_this_try(claims, TaskInstanceState.RUNNING))
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
    ti = _load_ti(session, claims, lock=True)
    if ti is None:
        session.rollback()
        raise _ended(None, claims)
    if ti.state != TaskInstanceState.RUNNING.value or ti.try_number != claims.try_number:
        refusal = _refusal(ti, claims, "cannot finish")
        session.rollback()
        if _already_finished(session, claims, body):
            return Response(status_code=204)
        raise refusal
    _put_xcoms(session, ti.dag_run_id, ti.task_id, ti.map_index, body)
    ti.rendered_map_index = body.rendered_map_index
    run = session.get(DagRun, ti.dag_run_id)
    assert run is not None
    record_try_outcome(
        session,
        ti,
        _serialized_task(session, run, ti.task_id),
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
