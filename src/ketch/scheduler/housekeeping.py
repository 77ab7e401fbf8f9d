"""The loop's periodic steps: start queued runs, create scheduled runs, due retries,
zombies, queued timeouts and run timeouts. Each is one bounded, indexed query plus work
proportional to what it finds.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun, TaskInstance
from ketch.scheduler.context import SchedulerContext
from ketch.scheduler.queueing import try_key
from ketch.scheduler.reactions import cancel_run_tries, fail_unreported_try, react_to_changes
from ketch.scheduler.runs import create_due_runs, update_next_dagrun
from ketch.states import DagRunState, TaskInstanceState

log = logging.getLogger("ketch.scheduler.housekeeping")

_TI = TaskInstanceState
_UNFINISHED_VALUES = [
    _TI.SCHEDULED.value,
    _TI.QUEUED.value,
    _TI.RUNNING.value,
    _TI.UP_FOR_RETRY.value,
    _TI.UP_FOR_RESCHEDULE.value,
]


def start_queued_runs(ctx: SchedulerContext, session: Session) -> int:
    """queued -> running, oldest first, within each unpaused DAG's max_active_runs."""
    queued = session.execute(
        select(DagRun, DagModel.serialized)
        .join(DagModel, DagModel.dag_id == DagRun.dag_id)
        .where(DagRun.state == DagRunState.QUEUED.value, DagModel.is_paused.is_(False))
        .order_by(DagRun.logical_date, DagRun.run_after, DagRun.id)
    ).all()
    if not queued:
        return 0
    dag_ids = {run.dag_id for run, _ in queued}
    rows = session.execute(
        select(DagRun.dag_id, func.count(DagRun.id))
        .where(DagRun.dag_id.in_(dag_ids), DagRun.state == DagRunState.RUNNING.value)
        .group_by(DagRun.dag_id)
    )
    running: Counter[str] = Counter({dag_id: n for dag_id, n in rows})
    started = 0
    now = ctx.clock()
    for run, serialized in queued:
        limit = serialized.get("max_active_runs", ctx.settings.core.max_active_runs_per_dag)
        if running[run.dag_id] >= limit:
            continue
        running[run.dag_id] += 1
        run.state, run.start_date, run.needs_evaluation = DagRunState.RUNNING.value, now, True
        started += 1
        log.info("run %s of DAG %s: running", run.run_id, run.dag_id)
    return started


def schedule_runs(ctx: SchedulerContext, session: Session, limit: int = 10) -> int:
    """Refresh flagged DAGs' next run, then create the scheduled runs that are due."""
    now = ctx.clock()
    flagged = session.scalars(
        select(DagModel).where(DagModel.needs_next_dagrun.is_(True), DagModel.is_active.is_(True))
    ).all()
    for dag in flagged:
        try:
            with session.begin_nested():
                update_next_dagrun(session, dag, now)
        except Exception:
            log.exception("cannot compute the next run of DAG %s", dag.dag_id)
            dag.needs_next_dagrun = False
    created = create_due_runs(session, now, limit)
    if created:
        ctx.poke()  # start them (and create more if the limit was reached) at once
    return len(created)


def make_retries_due(ctx: SchedulerContext, session: Session) -> int:
    """up_for_retry and up_for_reschedule TIs whose next_retry_at ("next attempt due at")
    has come become scheduled (only in running runs). next_retry_at stays: it tells the
    next try that it resumes a sensor's reschedule sequence (scheduler/reschedule.py)."""
    running_runs = select(DagRun.id).where(DagRun.state == DagRunState.RUNNING.value)
    result = session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.state.in_([_TI.UP_FOR_RETRY.value, _TI.UP_FOR_RESCHEDULE.value]),
            TaskInstance.next_retry_at <= ctx.clock(),
            TaskInstance.dag_run_id.in_(running_runs),
        )
        .values(state=_TI.SCHEDULED.value)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _fail_and_react(
    ctx: SchedulerContext, session: Session, tis: list[TaskInstance], errors: list[str]
) -> None:
    now = ctx.clock()
    by_run: dict[int, list[TaskInstance]] = {}
    for ti, error in zip(tis, errors, strict=True):
        try:
            ctx.executor.cancel(try_key(ti))
        except Exception:
            log.exception("cannot cancel try %s", try_key(ti))
        fail_unreported_try(ctx, session, ti, error, now)
        by_run.setdefault(ti.dag_run_id, []).append(ti)
    session.flush()
    for run_id, run_tis in by_run.items():
        react_to_changes(ctx, session, run_id, run_tis)


