"""DAG runs: look one up, list, progress, trigger (with its run id), mark state, cancel."""

from __future__ import annotations

import secrets
import string
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, DagVersion, TaskInstance
from ketch.operations._common import (
    Page,
    _notify_after_commit,
    _parse_state,
    _require_aware,
    _set_ti_state,
    _utcnow,
)
from ketch.operations.dags import get_dag, serialized_dag
from ketch.operations.errors import DagRunAlreadyExists, DagRunNotFound, InvalidRequest
from ketch.serialization import SerializedDag
from ketch.states import (
    FAILED_TI_STATES,
    FINISHED_TI_STATES,
    DagRunState,
    DagRunType,
    TaskInstanceState,
    mapped_task_state,
)

MARKABLE_RUN_STATES = frozenset({DagRunState.SUCCESS, DagRunState.FAILED, DagRunState.QUEUED})
_FINISHED_RUN_STATES = frozenset({DagRunState.SUCCESS, DagRunState.FAILED})


# --- lookups ----------------------------------------------------------------------------


def get_dag_run(session: Session, dag_id: str, run_id: str) -> DagRun:
    run = session.scalars(
        select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
    ).first()
    if run is None:
        get_dag(session, dag_id)  # name the DAG if that is what is missing
        raise DagRunNotFound(dag_id, run_id)
    return run


def serialized_dag_for_run(session: Session, run: DagRun) -> SerializedDag:
    """The serialized DAG the run was created from, so a file edited mid-run does not
    change which tasks a clear or a mark touches."""
    version = session.get(DagVersion, run.dag_hash)
    if version is not None:
        return SerializedDag.model_validate(version.serialized)
    return serialized_dag(get_dag(session, run.dag_id))


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


def recent_runs(session: Session, dag_ids: list[str], per_dag: int) -> dict[str, list[DagRun]]:
    """The newest ``per_dag`` runs of each DAG (newest first), in one query: a window
    function numbers each DAG's runs (SQLite 3.25+ and PostgreSQL both have them)."""
    if not dag_ids:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=DagRun.dag_id, order_by=(DagRun.run_after.desc(), DagRun.id.desc()))
        .label("rank")
    )
    numbered = select(DagRun.id, rank).where(DagRun.dag_id.in_(dag_ids)).subquery()
    query = (
        select(DagRun)
        .join(numbered, numbered.c.id == DagRun.id)
        .where(numbered.c.rank <= per_dag)
        .order_by(DagRun.dag_id, numbered.c.rank)
    )
    found: dict[str, list[DagRun]] = {dag_id: [] for dag_id in dag_ids}
    for run in session.scalars(query):
        found[run.dag_id].append(run)
    return found


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
    by_task: dict[str, list[str | None]] = {}
    for ti in tis:
        by_task.setdefault(ti.task_id, []).append(ti.state)
    # A mapped task's instances show as one state (its aggregate).
    states = {
        task_id: found[0] if len(found) == 1 else mapped_task_state(found)
        for task_id, found in by_task.items()
    }
    failed: dict[str, str | None] = {}
    for ti in tis:
        if ti.state in FAILED_TI_STATES:
            failed.setdefault(ti.task_id, ti.error)
    done = sum(1 for ti in tis if ti.state in FINISHED_TI_STATES)
    failures = sum(1 for ti in tis if ti.state in FAILED_TI_STATES)
    return RunProgress(run.state, len(tis), done, failures, states, failed)


# --- run ids ---------------------------------------------------------------------------

RUN_ID_MAX_CHARS = 250
"""``dag_run.run_id`` is String(250)."""

RUN_ID_MAX_BYTES = 248
"""The log folder ``run_id=<id>`` must fit a file name (255 bytes on Linux and macOS)."""

RESERVED_RUN_ID_PREFIXES: tuple[str, ...] = tuple(
    sorted(
        {f"{t.value}__" for t in DagRunType if t != DagRunType.MANUAL}
        | {"scheduled__", "backfill__", "asset_triggered__", "dataset_triggered__"}
    )
)
"""Run id prefixes of the runs the scheduler creates (Airflow's run types): a manual run
may not take one, so its id can never collide with or pass for a scheduled run's."""

_LINE_BREAKS = {"Zl", "Zp"}  # U+2028, U+2029 (\n, \r, U+0085 are control characters)


def check_run_id(run_id: str, *, manual: bool = True, field: str = "dag_run_id") -> None:
    """Refuse a run id that is empty, too long, padded, or could change the meaning of a
    path or a log line (REST: 422 naming the rule). The same rules for the REST API
    and the CLI (``--run-id``): both create manual runs through :func:`trigger_dag`."""
    if not isinstance(run_id, str):
        raise InvalidRequest(field, f"must be a string, not {type(run_id).__name__}")
    if not run_id:
        raise InvalidRequest(field, "must not be empty")
    if len(run_id) > RUN_ID_MAX_CHARS:
        raise InvalidRequest(
            field, f"must be at most {RUN_ID_MAX_CHARS} characters, not {len(run_id)}"
        )
    for char in run_id:
        category = unicodedata.category(char)
        if category == "Cc" or category in _LINE_BREAKS:
            raise InvalidRequest(
                field,
                f"must not contain control characters or line breaks (U+{ord(char):04X})",
            )
        if category == "Cs":
            raise InvalidRequest(field, f"must be valid Unicode (lone surrogate U+{ord(char):04X})")
    if run_id != run_id.strip():
        raise InvalidRequest(field, "must not begin or end with whitespace")
    for sep in ("/", "\\"):
        if sep in run_id:
            raise InvalidRequest(
                field, f"must not contain {sep!r} (a run id names a folder of the task logs)"
            )
    if ".." in run_id:
        raise InvalidRequest(
            field, "must not contain '..' (a run id names a folder of the task logs)"
        )
    size = len(run_id.encode("utf-8"))
    if size > RUN_ID_MAX_BYTES:
        raise InvalidRequest(
            field,
            f"must be at most {RUN_ID_MAX_BYTES} bytes in UTF-8, not {size} (the task log"
            " folder run_id=<id> must fit a 255-byte file name)",
        )
    if manual:
        lowered = run_id.lower()
        for prefix in RESERVED_RUN_ID_PREFIXES:
            if lowered.startswith(prefix):
                raise InvalidRequest(
                    field,
                    f"must not start with {prefix!r}: that prefix is reserved for runs the"
                    " scheduler creates",
                )


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
    from ketch.scheduler import runs as scheduler_runs

    now = now or _utcnow()
    _require_aware("logical_date", logical_date)
    if run_id is not None:
        check_run_id(run_id)
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
    if run_id is None:
        run_id = generate_manual_run_id(logical_date=logical_date, run_after=now)
    _check_run_is_new(session, dag_id, run_id, logical_date)
    try:
        run = scheduler_runs.create_dag_run(
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
    except scheduler_runs.DagRunAlreadyExists as exc:  # inserted concurrently by another writer
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


# --- mark states, cancel ------------------------------------------------------------------


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
