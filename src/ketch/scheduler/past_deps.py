"""``depends_on_past`` and ``wait_for_downstream``: Airflow 3.3's ``PrevDagrunDep``.

A task with ``depends_on_past`` runs only when the same task in the *previous run* ended
success or skipped; with ``wait_for_downstream`` its direct downstream tasks there must
have too. As in Airflow:

- the previous run is the run of the DAG with the latest logical date before this one's
  (with ``catchup``, the latest one that is not manual); a run without a logical date (a
  manual run triggered without one) has none, and neither has the first run: both pass;
- if the previous run has no instance of the task (added since), the task passes when it
  never ran before (``ignore_first_depends_on_past``, default True), else it waits;
- a blocked task instance only waits (it keeps no state); trigger rules may still skip it
  or mark it upstream_failed (Airflow sets those states whatever the other deps say).

Cost: one query per evaluation pass of a run whose DAG has such tasks (the previous run's
relevant TI states, joined), plus one more only when a task is missing there. Nothing for
other DAGs. Because ketch evaluates a run on events rather than by polling every running
run, a change of a watched task in one run flags the later running runs of the DAG for a
full evaluation (:func:`wake_later_runs`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, TaskInstance
from ketch.scheduler.dag_cache import DagInfo
from ketch.states import DagRunState, DagRunType, TaskInstanceState

_PASSED = frozenset({TaskInstanceState.SUCCESS.value, TaskInstanceState.SKIPPED.value})


def blocked_by_past(
    session: Session, run: DagRun, info: DagInfo, states: dict[str, str | None]
) -> frozenset[str]:
    """The ``depends_on_past`` tasks of ``run`` still without a state whose previous-run
    condition is not met (they must wait)."""
    tasks = [tid for tid in info.depends_on_past_ids if states.get(tid, "absent") is None]
    if not tasks or run.logical_date is None:
        return frozenset()
    needed = set(tasks)
    for tid in tasks:
        task = info.task(tid)
        if task is not None and task.wait_for_downstream:
            needed.update(task.downstream_task_ids)
    rows = session.execute(
        select(DagRun.id, TaskInstance.task_id, TaskInstance.state)
        .select_from(DagRun)
        .outerjoin(
            TaskInstance,
            and_(TaskInstance.dag_run_id == DagRun.id, TaskInstance.task_id.in_(needed)),
        )
        .where(DagRun.id == _previous_run_id(run, catchup=info.dag.catchup))
    ).all()
    if not rows:
        return frozenset()  # the first run (by logical date): nothing to depend on
    previous = {tid: state for _, tid, state in rows if tid is not None}
    blocked = {tid for tid in tasks if tid in previous and not _met(tid, previous, info)}
    missing = [tid for tid in tasks if tid not in previous]
    if missing:
        blocked |= _missing_blocked(session, run, info, missing)
    return frozenset(blocked)


def _previous_run_id(run: DagRun, *, catchup: bool) -> object:
    """Airflow's ``get_previous_dagrun`` (``get_previous_scheduled_dagrun`` with catchup)."""
    stmt = select(DagRun.id).where(
        DagRun.dag_id == run.dag_id, DagRun.logical_date < run.logical_date
    )
    if catchup:
        stmt = stmt.where(DagRun.run_type != DagRunType.MANUAL.value)
    return stmt.order_by(DagRun.logical_date.desc()).limit(1).scalar_subquery()


def _met(task_id: str, previous: dict[str, str | None], info: DagInfo) -> bool:
    if previous[task_id] not in _PASSED:
        return False
    task = info.task(task_id)
    if task is None or not task.wait_for_downstream:
        return True
    # Airflow counts only downstream TIs that exist and are neither success nor skipped.
    return all(previous[down] in _PASSED for down in task.downstream_task_ids if down in previous)


def _missing_blocked(session: Session, run: DagRun, info: DagInfo, missing: list[str]) -> set[str]:
    """Tasks absent from the previous run: blocked unless they never ran before and
    ``ignore_first_depends_on_past`` (Airflow's ``_has_any_prior_tis``)."""
    ran_before = set(
        session.scalars(
            select(TaskInstance.task_id)
            .join(DagRun, DagRun.id == TaskInstance.dag_run_id)
            .where(
                TaskInstance.dag_id == run.dag_id,
                TaskInstance.task_id.in_(missing),
                DagRun.logical_date < run.logical_date,
            )
            .distinct()
        )
    )
    blocked = set()
    for tid in missing:
        task = info.task(tid)
        first = task is not None and task.ignore_first_depends_on_past and tid not in ran_before
        if not first:
            blocked.add(tid)
    return blocked


def wake_later_runs(
    session: Session, run: DagRun, info: DagInfo, changed: Iterable[str] | None = None
) -> bool:
    """Flag the running runs after ``run`` for a full evaluation when a task their
    ``depends_on_past`` reads changed in ``run`` (``changed`` None: any may have).
    True when it flagged some (the caller pokes the loop)."""
    watched = info.past_watched_ids
    if not watched or run.logical_date is None:
        return False
    if changed is not None and watched.isdisjoint(changed):
        return False
    result = session.execute(
        update(DagRun)
        .where(
            DagRun.dag_id == run.dag_id,
            DagRun.state == DagRunState.RUNNING.value,
            DagRun.logical_date > run.logical_date,
            DagRun.needs_evaluation.is_(False),
        )
        .values(needs_evaluation=True)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
