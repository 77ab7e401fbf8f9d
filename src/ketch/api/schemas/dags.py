"""DAGs and their tasks (``/api/v1/dags``, ``/dags/{dag_id}/details``, ``/tasks``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ketch.api.schemas.common import StrictBody
from ketch.db.models import DagModel, DagRun
from ketch.serialization import (
    SerializedDag,
    SerializedSchedule,
    SerializedTask,
    SerializedTaskGroup,
)


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
