"""Tasks: the base class and the built-in empty task.

A task object only describes work; :meth:`BaseTask.execute` runs it in the
current process (the task-try process). Arguments Airflow users pass to
operators are accepted with Airflow's names and defaults; values not given
explicitly come from the DAG's ``default_args``, then from the settings (read
lazily, see ``_defaults``).

The concepts a task is built from live in their own modules: its arguments
(``task_args``), ``>>``/``<<`` (``dependencies``), the references to upstream values
it takes (``xcom_args``) and what running it in the try leaves behind
(``task_runtime``). ``XComArg`` is re-exported here, part of the authoring surface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ketch.authoring import _context
from ketch.authoring.dependencies import DependencyMixin
from ketch.authoring.task_args import TASK_ARGS, TaskArguments
from ketch.authoring.task_runtime import (
    remember_executed,
    run_callbacks,
    ti_xcom_pull,
    ti_xcom_push,
)
from ketch.authoring.xcom_args import XComArg
from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.authoring.dag import DAG
    from ketch.authoring.mapped import PartialTask
    from ketch.authoring.taskgroup import TaskGroup
    from ketch.authoring.xcom_args import XComPull

__all__ = ["BaseTask", "EmptyOperator", "EmptyTask", "TaskResult", "XComArg"]


@dataclass
class TaskResult:
    """What a finished try reports: its return value and, for a branch, the tasks to follow."""

    return_value: Any = None
    follow_task_ids: list[str] | None = None
    # False: store no return value at all (a short-circuit that skips, as in Airflow).
    push_return_value: bool = True
    # Further XComs by key, stored besides return_value (``multiple_outputs``).
    xcoms: dict[str, Any] | None = None


class BaseTask(TaskArguments, DependencyMixin):
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

    # ----- dependencies ----------------------------------------------------

    @property
    def roots(self) -> list[BaseTask]:
        return [self]

    @property
    def leaves(self) -> list[BaseTask]:
        return [self]

    # ----- running ---------------------------------------------------------

    def execute(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        """Run the task in this process; raise SkipTask/FailTask/any exception to fail."""
        from ketch.authoring.context import running_context

        context = {**context, "task": self, "dag": self.dag, "task_id": self.task_id}
        ti = context.get("ti")
        pushed: dict[str, Any] = {}
        if ti is not None and not hasattr(ti, "xcom_pull"):
            ti.xcom_pull = ti_xcom_pull(xcom_pull)
        if ti is not None and not hasattr(ti, "xcom_push"):
            ti.xcom_push = ti_xcom_push(pushed)
        executed = remember_executed(self, context)
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


class EmptyTask(BaseTask):
    """Does nothing (Airflow's EmptyOperator); useful as a join or a placeholder."""

    kind = "empty"


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
