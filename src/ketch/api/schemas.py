"""Request bodies and responses of the REST API (``/api/v1``), as pydantic models.

Field names follow Airflow's public REST API (``dag_run_id``, ``total_entries``,
``queued_when``...) so scripts written against Airflow need few changes. Response
models are built from ORM rows with the ``from_*`` constructors; keeping that
mapping here keeps the routers thin.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ketch.db.models import DagModel, DagRun, ImportError_, TaskInstance, TaskInstanceTry
from ketch.serialization import (
    SerializedDag,
    SerializedSchedule,
    SerializedTask,
    SerializedTaskGroup,
)

if TYPE_CHECKING:
    from ketch.operations import PoolStats
    from ketch.operations.xcom import XComEntry


class ErrorResponse(BaseModel):
    """An error: 400, 401, 403, 404, 409, 503 (a 422 has FastAPI's validation shape)."""

    detail: str


class StrictBody(BaseModel):
    """A request body: unknown fields are an error (422) rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- health ---------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]
    database: str
    log_archive: str = Field(
        default="ok",
        description="'ok', or why task logs cannot be archived or read from the archive "
        "(the web still answers: tries keep their logs on local disk meanwhile)",
    )


# --- DAGs ------------------------------------------------------------------------------


def _owners(serialized: dict[str, Any]) -> list[str]:
    """The owners of a stored DAG's tasks, read from its JSON without validating all of it."""
    tasks = serialized.get("tasks") or {}
    return sorted({str(t.get("owner") or "airflow") for t in tasks.values()})


class DagResponse(BaseModel):
    """A DAG as the list shows it, with what its file describes for people (Airflow's
    field names: ``dag_display_name``, ``owners``)."""

    dag_id: str
    dag_display_name: str = Field(description="The DAG's display name (its dag_id if none)")
    description: str | None
    tags: list[str]
    owners: list[str] = Field(description="The owners of its tasks (Airflow's DAG.owner)")
    is_paused: bool
    is_active: bool
    fileloc: str
    relative_fileloc: str
    timetable_summary: str | None
    last_parsed_time: datetime | None
    next_dagrun_logical_date: datetime | None
    next_dagrun_data_interval_start: datetime | None
    next_dagrun_data_interval_end: datetime | None
    next_dagrun_run_after: datetime | None
    last_run_id: str | None = None
    last_run_state: str | None = None
    last_run_after: datetime | None = None

    @classmethod
    def from_model(cls, dag: DagModel, last_run: DagRun | None = None) -> DagResponse:
        serialized = dag.serialized or {}
        return cls(
            dag_id=dag.dag_id,
            dag_display_name=serialized.get("dag_display_name") or dag.dag_id,
            description=dag.description,
            tags=list(dag.tags or []),
            owners=_owners(serialized),
            is_paused=dag.is_paused,
            is_active=dag.is_active,
            fileloc=dag.fileloc,
            relative_fileloc=dag.relative_fileloc,
            timetable_summary=dag.schedule_summary,
            last_parsed_time=dag.last_parsed_at,
            next_dagrun_logical_date=dag.next_dagrun,
            next_dagrun_data_interval_start=dag.next_dagrun_data_interval_start,
            next_dagrun_data_interval_end=dag.next_dagrun_data_interval_end,
            next_dagrun_run_after=dag.next_dagrun_create_after,
            last_run_id=last_run.run_id if last_run else None,
            last_run_state=last_run.state if last_run else None,
            last_run_after=last_run.run_after if last_run else None,
        )


class DagCollectionResponse(BaseModel):
    dags: list[DagResponse]
    total_entries: int


class ParamResponse(BaseModel):
    value: Any = None
    has_default: bool
    schema_: dict[str, Any] = Field(serialization_alias="schema")
    description: str | None = None


class TaskResponse(BaseModel):
    """A task of a DAG, with its task group (``task_group_id``, ``task_group_path``) and
    what its file describes for people (``task_display_name``, ``owner``, ``doc*``)."""

    task_id: str
    task_display_name: str = Field(description="The task's display name (its task_id if none)")
    label: str = Field(description="The task id without its group's prefix")
    task_group_id: str | None = Field(description="The full id of the task's innermost group")
    task_group_path: list[str] = Field(
        description="The full ids of the task's groups, outermost first ([] outside any group)"
    )
    kind: str
    upstream_task_ids: list[str]
    downstream_task_ids: list[str]
    trigger_rule: str
    retries: int
    retry_delay: float
    retry_exponential_backoff: float
    max_retry_delay: float | None
    execution_timeout: float | None
    priority_weight: int
    pool: str
    pool_slots: int
    owner: str
    email: list[str]
    email_on_failure: bool
    email_on_retry: bool
    doc_md: str | None
    doc: str | None
    doc_rst: str | None
    doc_json: str | None
    doc_yaml: str | None

    @classmethod
    def from_task(cls, task: SerializedTask, dag: SerializedDag) -> TaskResponse:
        data = task.model_dump(mode="json")
        data["task_display_name"] = task.task_display_name or task.task_id
        data["label"] = task.label or task.task_id
        data["task_group_path"] = dag.task_group_path(task.task_id)
        return cls.model_validate(data)


class TaskCollectionResponse(BaseModel):
    tasks: list[TaskResponse]
    total_entries: int


class DagDetailsResponse(DagResponse):
    schedule: SerializedSchedule
    start_date: datetime | None
    end_date: datetime | None
    catchup: bool
    max_active_runs: int
    max_active_tasks: int
    max_consecutive_failed_dag_runs: int = Field(
        description="The DAG is paused once this many runs in a row failed (0: never)"
    )
    dagrun_timeout: float | None
    is_paused_upon_creation: bool | None
    doc_md: str | None
    doc: str | None
    doc_rst: str | None
    doc_json: str | None
    doc_yaml: str | None
    owner_links: dict[str, str]
    render_template_as_native_obj: bool
    params: dict[str, ParamResponse]
    tasks: list[TaskResponse]
    task_groups: list[SerializedTaskGroup] = Field(
        description="Every task group, outer groups before the groups inside them"
    )

    @classmethod
    def from_serialized(
        cls, dag: DagModel, serialized: SerializedDag, last_run: DagRun | None
    ) -> DagDetailsResponse:
        base = DagResponse.from_model(dag, last_run).model_dump()
        params = {
            name: ParamResponse(
                value=p.default,
                has_default=p.has_default,
                schema_=p.schema_,
                description=p.description,
            )
            for name, p in serialized.params.items()
        }
        return cls(
            **base,
            schedule=serialized.schedule,
            start_date=serialized.start_date,
            end_date=serialized.end_date,
            catchup=serialized.catchup,
            max_active_runs=serialized.max_active_runs,
            max_active_tasks=serialized.max_active_tasks,
            max_consecutive_failed_dag_runs=serialized.max_consecutive_failed_dag_runs,
            dagrun_timeout=serialized.dagrun_timeout,
            is_paused_upon_creation=serialized.is_paused_upon_creation,
            doc_md=serialized.doc_md,
            doc=serialized.doc,
            doc_rst=serialized.doc_rst,
            doc_json=serialized.doc_json,
            doc_yaml=serialized.doc_yaml,
            owner_links=serialized.owner_links,
            render_template_as_native_obj=serialized.render_template_as_native_obj,
            params=params,
            tasks=[TaskResponse.from_task(t, serialized) for t in serialized.tasks.values()],
            task_groups=list(serialized.task_groups.values()),
        )


class DagPatchBody(StrictBody):
    is_paused: bool


# --- DAG runs --------------------------------------------------------------------------


class DagRunResponse(BaseModel):
    dag_run_id: str
    dag_id: str
    run_type: str
    state: str
    logical_date: datetime | None
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    run_after: datetime
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    conf: dict[str, Any]
    params: dict[str, Any]
    note: str | None

    @classmethod
    def from_model(cls, run: DagRun) -> DagRunResponse:
        duration = None
        if run.start_date and run.end_date:
            duration = (run.end_date - run.start_date).total_seconds()
        return cls(
            dag_run_id=run.run_id,
            dag_id=run.dag_id,
            run_type=run.run_type,
            state=run.state,
            logical_date=run.logical_date,
            data_interval_start=run.data_interval_start,
            data_interval_end=run.data_interval_end,
            run_after=run.run_after,
            queued_at=run.queued_at,
            start_date=run.start_date,
            end_date=run.end_date,
            duration=duration,
            conf=run.conf or {},
            params=run.params or {},
            note=run.note,
        )


class DagRunCollectionResponse(BaseModel):
    dag_runs: list[DagRunResponse]
    total_entries: int


class TriggerDagRunBody(StrictBody):
    """Airflow 3's trigger body: no logical_date means a run without one."""

    conf: dict[str, Any] = Field(default_factory=dict)
    logical_date: AwareDatetime | None = None
    dag_run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=250,
        description=(
            "The new run's id (default: manual__<time>_<random>). At most 250 characters and"
            " 248 bytes in UTF-8; no '/', '\\', '..', control characters or line breaks;"
            " no leading or trailing whitespace; not a prefix the scheduler uses"
            " (scheduled__, backfill__, asset_triggered__, dataset_triggered__)."
        ),
    )


