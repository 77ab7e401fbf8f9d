"""Reacting to change: ended tries, user actions, and run completion.

The event path (a try ended) evaluates only the direct downstream tasks of what changed;
the full path (``needs_evaluation``: a new run, a clear, a mark) evaluates a run once in
topological order. Both end with the completion check of the runs they touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun, TaskInstance, TaskInstanceTry
from ketch.executors.base import RunningTry, TryEnded, TryKey
from ketch.scheduler.context import SchedulerContext
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import (
    Expander,
    Expansion,
    GroupStep,
    Reviser,
    Revision,
    RunTally,
    cascade,
    downstream_of,
    load_branch_choices,
    write_decisions,
)
from ketch.scheduler.expansion import expand_mapped_task
from ketch.scheduler.mapped_branch import skip_unfollowed_instances
from ketch.scheduler.mapped_group import group_stepper
from ketch.scheduler.past_deps import blocked_by_past, wake_later_runs
from ketch.scheduler.revision import revise_map_indexes
from ketch.scheduler.task_state import record_try_outcome
from ketch.states import (
    FAILED_TI_STATES,
    DagRunState,
    TaskInstanceState,
)

log = logging.getLogger("ketch.scheduler.reactions")

_TI = TaskInstanceState
_ACTIVE_TRY = (_TI.QUEUED.value, _TI.RUNNING.value)
_UNFINISHED_VALUES = [
    _TI.SCHEDULED.value,
    _TI.QUEUED.value,
    _TI.RUNNING.value,
    _TI.UP_FOR_RETRY.value,
    _TI.UP_FOR_RESCHEDULE.value,
]
_FAILED_VALUES = frozenset(s.value for s in FAILED_TI_STATES)


def event_error(event: TryEnded) -> str:
    """One line saying why a try that did not report a result ended."""
    if event.reason:
        return event.reason
    if event.exit_code is not None:
        return f"exited with code {event.exit_code} without reporting a result"
    return "ended without reporting a result (exit code unknown)"


_FLAGGED_BATCH = 1000


def _may_forgive_before_start(ctx: SchedulerContext, session: Session, ti: TaskInstance) -> bool:
    """Whether one more try that failed before it started may be free of charge.

    Counted from the try history (earlier tries that failed without ever starting), not
    from ``max_tries - retries``: ``max_tries`` also grows with every reschedule poke of a
    sensor and is reset by a clear, so that difference did not count these failures. One
    indexed count, only for a try that failed before it started.
    """
    limit = ctx.settings.kubernetes.max_failed_before_start_retries
    earlier = session.scalar(
        select(func.count())
        .select_from(TaskInstanceTry)
        .where(
            TaskInstanceTry.task_instance_id == ti.id,
            TaskInstanceTry.try_number < ti.try_number,
            TaskInstanceTry.start_date.is_(None),
            TaskInstanceTry.state == _TI.FAILED.value,
        )
    )
    return (earlier or 0) < limit


def fail_unreported_try(
    ctx: SchedulerContext,
    session: Session,
    ti: TaskInstance,
    error: str,
    now: datetime,
    *,
    before_start: bool = False,
) -> None:
    """Record a failure (or retry) for a try that ended, vanished or hung without reporting.

    A try that never got to run user code (``before_start``: image pull, admission...) does
    not use up a retry: ``max_tries`` is raised by one, at most ``[kubernetes]
    max_failed_before_start_retries`` times per task instance, so a pod that can never start
    does not retry forever.
    """
    run = session.get(DagRun, ti.dag_run_id)
    info = ctx.dags.get(session, run.dag_hash) if run else None
    task = info.task(ti.task_id) if info else None
    if task is not None and before_start and _may_forgive_before_start(ctx, session, ti):
        ti.max_tries += 1
    if task is None:
        ti.state, ti.error, ti.end_date = _TI.FAILED.value, error, now
        ti.needs_reaction = True
    else:
        record_try_outcome(session, ti, task, state=_TI.FAILED, error=error, now=now)
    log.info("task %s of run %s/%s: %s (%s)", ti.task_id, ti.dag_id, ti.run_id, ti.state, error)


def ended_process_is_not_the_owner(ti: TaskInstance, event: TryEnded) -> bool:
    """True when the process that ended is not the one that started this running try.

    After a crash a try can be launched twice (the first launch was not recorded); the
    execution API lets exactly one of them start, the other exits at once. Its exit must
    not fail the try the first one is running. Compared on what the try recorded at
    start: the hostname (the pod's name on Kubernetes) and, where the executor knows
    it, the pid.
    """
    if ti.state != _TI.RUNNING.value:
        return False
    if event.hostname and ti.hostname and event.hostname != ti.hostname:
        return True
    return bool(event.pid and ti.pid and event.pid != ti.pid)


def _adopt_owner(ctx: SchedulerContext, ti: TaskInstance) -> None:
    """Watch the process that really runs ``ti`` (it started after a crash, unlaunched by us)."""
    offer = RunningTry(
        key=TryKey(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, ti.map_index),
        ti_id=ti.id,
        external_executor_id=None,
        started_at_epoch=ti.start_date.timestamp() if ti.start_date else None,
        hostname=ti.hostname,
        pid=ti.pid,
    )
    try:
        ctx.executor.adopt([offer])
    except Exception:
        log.exception("cannot adopt the process that runs try %s", offer.key)


def load_flagged(session: Session, limit: int = _FLAGGED_BATCH) -> list[TaskInstance]:
    """TIs whose end was recorded but not yet reacted to (indexed on needs_reaction)."""
    return list(
        session.scalars(
            select(TaskInstance)
            .where(TaskInstance.needs_reaction.is_(True))
            .order_by(TaskInstance.id)
            .limit(limit)
        )
    )


def process_events(ctx: SchedulerContext, session: Session, events: list[TryEnded]) -> int:
    """Record tries that ended without reporting, then decide what follows every recorded
    end still owed a decision (the events' and any flagged in the database). Returns the
    number of TIs reacted to."""
    now = ctx.clock()
    tis: dict[int, TaskInstance] = {}
    if events:
        ids = {e.ti_id for e in events}
        tis = {
            ti.id: ti
            for ti in session.scalars(select(TaskInstance).where(TaskInstance.id.in_(ids)))
        }
    changed: dict[int, TaskInstance] = {}
    for event in events:
        ti = tis.get(event.ti_id)
        if ti is None or ti.try_number != event.key.try_number:
            log.debug("ignoring the end of a stale try %s", event.key)
            continue
        if ended_process_is_not_the_owner(ti, event):
            log.info(
                "try %s: ignoring the end of a duplicate process (pid %s on %s); "
                "the try runs as pid %s on %s",
                event.key,
                event.pid,
                event.hostname,
                ti.pid,
                ti.hostname,
            )
            _adopt_owner(ctx, ti)
            continue
        if ti.state in _ACTIVE_TRY:
            before_start = event.failed_before_start and ti.state == _TI.QUEUED.value
            fail_unreported_try(
                ctx, session, ti, event_error(event), now, before_start=before_start
            )
        elif not ti.needs_reaction:
            continue  # its recorded end was already decided (the safety pass saw it first)
        changed[ti.id] = ti
    for ti in load_flagged(session):
        changed.setdefault(ti.id, ti)
    session.flush()
    by_run: dict[int, list[TaskInstance]] = {}
    for ti in changed.values():
        by_run.setdefault(ti.dag_run_id, []).append(ti)
    for dag_run_id, run_tis in by_run.items():
        react_to_changes(ctx, session, dag_run_id, run_tis)
    return len(changed)


def _log_terminal(ti: TaskInstance) -> None:
    if ti.state in (_TI.SUCCESS.value, _TI.SKIPPED.value, _TI.FAILED.value):
        log.info(
            "task %s of run %s/%s try %s: %s",
            ti.task_id,
            ti.dag_id,
            ti.run_id,
            ti.try_number,
            ti.state,
        )


def react_to_changes(
    ctx: SchedulerContext, session: Session, dag_run_id: int, tis: Iterable[TaskInstance]
) -> None:
    """Fold changed TIs into the run's tally, decide their downstream, check completion."""
    tis = list(tis)
    for ti in tis:
        if ti.needs_reaction:
            ti.needs_reaction = False  # decided in this transaction, whatever follows
    run = session.get(DagRun, dag_run_id)
    if run is None:
        return
    for ti in tis:
        _log_terminal(ti)
    if run.state != DagRunState.RUNNING.value:
        return
    if _dag_paused(ctx, session, run.dag_id):
        run.needs_evaluation = True  # Airflow does not examine runs of paused DAGs
        return
    info = ctx.dags.get(session, run.dag_hash)
    if info is None:
        log.error("run %s/%s: serialized DAG %s is missing", run.dag_id, run.run_id, run.dag_hash)
        return
    tally = ctx.tallies.get(session, run.id, info)
    for ti in tis:
        tally.set_state(ti.task_id, ti.state, ti.map_index)
    _learn_branch_choices(session, tally, [ti.task_id for ti in tis])
    if wake_later_runs(session, run, info, [ti.task_id for ti in tis]):
        ctx.poke()
    tally.past_blocked = blocked_by_past(session, run, info, tally.states)
    decided = cascade(
        tally,
        downstream_of(tally, [ti.task_id for ti in tis]),
        _expander(ctx, session, run, info),
        revise=_reviser(ctx, session, run, info),
        group_step=_group_step(ctx, session, tally),
    )
    write_decisions(session, run.id, decided, ctx.clock())
    if tally.unfinished == 0:
        check_run_completion(ctx, session, run, tally)


def _expander(ctx: SchedulerContext, session: Session, run: DagRun, info: DagInfo) -> Expander:
    """Expands a mapped task of ``run`` in this transaction (see scheduler/expansion.py)."""

    def expand(task_id: str) -> Expansion:
        result = expand_mapped_task(
            session,
            run.id,
            info,
            task_id,
            max_length=ctx.settings.core.max_map_length,
            now=ctx.clock(),
        )
        if result.state is not None:
            return result
        skipped = skip_unfollowed_instances(session, run.id, info, task_id, ctx.clock())
        return replace(result, skipped=skipped)

    return expand


def _reviser(ctx: SchedulerContext, session: Session, run: DagRun, info: DagInfo) -> Reviser:
    """Revises a cleared mapped task's instances in this transaction (scheduler/revision.py)."""

    def revise(task_id: str) -> Revision:
        revision = revise_map_indexes(
            session,
            run.id,
            info,
            task_id,
            max_length=ctx.settings.core.max_map_length,
            now=ctx.clock(),
        )
        skipped = skip_unfollowed_instances(session, run.id, info, task_id, ctx.clock())
        return replace(revision, skipped=skipped)

    return revise


def _group_step(ctx: SchedulerContext, session: Session, tally: RunTally) -> GroupStep:
    """Decides tasks of mapped task groups per map_index (see scheduler/mapped_group.py)."""
    return group_stepper(
        session, tally, max_length=ctx.settings.core.max_map_length, now=ctx.clock()
    )


def _learn_branch_choices(session: Session, tally: RunTally, task_ids: list[str]) -> None:
    branches = [
        tid
        for tid in task_ids
        if tid in tally.info.branch_ids
        and tally.states.get(tid) == _TI.SUCCESS.value
        and tid not in tally.follow
    ]
    if branches:
        for task_id, value in load_branch_choices(session, tally.dag_run_id, branches).items():
            tally.record_branch(task_id, value)


def _dag_paused(ctx: SchedulerContext, session: Session, dag_id: str) -> bool:
    """Read once per loop iteration (``ctx.paused`` is cleared by the loop): an event
    batch of one DAG's tries costs one query, not one per run."""
    paused = ctx.paused.get(dag_id)
    if paused is None:
        paused = bool(session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == dag_id)))
        ctx.paused[dag_id] = paused
    return paused


