"""Tasks: the base class, dependencies (``>>``/``<<``), XComArg, and the built-in kinds.

A task object only describes work; :meth:`BaseTask.execute` runs it in the
current process (the task-try process). Arguments Airflow users pass to
operators are accepted with Airflow's names and defaults; values not given
explicitly come from the DAG's ``default_args``, then from the settings (read
lazily, see ``_defaults``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from ketch.authoring import _defaults
from ketch.exceptions import DagDefinitionError
from ketch.states import TriggerRule

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.authoring.dag import DAG

XComPull = Callable[[str, str], Any]

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
    "doc_md",
)


@dataclass
class TaskResult:
    """What a finished try reports: its return value and, for a branch, the tasks to follow."""

    return_value: Any = None
    follow_task_ids: list[str] | None = None


def _seconds(name: str, value: Any) -> float | None:
    """Durations may be given as timedelta or seconds (as Airflow accepts)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise DagDefinitionError(f"{name} must be a timedelta or a number of seconds, not {value!r}")


def _trigger_rule(task_id: str, value: Any) -> TriggerRule:
    try:
        return TriggerRule(value)
    except ValueError:
        allowed = ", ".join(r.value for r in TriggerRule)
        raise DagDefinitionError(
            f"task {task_id!r}: invalid trigger_rule {value!r}; expected one of {allowed}"
        ) from None


class DependencyMixin:
    """``>>`` and ``<<`` between tasks, XComArgs and lists of them."""

    def _as_tasks(self) -> list[BaseTask]:
        raise NotImplementedError

    def __rshift__(self, other: Any) -> Any:
        for up in self._as_tasks():
            for down in _tasks_of(other):
                up.set_downstream(down)
        return other

    def __lshift__(self, other: Any) -> Any:
        for down in self._as_tasks():
            for up in _tasks_of(other):
                up.set_downstream(down)
        return other

    def __rrshift__(self, other: Any) -> Any:
        # [a, b] >> self
        self.__lshift__(other)
        return self

    def __rlshift__(self, other: Any) -> Any:
        # [a, b] << self
        self.__rshift__(other)
        return self


def _tasks_of(obj: Any) -> list[BaseTask]:
    if isinstance(obj, DependencyMixin):
        return obj._as_tasks()
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | dict):
        return [t for item in obj for t in _tasks_of(item)]
    raise TypeError(f"cannot set a dependency on {obj!r}; expected a task, XComArg or list")


class BaseTask(DependencyMixin):
    """A node of a DAG. Subclasses implement :meth:`_run`."""

    kind: ClassVar[str] = "empty"

    def __init__(self, task_id: str, *, dag: DAG | None = None, **kwargs: Any) -> None:
        from ketch.authoring.dag import current_dag

        if not isinstance(task_id, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", task_id):
            raise DagDefinitionError(
                f"invalid task_id {task_id!r}: use letters, digits, dashes, dots and underscores"
            )
        unknown = set(kwargs) - set(TASK_ARGS)
        if unknown:
            raise DagDefinitionError(
                f"task {task_id!r}: unknown argument(s) {', '.join(sorted(unknown))}"
            )
        self.task_id = task_id
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        self.dag: DAG | None = dag or current_dag()
        given = dict(self.dag.default_args) if self.dag else {}
        given.update(kwargs)
        self._given = {k: v for k, v in given.items() if k in TASK_ARGS}
        self._validate_args()
        if self.dag is not None:
            self.dag.add_task(self)

    # ----- arguments -------------------------------------------------------

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
        self.doc_md: str | None = g.get("doc_md")
        if "retries" in g:
            self._int("retries", 0, minimum=0)

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

    # ----- dependencies ----------------------------------------------------

    def _as_tasks(self) -> list[BaseTask]:
        return [self]

    def set_downstream(self, other: BaseTask | Sequence[BaseTask]) -> None:
        for down in _tasks_of(other):
            self._link(self, down)

    def set_upstream(self, other: BaseTask | Sequence[BaseTask]) -> None:
        for up in _tasks_of(other):
            self._link(up, self)

    @staticmethod
    def _link(up: BaseTask, down: BaseTask) -> None:
        dag = up.dag or down.dag
        if up.dag is not None and down.dag is not None and up.dag is not down.dag:
            raise DagDefinitionError(
                f"cannot link {up.task_id!r} ({up.dag.dag_id}) and {down.task_id!r} ({down.dag.dag_id}): "
                "tasks are in different DAGs"
            )
        for t in (up, down):
            if t.dag is None and dag is not None:
                t.dag = dag
                dag.add_task(t)
        up.downstream_task_ids.add(down.task_id)
        down.upstream_task_ids.add(up.task_id)

    # ----- running ---------------------------------------------------------

    def execute(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        """Run the task in this process; raise SkipTask/FailTask/any exception to fail."""
        from ketch.authoring.context import running_context

        context = {**context, "task": self, "dag": self.dag, "task_id": self.task_id}
        ti = context.get("ti")
        if ti is not None and not hasattr(ti, "xcom_pull"):
            ti.xcom_pull = _ti_xcom_pull(xcom_pull)
        with running_context(context):
            return self._run(context, xcom_pull)

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        return TaskResult()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id}>"


def _ti_xcom_pull(xcom_pull: XComPull) -> Callable[..., Any]:
    """Airflow's ``ti.xcom_pull(task_ids=..., key=...)`` on top of the try's xcom_pull."""

    def pull(task_ids: str | Sequence[str], key: str = "return_value") -> Any:
        if isinstance(task_ids, str):
            return xcom_pull(task_ids, key)
        return [xcom_pull(t, key) for t in task_ids]

    return pull


class EmptyTask(BaseTask):
    """Does nothing (Airflow's EmptyOperator); useful as a join or a placeholder."""

    kind = "empty"


class XComArg(DependencyMixin):
    """The future return value of a task: pass it to another task to link and feed it."""

    def __init__(self, operator: BaseTask, key: str = "return_value") -> None:
        self.operator = operator
        self.key = key

    def _as_tasks(self) -> list[BaseTask]:
        return [self.operator]

    def resolve(self, xcom_pull: XComPull) -> Any:
        return xcom_pull(self.operator.task_id, self.key)

    def __repr__(self) -> str:
        return f"XComArg({self.operator.task_id!r}, {self.key!r})"


def find_xcom_args(value: Any) -> list[XComArg]:
    """Every XComArg inside ``value`` (nested lists, tuples, sets, dicts)."""
    if isinstance(value, XComArg):
        return [value]
    if isinstance(value, dict):
        return [x for item in value.values() for x in find_xcom_args(item)]
    if isinstance(value, list | tuple | set | frozenset):
        return [x for item in value for x in find_xcom_args(item)]
    return []


def resolve_xcom_args(value: Any, xcom_pull: XComPull) -> Any:
    """``value`` with every XComArg replaced by the upstream task's value."""
    if isinstance(value, XComArg):
        return value.resolve(xcom_pull)
    if isinstance(value, dict):
        return {k: resolve_xcom_args(v, xcom_pull) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(resolve_xcom_args(v, xcom_pull) for v in value)
    return value


EmptyOperator = EmptyTask

_LAZY = {
    "BashTask": "ketch.authoring.bash",
    "BashOperator": "ketch.authoring.bash",
    "PythonTask": "ketch.authoring.python",
    "BranchPythonTask": "ketch.authoring.python",
}


def __getattr__(name: str) -> Any:
    """``from ketch.authoring.tasks import BashTask`` works without an import cycle."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, "BashTask" if name == "BashOperator" else name)
    raise AttributeError(name)
