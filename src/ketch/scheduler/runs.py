"""Creating DAG runs: manual ones (through ``ketch.operations``) and scheduled ones from timetables.

A run is created ``queued`` with all its task instances in one bulk insert and flagged
``needs_evaluation``; the scheduling loop starts it within the DAG's ``max_active_runs``
and evaluates it once in full. Scheduled runs follow Airflow 3: the DAG's
``next_dagrun*`` columns say which run comes next and when it may be created; no new
scheduled run is created while ``max_active_runs`` runs are active (queued or running).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun, DagVersion, TaskInstance
from ketch.exceptions import KetchException, ParamValidationError
from ketch.serialization import SerializedDag
from ketch.states import ACTIVE_RUN_STATES, DagRunState, DagRunType

if TYPE_CHECKING:
    from ketch.authoring.timetables import DataInterval

log = logging.getLogger("ketch.scheduler.runs")


class DagRunAlreadyExists(KetchException):
    """A run with this run_id (or, for scheduled runs, this logical date) already exists."""

    def __init__(self, dag_id: str, run_id: str, reason: str) -> None:
        super().__init__(f"DAG run {run_id!r} of DAG {dag_id!r} already exists: {reason}")
        self.dag_id = dag_id
        self.run_id = run_id


def utcnow() -> datetime:
    return datetime.now(UTC)


def generate_run_id(
    run_type: DagRunType | str, *, logical_date: datetime | None, run_after: datetime
) -> str:
    """Airflow 3's default run id: ``<run_type>__<logical_date or run_after, ISO 8601>``."""
    return f"{DagRunType(run_type).value}__{(logical_date or run_after).isoformat()}"


def ensure_dag_version(session: Session, dag: DagModel, now: datetime) -> None:
    """Keep the serialized form a run is created from, so later edits cannot reshape the run."""
    if session.get(DagVersion, dag.serialized_hash) is None:
        session.add(
            DagVersion(
                dag_hash=dag.serialized_hash,
                dag_id=dag.dag_id,
                serialized=dag.serialized,
                created_at=now,
            )
        )
        session.flush()


def _check_unique(
    session: Session, dag_id: str, run_id: str, run_type: DagRunType, logical_date: datetime | None
) -> None:
    same_id = select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
    if session.scalar(same_id) is not None:
        raise DagRunAlreadyExists(dag_id, run_id, "same run_id")
    if run_type == DagRunType.SCHEDULED and logical_date is not None:
        same_date = select(DagRun.run_id).where(
            DagRun.dag_id == dag_id,
            DagRun.logical_date == logical_date,
            DagRun.run_type == DagRunType.SCHEDULED.value,
        )
        other = session.scalar(same_date)
        if other is not None:
            raise DagRunAlreadyExists(
                dag_id, run_id, f"scheduled run {other!r} has the same logical date"
            )


def _task_instance_rows(run: DagRun, serialized: SerializedDag) -> list[dict[str, Any]]:
    return [
        {
            "dag_run_id": run.id,
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "task_id": task.task_id,
            "state": None,
            "try_number": 0,
            "max_tries": task.retries,
            "priority_weight": task.priority_weight,
            "pool": task.pool,
            "pool_slots": task.pool_slots,
        }
        for task in serialized.tasks.values()
    ]


