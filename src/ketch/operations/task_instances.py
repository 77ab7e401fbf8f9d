"""Task instances: look one up, list them and their tries, clear, mark state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, TaskInstance, TaskInstanceTry
from ketch.operations._common import (
    _close_try,
    _notify_after_commit,
    _parse_state,
    _set_ti_state,
    _utcnow,
)
from ketch.operations.errors import TaskInstanceNotFound, TaskNotFound
from ketch.operations.runs import _FINISHED_RUN_STATES, get_dag_run, serialized_dag_for_run
from ketch.serialization import SerializedDag
from ketch.states import FAILED_TI_STATES, FINISHED_TI_STATES, DagRunState, TaskInstanceState

MARKABLE_TI_STATES = frozenset(
    {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, TaskInstanceState.SKIPPED}
)
"""States a user may set on a task instance (Airflow's PATCH taskInstance accepts these)."""


# --- reads ------------------------------------------------------------------------------


def get_task_instance(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int = -1
) -> TaskInstance:
    """One task instance; ``map_index`` names an instance of a mapped task (-1: unmapped,
    or a mapped task not expanded yet)."""
    run = get_dag_run(session, dag_id, run_id)
    of_task = (TaskInstance.dag_run_id == run.id, TaskInstance.task_id == task_id)
    ti = session.scalars(
        select(TaskInstance).where(*of_task, TaskInstance.map_index == map_index)
    ).first()
    if ti is not None:
        return ti
    if session.scalar(select(TaskInstance.id).where(*of_task).limit(1)) is None:
        raise TaskNotFound(dag_id, [task_id])
    if map_index < 0:
        raise TaskInstanceNotFound(
            f"task {task_id!r} of run {run_id!r} is mapped: name one of its instances by map_index"
        )
    raise TaskInstanceNotFound(f"task {task_id!r} of run {run_id!r} has no map_index {map_index}")


def check_task_instance(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int | None
) -> None:
    """Raise the NotFound that names what is missing; ``map_index`` None: any instance of
    the task will do (a mapped task's too)."""
    try:
        get_task_instance(session, dag_id, run_id, task_id, -1 if map_index is None else map_index)
    except TaskInstanceNotFound:
        if map_index is not None:
            raise


def list_mapped_task_instances(
    session: Session, dag_id: str, run_id: str, task_id: str
) -> list[TaskInstance]:
    """The instances of a mapped task in map_index order (none before its expansion);
    :class:`TaskInstanceNotFound` for a task that is not mapped (Airflow's listMapped)."""
    run = get_dag_run(session, dag_id, run_id)
    task = serialized_dag_for_run(session, run).tasks.get(task_id)
    if task is None:
        raise TaskNotFound(dag_id, [task_id])
    if not task.is_mapped:
        raise TaskInstanceNotFound(f"task {task_id!r} is not mapped")
    return list(
        session.scalars(
            select(TaskInstance)
            .where(
                TaskInstance.dag_run_id == run.id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index >= 0,
            )
            .order_by(TaskInstance.map_index)
        )
    )


def list_task_instances(session: Session, dag_id: str, run_id: str) -> list[TaskInstance]:
    """A run's task instances in the DAG's task order. ``try_number`` is the count of tries
    started so far (one ``task_instance_try`` row each)."""
    run = get_dag_run(session, dag_id, run_id)
    tis = list(session.scalars(select(TaskInstance).where(TaskInstance.dag_run_id == run.id)))
    order = {tid: i for i, tid in enumerate(serialized_dag_for_run(session, run).tasks)}
    return sorted(tis, key=lambda ti: (order.get(ti.task_id, len(order)), ti.task_id, ti.map_index))


def list_task_instance_tries(session: Session, ti: TaskInstance) -> list[TaskInstanceTry]:
    return list(
        session.scalars(
            select(TaskInstanceTry)
            .where(TaskInstanceTry.task_instance_id == ti.id)
            .order_by(TaskInstanceTry.try_number)
        )
    )


_TRIES_BY_ID_LIMIT = 500


def tries_by_task_instance(
    session: Session, tis: Sequence[TaskInstance]
) -> dict[int, list[TaskInstanceTry]]:
    """The tries of many task instances (each TI's list in try order) in one query, so a
    list of TIs shows every try history without a query per TI.

    Up to a few hundred TIs are looked up by id; more TIs of one run (a whole run's list)
    are read by the run instead, so the statement never carries thousands of ids.
    """
    out: dict[int, list[TaskInstanceTry]] = {ti.id: [] for ti in tis}
    if not tis:
        return out
    query = select(TaskInstanceTry).order_by(
        TaskInstanceTry.task_instance_id, TaskInstanceTry.try_number
    )
    run_ids = {ti.dag_run_id for ti in tis}
    if len(tis) > _TRIES_BY_ID_LIMIT and len(run_ids) == 1:
        query = query.join(TaskInstance, TaskInstance.id == TaskInstanceTry.task_instance_id)
        query = query.where(TaskInstance.dag_run_id == run_ids.pop())
    else:
        query = query.where(TaskInstanceTry.task_instance_id.in_(list(out)))
    for row in session.scalars(query):
        if row.task_instance_id in out:
            out[row.task_instance_id].append(row)
    return out


# --- clear ---------------------------------------------------------------------------------


def _relatives(serialized: SerializedDag, roots: set[str], *, downstream: bool) -> set[str]:
    """``roots`` and every task reachable from them downstream (or upstream)."""
    seen, stack = set(roots), list(roots)
    while stack:
        task = serialized.tasks[stack.pop()]
        nexts = task.downstream_task_ids if downstream else task.upstream_task_ids
        for tid in nexts:
            if tid not in seen:
                seen.add(tid)
                stack.append(tid)
    return seen


def _select_task_ids(
    serialized: SerializedDag,
    task_ids: Iterable[str] | None,
    *,
    include_downstream: bool,
    include_upstream: bool,
) -> set[str]:
    chosen = set(serialized.tasks) if task_ids is None else set(task_ids)
    unknown = chosen - set(serialized.tasks)
    if unknown:
        raise TaskNotFound(serialized.dag_id, unknown)
    result = set(chosen)
    if include_downstream:
        result |= _relatives(serialized, chosen, downstream=True)
    if include_upstream:
        result |= _relatives(serialized, chosen, downstream=False)
    return result


def clear_task_instances(
    session: Session,
    dag_id: str,
    run_id: str,
    task_ids: Iterable[str] | None = None,
    *,
    include_downstream: bool = False,
    include_upstream: bool = False,
    only_failed: bool = False,
    dry_run: bool = False,
    exclude_task_ids: Iterable[str] = (),
    now: datetime | None = None,
) -> list[TaskInstance]:
    """Clear task instances so they run again (``task_ids`` None: the whole run).

    Airflow 3's semantics: each cleared TI goes to state NULL with
    ``max_tries = try_number + retries`` so its retries are available again; a try
    still queued or running is over (its try row is closed as failed; its next
    heartbeat gets 409 and the try stops itself); a finished run goes back to
    queued. Returns the TIs cleared (or, with ``dry_run``, that would be).
    """
    run = get_dag_run(session, dag_id, run_id)
    serialized = serialized_dag_for_run(session, run)
    wanted = _select_task_ids(
        serialized,
        task_ids,
        include_downstream=include_downstream,
        include_upstream=include_upstream,
    ) - set(exclude_task_ids)
    query = select(TaskInstance).where(
        TaskInstance.dag_run_id == run.id, TaskInstance.task_id.in_(wanted)
    )
    if only_failed:
        query = query.where(TaskInstance.state.in_([s.value for s in FAILED_TI_STATES]))
    tis = sorted(session.scalars(query), key=lambda ti: (ti.task_id, ti.map_index))
    if dry_run or not tis:
        return tis
    now = now or _utcnow()
    for ti in tis:
        _clear_one(session, ti, serialized, now)
    _requeue_run(run, now)
    session.flush()
    _notify_after_commit(session)
    return tis


def _clear_one(
    session: Session, ti: TaskInstance, serialized: SerializedDag, now: datetime
) -> None:
    if ti.state not in FINISHED_TI_STATES:
        _close_try(session, ti, TaskInstanceState.FAILED, now, error="cleared by a user")
    task = serialized.tasks.get(ti.task_id)
    ti.max_tries = ti.try_number + task.retries if task else max(ti.max_tries, ti.try_number)
    ti.state = None
    ti.end_date = None
    ti.duration = None
    ti.next_retry_at = None
    ti.external_executor_id = None
    ti.error = None


def _requeue_run(run: DagRun, now: datetime) -> None:
    """A finished run whose TIs were cleared runs again; an active one just re-evaluates."""
    if run.state in _FINISHED_RUN_STATES:
        run.state = DagRunState.QUEUED.value
        run.queued_at = now
        run.start_date = None
        run.end_date = None
    run.needs_evaluation = True


# --- mark states ----------------------------------------------------------------------------


def set_task_instance_state(
    session: Session,
    dag_id: str,
    run_id: str,
    task_id: str,
    state: TaskInstanceState | str,
    *,
    include_downstream: bool = False,
    include_upstream: bool = False,
    now: datetime | None = None,
    map_index: int | None = None,
) -> list[TaskInstance]:
    """Mark a task instance (and optionally its relatives) success, failed or skipped.

    ``map_index`` marks that one instance of a mapped task (its relatives: all of theirs);
    None marks every instance of the task.

    As Airflow's ``DAG.set_task_instance_state``: the TIs whose state differs are
    set; then the task's failed or upstream_failed downstream TIs are cleared so the
    run can resume past it. A running try is stopped by its next heartbeat (409).
    Returns the TIs whose state was set.
    """
    new_state = _parse_state(state, MARKABLE_TI_STATES, TaskInstanceState, "new_state")
    now = now or _utcnow()
    run = get_dag_run(session, dag_id, run_id)
    serialized = serialized_dag_for_run(session, run)
    wanted = _select_task_ids(
        serialized,
        [task_id],
        include_downstream=include_downstream,
        include_upstream=include_upstream,
    )
    tis = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_run_id == run.id, TaskInstance.task_id.in_(wanted)
        )
    )
    altered = sorted(
        (
            ti
            for ti in tis
            if ti.state != new_state.value
            and (map_index is None or ti.task_id != task_id or ti.map_index == map_index)
        ),
        key=lambda t: (t.task_id, t.map_index),
    )
    for ti in altered:
        _set_ti_state(session, ti, new_state, now)
    session.flush()
    clear_task_instances(
        session,
        dag_id,
        run_id,
        [task_id],
        include_downstream=True,
        only_failed=True,
        exclude_task_ids=[task_id],
        now=now,
    )
    run.needs_evaluation = True
    _notify_after_commit(session)
    return altered
