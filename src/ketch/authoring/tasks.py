"""Tasks: the base class, dependencies (``>>``/``<<``), XComArg, and the built-in kinds.

A task object only describes work; :meth:`BaseTask.execute` runs it in the
current process (the task-try process). Arguments Airflow users pass to
operators are accepted with Airflow's names and defaults; values not given
explicitly come from the DAG's ``default_args``, then from the settings (read
lazily, see ``_defaults``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ketch.authoring import _context, _defaults
from ketch.authoring._args import DOC_ATTRS, email_list, optional_str
from ketch.authoring._args import seconds as _seconds
from ketch.authoring.params import NOTSET
from ketch.exceptions import DagDefinitionError
from ketch.states import TriggerRule

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.authoring.dag import DAG
    from ketch.authoring.mapped import PartialTask
    from ketch.authoring.taskgroup import TaskGroup

XComPull = Callable[[str, str], Any]

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


@dataclass
class TaskResult:
    """What a finished try reports: its return value and, for a branch, the tasks to follow."""

    return_value: Any = None
    follow_task_ids: list[str] | None = None
    # False: store no return value at all (a short-circuit that skips, as in Airflow).
    push_return_value: bool = True
    # Further XComs by key, stored besides return_value (``multiple_outputs``).
    xcoms: dict[str, Any] | None = None


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


class DependencyMixin:
    """``>>`` and ``<<`` between tasks, XComArgs, task groups and lists of them.

    ``a >> b`` links every leaf of ``a`` to every root of ``b``: a task is its own root
    and leaf, a task group's roots and leaves are its first and last tasks.
    """

    @property
    def roots(self) -> list[BaseTask]:
        raise NotImplementedError

    @property
    def leaves(self) -> list[BaseTask]:
        raise NotImplementedError

    def _as_tasks(self) -> list[BaseTask]:
        return self.roots

    def _note_upstream(self, nodes: list[DependencyMixin]) -> None:
        """Told what was linked upstream of it (task groups remember it)."""

    def _note_downstream(self, nodes: list[DependencyMixin]) -> None:
        """Told what was linked downstream of it (task groups remember it)."""

    def set_downstream(self, other: Any) -> None:
        link_nodes(self, other)

    def set_upstream(self, other: Any) -> None:
        link_nodes(other, self)

    def __rshift__(self, other: Any) -> Any:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: Any) -> Any:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Any) -> Any:
        # [a, b] >> self
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Any) -> Any:
        # [a, b] << self
        self.set_downstream(other)
        return self


def _nodes_of(obj: Any) -> list[DependencyMixin]:
    if isinstance(obj, DependencyMixin):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | dict):
        return [n for item in obj for n in _nodes_of(item)]
    raise TypeError(
        f"cannot set a dependency on {obj!r}; expected a task, XComArg, task group or list"
    )


def _tasks_of(obj: Any) -> list[BaseTask]:
    return [t for node in _nodes_of(obj) for t in node.roots]


def link_nodes(upstream: Any, downstream: Any) -> None:
    """``upstream >> downstream`` for tasks, XComArgs, task groups and lists of them."""
    ups, downs = _nodes_of(upstream), _nodes_of(downstream)
    leaves = [t for node in ups for t in node.leaves]
    for node in downs:
        node._note_upstream(ups)
    for node in ups:
        node._note_downstream(downs)
    roots = [t for node in downs for t in node.roots]
    for up in leaves:
        for down in roots:
            BaseTask._link(up, down)


class BaseTask(DependencyMixin):
    """A node of a DAG. Subclasses implement :meth:`_run`."""

    kind: ClassVar[str] = "empty"

    def __init__(
        self,
        task_id: str,
        *,
        dag: DAG | None = None,
        task_group: TaskGroup | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(task_id, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", task_id):
            raise DagDefinitionError(
                f"invalid task_id {task_id!r}: use letters, digits, dashes, dots and underscores"
            )
        unknown = set(kwargs) - set(TASK_ARGS)
        if unknown:
            raise DagDefinitionError(
                f"task {task_id!r}: unknown argument(s) {', '.join(sorted(unknown))}"
            )
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        self.dag: DAG | None = (
            dag or (task_group.dag if task_group else None) or _context.current_dag()
        )
        # The innermost open task group of the DAG (its root group outside any): it prefixes
        # the id and its default_args (merged over the DAG's, inner groups winning) apply.
        group = task_group if task_group is not None else _context.current_group(self.dag)
        self.task_group: TaskGroup | None = group
        self.task_id = group.child_id(task_id) if group is not None else task_id
        given: dict[str, Any] = dict(self.dag.default_args) if self.dag else {}
        if group is not None:
            given.update(group.default_args)
        given.update(kwargs)
        self._given = {k: v for k, v in given.items() if k in TASK_ARGS}
        self._validate_args()
        if self.dag is not None:
            self.dag.add_task(self)

    @property
    def node_id(self) -> str:
        return self.task_id

    @classmethod
    def partial(cls, *, task_id: str | None = None, **kwargs: Any) -> PartialTask:
        """Airflow's ``Operator.partial(task_id=..., ...)``: arguments every mapped instance
        shares; ``.expand(...)`` or ``.expand_kwargs(...)`` then creates the mapped task."""
        from ketch.authoring.mapped import partial_of

        return partial_of(cls, task_id, kwargs)

    @property
    def is_mapped(self) -> bool:
        return False

    @property
    def label(self) -> str:
        """The id without the enclosing group's prefix (what the UI shows inside the group)."""
        group = self.task_group
        if group is not None and group.group_id and group.prefix_group_id:
            return self.task_id[len(group.group_id) + 1 :]
        return self.task_id

    @property
    def task_display_name(self) -> str:
        return self._task_display_name or self.task_id

    @task_display_name.setter
    def task_display_name(self, value: str | None) -> None:
        self._task_display_name = value

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

    # ----- dependencies ----------------------------------------------------

    @property
    def roots(self) -> list[BaseTask]:
        return [self]

    @property
    def leaves(self) -> list[BaseTask]:
        return [self]

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
        pushed: dict[str, Any] = {}
        if ti is not None and not hasattr(ti, "xcom_pull"):
            ti.xcom_pull = _ti_xcom_pull(xcom_pull)
        if ti is not None and not hasattr(ti, "xcom_push"):
            ti.xcom_push = _ti_xcom_push(pushed)
        global _last_executed
        executed = _last_executed = ExecutedTask(self, context)
        with running_context(context):
            # Airflow 3's task runner: on_execute_callback right before the task runs.
            run_callbacks(self.on_execute_callback, "on_execute_callback", context)
            try:
                result = self._run(context, xcom_pull)
            except BaseException as exc:
                executed.error = exc
                raise
        if pushed:  # stored with the outcome; a multiple_outputs key wins, as pushed after
            result.xcoms = {**pushed, **(result.xcoms or {})}
        return result

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        return TaskResult()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id}>"


