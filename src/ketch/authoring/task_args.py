"""Task arguments: the names every task accepts, their checks and their defaults.

Its own module because the argument list is shared (``default_args``, ``.partial()``
of a mapped task read ``TASK_ARGS``) and its validation is most of a task's
construction; :class:`TaskArguments` turns the merged arguments (DAG, then group
``default_args``, then the task's own) into the task's attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ketch.authoring import _defaults
from ketch.authoring._args import DOC_ATTRS, email_list, optional_str
from ketch.authoring._args import seconds as _seconds
from ketch.exceptions import DagDefinitionError
from ketch.states import TriggerRule

CALLBACK_ARGS = (
    "on_success_callback",
    "on_failure_callback",
    "on_retry_callback",
    "on_execute_callback",
    "on_skipped_callback",
)

WEIGHT_RULES = ("downstream", "upstream", "absolute")

# Arguments every task accepts (and default_args may carry).
TASK_ARGS = (
    "retries",
    "retry_delay",
    "retry_exponential_backoff",
    "max_retry_delay",
    "execution_timeout",
    "trigger_rule",
    "priority_weight",
    "weight_rule",
    "pool",
    "pool_slots",
    "executor_config",
    # Airflow's task concurrency knobs: tries of this task queued or running at once across
    # every run of the DAG / within one run (None: no limit); the scheduler enforces them.
    "max_active_tis_per_dag",
    "max_active_tis_per_dagrun",
    # Airflow's PrevDagrunDep: run only when this task succeeded or was skipped in the
    # previous run (and, with wait_for_downstream, its direct downstream tasks too).
    "depends_on_past",
    "wait_for_downstream",
    "ignore_first_depends_on_past",
    # Airflow's task callbacks: called in the try (see docs/airflow-compat.md).
    *CALLBACK_ARGS,
    # Descriptive: stored and shown (API, UI), never acted on (ketch sends no email).
    *DOC_ATTRS,
    "owner",
    "email",
    "email_on_failure",
    "email_on_retry",
    "task_display_name",
    # Airflow's name for a mapped instance (ketch.authoring.map_index_template).
    "map_index_template",
)

# Airflow's [operators] default_owner.
DEFAULT_OWNER = "airflow"


def _trigger_rule(task_id: str, value: Any) -> TriggerRule:
    try:
        return TriggerRule(value)
    except ValueError:
        allowed = ", ".join(r.value for r in TriggerRule)
        raise DagDefinitionError(
            f"task {task_id!r}: invalid trigger_rule {value!r}; expected one of {allowed}"
        ) from None


def _callbacks(where: str, name: str, value: Any) -> list[Callable[..., Any]]:
    """A callback argument as a list: Airflow takes one callable or a list of them."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if not callable(item):
            raise DagDefinitionError(f"{where}: {name} must be a callable or a list of callables")
    return items