class DagRunPatchBody(StrictBody):
    state: Literal["success", "failed", "queued"]


# --- task instances ---------------------------------------------------------------------


class TaskInstanceTryResponse(BaseModel):
    try_number: int
    state: str | None
    queued_when: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    hostname: str | None
    pid: int | None
    error: str | None
    # The try's templated fields as rendered (masked), null until the try rendered them.
    rendered_fields: dict[str, Any] | None = None

    @classmethod
    def from_model(cls, row: TaskInstanceTry) -> TaskInstanceTryResponse:
        return cls(
            try_number=row.try_number,
            state=row.state,
            queued_when=row.queued_at,
            start_date=row.start_date,
            end_date=row.end_date,
            hostname=row.hostname,
            pid=row.pid,
            error=row.error,
            rendered_fields=row.rendered_fields,
        )


class TaskInstanceResponse(BaseModel):
    task_id: str
    dag_id: str
    dag_run_id: str
    map_index: int  # -1: not mapped (or a mapped task not expanded yet)
    # Airflow's name of the instance: its map_index_template as its last try rendered it.
    rendered_map_index: str | None = None
    state: str | None
    try_number: int
    max_tries: int
    queued_when: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    next_retry_at: datetime | None
    hostname: str | None
    pid: int | None
    executor: str | None
    priority_weight: int
    pool: str
    pool_slots: int
    error: str | None
    tries: list[TaskInstanceTryResponse] | None = None
    # Airflow 3's rendered_fields: those of the current try (each try's are in ``tries``).
    rendered_fields: dict[str, Any] | None = None

    @classmethod
    def from_model(
        cls, ti: TaskInstance, tries: list[TaskInstanceTry] | None = None
    ) -> TaskInstanceResponse:
        return cls(
            task_id=ti.task_id,
            dag_id=ti.dag_id,
            dag_run_id=ti.run_id,
            map_index=ti.map_index,
            rendered_map_index=ti.rendered_map_index,
            state=ti.state,
            try_number=ti.try_number,
            max_tries=ti.max_tries,
            queued_when=ti.queued_at,
            start_date=ti.start_date,
            end_date=ti.end_date,
            duration=ti.duration,
            next_retry_at=ti.next_retry_at,
            hostname=ti.hostname,
            pid=ti.pid,
            executor=ti.executor,
            priority_weight=ti.priority_weight,
            pool=ti.pool,
            pool_slots=ti.pool_slots,
            error=ti.error,
            tries=None if tries is None else [TaskInstanceTryResponse.from_model(t) for t in tries],
            rendered_fields=next(
                (t.rendered_fields for t in tries or () if t.try_number == ti.try_number), None
            ),
        )


