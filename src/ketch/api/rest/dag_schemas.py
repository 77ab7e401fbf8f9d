"""Responses of the DAG and task routes (``/dags``, ``/dags/{dag_id}``, ``/dags/{dag_id}/tasks``).

They extend the shapes in :mod:`ketch.api.schemas` with what a DAG file describes for
people (Airflow's field names): ``dag_display_name``, ``owners``, ``owner_links``, the
``doc*`` texts, ``task_display_name``, ``owner``, ``email``..., and each task's task group
(``task_group_id``, ``task_group_path``) with the DAG's ``task_groups``, so the UI can show
them. The scheduler never reads any of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from ketch.api import schemas
from ketch.db.models import DagModel, DagRun
from ketch.serialization import SerializedDag, SerializedTask, SerializedTaskGroup


def _owners(serialized: dict[str, Any]) -> list[str]:
    """The owners of a stored DAG's tasks, read from its JSON without validating all of it."""
    tasks = serialized.get("tasks") or {}
    return sorted({str(t.get("owner") or "airflow") for t in tasks.values()})


class DagResponse(schemas.DagResponse):
    dag_display_name: str = Field(description="The DAG's display name (its dag_id if none)")
    owners: list[str] = Field(description="The owners of its tasks (Airflow's DAG.owner)")

    @classmethod
    def from_row(cls, dag: DagModel, last_run: DagRun | None = None) -> DagResponse:
        base = schemas.DagResponse.from_model(dag, last_run).model_dump()
        serialized = dag.serialized or {}
        return cls(
            **base,
            dag_display_name=serialized.get("dag_display_name") or dag.dag_id,
            owners=_owners(serialized),
        )


class DagCollectionResponse(schemas.DagCollectionResponse):
    dags: list[DagResponse]  # type: ignore[assignment]


class TaskResponse(schemas.TaskResponse):
    task_display_name: str = Field(description="The task's display name (its task_id if none)")
    owner: str
    email: list[str]
    email_on_failure: bool
    email_on_retry: bool
    doc: str | None
    doc_rst: str | None
    doc_json: str | None
    doc_yaml: str | None
    task_group_id: str | None = Field(description="The full id of the task's innermost group")
    task_group_path: list[str] = Field(
        description="The full ids of the task's groups, outermost first ([] outside any group)"
    )
    label: str = Field(description="The task id without its group's prefix")

    @classmethod
    def from_task(cls, task: SerializedTask, dag: SerializedDag) -> TaskResponse:
        data = task.model_dump(mode="json")
        data["task_display_name"] = task.task_display_name or task.task_id
        data["label"] = task.label or task.task_id
        data["task_group_path"] = dag.task_group_path(task.task_id)
        return cls.model_validate(data)


class TaskCollectionResponse(schemas.TaskCollectionResponse):
    tasks: list[TaskResponse]  # type: ignore[assignment]


class DagDetailsResponse(DagResponse):
    schedule: schemas.SerializedSchedule
    start_date: datetime | None
    end_date: datetime | None
    catchup: bool
    max_active_runs: int
    max_active_tasks: int
    max_consecutive_failed_dag_runs: int = Field(
        description="Stored and shown; ketch does not pause a DAG after failed runs"
    )
    dagrun_timeout: float | None
    is_paused_upon_creation: bool | None
    doc_md: str | None
    doc: str | None
    doc_rst: str | None
    doc_json: str | None
    doc_yaml: str | None
    owner_links: dict[str, str]
    render_template_as_native_obj: bool = Field(
        description="Stored and shown; ketch does not render templates yet"
    )
    params: dict[str, schemas.ParamResponse]
    tasks: list[TaskResponse]
    task_groups: list[SerializedTaskGroup] = Field(
        description="Every task group, outer groups before the groups inside them"
    )

    @classmethod
    def from_serialized(
        cls, dag: DagModel, serialized: SerializedDag, last_run: DagRun | None
    ) -> DagDetailsResponse:
        base = DagResponse.from_row(dag, last_run).model_dump()
        params = {
            name: schemas.ParamResponse(
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
