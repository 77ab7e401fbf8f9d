"""Expanding a mapped task into its task instances, once its upstreams are done.

A run is created with one task instance per task, a mapped one included: its
*placeholder*, ``map_index`` -1 and no state. When the scheduler decides that the
placeholder's trigger rule is met, it computes the number of instances from the shape the
DAG processor stored (:class:`ketch.serialization.SerializedExpand`: literal lengths and
the upstream XComs in the database), then, as Airflow's ``DagRun._expand_mapped_task``
does, turns the placeholder into instance 0 and bulk-inserts instances 1..N-1, all
``scheduled``. Nothing to map over skips the placeholder; a missing upstream value makes
it ``upstream_failed``; a value that is not a list or dict, or more than
``[core] max_map_length`` instances, fails it with one line saying why.

Crash safety: these writes are part of the scheduler's transaction that decided the
placeholder, so they commit together or not at all. Killed before the commit, the run
still has the undecided placeholder, which the full evaluation after the restart
expands again; after the commit, the N instances exist and nothing refers to the
placeholder any more (the conditional UPDATE on ``map_index = -1 AND state IS NULL``
makes a second expansion a no-op).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance, XCom
from ketch.faults import fault_point
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import Expansion
from ketch.serialization import SerializedExpandArg, SerializedTask
from ketch.states import TaskInstanceState

log = logging.getLogger("ketch.scheduler.expansion")

_TI = TaskInstanceState
_CHUNK = 1000


class _Unexpandable(Exception):
    """Why a mapped task cannot expand; ``state`` is what its placeholder becomes."""

    def __init__(self, state: _TI, message: str) -> None:
        super().__init__(message)
        self.state = state


def _mappable_length(task_id: str, arg: SerializedExpandArg, value: Any) -> int:
    from ketch.worker.serde import decode

    value = decode(value)
    if isinstance(value, list | tuple | dict):
        return len(value)
    what = f"{arg.name}=" if arg.name else ""
    raise _Unexpandable(
        _TI.FAILED,
        f"task {task_id!r} cannot map over {what}the return value of {arg.xcom_task_id!r}: "
        f"it is a {type(value).__name__}, not a list or a dict",
    )


def _upstream_length(
    session: Session, dag_run_id: int, info: DagInfo, task_id: str, arg: SerializedExpandArg
) -> int:
    """The length of what ``arg`` maps over: an upstream's value, or every value of a mapped
    upstream (Airflow's reduce: one item per instance that pushed one)."""
    upstream = info.task(arg.xcom_task_id or "")
    where = (
        XCom.dag_run_id == dag_run_id,
        XCom.task_id == arg.xcom_task_id,
        XCom.key == arg.xcom_key,
    )
    if upstream is not None and upstream.is_mapped:
        return len(session.scalars(select(XCom.map_index).where(*where, XCom.map_index >= 0)).all())
    row = session.execute(select(XCom.value).where(*where, XCom.map_index == -1)).first()
    if row is None:
        raise _Unexpandable(
            _TI.UPSTREAM_FAILED,
            f"task {task_id!r} cannot expand: task {arg.xcom_task_id!r} has no XCom "
            f"{arg.xcom_key!r} to map over",
        )
    return _mappable_length(task_id, arg, row.value)


def _arg_length(
    session: Session, dag_run_id: int, info: DagInfo, task_id: str, arg: SerializedExpandArg
) -> int:
    """A literal's length, an upstream value's, or that of a zip/concat of several."""
    if arg.length is not None:
        return arg.length
    if arg.combine is not None:
        parts = [_arg_length(session, dag_run_id, info, task_id, p) for p in arg.parts]
        return arg.combined_length(parts)
    return _upstream_length(session, dag_run_id, info, task_id, arg)


def expansion_length(
    session: Session, dag_run_id: int, info: DagInfo, task: SerializedTask, max_length: int
) -> int:
    """How many instances ``task`` expands to; :class:`_Unexpandable` when it cannot."""
    assert task.expand is not None
    lengths = [_arg_length(session, dag_run_id, info, task.task_id, a) for a in task.expand.args]
    length = math.prod(lengths)
    if length > max_length:
        raise _Unexpandable(
            _TI.FAILED,
            f"task {task.task_id!r} expanded to {length} items, above "
            f"max_map_length={max_length} ([core] max_map_length)",
        )
    return length


def _end_placeholder(
    session: Session, dag_run_id: int, task_id: str, state: _TI, error: str | None, now: datetime
) -> None:
    session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.dag_run_id == dag_run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == -1,
            TaskInstance.state.is_(None),
        )
        .values(state=state.value, error=error, start_date=now, end_date=now, duration=0.0)
        .execution_options(synchronize_session=False)
    )


def _write_instances(
    session: Session,
    dag_run_id: int,
    task_id: str,
    length: int,
    state: _TI | None = _TI.SCHEDULED,
) -> bool:
    """Placeholder -> instance 0, plus instances 1..length-1 (bulk), all in ``state`` (None:
    each decided later, see scheduler/mapped_group.py); False when the placeholder was
    already expanded or decided (nothing written)."""
    value = state.value if state is not None else None
    placeholder = session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.dag_run_id == dag_run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == -1,
            TaskInstance.state.is_(None),
        )
        .values(map_index=0, state=value)
        .returning(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.max_tries,
            TaskInstance.priority_weight,
            TaskInstance.pool,
            TaskInstance.pool_slots,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if placeholder is None:
        return False
    template = {
        "dag_run_id": dag_run_id,
        "task_id": task_id,
        "state": value,
        "try_number": 0,
        **placeholder._asdict(),
    }
    rows = [{**template, "map_index": i} for i in range(1, length)]
    for i in range(0, len(rows), _CHUNK):
        session.execute(insert(TaskInstance), rows[i : i + _CHUNK])
    return True


def expand_mapped_task(
    session: Session,
    dag_run_id: int,
    info: DagInfo,
    task_id: str,
    *,
    max_length: int,
    now: datetime,
) -> Expansion:
    """Expand the mapped task ``task_id`` of the run (its trigger rule is met), in the
    caller's transaction; returns what the run's tally must learn."""
    task = info.task(task_id)
    assert task is not None and task.expand is not None
    try:
        length = expansion_length(session, dag_run_id, info, task, max_length)
    except _Unexpandable as exc:
        log.error("run %s: %s", dag_run_id, exc)
        error = str(exc) if exc.state == _TI.FAILED else None
        _end_placeholder(session, dag_run_id, task_id, exc.state, error, now)
        return Expansion(state=exc.state.value)
    if length == 0:
        log.info("run %s: task %s expanded to 0 items: skipped", dag_run_id, task_id)
        _end_placeholder(session, dag_run_id, task_id, _TI.SKIPPED, None, now)
        return Expansion(state=_TI.SKIPPED.value)
    if not _write_instances(session, dag_run_id, task_id, length):
        return Expansion(state=_TI.SCHEDULED.value)
    log.info("run %s: task %s expanded to %d instances", dag_run_id, task_id, length)
    fault_point("expansion.before_commit")
    event.listen(session, "after_commit", _after_commit, once=True)
    return Expansion(length=length)


def _after_commit(_session: Session) -> None:
    fault_point("expansion.after_commit")