def detect_zombies(ctx: SchedulerContext, session: Session) -> int:
    """Running tries without a heartbeat for task_instance_heartbeat_timeout: failed/retried."""
    now = ctx.clock()
    timeout = ctx.settings.scheduler.task_instance_heartbeat_timeout
    cutoff = now - timedelta(seconds=timeout)
    if ctx.healthy_since is None:
        ctx.healthy_since = now
    if cutoff < ctx.healthy_since:
        return 0  # too soon after start-up or a database outage to blame the tries
    zombies = session.scalars(
        select(TaskInstance).where(
            TaskInstance.state == _TI.RUNNING.value,
            or_(
                TaskInstance.last_heartbeat_at < cutoff,
                TaskInstance.last_heartbeat_at.is_(None) & (TaskInstance.start_date < cutoff),
            ),
        )
    ).all()
    errors = []
    for ti in zombies:
        last = ti.last_heartbeat_at or ti.start_date or cutoff
        errors.append(f"zombie: no heartbeat for {int((now - last).total_seconds())}s")
    _fail_and_react(ctx, session, list(zombies), errors)
    return len(zombies)


def detect_stuck_queued(ctx: SchedulerContext, session: Session) -> int:
    """Tries queued for task_queued_timeout without starting: failed/retried."""
    timeout = ctx.settings.scheduler.task_queued_timeout
    cutoff = ctx.clock() - timedelta(seconds=timeout)
    stuck = session.scalars(
        select(TaskInstance).where(
            TaskInstance.state == _TI.QUEUED.value, TaskInstance.queued_at < cutoff
        )
    ).all()
    error = f"queued for more than {int(timeout)}s without starting (task_queued_timeout)"
    _fail_and_react(ctx, session, list(stuck), [error] * len(stuck))
    return len(stuck)


def enforce_dagrun_timeouts(ctx: SchedulerContext, session: Session) -> int:
    """Runs older than their DAG's dagrun_timeout fail; unfinished TIs become skipped (Airflow)."""
    now = ctx.clock()
    timed_out = 0
    runs = session.scalars(
        select(DagRun).where(
            DagRun.state == DagRunState.RUNNING.value, DagRun.start_date.is_not(None)
        )
    ).all()
    for run in runs:
        info = ctx.dags.get(session, run.dag_hash)
        timeout = info.dag.dagrun_timeout if info else None
        if timeout is None or run.start_date is None:
            continue
        if now - run.start_date < timedelta(seconds=timeout):
            continue
        _time_out_run(ctx, session, run, timeout)
        timed_out += 1
    return timed_out


def _time_out_run(ctx: SchedulerContext, session: Session, run: DagRun, timeout: float) -> None:
    from ketch.scheduler.reactions import finish_run

    now = ctx.clock()
    session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.dag_run_id == run.id,
            or_(TaskInstance.state.is_(None), TaskInstance.state.in_(_UNFINISHED_VALUES)),
        )
        .values(state=_TI.SKIPPED.value, end_date=now)
        .execution_options(synchronize_session=False)
    )
    log.info("run %s of DAG %s exceeded dagrun_timeout (%ss)", run.run_id, run.dag_id, timeout)
    finish_run(ctx, session, run, DagRunState.FAILED, reason="timed_out")
    cancel_run_tries(ctx, run)