class TaskInstanceCollectionResponse(BaseModel):
    task_instances: list[TaskInstanceResponse]
    total_entries: int


class PatchTaskInstanceBody(StrictBody):
    new_state: Literal["success", "failed", "skipped"]
    include_downstream: bool = False
    include_upstream: bool = False


class ClearTaskInstancesBody(StrictBody):
    """Airflow's clear body for one run; like Airflow, ``dry_run`` and ``only_failed``
    default to true so a bare request previews rather than reruns everything."""

    dag_run_id: str
    task_ids: list[str] | None = Field(default=None, min_length=1)
    include_downstream: bool = False
    include_upstream: bool = False
    only_failed: bool = True
    dry_run: bool = True


# --- XCom entries -----------------------------------------------------------------------


class XComResponse(BaseModel):
    """Airflow's XCom entry without its value (the list's items). ketch has no display
    names: they are the ids, Airflow's default. ``map_index`` is -1 for an unmapped task."""

    key: str
    timestamp: datetime
    logical_date: datetime | None
    map_index: int
    task_id: str
    dag_id: str
    run_id: str
    dag_display_name: str
    task_display_name: str

    @classmethod
    def fields_of(cls, entry: XComEntry) -> dict[str, Any]:
        return {
            "key": entry.key,
            "timestamp": entry.timestamp,
            "logical_date": entry.logical_date,
            "map_index": entry.map_index,
            "task_id": entry.task_id,
            "dag_id": entry.dag_id,
            "run_id": entry.run_id,
            "dag_display_name": entry.dag_id,
            "task_display_name": entry.task_id,
        }

    @classmethod
    def from_entry(cls, entry: XComEntry) -> XComResponse:
        return cls(**cls.fields_of(entry))