def evaluate_run_fully(ctx: SchedulerContext, session: Session, run: DagRun) -> None:
    """Evaluate every TI of a running run once (new run, clear, mark), from a fresh tally."""
    ctx.tallies.drop(run.id)
    info = ctx.dags.get(session, run.dag_hash)
    if info is None:
        log.error("run %s/%s: serialized DAG %s is missing", run.dag_id, run.run_id, run.dag_hash)
        return
    tally = ctx.tallies.get(session, run.id, info)
    pending = [tid for tid in info.topological_order if tally.states.get(tid, "x") is None]
    tally.past_blocked = blocked_by_past(session, run, info, tally.states)
    decided = cascade(
        tally,
        pending,
        _expander(ctx, session, run, info),
        revise=_reviser(ctx, session, run, info),
        group_step=_group_step(ctx, session, tally),
    )
    write_decisions(session, run.id, decided, ctx.clock())
    log.debug("run %s/%s evaluated: %d decisions", run.dag_id, run.run_id, len(decided))
    if tally.unfinished == 0:
        check_run_completion(ctx, session, run, tally)


def check_run_completion(
    ctx: SchedulerContext, session: Session, run: DagRun, tally: RunTally
) -> bool:
    """Finish the run when no TI is unfinished: failed if a leaf failed, else success."""
    unfinished = session.scalar(
        select(TaskInstance.id)
        .where(
            TaskInstance.dag_run_id == run.id,
            or_(TaskInstance.state.is_(None), TaskInstance.state.in_(_UNFINISHED_VALUES)),
        )
        .limit(1)
    )
    if unfinished is not None:
        return False
    leaf_failed = any(tally.states.get(leaf) in _FAILED_VALUES for leaf in tally.info.leaves)
    finish_run(ctx, session, run, DagRunState.FAILED if leaf_failed else DagRunState.SUCCESS)
    return True


