"""Queueing scheduled task instances within the limits, then handing them to the executor.

Limits, as in Airflow 3: ``[core] parallelism`` (queued + running over all DAGs), the DAG's
``max_active_tasks`` (counted per DAG *run* since Airflow 3.0), pool slots, and a task's
``max_active_tis_per_dag`` (its queued + running tries across every run of the DAG) and
``max_active_tis_per_dagrun`` (within one run), checked in Airflow's order. A try over a
limit stays ``scheduled``. Work is bounded by the free slots: candidates come from an indexed
query ordered by priority, every current use comes from one grouped query per loop, and runs,
pools and tasks found full are excluded from the next page (Airflow's "starved" sets).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun, Pool, TaskInstance, TaskInstanceTry
from ketch.executors.base import LaunchError, LaunchRequest, TryKey
from ketch.faults import fault_point
from ketch.scheduler.context import SchedulerContext
from ketch.scheduler.reactions import fail_unreported_try, react_to_changes
from ketch.states import DagRunState, TaskInstanceState

log = logging.getLogger("ketch.scheduler.queueing")

_TI = TaskInstanceState
_ACTIVE = (_TI.QUEUED.value, _TI.RUNNING.value)
_MAX_PAGES = 5


@dataclass
class _Limits:
    free: int
    pool_slots: dict[str, int]
    pool_used: dict[str, int]
    run_active: dict[int, int] = field(default_factory=dict)
    # Active tries per (dag_id, task_id) and per (dag_run_id, task_id) (absent means zero).
    task_active: dict[tuple[str, str], int] = field(default_factory=dict)
    task_run_active: dict[tuple[int, str], int] = field(default_factory=dict)
    starved_runs: set[int] = field(default_factory=set)
    starved_pools: set[str] = field(default_factory=set)
    starved_tasks: set[tuple[str, str]] = field(default_factory=set)
    starved_task_runs: set[tuple[int, str]] = field(default_factory=set)
    # True when run_active holds every run with active TIs (absent means zero).
    complete_run_counts: bool = False

    def starved(self) -> int:
        return (
            len(self.starved_runs)
            + len(self.starved_pools)
            + len(self.starved_tasks)
            + len(self.starved_task_runs)
        )


def _load_limits(ctx: SchedulerContext, session: Session) -> _Limits:
    """Every limit's current use from one grouped query over the active TIs (at most
    ``parallelism`` rows: it grows with what runs, not with what exists), like Airflow's
    ``ConcurrencyMap``."""
    pools = {p.pool: p.slots for p in session.scalars(select(Pool))}
    rows = session.execute(
        select(
            TaskInstance.pool,
            TaskInstance.dag_run_id,
            TaskInstance.dag_id,
            TaskInstance.task_id,
            func.count(TaskInstance.id),
            func.sum(TaskInstance.pool_slots),
        )
        .where(TaskInstance.state.in_(_ACTIVE))
        .group_by(
            TaskInstance.pool, TaskInstance.dag_run_id, TaskInstance.dag_id, TaskInstance.task_id
        )
    ).all()
    limits = _Limits(
        free=ctx.settings.core.parallelism - sum(int(row[4]) for row in rows),
        pool_slots=pools,
        pool_used={},
        complete_run_counts=True,
    )
    for pool, run_id, dag_id, task_id, count, slots in rows:
        n = int(count)
        limits.pool_used[pool] = limits.pool_used.get(pool, 0) + int(slots or 0)
        limits.run_active[run_id] = limits.run_active.get(run_id, 0) + n
        key = (dag_id, task_id)
        limits.task_active[key] = limits.task_active.get(key, 0) + n
        run_key = (run_id, task_id)
        limits.task_run_active[run_key] = limits.task_run_active.get(run_key, 0) + n
    return limits


def _candidates(session: Session, limits: _Limits, page: int) -> list[tuple[TaskInstance, str]]:
    stmt = (
        select(TaskInstance, DagRun.dag_hash)
        .join(DagRun, DagRun.id == TaskInstance.dag_run_id)
        .join(DagModel, DagModel.dag_id == TaskInstance.dag_id)
        .where(
            TaskInstance.state == _TI.SCHEDULED.value,
            DagRun.state == DagRunState.RUNNING.value,
            DagModel.is_paused.is_(False),
        )
        .order_by(TaskInstance.priority_weight.desc(), DagRun.run_after, TaskInstance.id)
        .limit(page)
    )
    if limits.starved_runs:
        stmt = stmt.where(TaskInstance.dag_run_id.not_in(limits.starved_runs))
    if limits.starved_pools:
        stmt = stmt.where(TaskInstance.pool.not_in(limits.starved_pools))
    if limits.starved_tasks:
        stmt = stmt.where(
            tuple_(TaskInstance.dag_id, TaskInstance.task_id).not_in(list(limits.starved_tasks))
        )
    if limits.starved_task_runs:
        stmt = stmt.where(
            tuple_(TaskInstance.dag_run_id, TaskInstance.task_id).not_in(
                list(limits.starved_task_runs)
            )
        )
    return [(ti, dag_hash) for ti, dag_hash in session.execute(stmt).all()]


def _count_run_active(session: Session, limits: _Limits, run_ids: set[int]) -> None:
    missing = run_ids - limits.run_active.keys()
    if not missing:
        return
    if limits.complete_run_counts:
        for run_id in missing:
            limits.run_active[run_id] = 0
        return
    rows = session.execute(
        select(TaskInstance.dag_run_id, func.count(TaskInstance.id))
        .where(TaskInstance.dag_run_id.in_(missing), TaskInstance.state.in_(_ACTIVE))
        .group_by(TaskInstance.dag_run_id)
    )
    counts: dict[int, int] = {run_id: n for run_id, n in rows}
    for run_id in missing:
        limits.run_active[run_id] = int(counts.get(run_id, 0))


def _select(
    ctx: SchedulerContext, session: Session, limits: _Limits
) -> tuple[list[tuple[TaskInstance, str]], list[TaskInstance]]:
    """Pick TIs to queue within the limits; also return TIs whose pool does not exist."""
    chosen: list[tuple[TaskInstance, str]] = []
    bad_pool: list[TaskInstance] = []
    seen: set[int] = set()
    for _ in range(_MAX_PAGES):
        if limits.free <= 0:
            break
        page = _candidates(session, limits, limits.free + len(chosen) + len(bad_pool))
        page = [(ti, h) for ti, h in page if ti.id not in seen]
        seen.update(ti.id for ti, _ in page)
        if not page:
            break
        _count_run_active(session, limits, {ti.dag_run_id for ti, _ in page})
        starved_before = limits.starved()
        for ti, dag_hash in page:
            if limits.free <= 0:
                break
            verdict = _fits(ctx, session, limits, ti, dag_hash)
            if verdict == "bad_pool":
                bad_pool.append(ti)
            elif verdict == "ok":
                chosen.append((ti, dag_hash))
        if limits.starved() == starved_before:
            break
    return chosen, bad_pool


def _fits(
    ctx: SchedulerContext, session: Session, limits: _Limits, ti: TaskInstance, dag_hash: str
) -> str:
    if ti.pool not in limits.pool_slots:
        return "bad_pool"
    task_key, task_run_key = (ti.dag_id, ti.task_id), (ti.dag_run_id, ti.task_id)
    if (
        ti.dag_run_id in limits.starved_runs
        or ti.pool in limits.starved_pools
        or task_key in limits.starved_tasks
        or task_run_key in limits.starved_task_runs
    ):
        return "full"
    used = limits.pool_used.get(ti.pool, 0)
    if used + ti.pool_slots > limits.pool_slots[ti.pool]:
        limits.starved_pools.add(ti.pool)
        return "full"
    info = ctx.dags.get(session, dag_hash)
    max_tasks = info.dag.max_active_tasks if info else ctx.settings.core.max_active_tasks_per_dag
    if limits.run_active[ti.dag_run_id] >= max_tasks:
        limits.starved_runs.add(ti.dag_run_id)
        return "full"
    task = info.task(ti.task_id) if info else None
    if task is not None:
        per_dag, per_run = task.max_active_tis_per_dag, task.max_active_tis_per_dagrun
        if per_dag is not None and limits.task_active.get(task_key, 0) >= per_dag:
            limits.starved_tasks.add(task_key)
            return "full"
        if per_run is not None and limits.task_run_active.get(task_run_key, 0) >= per_run:
            limits.starved_task_runs.add(task_run_key)
            return "full"
    limits.free -= 1
    limits.pool_used[ti.pool] = used + ti.pool_slots
    limits.run_active[ti.dag_run_id] += 1
    limits.task_active[task_key] = limits.task_active.get(task_key, 0) + 1
    limits.task_run_active[task_run_key] = limits.task_run_active.get(task_run_key, 0) + 1
    return "ok"


def _mark_queued(ctx: SchedulerContext, session: Session, ti: TaskInstance, now: datetime) -> None:
    ti.try_number += 1
    ti.state = _TI.QUEUED.value
    ti.queued_at = now
    ti.executor = ctx.executor.name
    ti.external_executor_id = None
    ti.hostname = None
    ti.pid = None
    ti.last_heartbeat_at = None
    try_row = TaskInstanceTry(
        task_instance_id=ti.id,
        try_number=ti.try_number,
        state=_TI.QUEUED.value,
        queued_at=now,
    )
    session.add(try_row)


def try_key(ti: TaskInstance) -> TryKey:
    return TryKey(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, ti.map_index)


def _request(
    ctx: SchedulerContext, session: Session, ti: TaskInstance, dag_hash: str
) -> LaunchRequest:
    info = ctx.dags.get(session, dag_hash)
    task = info.task(ti.task_id) if info else None
    if info is None or task is None:
        raise LaunchError(f"task {ti.task_id!r} is not in the serialized DAG {dag_hash}")
    key = try_key(ti)
    return LaunchRequest(
        key=key,
        ti_id=ti.id,
        token=ctx.sign_token(key, ti.id),
        relative_fileloc=info.dag.relative_fileloc,
        fileloc=info.dag.fileloc,
        execution_timeout=task.execution_timeout,
        executor_config=task.executor_config,
        priority_weight=ti.priority_weight,
    )


def _record_launch(
    ctx: SchedulerContext,
    session: Session,
    ti: TaskInstance,
    result: str | Exception,
) -> bool:
    if isinstance(result, Exception):
        log.warning("cannot launch try %s: %s", try_key(ti), result)
        fail_unreported_try(ctx, session, ti, f"launch failed: {result}", ctx.clock())
        return False
    # Only the TI: the try's history row gets it when the try ends (record_try_outcome,
    # try/finish), which saves one UPDATE per launched try.
    ti.external_executor_id = result
    return True


def launch_try(ctx: SchedulerContext, session: Session, ti: TaskInstance, dag_hash: str) -> bool:
    """Hand one queued try to the executor; a LaunchError fails (or retries) the try."""
    result: str | Exception
    try:
        result = ctx.executor.launch(_request(ctx, session, ti, dag_hash))
    except Exception as exc:
        result = exc
    return _record_launch(ctx, session, ti, result)


def launch_batch(
    ctx: SchedulerContext,
    session: Session,
    batch: list[tuple[TaskInstance, str]],
) -> list[TaskInstance]:
    """Launch queued tries together (``Executor.launch_many``); return those that failed.

    Issues no SQL on success (the caller flushes once for the whole batch): a query
    here would autoflush and hold SQLite's write lock while tries are being launched,
    and every launched try's ``try/start`` would wait for it.
    """
    requests: list[LaunchRequest] = []
    launchable: list[TaskInstance] = []
    failed: list[TaskInstance] = []
    for ti, dag_hash in batch:
        try:
            requests.append(_request(ctx, session, ti, dag_hash))
            launchable.append(ti)
        except LaunchError as exc:
            _record_launch(ctx, session, ti, exc)
            failed.append(ti)
    results: list[str | LaunchError] | None = None
    if requests:
        try:
            results = list(ctx.executor.launch_many(requests))
        except Exception as exc:
            results = [LaunchError(str(exc))] * len(requests)
    for ti, result in zip(launchable, results or [], strict=True):
        if not _record_launch(ctx, session, ti, result):
            failed.append(ti)
    return failed


def queue_and_launch(ctx: SchedulerContext, session: Session) -> int:
    """Queue what fits, commit, then launch; returns the number of tries launched."""
    limits = _load_limits(ctx, session)
    if limits.free <= 0:
        return 0
    chosen, bad_pool = _select(ctx, session, limits)
    now = ctx.clock()
    for ti in bad_pool:
        ti.state, ti.end_date = _TI.FAILED.value, now
        ti.error = f"pool {ti.pool!r} does not exist"
        log.error("task %s of run %s/%s: %s", ti.task_id, ti.dag_id, ti.run_id, ti.error)
    for ti, _ in chosen:
        _mark_queued(ctx, session, ti, now)
    session.commit()  # queued before launch: the try's start call must find it queued
    if chosen:
        fault_point("queueing.after_queued_commit")
    failed = list(bad_pool) + launch_batch(ctx, session, chosen)
    if chosen:
        fault_point("queueing.after_launch")
    session.flush()
    by_run: dict[int, list[TaskInstance]] = {}
    for ti in failed:
        by_run.setdefault(ti.dag_run_id, []).append(ti)
    for run_id, tis in by_run.items():
        react_to_changes(ctx, session, run_id, tis)
    session.commit()
    if chosen:
        fault_point("queueing.after_launch_commit")
    return len(chosen)
