"""Is the token's try still alive? A token works only while the task instance it names
is ``queued`` or ``running`` with its try number. The guard every conditional UPDATE
of a route carries, the lookups a route makes when its UPDATE changed no row, and the
answers: 401 "try has ended" once the try is over, 409 while it lives but is not in the
state the call needs."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.auth.try_tokens import TryClaims
from ketch.db.models import TaskInstance
from ketch.states import TaskInstanceState
from ketch.worker.client import TRY_ENDED

_LIVE_STATES = frozenset({TaskInstanceState.QUEUED.value, TaskInstanceState.RUNNING.value})


def _conflict(ti: TaskInstance, claims: TryClaims, what: str) -> HTTPException:
    """409 saying what the TI is now, so the try can log why it stops."""
    return HTTPException(
        409,
        f"{what}: task instance is {ti.state or 'none'} with try_number {ti.try_number}, "
        f"this is try {claims.try_number}",
    )


def _names_this_ti(ti: Any, claims: TryClaims) -> bool:
    return ti is not None and (ti.dag_id, ti.run_id, ti.task_id) == (
        claims.dag_id,
        claims.run_id,
        claims.task_id,
    )


def is_live(ti: Any, claims: TryClaims) -> bool:
    """The try the token names has not ended: its TI (a TaskInstance or a row with the
    same fields) is queued or running with this try number."""
    return (
        _names_this_ti(ti, claims)
        and ti.try_number == claims.try_number
        and ti.state in _LIVE_STATES
    )


def ended(ti: Any, claims: TryClaims) -> HTTPException:
    """401: the token's try is over, so the token no longer works (the try must stop)."""
    if _names_this_ti(ti, claims):
        why = (
            f"task instance is {ti.state or 'none'} with try_number {ti.try_number}, "
            f"this is try {claims.try_number}"
        )
    else:
        why = f"task instance {claims.ti_id} no longer exists"
    return HTTPException(401, f"{TRY_ENDED}: {why}", headers={"WWW-Authenticate": "Bearer"})


def refusal(ti: TaskInstance | None, claims: TryClaims, what: str) -> HTTPException:
    """Why a call about this try cannot proceed: 401 when the try has ended, else 409
    (the try lives but is not in the state the call needs)."""
    if ti is None or not is_live(ti, claims):
        return ended(ti, claims)
    return _conflict(ti, claims, what)


def liveness_row(session: Session, claims: TryClaims) -> Any:
    """One primary-key lookup: the fields :func:`is_live` compares."""
    return session.execute(
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.state,
            TaskInstance.try_number,
        ).where(TaskInstance.id == claims.ti_id)
    ).first()


def is_this_try(claims: TryClaims, state: TaskInstanceState) -> tuple[Any, ...]:
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


def load_ti(session: Session, claims: TryClaims, *, lock: bool = False) -> TaskInstance | None:
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
