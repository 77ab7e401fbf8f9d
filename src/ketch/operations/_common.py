"""What several resources' actions share: change notification, the clock, pages, state
parsing, and the task-instance state writes that both run and task-instance actions make."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance, TaskInstanceTry
from ketch.operations.errors import InvalidRequest
from ketch.states import DagRunState, TaskInstanceState

log = logging.getLogger("ketch.operations")

on_change: list[Callable[[], None]] = []
"""Process-local callbacks run after a session carrying a user action commits."""

T = TypeVar("T")
S = TypeVar("S", TaskInstanceState, DagRunState)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total_entries: int


# --- change notification ---------------------------------------------------------------


def _notify_after_commit(session: Session) -> None:
    """Run the :data:`on_change` callbacks once the caller commits (never before:
    a woken scheduler must see the change)."""
    from sqlalchemy import event

    if session.info.get("ketch_notify_pending"):
        return
    session.info["ketch_notify_pending"] = True

    def fire(_session: Session) -> None:
        session.info.pop("ketch_notify_pending", None)
        for callback in list(on_change):
            try:
                callback()
            except Exception:  # a broken hook must not turn a done action into an error
                log.exception("on_change callback %r failed", callback)

    event.listen(session, "after_commit", fire, once=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _require_aware(field: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidRequest(field, "must include a timezone (for example 2026-01-01T00:00:00Z)")


def _parse_state(state: S | str, allowed: frozenset[S], kind: type[S], field: str) -> S:
    try:
        parsed = kind(state)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise InvalidRequest(field, f"must be one of {names}, not {state!r}")
    return parsed


# --- task instance state writes (marking a run marks its task instances) ----------------


def _close_try(
    session: Session,
    ti: TaskInstance,
    state: TaskInstanceState,
    now: datetime,
    *,
    error: str | None = None,
) -> None:
    """End the history row of the TI's current try, if one is open."""
    if ti.try_number <= 0:
        return
    row = session.scalars(
        select(TaskInstanceTry).where(
            TaskInstanceTry.task_instance_id == ti.id,
            TaskInstanceTry.try_number == ti.try_number,
        )
    ).first()
    if row is not None and row.end_date is None:
        row.state = state.value
        row.end_date = now
        row.error = error


def _set_ti_state(
    session: Session, ti: TaskInstance, state: TaskInstanceState, now: datetime
) -> None:
    """A user-set state (Airflow's ``TaskInstance.set_state``): no retry, dates filled in."""
    if ti.state in (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING):
        _close_try(session, ti, state, now, error=f"marked {state.value} by a user")
    ti.state = state.value
    ti.start_date = ti.start_date or now
    ti.end_date = now
    ti.duration = (now - ti.start_date).total_seconds()
    ti.next_retry_at = None
