"""User actions on DAGs, runs, task instances and pools: one implementation for the REST API and the CLI.

Every function takes a SQLAlchemy session and commits nothing: the caller commits
(a REST request, a CLI command), so an action is all-or-nothing. The semantics
mirror Airflow 3's (``trigger_dag_run``, ``clear_task_instances``,
``set_task_instance_state``, ``set_dag_run_state_to_*``) so an Airflow user's
expectations carry over.

Writes flag the affected run ``needs_evaluation`` (the scheduler then looks at the
whole run once) and, once the caller's transaction commits, call every callback in
:data:`on_change` — ``ketch standalone`` registers ``scheduler.wake`` there so an
in-process scheduler reacts at once instead of on its next idle tick.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import (
    DEFAULT_POOL_NAME,
    DagModel,
    DagRun,
    DagVersion,
    ImportError_,
    Pool,
    TaskInstance,
    TaskInstanceTry,
)
from ketch.exceptions import KetchException
from ketch.serialization import SerializedDag
from ketch.states import (
    FAILED_TI_STATES,
    FINISHED_TI_STATES,
    DagRunState,
    DagRunType,
    TaskInstanceState,
)

log = logging.getLogger(__name__)

on_change: list[Callable[[], None]] = []
"""Process-local callbacks run after a session carrying a user action commits."""

MARKABLE_TI_STATES = frozenset(
    {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, TaskInstanceState.SKIPPED}
)
"""States a user may set on a task instance (Airflow's PATCH taskInstance accepts these)."""

MARKABLE_RUN_STATES = frozenset({DagRunState.SUCCESS, DagRunState.FAILED, DagRunState.QUEUED})
_FINISHED_RUN_STATES = frozenset({DagRunState.SUCCESS, DagRunState.FAILED})


# --- errors: each names what was not found or what was wrong --------------------------


class OperationError(KetchException):
    """Base of the errors a user action reports back to the user."""


class NotFound(OperationError, LookupError):
    """A DAG, run or task instance the user named does not exist (REST: 404)."""


class DagNotFound(NotFound):
    def __init__(self, dag_id: str) -> None:
        super().__init__(f"DAG {dag_id!r} not found")
        self.dag_id = dag_id


class DagRunNotFound(NotFound):
    def __init__(self, dag_id: str, run_id: str) -> None:
        super().__init__(f"DAG run {run_id!r} of DAG {dag_id!r} not found")


class TaskNotFound(NotFound):
    def __init__(self, dag_id: str, task_ids: Iterable[str]) -> None:
        names = ", ".join(repr(t) for t in sorted(task_ids))
        super().__init__(f"task {names} not found in DAG {dag_id!r}")


class DagRunAlreadyExists(OperationError):
    """A run with that run_id (or logical date) exists already (REST: 409)."""


class InvalidRequest(OperationError, ValueError):
    """A value the user gave is not acceptable; ``field`` names it (REST: 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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


# --- lookups ----------------------------------------------------------------------------


def get_dag(session: Session, dag_id: str, *, active_only: bool = False) -> DagModel:
    dag = session.get(DagModel, dag_id)
    if dag is None or (active_only and not dag.is_active):
        raise DagNotFound(dag_id)
    return dag


def get_dag_run(session: Session, dag_id: str, run_id: str) -> DagRun:
    run = session.scalars(
        select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
    ).first()
    if run is None:
        get_dag(session, dag_id)  # name the DAG if that is what is missing
        raise DagRunNotFound(dag_id, run_id)
    return run


def get_task_instance(session: Session, dag_id: str, run_id: str, task_id: str) -> TaskInstance:
    run = get_dag_run(session, dag_id, run_id)
    ti = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_run_id == run.id, TaskInstance.task_id == task_id
        )
    ).first()
    if ti is None:
        raise TaskNotFound(dag_id, [task_id])
    return ti


def serialized_dag(dag: DagModel) -> SerializedDag:
    """The DAG's latest serialized form (what the DAG processor last parsed)."""
    return SerializedDag.model_validate(dag.serialized)


def serialized_dag_for_run(session: Session, run: DagRun) -> SerializedDag:
    """The serialized DAG the run was created from, so a file edited mid-run does not
    change which tasks a clear or a mark touches."""
    version = session.get(DagVersion, run.dag_hash)
    if version is not None:
        return SerializedDag.model_validate(version.serialized)
    return serialized_dag(get_dag(session, run.dag_id))


# --- read helpers shared by the REST API and the CLI ------------------------------------


@dataclass(frozen=True, slots=True)
class DagSummary:
    dag: DagModel
    last_run: DagRun | None


T = TypeVar("T")
S = TypeVar("S", TaskInstanceState, DagRunState)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total_entries: int


def list_dags(
    session: Session,
    *,
    paused: bool | None = None,
    tags: list[str] | None = None,
    only_active: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> Page[DagSummary]:
    """DAGs by dag_id with their latest run. A DAG matches ``tags`` if it has any of them
    (Airflow's default tags match mode)."""
    query = select(DagModel).order_by(DagModel.dag_id)
    if only_active:
        query = query.where(DagModel.is_active.is_(True))
    if paused is not None:
        query = query.where(DagModel.is_paused.is_(paused))
    dags = list(session.scalars(query))
    if tags:
        # Tags are a JSON list; filtering here keeps one portable query for both backends
        # (DAG counts are small: this is not a scheduling path).
        wanted = set(tags)
        dags = [d for d in dags if wanted.intersection(d.tags or [])]
    page = dags[offset : None if limit is None else offset + limit]
    last_runs = _latest_runs(session, [d.dag_id for d in page])
    return Page([DagSummary(d, last_runs.get(d.dag_id)) for d in page], len(dags))


def _latest_runs(session: Session, dag_ids: list[str]) -> dict[str, DagRun]:
    if not dag_ids:
        return {}
    latest_ids = (
        select(func.max(DagRun.id)).where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id)
    )
    return {r.dag_id: r for r in session.scalars(select(DagRun).where(DagRun.id.in_(latest_ids)))}


def list_dag_runs(
    session: Session,
    dag_id: str,
    *,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Page[DagRun]:
    """Runs of a DAG, newest first."""
    get_dag(session, dag_id)
    query = select(DagRun).where(DagRun.dag_id == dag_id)
    if state is not None:
        query = query.where(DagRun.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.order_by(DagRun.run_after.desc(), DagRun.id.desc()).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return Page(list(session.scalars(query)), total)


def list_task_instances(session: Session, dag_id: str, run_id: str) -> list[TaskInstance]:
    """A run's task instances in the DAG's task order. ``try_number`` is the count of tries
    started so far (one ``task_instance_try`` row each)."""
    run = get_dag_run(session, dag_id, run_id)
    tis = list(session.scalars(select(TaskInstance).where(TaskInstance.dag_run_id == run.id)))
    order = {tid: i for i, tid in enumerate(serialized_dag_for_run(session, run).tasks)}
    return sorted(tis, key=lambda ti: (order.get(ti.task_id, len(order)), ti.task_id))


def list_task_instance_tries(session: Session, ti: TaskInstance) -> list[TaskInstanceTry]:
    return list(
        session.scalars(
            select(TaskInstanceTry)
            .where(TaskInstanceTry.task_instance_id == ti.id)
            .order_by(TaskInstanceTry.try_number)
        )
    )


def list_import_errors(
    session: Session, *, limit: int | None = None, offset: int = 0
) -> Page[ImportError_]:
    total = session.scalar(select(func.count()).select_from(ImportError_)) or 0
    query = select(ImportError_).order_by(ImportError_.filename).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return Page(list(session.scalars(query)), total)


@dataclass(frozen=True, slots=True)
class RunProgress:
    """How far a run got, for ``dags trigger --wait`` and progress displays."""

    state: str
    total: int
    done: int
    failed: int
    states: dict[str, str | None]  # task_id -> state
    errors: dict[str, str | None]  # task_id -> error line, for failed tasks


def run_progress(session: Session, dag_id: str, run_id: str) -> RunProgress:
    run = get_dag_run(session, dag_id, run_id)
    tis = list(session.scalars(select(TaskInstance).where(TaskInstance.dag_run_id == run.id)))
    states = {ti.task_id: ti.state for ti in tis}
    failed = {ti.task_id: ti.error for ti in tis if ti.state in FAILED_TI_STATES}
    done = sum(1 for s in states.values() if s in FINISHED_TI_STATES)
    return RunProgress(run.state, len(tis), done, len(failed), states, failed)


# --- trigger ---------------------------------------------------------------------------


def generate_manual_run_id(*, logical_date: datetime | None, run_after: datetime) -> str:
    """Airflow 3's ``DagRun.generate_run_id`` for a manual run: a random suffix when there
    is no logical date, since run_after alone need not be unique."""
    suffix = run_after.isoformat()
    if logical_date is None:
        alphabet = string.ascii_letters + string.digits
        suffix += "_" + "".join(secrets.choice(alphabet) for _ in range(8))
    return f"{DagRunType.MANUAL.value}__{suffix}"


def trigger_dag(
    session: Session,
    dag_id: str,
    *,
    conf: dict[str, Any] | None = None,
    logical_date: datetime | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> DagRun:
    """Create a manual run, queued, with all its task instances.

    As in Airflow 3, a manual run has no logical date (and no data interval) unless
    one is given; with one, the data interval is the timetable's
    ``infer_manual_data_interval(logical_date)`` and the run is due at its end.
    """
    from ketch.authoring.params import resolve_params
    from ketch.authoring.timetables import timetable_for
    from ketch.scheduler import runs
    from ketch.scheduler.runs import create_dag_run

    now = now or _utcnow()
    _require_aware("logical_date", logical_date)
    dag = get_dag(session, dag_id, active_only=True)
    if conf is None:
        conf = {}
    if not isinstance(conf, dict):
        raise InvalidRequest("conf", "must be a JSON object")
    serialized = serialized_dag(dag)
    params = resolve_params(serialized.params, conf)
    run_after, data_interval = now, None
    if logical_date is not None:
        data_interval = timetable_for(serialized.schedule).infer_manual_data_interval(
            run_after=logical_date
        )
        if data_interval is not None:
            run_after = data_interval.end
    run_id = run_id or generate_manual_run_id(logical_date=logical_date, run_after=now)
    _check_run_is_new(session, dag_id, run_id, logical_date)
    try:
        run = create_dag_run(
            session,
            dag,
            run_type=DagRunType.MANUAL,
            run_id=run_id,
            logical_date=logical_date,
            data_interval=data_interval,
            run_after=run_after,
            conf=conf,
            params=params,
            now=now,
        )
    except runs.DagRunAlreadyExists as exc:  # inserted concurrently by another writer
        raise DagRunAlreadyExists(str(exc)) from exc
    _notify_after_commit(session)
    return run


def _check_run_is_new(
    session: Session, dag_id: str, run_id: str, logical_date: datetime | None
) -> None:
    """Airflow refuses a second run with the same run_id or the same logical date (409)."""
    same = select(DagRun.run_id).where(DagRun.dag_id == dag_id)
    if session.scalars(same.where(DagRun.run_id == run_id)).first() is not None:
        raise DagRunAlreadyExists(f"DAG run {run_id!r} of DAG {dag_id!r} already exists")
    if logical_date is not None:
        other = session.scalars(same.where(DagRun.logical_date == logical_date)).first()
        if other is not None:
            raise DagRunAlreadyExists(
                f"DAG {dag_id!r} already has run {other!r} with logical date {logical_date.isoformat()}"
            )


# --- pause -------------------------------------------------------------------------------


def set_paused(session: Session, dag_id: str, paused: bool) -> DagModel:
    """Pause or unpause. Unpausing asks the scheduler to recompute the next run from the
    timetable (``needs_next_dagrun``), as time may have passed while paused."""
    dag = get_dag(session, dag_id)
    dag.is_paused = paused
    if not paused:
        dag.needs_next_dagrun = True
    _notify_after_commit(session)
    return dag


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
    tis = sorted(session.scalars(query), key=lambda ti: ti.task_id)
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


# --- mark states ----------------------------------------------------------------------------


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
) -> list[TaskInstance]:
    """Mark a task instance (and optionally its relatives) success, failed or skipped.

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
    altered = sorted((ti for ti in tis if ti.state != new_state.value), key=lambda t: t.task_id)
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


def _parse_state(state: S | str, allowed: frozenset[S], kind: type[S], field: str) -> S:
    try:
        parsed = kind(state)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise InvalidRequest(field, f"must be one of {names}, not {state!r}")
    return parsed


def set_dag_run_state(
    session: Session,
    dag_id: str,
    run_id: str,
    state: DagRunState | str,
    *,
    now: datetime | None = None,
) -> DagRun:
    """Mark a run success, failed or queued, as Airflow's ``set_dag_run_state_to_*``.

    - success: every task instance not yet successful becomes success;
    - failed (also what *cancel* means): running tries are failed, every other
      unfinished task instance is skipped; finished ones keep their state;
    - queued: the run is queued again; task instances are untouched.
    """
    new_state = _parse_state(state, MARKABLE_RUN_STATES, DagRunState, "state")
    now = now or _utcnow()
    run = get_dag_run(session, dag_id, run_id)
    tis = list(session.scalars(select(TaskInstance).where(TaskInstance.dag_run_id == run.id)))
    if new_state == DagRunState.SUCCESS:
        for ti in tis:
            if ti.state != TaskInstanceState.SUCCESS:
                _set_ti_state(session, ti, TaskInstanceState.SUCCESS, now)
    elif new_state == DagRunState.FAILED:
        for ti in tis:
            if ti.state == TaskInstanceState.RUNNING:
                _set_ti_state(session, ti, TaskInstanceState.FAILED, now)
            elif ti.state not in FINISHED_TI_STATES:
                _set_ti_state(session, ti, TaskInstanceState.SKIPPED, now)
    _set_run_state(run, new_state, now)
    session.flush()
    _notify_after_commit(session)
    return run


def _set_run_state(run: DagRun, state: DagRunState, now: datetime) -> None:
    if run.state != state.value:
        if state == DagRunState.QUEUED:
            run.queued_at = now
            run.start_date = None
            run.end_date = None
        else:
            run.end_date = now
    run.state = state.value
    run.needs_evaluation = True


def cancel_dag_run(session: Session, dag_id: str, run_id: str) -> DagRun:
    """Stop a run: Airflow's "mark run failed" (running tries failed, pending ones skipped)."""
    return set_dag_run_state(session, dag_id, run_id, DagRunState.FAILED)


# --- pools -------------------------------------------------------------------------------------


class PoolNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"pool {name!r} not found")
        self.name = name


class DefaultPoolNotDeletable(OperationError):
    """The default pool is where tasks without a pool run: it cannot be deleted (REST: 400,
    as Airflow's "Default Pool can't be deleted"); its slots can be changed."""

    def __init__(self) -> None:
        super().__init__(f"the default pool {DEFAULT_POOL_NAME!r} cannot be deleted")


_POOL_NAME_MAX = 256  # slot_pool.pool is String(256), as Airflow's


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool with its use: slots taken by its queued and running task instances (the ones
    the scheduler counts against the pool), as Airflow's ``Pool.slots_stats``."""

    pool: Pool
    running_slots: int
    queued_slots: int
    scheduled_slots: int

    @property
    def name(self) -> str:
        return self.pool.pool

    @property
    def occupied_slots(self) -> int:
        return self.running_slots + self.queued_slots

    @property
    def open_slots(self) -> int:
        """Negative when the pool was shrunk below what is running (as in Airflow)."""
        return self.pool.slots - self.occupied_slots


def _pool_usage(session: Session, names: list[str] | None) -> dict[tuple[str, str | None], int]:
    """Sum of pool_slots per (pool, state) for the states that count."""
    counted = (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED)
    query = (
        select(TaskInstance.pool, TaskInstance.state, func.sum(TaskInstance.pool_slots))
        .where(TaskInstance.state.in_([s.value for s in counted]))
        .group_by(TaskInstance.pool, TaskInstance.state)
    )
    if names is not None:
        query = query.where(TaskInstance.pool.in_(names))
    return {(pool, state): int(n or 0) for pool, state, n in session.execute(query)}


def _pool_stats(pool: Pool, usage: dict[tuple[str, str | None], int]) -> PoolStats:
    def used(state: TaskInstanceState) -> int:
        return usage.get((pool.pool, state.value), 0)

    return PoolStats(
        pool=pool,
        running_slots=used(TaskInstanceState.RUNNING),
        queued_slots=used(TaskInstanceState.QUEUED),
        scheduled_slots=used(TaskInstanceState.SCHEDULED),
    )


def list_pools(session: Session) -> list[PoolStats]:
    """Every pool by name, with its occupied and open slots."""
    pools = list(session.scalars(select(Pool).order_by(Pool.pool)))
    usage = _pool_usage(session, None)
    return [_pool_stats(p, usage) for p in pools]


def get_pool(session: Session, name: str) -> PoolStats:
    pool = session.get(Pool, name)
    if pool is None:
        raise PoolNotFound(name)
    return _pool_stats(pool, _pool_usage(session, [name]))


def set_pool(session: Session, name: str, slots: int, description: str | None = None) -> PoolStats:
    """Create the pool or update its slots (Airflow's ``Pool.create_or_update_pool``).

    ``description`` None keeps the current one (none for a new pool). Lowering the
    slots below what is occupied stops nothing: no new task starts until slots free up.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("name", "a pool name must not be empty")
    if len(name) > _POOL_NAME_MAX:
        raise InvalidRequest("name", f"a pool name has at most {_POOL_NAME_MAX} characters")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise InvalidRequest("slots", f"must be a whole number >= 0, not {slots!r}")
    pool = session.get(Pool, name)
    if pool is None:
        pool = Pool(pool=name, slots=slots, description=description)
        session.add(pool)
    else:
        pool.slots = slots
        if description is not None:
            pool.description = description
    session.flush()
    _notify_after_commit(session)  # more slots: the scheduler may queue tasks at once
    return _pool_stats(pool, _pool_usage(session, [name]))


def delete_pool(session: Session, name: str) -> None:
    """Delete a pool. Task instances still naming it fail when next scheduled
    ("pool does not exist"), as the scheduler treats any unknown pool."""
    if name == DEFAULT_POOL_NAME:
        raise DefaultPoolNotDeletable()
    pool = session.get(Pool, name)
    if pool is None:
        raise PoolNotFound(name)
    session.delete(pool)
    session.flush()
    _notify_after_commit(session)
