"""DAG runs (``/api/v1/dags/{dag_id}/dagRuns``): responses, trigger and patch bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from ketch.api.schemas.common import StrictBody
from ketch.db.models import DagRun


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