def finish_run(
    ctx: SchedulerContext,
    session: Session,
    run: DagRun,
    state: DagRunState,
    reason: str | None = None,
) -> None:
    """End the run in ``state``; the DAG's callback runs once this transaction commits
    (``reason`` as Airflow's: ``success``, ``task_failure`` or ``timed_out``)."""
    from ketch.scheduler.auto_pause import pause_after_consecutive_failures
    from ketch.scheduler.dag_callbacks import request_dag_callback

    now = ctx.clock()
    run.state = state.value
    run.end_date = now
    run.needs_evaluation = False
    ctx.tallies.drop(run.id)
    dag = session.get(DagModel, run.dag_id)
    if dag is not None:
        dag.needs_next_dagrun = True  # a slot under max_active_runs may have opened
    ctx.poke()
    log.info("run %s of DAG %s: %s", run.run_id, run.dag_id, state.value)
    if reason is None:
        reason = "success" if state == DagRunState.SUCCESS else "task_failure"
    if state == DagRunState.FAILED and reason == "task_failure":
        info = ctx.dags.get(session, run.dag_hash)
        if info is not None:
            limit = info.dag.max_consecutive_failed_dag_runs
            pause_after_consecutive_failures(session, run, limit)
    request_dag_callback(ctx, session, run, state.value, reason)


