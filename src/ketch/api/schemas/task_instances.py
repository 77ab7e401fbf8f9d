"""Task instances and their tries (``.../taskInstances``, ``clearTaskInstances``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ketch.api.schemas.common import StrictBody
from ketch.db.models import TaskInstance, TaskInstanceTry


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