class TaskArguments:
    """A task's arguments checked and set as attributes (the mixin of ``BaseTask``).

    ``_given`` holds the merged arguments; the retry and timeout values not given
    are read from the settings only when asked (see ``_defaults``).
    """

    task_id: str
    _given: dict[str, Any]
    _task_display_name: str | None

    def _validate_args(self) -> None:
        g = self._given
        self.trigger_rule = _trigger_rule(self.task_id, g.get("trigger_rule", "all_success"))
        for name in ("retry_delay", "max_retry_delay", "execution_timeout"):
            _seconds(f"task {self.task_id!r}: {name}", g.get(name))
        config = g.get("executor_config", {})
        if not isinstance(config, dict):
            raise DagDefinitionError(
                f"task {self.task_id!r}: executor_config must be a dict, not {type(config).__name__}"
            )
        self.executor_config: dict[str, Any] = config
        rule = g.get("weight_rule", "downstream")
        rule = getattr(rule, "value", rule)
        if rule not in WEIGHT_RULES:
            raise DagDefinitionError(
                f"task {self.task_id!r}: invalid weight_rule {rule!r}; expected one of {', '.join(WEIGHT_RULES)}"
            )
        self.weight_rule: str = rule
        self.priority_weight = self._int("priority_weight", 1, minimum=None)
        self.pool_slots = self._int("pool_slots", 1, minimum=1)
        self.pool: str = str(g.get("pool") or "default_pool")
        backoff = g.get("retry_exponential_backoff", 0.0)
        if not isinstance(backoff, int | float) or backoff < 0:
            raise DagDefinitionError(
                f"task {self.task_id!r}: retry_exponential_backoff must be a bool or a multiplier >= 0"
            )
        # Airflow 3.2+: a float multiplier; True keeps its old meaning (2.0).
        self.retry_exponential_backoff: float = (
            (2.0 if backoff else 0.0) if isinstance(backoff, bool) else float(backoff)
        )
        where = f"task {self.task_id!r}"
        self.doc: str | None = optional_str(f"{where}: doc", g.get("doc"))
        self.doc_md: str | None = optional_str(f"{where}: doc_md", g.get("doc_md"))
        self.doc_rst: str | None = optional_str(f"{where}: doc_rst", g.get("doc_rst"))
        self.doc_json: str | None = optional_str(f"{where}: doc_json", g.get("doc_json"))
        self.doc_yaml: str | None = optional_str(f"{where}: doc_yaml", g.get("doc_yaml"))
        owner = g.get("owner")
        self.owner: str = optional_str(f"{where}: owner", owner) or DEFAULT_OWNER
        self.email: list[str] = email_list(f"{where}: email", g.get("email"))
        self.email_on_failure = bool(g.get("email_on_failure", True))
        self.email_on_retry = bool(g.get("email_on_retry", True))
        self._task_display_name = optional_str(
            f"{where}: task_display_name", g.get("task_display_name")
        )
        self.map_index_template: str | None = optional_str(
            f"{where}: map_index_template", g.get("map_index_template")
        )
        if "retries" in g:
            self._int("retries", 0, minimum=0)
        self.max_active_tis_per_dag = self._optional_int("max_active_tis_per_dag")
        self.max_active_tis_per_dagrun = self._optional_int("max_active_tis_per_dagrun")
        # Airflow: wait_for_downstream implies depends_on_past.
        self.wait_for_downstream = bool(g.get("wait_for_downstream", False))
        self.depends_on_past = bool(g.get("depends_on_past", False)) or self.wait_for_downstream
        self.ignore_first_depends_on_past = bool(g.get("ignore_first_depends_on_past", True))
        callbacks = {name: _callbacks(where, name, g.get(name)) for name in CALLBACK_ARGS}
        self.on_success_callback: list[Callable[..., Any]] = callbacks["on_success_callback"]
        self.on_failure_callback: list[Callable[..., Any]] = callbacks["on_failure_callback"]
        self.on_retry_callback: list[Callable[..., Any]] = callbacks["on_retry_callback"]
        self.on_execute_callback: list[Callable[..., Any]] = callbacks["on_execute_callback"]
        self.on_skipped_callback: list[Callable[..., Any]] = callbacks["on_skipped_callback"]

    def _optional_int(self, name: str) -> int | None:
        value = self._given.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DagDefinitionError(
                f"task {self.task_id!r}: {name} must be an integer >= 0 or None, not {value!r}"
            )
        return value

    def _int(self, name: str, fallback: int, *, minimum: int | None) -> int:
        value = self._given.get(name, fallback)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DagDefinitionError(f"task {self.task_id!r}: {name} must be an integer")
        if minimum is not None and value < minimum:
            raise DagDefinitionError(f"task {self.task_id!r}: {name} must be >= {minimum}")
        return value

    @property
    def retries(self) -> int:
        value = self._given.get("retries")
        return int(_defaults.default("default_task_retries") if value is None else value)

    @property
    def retry_delay(self) -> float:
        value = _seconds("retry_delay", self._given.get("retry_delay"))
        return float(_defaults.default("default_task_retry_delay") if value is None else value)

    @property
    def max_retry_delay(self) -> float | None:
        value = _seconds("max_retry_delay", self._given.get("max_retry_delay"))
        return _defaults.default("max_task_retry_delay") if value is None else value

    @property
    def execution_timeout(self) -> float | None:
        if "execution_timeout" in self._given:
            return _seconds("execution_timeout", self._given["execution_timeout"])
        return _defaults.default("default_task_execution_timeout")