@dataclass
class ExecutedTask:
    """The task this process ran last, its context and the exception it ended with: what
    the try's state callbacks receive once the outcome is known."""

    task: BaseTask
    context: Context
    error: BaseException | None = None


_last_executed: ExecutedTask | None = None


def peek_last_executed() -> ExecutedTask | None:
    """The last :class:`ExecutedTask` of this process, left for the state callbacks."""
    return _last_executed


def take_last_executed() -> ExecutedTask | None:
    """The last :class:`ExecutedTask` of this process (forgotten once taken)."""
    global _last_executed
    executed, _last_executed = _last_executed, None
    return executed


def run_callbacks(callbacks: Sequence[Callable[..., Any]], kind: str, context: Context) -> None:
    """Call each callback with the context, as Airflow's task runner does: an exception
    is printed to the try's log and the next callback still runs."""
    import traceback

    for i, callback in enumerate(callbacks):
        try:
            callback(context)
        except Exception:
            name = getattr(callback, "__qualname__", repr(callback))
            print(f"Failed to run task callback {kind}[{i}] ({name}):", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()


def _ti_xcom_pull(xcom_pull: XComPull) -> Callable[..., Any]:
    """Airflow's ``ti.xcom_pull(task_ids=..., key=...)`` on top of the try's xcom_pull."""

    def pull(task_ids: str | Sequence[str], key: str = "return_value") -> Any:
        if isinstance(task_ids, str):
            return xcom_pull(task_ids, key)
        return [xcom_pull(t, key) for t in task_ids]

    return pull


def _ti_xcom_push(pushed: dict[str, Any]) -> Callable[..., None]:
    """Airflow's ``ti.xcom_push(key, value)``: kept and stored when the try succeeds."""

    def push(key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"xcom_push: the key must be a non-empty string, not {key!r}")
        pushed[key] = value

    return push


class EmptyTask(BaseTask):
    """Does nothing (Airflow's EmptyOperator); useful as a join or a placeholder."""

    kind = "empty"


class XComArg(DependencyMixin):
    """The future return value of a task: pass it to another task to link and feed it."""

    def __init__(self, operator: BaseTask, key: str = "return_value") -> None:
        self.operator = operator
        self.key = key

    @property
    def roots(self) -> list[BaseTask]:
        return [self.operator]

    @property
    def leaves(self) -> list[BaseTask]:
        return [self.operator]

    def resolve(self, xcom_pull: XComPull) -> Any:
        return xcom_pull(self.operator.task_id, self.key)

    def references(self) -> list[XComArg]:
        """The upstream values this one reads: a task taking it is linked to their tasks."""
        return self.plain_args()

    def __getitem__(self, key: str) -> XComArg:
        """``output["key"]``: the XCom ``key`` of the same task (Airflow's PlainXComArg),
        e.g. one key of a ``multiple_outputs`` task's dict."""
        if not isinstance(key, str):
            raise ValueError(f"XComArg only supports str lookup, received {type(key).__name__}")
        return XComArg(self.operator, key)

    def __iter__(self) -> Any:
        # Airflow refuses too: without it, ``a, b = task()`` would loop on __getitem__.
        raise TypeError("'XComArg' object is not iterable")

    def plain_args(self) -> list[XComArg]:
        """The plain (task, key) references this value reads: itself here; every source
        of a ``map``/``zip``/``concat`` (:mod:`ketch.authoring.xcom_arg_ops`)."""
        return [self]

    def _return_value_only(self, message: str) -> None:
        """Airflow's PlainXComArg checks: only a task's return value is mapped over."""
        if isinstance(self, DagParam):
            raise ValueError(f"cannot map over the DAG param {self.name!r} (not supported)")
        if self.key != "return_value":
            raise ValueError(message)

    def map(self, f: Callable[[Any], Any]) -> XComArg:
        """Airflow's ``XComArg.map``: each element through ``f``, in the consuming try."""
        from ketch.authoring.xcom_arg_ops import MapXComArg

        self._return_value_only("cannot map against non-return XCom")
        return MapXComArg(self, [f])

    def zip(self, *others: XComArg, fillvalue: Any = NOTSET) -> XComArg:
        """Airflow's ``XComArg.zip``: tuples of the values' elements."""
        from ketch.authoring.xcom_arg_ops import ZipXComArg

        self._return_value_only("cannot map against non-return XCom")
        return ZipXComArg([self, *others], fillvalue=fillvalue)

    def concat(self, *others: XComArg) -> XComArg:
        """Airflow's ``XComArg.concat``: the values' elements one after the other."""
        from ketch.authoring.xcom_arg_ops import ConcatXComArg

        self._return_value_only("cannot concatenate non-return XCom")
        return ConcatXComArg([self, *others])

    def __repr__(self) -> str:
        return f"XComArg({self.operator.task_id!r}, {self.key!r})"


class DagParam(XComArg):
    """An argument of a ``@dag`` function: the run's value of the DAG param of that name.

    Airflow's ``DagParam``: passed on to a task (``op_args``/``op_kwargs``), it resolves in
    the try to the run's ``conf`` value, else the function's default, else the param's value.
    It resolves wherever an upstream value does (it is an XComArg without an upstream task,
    so it links nothing).
    """

    def __init__(self, dag: DAG, name: str, default: Any = NOTSET) -> None:
        if default is not NOTSET:
            dag.set_param(name, default)
        self.dag = dag
        self.name = name
        self.default = default
        self.key = name

    @property
    def roots(self) -> list[BaseTask]:
        return []

    @property
    def leaves(self) -> list[BaseTask]:
        return []

    def references(self) -> list[XComArg]:
        return []  # a param comes from no task

    def __getitem__(self, key: str) -> XComArg:
        # A param has no XComs of other keys (Airflow's DagParam is not subscriptable).
        raise TypeError(f"DAG param {self.name!r} cannot be subscripted")

    def resolve(self, xcom_pull: XComPull | None = None) -> Any:
        from ketch.authoring.context import get_current_context

        return self.resolve_in(get_current_context())

    def resolve_in(self, context: Context) -> Any:
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        if self.name in conf:
            return conf[self.name]
        if self.default is not NOTSET:
            return self.default
        params = context.get("params") or {}
        if self.name in params:
            return params[self.name]
        raise KeyError(f"no value could be resolved for parameter {self.name!r}")

    def __repr__(self) -> str:
        return f"DagParam({self.name!r})"


def find_xcom_args(value: Any) -> list[XComArg]:
    """Every XComArg inside ``value`` (nested lists, tuples, sets, dicts) that reads a
    task's value: a :class:`DagParam` reads none, a ``map``/``zip``/``concat`` reads its
    sources, a mapped task group's argument reads the group's expand input (see
    ``XComArg.references``)."""
    if isinstance(value, XComArg):
        return value.references()
    if isinstance(value, dict):
        return [x for item in value.values() for x in find_xcom_args(item)]
    if isinstance(value, list | tuple | set | frozenset):
        return [x for item in value for x in find_xcom_args(item)]
    return []


def resolve_xcom_args(value: Any, xcom_pull: XComPull) -> Any:
    """``value`` with every XComArg replaced by the upstream task's value (and every
    :class:`DagParam` by the run's value of that param)."""
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
    "ShortCircuitTask": "ketch.authoring.short_circuit",
}


def __getattr__(name: str) -> Any:
    """``from ketch.authoring.tasks import BashTask`` works without an import cycle."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, "BashTask" if name == "BashOperator" else name)
    raise AttributeError(name)