class XComResponseNative(XComResponse):
    """One entry with its value as stored: JSON, a tagged value in Airflow's serde form
    (``{"__classname__": "datetime.date", "__version__": 2, "__data__": "2026-03-01"}``)."""

    value: Any

    @classmethod
    def from_entry(cls, entry: XComEntry) -> XComResponseNative:
        return cls(**cls.fields_of(entry), value=entry.value)


class XComCollectionResponse(BaseModel):
    xcom_entries: list[XComResponse]
    total_entries: int


# --- import errors ----------------------------------------------------------------------


class ImportErrorResponse(BaseModel):
    """``stack_trace`` is Airflow's REST field; ``stacktrace`` (the column's name, and
    Airflow's model attribute) carries the same text for clients written against either."""

    import_error_id: int
    filename: str
    stack_trace: str
    stacktrace: str
    timestamp: datetime

    @classmethod
    def from_model(cls, row: ImportError_) -> ImportErrorResponse:
        return cls(
            import_error_id=row.id,
            filename=row.filename,
            stack_trace=row.stacktrace,
            stacktrace=row.stacktrace,
            timestamp=row.timestamp,
        )


class ImportErrorCollectionResponse(BaseModel):
    import_errors: list[ImportErrorResponse]
    total_entries: int


# --- pools -----------------------------------------------------------------------------


class PoolResponse(BaseModel):
    """Airflow's pool fields: occupied = running + queued slots; open = slots - occupied
    (negative when the pool was shrunk below what runs in it)."""

    name: str
    slots: int
    description: str | None
    occupied_slots: int
    running_slots: int
    queued_slots: int
    scheduled_slots: int
    open_slots: int

    @classmethod
    def from_stats(cls, stats: PoolStats) -> PoolResponse:
        return cls(
            name=stats.name,
            slots=stats.pool.slots,
            description=stats.pool.description,
            occupied_slots=stats.occupied_slots,
            running_slots=stats.running_slots,
            queued_slots=stats.queued_slots,
            scheduled_slots=stats.scheduled_slots,
            open_slots=stats.open_slots,
        )


class PoolCollectionResponse(BaseModel):
    pools: list[PoolResponse]
    total_entries: int


class PoolPutBody(StrictBody):
    """Create or update a pool; no ``description`` keeps the current one."""

    slots: int = Field(
        ge=0, le=2**31 - 1, description="Number of slots (0 stops new tasks in the pool)."
    )
    description: str | None = None
