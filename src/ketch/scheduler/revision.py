"""Revising a mapped task's instances when it runs again with a different length.

A mapped task is expanded once (see :mod:`ketch.scheduler.expansion`); after a clear its
instances go back to no state and run again. If what it maps over changed meanwhile (the
upstream it maps over was cleared too and returned a longer or shorter list), the number
of instances must follow, as Airflow 3.3's ``DagRun._revise_map_indexes_if_mapped`` does
when a cleared instance's trigger rule is met:

- missing map indexes (0..N-1 without a row) are created, with no state, and scheduled
  with the others by the same decision;
- instances at N and above become ``removed`` (whatever their state); their return values
  are deleted, so a reduce downstream gets the live instances' values only;
- the same length keeps every instance as it is (clearing a mapped task whose upstream is
  unchanged keeps the count).

A length that cannot be computed (no upstream value, a value that is not a list) keeps
the instances as they are, as Airflow keeps them when the upstream's map length is not
populated; each instance then fails on its own when it cannot read its argument.

Crash safety: like an expansion, these writes belong to the scheduler's transaction that
decided the task and commit with it or not at all. Killed before the commit
(``revision.before_commit``), the cleared instances still have no state and the full
evaluation after the restart revises again; after it (``revision.after_commit``), the
revised instances are scheduled and run like any other.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance, XCom
from ketch.faults import fault_point
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import Revision
from ketch.scheduler.expansion import _Unexpandable, expansion_length
from ketch.states import TaskInstanceState

log = logging.getLogger("ketch.scheduler.revision")

_CHUNK = 1000
_REMOVED = TaskInstanceState.REMOVED.value


def revise_map_indexes(
    session: Session,
    dag_run_id: int,
    info: DagInfo,
    task_id: str,
    *,
    max_length: int,
    now: datetime,
) -> Revision:
    """Create the missing instances of the expanded mapped task ``task_id`` and remove the
    extra ones, in the caller's transaction (its cleared instances are about to run)."""
    task = info.task(task_id)
    assert task is not None and task.expand is not None
    try:
        length = expansion_length(session, dag_run_id, info, task, max_length)
    except _Unexpandable as exc:
        log.warning("run %s: task %s keeps its instances: %s", dag_run_id, task_id, exc)
        return Revision()
    of_task = (TaskInstance.dag_run_id == dag_run_id, TaskInstance.task_id == task_id)
    existing = set(session.scalars(select(TaskInstance.map_index).where(*of_task)))
    existing.discard(-1)
    removed = tuple(sorted(i for i in existing if i >= length))
    added = tuple(i for i in range(length) if i not in existing)
    if not removed and not added:
        return Revision()
    if removed:
        _remove(session, dag_run_id, task_id, length, now)
    if added:
        _add(session, dag_run_id, task_id, task.retries, added)
    log.info(
        "run %s: task %s revised to %d instances (%d added, %d removed)",
        dag_run_id,
        task_id,
        length,
        len(added),
        len(removed),
    )
    fault_point("revision.before_commit")
    event.listen(session, "after_commit", _after_commit, once=True)
    return Revision(removed=removed, added=added)


def _remove(session: Session, dag_run_id: int, task_id: str, length: int, now: datetime) -> None:
    of_task = (TaskInstance.dag_run_id == dag_run_id, TaskInstance.task_id == task_id)
    session.execute(
        update(TaskInstance)
        .where(
            *of_task,
            TaskInstance.map_index >= length,
            TaskInstance.state.is_distinct_from(_REMOVED),
        )
        .values(state=_REMOVED, end_date=now, next_retry_at=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(XCom)
        .where(XCom.dag_run_id == dag_run_id, XCom.task_id == task_id, XCom.map_index >= length)
        .execution_options(synchronize_session=False)
    )


def _add(
    session: Session, dag_run_id: int, task_id: str, retries: int, indexes: tuple[int, ...]
) -> None:
    """New instances copy a sibling's run, pool and priority, with no state and no try yet."""
    sibling = session.execute(
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.priority_weight,
            TaskInstance.pool,
            TaskInstance.pool_slots,
        )
        .where(TaskInstance.dag_run_id == dag_run_id, TaskInstance.task_id == task_id)
        .order_by(TaskInstance.map_index)
        .limit(1)
    ).one()
    template = {
        "dag_run_id": dag_run_id,
        "task_id": task_id,
        "state": None,
        "try_number": 0,
        "max_tries": retries,
        **sibling._asdict(),
    }
    rows = [{**template, "map_index": i} for i in indexes]
    for i in range(0, len(rows), _CHUNK):
        session.execute(insert(TaskInstance), rows[i : i + _CHUNK])


def _after_commit(_session: Session) -> None:
    fault_point("revision.after_commit")