def cancel_run_tries(ctx: SchedulerContext, run: DagRun) -> int:
    """Stop the tries of a run that was failed or cancelled (their ends arrive as events)."""
    cancelled = 0
    for key in list(ctx.executor.running()):
        if key.dag_id == run.dag_id and key.run_id == run.run_id:
            try:
                ctx.executor.cancel(key)
                cancelled += 1
            except Exception:
                log.exception("cannot cancel try %s", key)
    return cancelled


def _wake_dependants(ctx: SchedulerContext, session: Session, run: DagRun) -> None:
    """A run flagged by a user action (mark, clear) may have changed what the
    ``depends_on_past`` tasks of later runs read: flag those runs too."""
    info = ctx.dags.get(session, run.dag_hash)
    if info is not None and wake_later_runs(session, run, info):
        ctx.poke()


def evaluate_flagged_runs(ctx: SchedulerContext, session: Session, limit: int = 50) -> int:
    """Runs flagged ``needs_evaluation`` by run creation or a user action elsewhere."""
    runs = session.scalars(
        select(DagRun)
        .join(DagModel, DagModel.dag_id == DagRun.dag_id)
        .where(
            DagRun.needs_evaluation.is_(True),
            DagRun.state != DagRunState.QUEUED.value,
            or_(DagRun.state != DagRunState.RUNNING.value, DagModel.is_paused.is_(False)),
        )
        .order_by(DagRun.id)
        .limit(limit)
    ).all()
    for run in runs:
        run.needs_evaluation = False
        _wake_dependants(ctx, session, run)
        if run.state == DagRunState.RUNNING.value:
            evaluate_run_fully(ctx, session, run)
        else:
            ctx.tallies.drop(run.id)
            if cancel_run_tries(ctx, run):
                log.info("run %s/%s is %s: cancelled its tries", run.dag_id, run.run_id, run.state)
    if len(runs) == limit:
        ctx.poke()  # more are waiting (after a restart every running run is flagged)
    return len(runs)
