"""The serialized form of a DAG: what the DAG processor stores and everyone else reads.

The scheduler and the web server never import user DAG files (a broken or slow
file must not hurt them); they work from this JSON form, written by the DAG
processor into ``dag.serialized``. The task-try process is the only place that
imports DAG code, and it does so in its own process.

Durations are seconds (float); datetimes are ISO 8601 strings with a UTC offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ketch.states import TriggerRule

SERIALIZATION_VERSION = 1


class SerializedSchedule(BaseModel):
    """What the DAG's ``schedule`` argument resolved to.

    ``kind`` names the Airflow timetable it behaves as:

    - ``cron_trigger``: CronTriggerTimetable (Airflow 3's default for cron strings and
      presets): a run at each cron tick, data interval ``[tick, tick]``.
    - ``cron_interval``: CronDataIntervalTimetable (``create_cron_data_intervals``):
      a run covers ``[tick, next tick)`` and starts at its end.
    - ``delta_interval``: DeltaDataIntervalTimetable for a ``timedelta``.
    - ``delta_trigger``: DeltaTriggerTimetable (``create_delta_data_intervals = False``).
    - ``once``: a single run at start_date (``@once``).
    - ``none``: manual runs only.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal[
        "cron_trigger", "cron_interval", "delta_interval", "delta_trigger", "once", "none"
    ]
    expression: str | None = None  # the cron expression (presets expanded), for cron kinds
    delta_seconds: float | None = None  # for delta kinds
    timezone: str = "UTC"  # IANA name the cron expression is evaluated in
    summary: str | None = None  # what the user wrote, for display ("@daily", "0 * * * *", "1 day")


class SerializedParam(BaseModel):
    """A DAG param: a default and a JSON Schema the resolved value must satisfy."""

    default: Any = None
    has_default: bool = True
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    description: str | None = None

    model_config = ConfigDict(populate_by_name=True)


class SerializedTask(BaseModel):
    task_id: str
    kind: Literal["python", "bash", "branch", "empty"]
    upstream_task_ids: list[str] = Field(default_factory=list)
    downstream_task_ids: list[str] = Field(default_factory=list)
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    retries: int = 0
    retry_delay: float = 300.0
    # Airflow 3.2+: a float multiplier of retry_delay per try (0 = off); True means 2.0.
    retry_exponential_backoff: float = 0.0
    max_retry_delay: float | None = None
    execution_timeout: float | None = None
    priority_weight: int = 1  # the effective weight (weight_rule already applied)
    pool: str = "default_pool"
    pool_slots: int = 1
    executor_config: dict[str, Any] = Field(default_factory=dict)
    doc_md: str | None = None

    @field_validator("retry_exponential_backoff", mode="before")
    @classmethod
    def _backoff_bool(cls, value: Any) -> Any:
        """Airflow still accepts ``retry_exponential_backoff=True``: it means a multiplier of 2."""
        if isinstance(value, bool):
            return 2.0 if value else 0.0
        return value


class SerializedDag(BaseModel):
    version: int = SERIALIZATION_VERSION
    dag_id: str
    fileloc: str  # absolute path of the file that defines the DAG
    relative_fileloc: str  # path relative to the DAGs folder (what a pod resolves)
    description: str | None = None
    doc_md: str | None = None
    tags: list[str] = Field(default_factory=list)
    schedule: SerializedSchedule
    start_date: datetime | None = None
    end_date: datetime | None = None
    catchup: bool = False
    max_active_runs: int = 16
    max_active_tasks: int = 16
    dagrun_timeout: float | None = None
    is_paused_upon_creation: bool | None = None
    params: dict[str, SerializedParam] = Field(default_factory=dict)
    tasks: dict[str, SerializedTask]  # in definition order

    def task(self, task_id: str) -> SerializedTask:
        return self.tasks[task_id]

    def root_task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks.values() if not t.upstream_task_ids]

    def leaf_task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks.values() if not t.downstream_task_ids]
