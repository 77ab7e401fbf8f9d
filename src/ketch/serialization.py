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


class SerializedTaskGroup(BaseModel):
    """A task group (Airflow's TaskGroup): for display; the scheduler reads only what its
    tasks carry (``SerializedTask.mapped_group_id`` and ``expand``).

    ``group_id`` is the full id (``outer.inner``); ``children`` are the full ids of its
    tasks and groups in definition order, so a UI can draw the tree.
    """

    group_id: str
    label: str  # the group's own name (or group_display_name), without the parents' prefix
    parent_group_id: str | None = None
    prefix_group_id: bool = True
    tooltip: str = ""
    ui_color: str = "CornflowerBlue"
    ui_fgcolor: str = "#000"
    children: list[str] = Field(default_factory=list)
    upstream_group_ids: list[str] = Field(default_factory=list)
    downstream_group_ids: list[str] = Field(default_factory=list)
    upstream_task_ids: list[str] = Field(default_factory=list)
    downstream_task_ids: list[str] = Field(default_factory=list)
    # A mapped task group (``@task_group`` ``.expand``/``.expand_kwargs``): its expand input.
    # Each of its tasks carries the same shape in its own ``expand``.
    expand: SerializedExpand | None = None


class SerializedExpandArg(BaseModel):
    """One argument a mapped task maps over: a literal (only its length is needed) or an
    upstream task's XCom (the scheduler reads it when the task's upstreams are done)."""

    name: str | None = None  # the keyword argument; None for expand_kwargs
    length: int | None = None  # a literal list's or dict's length
    xcom_task_id: str | None = None
    xcom_key: str = "return_value"
    # ``XComArg.zip()``/``.concat()`` (ketch.authoring.xcom_arg_ops): the shape of each
    # part; ``fill`` is whether zip got a fillvalue. ``.map()`` keeps its source's shape.
    combine: Literal["zip", "concat"] | None = None
    parts: list[SerializedExpandArg] = Field(default_factory=list)
    fill: bool = False

    def combined_length(self, lengths: list[int]) -> int:
        """Airflow's ``get_task_map_length``: zip is the shortest part (the longest with a
        fillvalue), concat the sum of the parts."""
        if self.combine == "concat":
            return sum(lengths)
        return max(lengths) if self.fill else min(lengths)


class SerializedExpand(BaseModel):
    """How a mapped task expands (Airflow's ExpandInput): ``dict_of_lists`` is
    ``.expand(a=..., b=...)`` (the cross product of every argument, the last varying
    fastest), ``list_of_dicts`` is ``.expand_kwargs(...)`` (one instance per item)."""

    kind: Literal["dict_of_lists", "list_of_dicts"]
    args: list[SerializedExpandArg]


SerializedTaskGroup.model_rebuild()


class SerializedTask(BaseModel):
    task_id: str
    kind: Literal["python", "bash", "branch", "short_circuit", "sensor", "empty"]
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
    # Airflow's task concurrency limits (None: none): queued + running tries of this task
    # across all runs of the DAG, and within one run.
    max_active_tis_per_dag: int | None = None
    max_active_tis_per_dagrun: int | None = None
    # Airflow's depends_on_past (see ketch.scheduler.past_deps).
    depends_on_past: bool = False
    wait_for_downstream: bool = False
    ignore_first_depends_on_past: bool = True
    # short_circuit only: a falsy result skips every descendant (True) or only the direct
    # downstream tasks, leaving the rest to trigger rules (False).
    ignore_downstream_trigger_rules: bool = True
    # Descriptive: shown, never acted on.
    doc_md: str | None = None
    doc: str | None = None
    doc_rst: str | None = None
    doc_json: str | None = None
    doc_yaml: str | None = None
    task_display_name: str | None = None  # None: the task id
    owner: str = "airflow"
    email: list[str] = Field(default_factory=list)
    email_on_failure: bool = True
    email_on_retry: bool = True
    # The innermost task group's full id (None: not in a group), and the task's id
    # without that group's prefix.
    task_group_id: str | None = None
    label: str | None = None
    # Set for a mapped task (``.expand``/``.expand_kwargs``): its task instances are
    # created when its upstreams are done, one per element (see scheduler/expansion.py).
    expand: SerializedExpand | None = None
    # The innermost mapped task group the task is in (its ``expand`` is the group's):
    # instance i of the task reads, and waits for, instance i of the group's other tasks
    # (see scheduler/mapped_group.py).
    mapped_group_id: str | None = None

    @property
    def is_mapped(self) -> bool:
        return self.expand is not None

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
    doc: str | None = None
    doc_rst: str | None = None
    doc_json: str | None = None
    doc_yaml: str | None = None
    tags: list[str] = Field(default_factory=list)
    dag_display_name: str | None = None  # None: the dag id
    owner_links: dict[str, str] = Field(default_factory=dict)
    # Templates render to native Python objects (ketch.authoring.templating).
    render_template_as_native_obj: bool = False
    # Pause after this many failed runs in a row (ketch.scheduler.auto_pause); 0: never.
    max_consecutive_failed_dag_runs: int = 0
    schedule: SerializedSchedule
    start_date: datetime | None = None
    end_date: datetime | None = None
    catchup: bool = False
    max_active_runs: int = 16
    max_active_tasks: int = 16
    dagrun_timeout: float | None = None
    is_paused_upon_creation: bool | None = None
    params: dict[str, SerializedParam] = Field(default_factory=dict)
    # Airflow's flags: the DAG has on_success_callback / on_failure_callback (the scheduler
    # then runs them in a child process when a run ends: ketch.scheduler.dag_callbacks).
    has_on_success_callback: bool = False
    has_on_failure_callback: bool = False
    tasks: dict[str, SerializedTask]  # in definition order
    task_groups: dict[str, SerializedTaskGroup] = Field(default_factory=dict)  # by full id

    def task(self, task_id: str) -> SerializedTask:
        return self.tasks[task_id]

    @property
    def owners(self) -> list[str]:
        """The owners of the DAG's tasks (Airflow's ``DAG.owner``, as a list)."""
        return sorted({t.owner for t in self.tasks.values()})

    def task_group_path(self, task_id: str) -> list[str]:
        """The full ids of the task's groups, outermost first ([] outside any group)."""
        path: list[str] = []
        group_id = self.tasks[task_id].task_group_id
        while group_id is not None and group_id in self.task_groups:
            path.append(group_id)
            group_id = self.task_groups[group_id].parent_group_id
        return path[::-1]

    def root_task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks.values() if not t.upstream_task_ids]

    def leaf_task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks.values() if not t.downstream_task_ids]
