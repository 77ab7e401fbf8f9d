"""What a mapped branch or short-circuit task skips: the same map index only.

Each instance of a mapped ``@task.branch`` / ``BranchPythonOperator`` /
``@task.short_circuit`` records its own choice (the ``__branch__`` XCom at its map_index).
As in Airflow 3.3, a choice is looked up at the map index of the task instance it may
skip (``NotPreviouslySkippedDep`` reads the parent's skip XCom at the child's own
map_index when the parent is mapped, and ``SkipMixin`` skips nothing at once from a
mapped instance):

- a task that is not mapped (map_index -1) is never skipped by a mapped branch's
  choices; its trigger rule decides, counting every branch instance (which succeeded);
- instance *i* of a mapped direct downstream task is skipped when instance *i* of the
  mapped branch did not follow it (a falsy short-circuit follows nothing); an instance
  with no branch instance of its index is not skipped.

So no instance's choice "wins" over another's. The skips are written in the transaction
that expands (or revises) the downstream task, only on instances not queued yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance, XCom
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import BRANCH_XCOM_KEY
from ketch.scheduler.trigger_rules import expand_follow
from ketch.states import TaskInstanceState

_TI = TaskInstanceState


def mapped_branch_parents(info: DagInfo, task_id: str) -> list[str]:
    """The mapped branch / short-circuit tasks directly upstream of a mapped ``task_id``."""
    task = info.task(task_id)
    if task is None or not task.is_mapped:
        return []
    return sorted(
        parent
        for parent in info.branch_ids.intersection(task.upstream_task_ids)
        if (p := info.task(parent)) is not None and p.is_mapped
    )


def unfollowed_indexes(
    session: Session, dag_run_id: int, info: DagInfo, task_id: str, parents: list[str]
) -> set[int]:
    """Map indexes whose same-index branch instance did not follow ``task_id``."""
    rows = session.execute(
        select(XCom.map_index, XCom.value).where(
            XCom.dag_run_id == dag_run_id,
            XCom.task_id.in_(parents),
            XCom.key == BRANCH_XCOM_KEY,
            XCom.map_index >= 0,
        )
    )
    return {index for index, value in rows if task_id not in _kept(info, value)}


def _kept(info: DagInfo, value: Any) -> set[str]:
    chosen = [value] if isinstance(value, str) else list(value or [])
    return expand_follow(
        chosen, lambda tid: info.descendants(tid) if info.task(tid) else frozenset()
    )


def skip_unfollowed_instances(
    session: Session, dag_run_id: int, info: DagInfo, task_id: str, now: datetime
) -> tuple[int, ...]:
    """Skip the instances of ``task_id`` (not queued yet) that the same-index instance of a
    mapped branch parent did not follow; returns their map indexes."""
    parents = mapped_branch_parents(info, task_id)
    if not parents:
        return ()
    indexes = unfollowed_indexes(session, dag_run_id, info, task_id, parents)
    if not indexes:
        return ()
    skipped = session.scalars(
        update(TaskInstance)
        .where(
            TaskInstance.dag_run_id == dag_run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index.in_(sorted(indexes)),
            or_(TaskInstance.state.is_(None), TaskInstance.state == _TI.SCHEDULED.value),
        )
        .values(state=_TI.SKIPPED.value, start_date=now, end_date=now, duration=0.0)
        .returning(TaskInstance.map_index)
        .execution_options(synchronize_session=False)
    ).all()
    return tuple(sorted(skipped))