def create_dag_run(
    session: Session,
    dag: DagModel,
    *,
    run_type: DagRunType,
    run_id: str | None,
    logical_date: datetime | None,
    data_interval: DataInterval | None,
    run_after: datetime,
    conf: dict[str, Any],
    params: dict[str, Any],
    now: datetime | None = None,
) -> DagRun:
    """Insert a queued run and all its task instances (one bulk insert); the caller commits.

    Raises :class:`DagRunAlreadyExists` for a duplicate run_id, or a second scheduled run
    for the same logical date.
    """
    now = now or utcnow()
    run_type = DagRunType(run_type)
    run_id = run_id or generate_run_id(run_type, logical_date=logical_date, run_after=run_after)
    _check_unique(session, dag.dag_id, run_id, run_type, logical_date)
    ensure_dag_version(session, dag, now)
    serialized = SerializedDag.model_validate(dag.serialized)
    run = DagRun(
        dag_id=dag.dag_id,
        run_id=run_id,
        run_type=run_type.value,
        state=DagRunState.QUEUED.value,
        logical_date=logical_date,
        data_interval_start=data_interval.start if data_interval else None,
        data_interval_end=data_interval.end if data_interval else None,
        run_after=run_after,
        queued_at=now,
        conf=conf,
        params=params,
        dag_hash=dag.serialized_hash,
        needs_evaluation=True,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError as exc:
        raise DagRunAlreadyExists(dag.dag_id, run_id, "inserted concurrently") from exc
    rows = _task_instance_rows(run, serialized)
    if rows:
        session.execute(insert(TaskInstance), rows)
    log.info("created %s run %s of DAG %s (queued)", run_type.value, run_id, dag.dag_id)
    return run


def count_active_runs(session: Session, dag_id: str) -> int:
    stmt = select(func.count(DagRun.id)).where(
        DagRun.dag_id == dag_id, DagRun.state.in_([s.value for s in ACTIVE_RUN_STATES])
    )
    return int(session.scalar(stmt) or 0)


def _last_automated_interval(session: Session, dag_id: str) -> DataInterval | None:
    from ketch.authoring.timetables import DataInterval

    stmt = (
        select(DagRun.data_interval_start, DagRun.data_interval_end)
        .where(DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.SCHEDULED.value)
        .order_by(DagRun.logical_date.desc())
        .limit(1)
    )
    row = session.execute(stmt).first()
    if row is None or row[0] is None or row[1] is None:
        return None
    return DataInterval(row[0], row[1])


def update_next_dagrun(session: Session, dag: DagModel, now: datetime) -> None:
    """Recompute ``dag.next_dagrun*`` from the timetable and clear ``needs_next_dagrun``.

    Like Airflow, ``next_dagrun_create_after`` is left empty while the DAG already has
    ``max_active_runs`` active runs; the loop flags the DAG again when one of its runs ends.
    """
    from ketch.authoring.timetables import timetable_for

    dag.needs_next_dagrun = False
    serialized = SerializedDag.model_validate(dag.serialized)
    info = timetable_for(serialized.schedule).next_dagrun_info(
        last_automated_data_interval=_last_automated_interval(session, dag.dag_id),
        start_date=serialized.start_date,
        end_date=serialized.end_date,
        catchup=serialized.catchup,
        now=now,
    )
    if info is None:
        dag.next_dagrun = None
        dag.next_dagrun_data_interval_start = dag.next_dagrun_data_interval_end = None
        dag.next_dagrun_create_after = None
        return
    dag.next_dagrun = info.logical_date
    interval = info.data_interval
    dag.next_dagrun_data_interval_start = interval.start if interval else None
    dag.next_dagrun_data_interval_end = interval.end if interval else None
    dag.next_dagrun_create_after = info.run_after
    if count_active_runs(session, dag.dag_id) >= serialized.max_active_runs:
        dag.next_dagrun_create_after = None


def _create_next_scheduled_run(session: Session, dag: DagModel, now: datetime) -> DagRun | None:
    from ketch.authoring.params import resolve_params
    from ketch.authoring.timetables import DataInterval

    serialized = SerializedDag.model_validate(dag.serialized)
    if count_active_runs(session, dag.dag_id) >= serialized.max_active_runs:
        dag.next_dagrun_create_after = None  # recomputed when one of its runs ends
        return None
    assert dag.next_dagrun_create_after is not None
    interval = None
    if dag.next_dagrun_data_interval_start and dag.next_dagrun_data_interval_end:
        interval = DataInterval(
            dag.next_dagrun_data_interval_start, dag.next_dagrun_data_interval_end
        )
    run: DagRun | None = None
    try:
        run = create_dag_run(
            session,
            dag,
            run_type=DagRunType.SCHEDULED,
            run_id=None,
            logical_date=dag.next_dagrun,
            data_interval=interval,
            run_after=dag.next_dagrun_create_after,
            conf={},
            params=resolve_params(serialized.params, {}),
            now=now,
        )
    except (DagRunAlreadyExists, ParamValidationError) as exc:
        log.error("cannot create the scheduled run of DAG %s: %s", dag.dag_id, exc)
    update_next_dagrun(session, dag, now)
    return run


def create_due_runs(session: Session, now: datetime, limit: int = 10) -> list[DagRun]:
    """Create the scheduled runs that are due (``next_dagrun_create_after <= now``).

    Only unpaused, active DAGs; at most ``limit`` runs per call (the loop calls again at
    once when the limit was reached, so a long catchup does not block other work).
    """
    dags = session.scalars(
        select(DagModel)
        .where(
            DagModel.is_paused.is_(False),
            DagModel.is_active.is_(True),
            DagModel.next_dagrun_create_after <= now,
        )
        .order_by(DagModel.next_dagrun_create_after)
        .limit(limit)
    ).all()
    created = []
    for dag in dags:
        run = _create_next_scheduled_run(session, dag, now)
        if run is not None:
            created.append(run)
    return created
